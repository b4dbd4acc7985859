"""Routing mode's not-authenticated state, owned by the proxy: sans-IO, client bytes in, replies
out, and the login to route as an effect.

With backends configured the client talks to the proxy until it logs in: the proxy greets it,
answers CAPABILITY, NOOP, ID, STARTTLS and LOGOUT itself, and reads LOGIN (quoted strings,
atoms or literals, synchronizing or not) and AUTHENTICATE PLAIN (with SASL-IR or after a ``+``).
Each login becomes a :class:`RouteLogin` for the caller, which finds the user's backend, logs
in there, and reports back: :meth:`PreLogin.refused` relays a NO and the client may try again,
up to ``attempts`` failures; on OK the caller hands the connection (and :meth:`PreLogin.rest`,
what the client pipelined after its login) to a :class:`.session.Session`.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from ..move.rollback import Credentials, login_credentials, plain_credentials
from ..wire.framing import Framer, Line, LineTooLong
from ..wire.grammar import is_tag, line_body, parse_command_start
from .effects import Close, StartTls
from .settings import SessionSettings

MAX_LOGIN = 8192  # longest LOGIN command, literals included
_MAX_INVALID = 10  # invalid command lines in a row that end the connection (as in Dovecot)
GREETING_TEXT = b"imapmoveproxy ready."


@dataclass(slots=True, frozen=True)
class RouteLogin:
    """The client logs in as ``credentials`` under ``tag``: route it, and answer with
    :meth:`PreLogin.refused` (or hand the connection over on OK)."""

    tag: bytes
    credentials: Credentials


PreLoginEffect = StartTls | RouteLogin | Close


class _Mode(enum.Enum):
    COMMAND = "command"  # the next line is a command
    LOGIN = "login"  # a LOGIN with literals, being collected
    PLAIN = "plain"  # AUTHENTICATE PLAIN sent "+": the next line is its response
    DISCARD = "discard"  # the rest of a refused command (a non-synchronizing literal)
    WAITING = "waiting"  # a login is being routed, or TLS set up: nothing more is looked at
    CLOSED = "closed"


class PreLogin:
    """The proxy's side of the not-authenticated state (RFC 9051 §6.1, §6.2)."""

    __slots__ = (
        "_effects", "_failures", "_invalid", "_login", "_login_start", "_mode", "_out",
        "_settings", "_tag", "attempts", "framer", "log", "tls",
    )  # fmt: skip

    def __init__(
        self,
        settings: SessionSettings,
        log: logging.LoggerAdapter[logging.Logger],
        *,
        tls: bool,
        attempts: int,
    ) -> None:
        self._settings = settings
        self.log = log
        self.tls = tls
        self.attempts = attempts  # failed logins that end the connection
        self.framer = Framer(settings.max_line)
        self._out = bytearray(b"* OK [CAPABILITY " + self.capabilities() + b"] ")
        self._out += GREETING_TEXT + b"\r\n"
        self._effects: list[PreLoginEffect] = []
        self._mode = _Mode.COMMAND
        self._tag = b""  # the login's tag
        self._login = bytearray()  # a LOGIN with literals, as received
        self._login_start = 0  # where its arguments begin
        self._failures = 0
        self._invalid = 0

    def capabilities(self) -> bytes:
        """What the proxy offers before login."""
        names = [b"IMAP4rev1", b"SASL-IR", b"LITERAL+", b"ID"]
        if self._settings.tls_offered and not self.tls:
            names.append(b"STARTTLS")
        if self._settings.require_tls and not self.tls:
            names.append(b"LOGINDISABLED")
        else:
            names.append(b"AUTH=PLAIN")
        return b" ".join(names)

    # ------------------------------------------------------------------ bytes in and out

    def receive(self, data: bytes | bytearray) -> None:
        self.framer.feed(data)
        self._process()

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def take_effects(self) -> list[PreLoginEffect]:
        effects, self._effects = self._effects, []
        return effects

    @property
    def closed(self) -> bool:
        return self._mode is _Mode.CLOSED

    def rest(self) -> bytes:
        """What the client sent after its login (routed OK): the session's to look at."""
        return self.framer.take_rest()

    # ------------------------------------------------------------------ from the caller

    def tls_established(self) -> None:
        self.tls = True
        self._mode = _Mode.COMMAND
        self._process()

    def refused(self, reply: bytes, *, final: bool = False) -> None:
        """The login was refused with ``reply`` (without the tag): the client may try again,
        until it has failed ``attempts`` times (``final``: not at all)."""
        self._out += self._tag + b" " + reply + b"\r\n"
        self._failures += 1
        if final or self._failures >= self.attempts:
            self._close("too many failed logins", b"Too many failed logins.")
            return
        self._mode = _Mode.COMMAND
        self._process()

    def timed_out(self) -> None:
        if self._mode is not _Mode.CLOSED:
            self._close("no login in time", b"Autologout: no login in time.")

    # ------------------------------------------------------------------ commands

    def _process(self) -> None:
        while self._mode not in (_Mode.WAITING, _Mode.CLOSED):
            try:
                event = self.framer.next_event()
            except LineTooLong:
                self._close("client line too long", b"Line too long.")
                return
            if event is None:
                return
            if self._mode is _Mode.LOGIN:
                self._login_part(event.data, event if type(event) is Line else None)
            elif self._mode is _Mode.DISCARD:
                if type(event) is Line and event.literal is None:
                    self._mode = _Mode.COMMAND
            elif type(event) is Line and self._mode is _Mode.PLAIN:
                self._plain_response(event)
            elif type(event) is Line:
                self._command(event)

    def _command(self, line: Line) -> None:
        start = parse_command_start(line.data)
        if start is None:
            self._invalid += 1
            if self._invalid >= _MAX_INVALID:
                self._close("too many invalid commands", b"Too many invalid IMAP commands.")
                return
            tag = line.data.split(b" ", 1)[0]
            self._refuse(line, (tag if is_tag(tag) else b"*") + b" BAD Invalid command.")
            return
        self._invalid = 0
        tag, name = start.tag, start.name
        if name in (b"LOGIN", b"AUTHENTICATE") and self._settings.require_tls and not self.tls:
            self.log.info("%s before STARTTLS refused", name.decode())
            self._refuse(line, tag + b" NO [PRIVACYREQUIRED] Use STARTTLS first.")
        elif name == b"LOGIN":
            self._tag, self._login, self._login_start = tag, bytearray(), start.args_offset
            self._mode = _Mode.LOGIN
            self._login_part(line.data, line)
        elif name == b"AUTHENTICATE":
            self._authenticate(line, tag, line_body(line.data)[start.args_offset :].split())
        elif line.literal is not None:
            self._refuse(line, tag + b" BAD No literals before login but LOGIN's.")
        elif name == b"CAPABILITY":
            self._out += b"* CAPABILITY " + self.capabilities() + b"\r\n"
            self._out += tag + b" OK Capability completed.\r\n"
        elif name == b"NOOP":
            self._out += tag + b" OK NOOP completed.\r\n"
        elif name == b"ID":
            self._out += b'* ID ("name" "imapmoveproxy")\r\n' + tag + b" OK ID completed.\r\n"
        elif name == b"LOGOUT":
            self._out += b"* BYE Logging out.\r\n" + tag + b" OK Logout completed.\r\n"
            self._mode = _Mode.CLOSED
            self._effects.append(Close("client logged out"))
        elif name == b"STARTTLS":
            self._starttls(tag)
        else:
            self._out += tag + b" BAD Log in first (LOGIN or AUTHENTICATE PLAIN).\r\n"

    def _starttls(self, tag: bytes) -> None:
        if not self._settings.tls_offered or self.tls:
            state = b"already active" if self.tls else b"not available"
            self._out += tag + b" BAD STARTTLS " + state + b".\r\n"
            return
        self._out += tag + b" OK Begin TLS negotiation now.\r\n"
        self._mode = _Mode.WAITING
        self._effects.append(StartTls())
        # What the client sent after STARTTLS in plaintext is thrown away (RFC 9051 §6.2.1).
        self.framer = Framer(self._settings.max_line)

    def _login_part(self, data: bytes | memoryview, line: Line | None) -> None:
        """More of a LOGIN: its first line, a literal chunk, or a line after a literal."""
        self._login += data
        owed = 0 if line is None else line.literal or 0
        if len(self._login) + owed > MAX_LOGIN:
            self._login = bytearray()
            self._refuse(line, self._tag + b" BAD LOGIN too long.")
            return
        if line is None:
            return
        if line.literal is None:
            credentials = login_credentials(bytes(self._login), self._login_start)
            self._login = bytearray()
            self._route(credentials, b"LOGIN")
        elif line.sync:
            self._out += b"+ Ready for literal data.\r\n"

    def _authenticate(self, line: Line, tag: bytes, arguments: list[bytes]) -> None:
        if line.literal is not None or not 1 <= len(arguments) <= 2:
            self._refuse(line, tag + b" BAD Invalid AUTHENTICATE arguments.")
        elif arguments[0].upper() != b"PLAIN":
            self.log.info("AUTHENTICATE %s refused", arguments[0][:20].decode("ascii", "replace"))
            self._out += tag + b" NO [CANNOT] Unsupported authentication mechanism.\r\n"
        elif len(arguments) == 2:
            self._tag = tag
            self._route(plain_credentials(b"" if arguments[1] == b"=" else arguments[1]), b"PLAIN")
        else:
            self._tag = tag
            self._mode = _Mode.PLAIN
            self._out += b"+ \r\n"

    def _plain_response(self, line: Line) -> None:
        if line.literal is not None:
            self._mode = _Mode.COMMAND
            self._refuse(line, self._tag + b" BAD Invalid AUTHENTICATE response.")
        elif line_body(line.data).strip() == b"*":
            self._mode = _Mode.COMMAND
            self._out += self._tag + b" BAD Authentication cancelled.\r\n"
        else:
            self._route(plain_credentials(line.data), b"PLAIN")

    def _route(self, credentials: Credentials | None, what: bytes) -> None:
        if credentials is None or not credentials.login:
            self._mode = _Mode.COMMAND
            self._out += self._tag + b" BAD Invalid " + what + b" arguments.\r\n"
            return
        self._mode = _Mode.WAITING
        self._effects.append(RouteLogin(self._tag, credentials))

    def _refuse(self, line: Line | None, reply: bytes) -> None:
        """Answer a command and skip whatever else of it is still to come (``line`` None:
        refused inside a literal)."""
        self._out += reply + b"\r\n"
        if line is None:
            self._mode = _Mode.DISCARD  # the rest of the literal, and the command's lines
        elif line.literal is None:
            self._mode = _Mode.COMMAND
        elif line.sync:
            self.framer.cancel_literal()  # refused: the client will not send its literal
            self._mode = _Mode.COMMAND
        else:
            self._mode = _Mode.DISCARD  # a non-synchronizing literal comes anyway

    def _close(self, reason: str, bye: bytes) -> None:
        self.log.info("closing connection: %s", reason)
        self._out += b"* BYE " + bye + b"\r\n"
        self._mode = _Mode.CLOSED
        self._effects.append(Close(reason))
