"""The commands one side has sent on an IMAP connection and awaits tagged replies to.

Every conversation the proxy holds with a server as a client of its own goes through one
:class:`CommandChannel`: the MOVE emulation and the proxy's ID on the client's upstream
connection, the second sessions (rollback, flags check), the STARTTLS setup. It allocates tags
under a prefix no client uses, keeps the table of commands awaiting their tagged reply with
whoever sent each (its owner), sends the segments of a command that wait for ``+``, and says
when a tagged reply names a tag nobody sent (then the caller ends the conversation: everything
after it may be out of step).

Sans-IO: bytes go to ``write``; the caller feeds it the tagged replies and continuations.
"""

from __future__ import annotations

from collections.abc import Callable

# A command as segments: each segment after the first waits for the server's "+".
UpstreamCommand = list[bytes]


class CommandChannel:
    """Tags, the table of commands awaiting their reply, and literals waiting for ``+``."""

    __slots__ = (
        "_awaiting", "_continuation", "_continuation_tag", "_counter", "_prefix", "_write",
    )  # fmt: skip

    def __init__(self, prefix: bytes, write: Callable[[bytes], object]) -> None:
        self._prefix = prefix
        self._write = write
        self._counter = 0
        self._awaiting: dict[bytes, object] = {}  # tag -> who sent the command
        self._continuation: list[bytes] = []  # segments of a command waiting for "+"
        self._continuation_tag = b""  # that command's tag

    def tag(self, owner: object) -> bytes:
        """A new tag, entered in the table as ``owner``'s (for a command not sent yet)."""
        self._counter += 1
        tag = self._prefix + b"%d" % self._counter
        self._awaiting[tag] = owner
        return tag

    def own(self, command: UpstreamCommand, owner: object) -> UpstreamCommand:
        """``command`` (without its tag) under a new tag of ``owner``'s."""
        return [self.tag(owner) + b" " + command[0], *command[1:]]

    def send(self, commands: list[UpstreamCommand]) -> None:
        """Send tagged commands (from :meth:`own`), pipelined: each command's further segments
        wait for ``+`` (the few commands that have them are sent last, or alone)."""
        for first, *rest in commands:
            self._write(first)
            if rest:
                self._continuation, self._continuation_tag = rest, first.split(b" ", 1)[0]

    def continue_command(self) -> bool:
        """A ``+`` came: whether it was for a command of this channel (then its next segment
        is sent)."""
        if not self._continuation:
            return False
        self._write(self._continuation.pop(0))
        return True

    def owner(self, tag: bytes) -> object | None:
        """Who awaits the tagged reply for ``tag`` (None: nobody on this channel)."""
        return self._awaiting.get(tag)

    def awaiting(self, owner: object) -> bool:
        """Whether ``owner`` still awaits a tagged reply."""
        if not self._awaiting:  # on every relayed response's path: the usual answer, quickly
            return False
        return any(who is owner for who in self._awaiting.values())

    def answered(self, tag: bytes) -> object | None:
        """The tagged reply for ``tag`` came: its command leaves the table; return its owner
        (None: a tag nobody on this channel sent). A reply to the command whose segments wait
        for ``+`` (a NO to its first line) means they are never sent; a reply to a command
        pipelined before it changes nothing for them."""
        owner = self._awaiting.pop(tag, None)
        if tag == self._continuation_tag:
            self._continuation = []
        return owner
