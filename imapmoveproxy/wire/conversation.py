"""One conversation in which the proxy is a server's client: a tagged command out, the untagged
responses as they come, the tagged reply back to whoever sent the command.

The second sessions (:mod:`..move.rollback`, :mod:`..move.copyflags`), the STARTTLS setup and
the probe's sessions all talk to a server this way; :class:`Conversation` is that talk, once:
the tags and the table of commands awaiting their reply (a :class:`.commands.CommandChannel`,
so that a reply to a tag nobody sent ends the conversation), framing (:class:`.framing.Framer`:
lines bounded, responses handed out whole with their literals), a command's literals sent after
the server's ``+``, and the server's capability list as it last listed it.

Sans-IO, like h11: bytes in (:meth:`Conversation.receive`, :meth:`Conversation.connection_lost`),
bytes out (:meth:`Conversation.take_outgoing`), and :meth:`Conversation.next_event` for the
caller to act on. :mod:`..shell.serverlink` moves the bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .capabilities import Capabilities, find_list
from .commands import CommandChannel, UpstreamCommand
from .framing import Framer, Line, LineTooLong
from .grammar import Tagged, line_body, parse_tagged


@dataclass(slots=True, frozen=True)
class Response:
    """An untagged response (the greeting among them): ``line`` is its first line, ``data`` all
    of it, literals included (the same bytes when it has none); both end with the terminator."""

    line: bytes
    data: bytes


@dataclass(slots=True, frozen=True)
class Reply:
    """The tagged reply to a command of the conversation's, and who sent the command."""

    tagged: Tagged
    owner: object


Event = Response | Reply


class ConversationError(Exception):
    """The server said what no command of the conversation's waits for, sent too much, or
    closed the connection: the conversation is out of step or over, and ends."""


class Conversation:
    """A client's side of one IMAP connection: commands out under the tags of ``prefix``,
    responses in as :data:`Event` values. A response (a line and its literals) longer than
    ``max_line`` bytes ends the conversation."""

    __slots__ = ("_channel", "_closed", "_framer", "_max_line", "_out", "_parts", "_size", "caps")

    def __init__(self, prefix: bytes, max_line: int = 1024 * 1024) -> None:
        self._max_line = max_line
        self._framer = Framer(max_line)
        self._out = bytearray()
        self._channel = CommandChannel(prefix, self._out.extend)
        self._parts: list[bytes] = []  # the response being received: its lines and literals
        self._size = 0  # their length
        self._closed = False
        self.caps = Capabilities(frozenset())  # as the server last listed them

    def send(self, commands: Sequence[UpstreamCommand], owner: object) -> None:
        """Send ``commands`` (without tags) under new tags of ``owner``'s, pipelined: each
        command's further segments wait for ``+`` (a command that has them goes last, or
        alone)."""
        self._channel.send([self._channel.own(command, owner) for command in commands])

    def awaiting(self, owner: object) -> bool:
        """Whether a command of ``owner``'s still awaits its tagged reply."""
        return self._channel.awaiting(owner)

    def take_outgoing(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def receive(self, data: bytes | bytearray) -> None:
        self._framer.feed(data)

    def connection_lost(self) -> None:
        """The server closed the connection: once the events before it are taken,
        :meth:`next_event` says so."""
        self._closed = True

    def take_rest(self) -> bytes:
        """What the server sent after the last response taken, for whoever goes on with the
        connection; the conversation is over."""
        return self._framer.take_rest()

    def drop_input(self) -> None:
        """TLS begins (STARTTLS answered): whatever came after the reply was sent in plaintext
        and is dropped unread."""
        self._framer = Framer(self._max_line)
        self._parts, self._size = [], 0

    def next_event(self) -> Event | None:
        """The next response of the server's (None: more bytes are needed). A ``+`` sends the
        next segment of the command that waits for it. Raises :class:`ConversationError` for
        anything that cannot be answered (a ``+`` or a tagged reply nobody waits for, a response
        too long) and, once every response before it has been taken, for a closed connection."""
        framer = self._framer
        while True:
            try:
                event = framer.next_event()
            except LineTooLong:
                raise ConversationError("overlong line from the mail server") from None
            if event is None:
                if self._closed:
                    raise ConversationError("the connection was closed")
                return None
            data = event.data if type(event) is Line else bytes(event.data)
            self._parts.append(data)
            self._size += len(data)
            if self._size > self._max_line:
                raise ConversationError("overlong response from the mail server")
            if type(event) is not Line or event.literal is not None:
                continue  # the response goes on
            parts, self._parts, self._size = self._parts, [], 0
            response = self._response(parts[0], b"".join(parts) if len(parts) > 1 else parts[0])
            if response is not None:
                return response

    def _response(self, line: bytes, data: bytes) -> Event | None:
        caps = find_list(line)
        if caps is not None:
            self.caps = Capabilities.parse(line[caps[0] : caps[1]])
        if line[:1] == b"*":
            return Response(line, data)
        if line[:1] == b"+":
            if not self._channel.continue_command():
                raise ConversationError("unexpected continuation request")
            return None
        reply = parse_tagged(line)
        owner = None if reply is None else self._channel.answered(reply.tag)
        if reply is None or owner is None:
            raise ConversationError(f"unexpected reply {line_body(line)[:80]!r}")
        return Reply(reply, owner)
