"""Undoing the copies of a failed MOVE, through a second upstream session of the same user.

When flagging or expunging fails after a successful COPY, the messages left in the source also
have copies in the target. The client's session cannot touch the target without changing its
selected mailbox, so the proxy logs in a second time, as the same user, and removes exactly those
copies by their COPYUID target UIDs. Sans-IO like the session: bytes in, bytes out.

The second login uses what the client itself logged in with (LOGIN or AUTHENTICATE PLAIN, held in
memory for the connection only) or a configured master user, who logs in for the client's user
with AUTHENTICATE PLAIN and an authorization identity (RFC 4616; Dovecot's master users).
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, field

from ..wire import responses
from ..wire.capabilities import Capabilities
from ..wire.conversation import Conversation, ConversationError, Reply
from ..wire.grammar import SyntaxProblem, Tagged, chunk_set, compress_uids, line_body, parse_astring
from .request import RollbackRequest, UpstreamCommand, astring_segments


@dataclass(slots=True, frozen=True)
class Credentials:
    """How to log in as the client's user again. Never logged (the password is kept out of
    ``repr``)."""

    user: bytes  # whose mailboxes: the authorization identity
    login: bytes = field(repr=False)  # who authenticates (the user, or a master user)
    password: bytes = field(repr=False)
    plain: bool = False  # AUTHENTICATE PLAIN rather than LOGIN

    def as_master(self, login: bytes, password: bytes) -> Credentials:
        """The same user, reached through a master user's login."""
        return Credentials(self.user, login, password, plain=True)

    def command(self, caps: Capabilities) -> UpstreamCommand:
        """The login command (without its tag) for an upstream with ``caps``."""
        if not self.plain:
            return astring_segments(b"LOGIN ", [self.login, self.password], caps)
        authzid = b"" if self.user == self.login else self.user
        response = base64.b64encode(authzid + b"\0" + self.login + b"\0" + self.password)
        if b"SASL-IR" in caps.names:
            return [b"AUTHENTICATE PLAIN " + response + b"\r\n"]
        return [b"AUTHENTICATE PLAIN\r\n", response + b"\r\n"]


def login_credentials(command: bytes, args_offset: int) -> Credentials | None:
    """The user name and password of a whole LOGIN command (literals included)."""
    try:
        if command[args_offset : args_offset + 1] != b" ":
            return None
        user, end = parse_astring(command, args_offset + 1)
        if command[end : end + 1] != b" ":
            return None
        password, end = parse_astring(command, end + 1)
    except SyntaxProblem:
        return None
    if line_body(command[end:]):
        return None
    return Credentials(user, user, password)


def plain_credentials(response: bytes) -> Credentials | None:
    """The identities and password in a base64 AUTHENTICATE PLAIN response (RFC 4616)."""
    try:
        decoded = base64.b64decode(line_body(response).strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    parts = decoded.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        return None
    authzid, login, password = parts
    return Credentials(authzid or login, login, password, plain=True)


class Phase(enum.Enum):
    GREETING = "greeting"
    LOGIN = "login"
    SELECT = "select"
    FIND = "find"
    FLAG = "flag"
    EXPUNGE = "expunge"
    CHECK = "check"
    LOGOUT = "logout"


class SecondSession:
    """Another upstream session of the client's user, sans-IO: logs in, selects ``mailbox``,
    checks that its UIDVALIDITY is still ``uidvalidity`` (unless that is None), then runs the
    subclass's steps (:meth:`_advance`, called once every command of a step has been answered
    OK). Any NO, BAD, BYE or unexpected line ends it with :attr:`error` set. Its commands and
    the server's responses go through a :class:`~..wire.conversation.Conversation`."""

    def __init__(self, mailbox: bytes, uidvalidity: bytes | None, credentials: Credentials) -> None:
        self.error: str | None = None
        self.done = False
        self._mailbox = mailbox
        self._expected_validity = uidvalidity
        self._credentials = credentials
        self._conversation = Conversation(b"rb")
        self._phase = Phase.GREETING
        self._validity = b""
        self._examine = False  # open the mailbox read-only

    @property
    def ending(self) -> bool:
        """LOGOUT has been sent: the session waits for the server to close the connection."""
        return self._phase is Phase.LOGOUT

    def receive(self, data: bytes | bytearray) -> None:
        if self._phase is Phase.LOGOUT:
            return  # whatever it says, the end is the server closing the connection
        conversation = self._conversation
        conversation.receive(data)
        while not self.done and self._phase is not Phase.LOGOUT:
            try:
                event = conversation.next_event()
            except ConversationError as exc:
                self._fail(str(exc))
                return
            if event is None:
                return
            if isinstance(event, Reply):
                self._reply(event.tagged)
            else:
                self._response(event.line)

    def take_outgoing(self) -> bytes:
        return self._conversation.take_outgoing()

    def connection_lost(self) -> None:
        """The server closed the connection: the end awaited after LOGOUT, or a failure."""
        if not self.done and self._phase is not Phase.LOGOUT:
            self.error = "the mail server closed the connection"
        self.done = True

    def _response(self, line: bytes) -> None:
        if self._phase is Phase.GREETING:
            if line[:5].upper() == b"* OK ":
                self._send(Phase.LOGIN, [self._credentials.command(self._conversation.caps)])
            elif line[:10].upper() == b"* PREAUTH ":
                self._select()
            else:
                self._fail(f"greeting {line_body(line)[:80]!r}")
        elif line[2:5].upper() == b"BYE":
            self._fail(f"the mail server said {line_body(line)[:80]!r}")
        else:
            validity = responses.uidvalidity(line)
            if validity is not None:
                self._validity = validity
            self._untagged(line)

    def _reply(self, reply: Tagged) -> None:
        if reply.status != b"OK":
            what = reply.text.decode("utf-8", "replace")[:200]
            self._fail(f"{self._phase.value} refused: {what}")
        elif self._conversation.awaiting(self):
            return
        elif self._phase is Phase.LOGIN:
            self._select()
        elif self._phase is Phase.SELECT and self._expected_validity not in (None, self._validity):
            # Not the mailbox the copies went to (recreated meanwhile): touch nothing.
            self._fail(f"the target's UIDVALIDITY is now {self._validity.decode() or '?'}")
        else:
            self._advance()

    def _untagged(self, line: bytes) -> None:
        """An untagged response other than BYE (the subclass's steps may want it)."""

    def _advance(self) -> None:
        """Every command of the current step (SELECT, or one of the subclass's) succeeded."""
        raise NotImplementedError

    def _select(self) -> None:
        command = b"EXAMINE " if self._examine else b"SELECT "
        caps = self._conversation.caps
        self._send(Phase.SELECT, [astring_segments(command, [self._mailbox], caps)])

    def _send(self, phase: Phase, commands: list[UpstreamCommand]) -> None:
        """Pipelined: each command's further segments wait for "+" (the few commands that
        have them are sent alone)."""
        self._phase = phase
        self._conversation.send(commands, self)

    def _fail(self, reason: str) -> None:
        self.error = reason
        self._logout()

    def _logout(self) -> None:
        """End the session. Once a mailbox may be open, only when the server has closed the
        connection: a server that keeps a mailbox in one mbox file (imap4d, UW-IMAP) writes the
        session's view of it as the session ends, even after answering LOGOUT, over whatever
        the client's own session would change meanwhile."""
        if self._phase in (Phase.GREETING, Phase.LOGIN):
            self.done = True
            return
        self._phase = Phase.LOGOUT
        self._conversation.send([[b"LOGOUT\r\n"]], self)


class Rollback(SecondSession):
    """One second session: log in, select the target, list which copies are there, flag and
    expunge them by UID, check that they are gone, log out. :attr:`error` says why it failed
    (``None``: it did not, or it is not finished: see :attr:`done`); :attr:`missing` names the
    copies that had already left the target (another session moved or deleted them)."""

    def __init__(
        self, request: RollbackRequest, credentials: Credentials, max_set_bytes: int = 8192
    ) -> None:
        super().__init__(request.mailbox, request.uidvalidity, credentials)
        self.request = request
        self.missing: frozenset[int] = frozenset()
        self._left: set[int] = set()
        self._sets = chunk_set(compress_uids(list(request.uids)), max_set_bytes)

    def _untagged(self, line: bytes) -> None:
        fetched = responses.last_fetch_uid(line)
        if self._phase in (Phase.FIND, Phase.CHECK) and fetched is not None:
            self._left.add(fetched)

    def _advance(self) -> None:
        phase = self._phase
        if phase is Phase.SELECT:
            self._send_per_set(Phase.FIND, b"UID FETCH %s (UID)\r\n")
        elif phase is Phase.FIND:
            self.missing = frozenset(self.request.uids) - self._left
            self._left = set()
            self._send_per_set(Phase.FLAG, b"UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n")
        elif phase is Phase.FLAG:
            self._send_per_set(Phase.EXPUNGE, b"UID EXPUNGE %s\r\n")
        elif phase is Phase.EXPUNGE:
            self._send_per_set(Phase.CHECK, b"UID FETCH %s (UID)\r\n")
        elif phase is Phase.CHECK:
            left = self._left & set(self.request.uids)
            if left:
                uids = b",".join(compress_uids(list(left))).decode()
                self._fail(f"UIDs {uids} of the target were not removed")
                return
            self._logout()

    def _send_per_set(self, phase: Phase, template: bytes) -> None:
        self._send(phase, [[template % uid_set] for uid_set in self._sets])
