"""The client's commands in flight, and what their tagged replies tell the session.

Tagged replies are matched to commands by tag, and a client may reuse a tag while a command with
it is in flight. The proxy acts on the replies of a few commands (who logged in, with which
credentials; which mailbox is selected): such a command is only sent when no other command with
its tag is in flight, and commands reusing its tag wait for its reply (:meth:`in_doubt`). So
what a reply tells is bound to the very command that the server accepted or refused.

Sans-IO: the session says what it sent and what came back.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..move.rollback import Credentials, login_credentials, plain_credentials
from ..wire.framing import Line
from ..wire.grammar import CommandStart, SyntaxProblem, line_body, parse_astring

AUTH_COMMANDS = (b"LOGIN", b"AUTHENTICATE")
SELECTING = (b"SELECT", b"EXAMINE", b"CLOSE", b"UNSELECT")  # change the selected mailbox
_WATCHED = AUTH_COMMANDS + SELECTING  # whose tagged reply the session acts on
_MAX_LOGIN = 8192  # longest LOGIN command whose credentials are kept for a rollback


@dataclass(slots=True, frozen=True)
class Completion:
    """What a tagged reply completed, as far as the session acts on it."""

    logged_in: bool = False  # a LOGIN or AUTHENTICATE the server accepted
    credentials: Credentials | None = None  # what that login used, if it could be captured
    selection: bool = False  # a SELECT, EXAMINE, CLOSE or UNSELECT completed (either way)
    mailbox: bytes | None = None  # the mailbox it selected, if accepted and known


class CommandsInFlight:
    """The client commands sent upstream and not yet answered, counted by tag."""

    __slots__ = ("_by_tag", "_logins", "_selections", "count")

    def __init__(self) -> None:
        self._by_tag: dict[bytes, int] = {}
        self._logins: dict[bytes, Credentials | None] = {}  # tag -> what it logs in with
        self._selections: dict[bytes, bytes | None] = {}  # tag -> the mailbox it selects
        self.count = 0

    def __contains__(self, tag: bytes) -> bool:
        return tag in self._by_tag

    @property
    def logging_in(self) -> bool:
        """A LOGIN or AUTHENTICATE is in flight."""
        return bool(self._logins)

    def in_doubt(self, start: CommandStart) -> bool:
        """Whether a reply to this command could not be told apart from one to a command in
        flight (then it must wait): after ``a NOOP`` and ``a LOGIN`` pipelined, the NOOP's
        ``a OK`` would otherwise pass for a successful login."""
        tag = start.tag
        if tag in self._logins or tag in self._selections:
            return True
        return start.name in _WATCHED and tag in self._by_tag

    def sent(self, line: Line, start: CommandStart) -> None:
        """The command starting with ``line`` went upstream."""
        tag = start.tag
        self._by_tag[tag] = self._by_tag.get(tag, 0) + 1
        self.count += 1
        if start.name in AUTH_COMMANDS:
            self._logins[tag] = None
        elif start.name in SELECTING:
            self._selections[tag] = _mailbox_argument(line, start)

    def logs_in_with(self, tag: bytes, credentials: Credentials) -> None:
        """The login in flight under ``tag`` uses these credentials."""
        if tag in self._logins:
            self._logins[tag] = credentials

    def complete(self, tag: bytes, ok: bool) -> Completion:
        """A tagged reply for ``tag`` (which must be in flight) came back."""
        left = self._by_tag[tag] - 1
        if left:
            self._by_tag[tag] = left
        else:
            del self._by_tag[tag]
        self.count -= 1
        if tag in self._logins:
            credentials = self._logins.pop(tag)
            return Completion(logged_in=ok, credentials=credentials if ok else None)
        if tag in self._selections:
            mailbox = self._selections.pop(tag)
            return Completion(selection=True, mailbox=mailbox if ok else None)
        return Completion()


def _mailbox_argument(line: Line, start: CommandStart) -> bytes | None:
    """SELECT's or EXAMINE's mailbox name (None for CLOSE and UNSELECT, or if it came as a
    literal: then the MOVE pre-check, which needs it, is skipped)."""
    if start.name not in (b"SELECT", b"EXAMINE") or line.literal is not None:
        return None
    try:
        return parse_astring(line.data, start.args_offset + 1)[0]
    except SyntaxProblem:
        return None


class CredentialCapture:
    """Reads what a LOGIN or AUTHENTICATE PLAIN logs in with, for a rollback's second session.

    A LOGIN may carry literals: its lines and literal bytes are collected (at most 8 KB) until
    its last line. AUTHENTICATE PLAIN without an initial response sends it as the next data line.
    Other mechanisms cannot be replayed and are not captured.
    """

    __slots__ = ("_login", "_login_start", "_master", "_plain_tag")

    def __init__(self, master: tuple[bytes, bytes] | None) -> None:
        self._master = master  # (login, password) to use instead, for the client's user
        self._login: bytearray | None = None  # a LOGIN with literals, being received whole
        self._login_start: CommandStart | None = None
        self._plain_tag: bytes | None = None  # AUTHENTICATE PLAIN awaiting its response line

    def command(self, line: Line, start: CommandStart) -> tuple[bytes, Credentials] | None:
        """A LOGIN or AUTHENTICATE command's first line went upstream."""
        if start.name == b"LOGIN":
            self._login = bytearray(line.data)
            self._login_start = start
            return self._login_received() if line.literal is None else None
        mechanism, _, initial = line_body(line.data)[start.args_offset :].strip().partition(b" ")
        if mechanism.upper() != b"PLAIN":
            return None
        if not initial:
            self._plain_tag = start.tag
            return None
        return self._kept(start.tag, plain_credentials(initial))

    def fragment(
        self, data: bytes | memoryview, line: Line | None
    ) -> tuple[bytes, Credentials] | None:
        """More of the command being forwarded: a literal chunk, or a line after a literal."""
        if self._login is None:
            return None
        self._login += data
        if len(self._login) > _MAX_LOGIN:
            self._login = None
        elif line is not None and line.literal is None:
            return self._login_received()
        return None

    def data_line(self, data: bytes) -> tuple[bytes, Credentials] | None:
        """A client line sent as data (an AUTHENTICATE response)."""
        tag, self._plain_tag = self._plain_tag, None
        return None if tag is None else self._kept(tag, plain_credentials(data))

    def cut_short(self) -> None:
        """A new command began: a LOGIN still being received was cut short."""
        self._login = None

    def _login_received(self) -> tuple[bytes, Credentials] | None:
        assert self._login is not None and self._login_start is not None
        start, data, self._login = self._login_start, bytes(self._login), None
        return self._kept(start.tag, login_credentials(data, start.args_offset))

    def _kept(
        self, tag: bytes, credentials: Credentials | None
    ) -> tuple[bytes, Credentials] | None:
        if credentials is None:
            return None
        if self._master is not None:
            credentials = credentials.as_master(*self._master)
        return tag, credentials
