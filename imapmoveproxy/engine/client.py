"""The client's side of a session: its commands, read one event of the framer at a time.

Every client command is forwarded unchanged, except those the proxy answers or executes itself:
MOVE (collected whole, executed by the proxy), COMPRESS (done by the proxy after login, when
offered; NO otherwise), STARTTLS (done by the proxy; refused once compressed),
LOGIN/AUTHENTICATE before TLS when TLS is required (NO), ID (its x- fields removed), a command
line that is not one (BAD). What follows the first line of a command (literal bytes, lines after
a literal) goes where the command went: :class:`Mode`.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Protocol

from ..move.request import MoveRequest, parse_move
from ..move.rollback import Credentials
from ..wire import specialuse
from ..wire.capabilities import Capabilities
from ..wire.framing import Framer, Line, LineTooLong, Literal
from ..wire.grammar import CommandStart, is_tag, line_body, parse_command_start, strip_x_fields
from .inflight import AUTH_COMMANDS, CommandsInFlight, CredentialCapture
from .output import Output

if TYPE_CHECKING:
    from .moves import MoveRunner
    from .offer import Offer
    from .settings import Counters, SessionSettings

MOVE_COMMANDS = (b"MOVE", b"UID MOVE")
# Cyrus's older name for MOVE, which it executes even when MOVE is hidden: where the proxy
# emulates MOVE, an XMOVE is emulated too (under the same lock, log and metrics).
EMULATED_COMMANDS = (*MOVE_COMMANDS, b"XMOVE", b"UID XMOVE")
_DATA_COMMANDS = (b"AUTHENTICATE", b"IDLE")  # client lines after these are not commands
_MAX_INVALID = 10  # invalid command lines in a row that end the connection (as in Dovecot)


class Mode(enum.Enum):
    """What happens to the rest of the client command being received."""

    FORWARD = "forward"
    COLLECT = "collect"  # a MOVE the proxy will execute itself
    DISCARD = "discard"  # a command already answered with BAD; its remaining bytes are dropped


class MoveCollector:
    """A MOVE's lines and its mailbox literal, until the command is complete."""

    __slots__ = ("_lines", "_literal", "_literals", "_max_literal")

    def __init__(self, max_literal: int) -> None:
        self._max_literal = max_literal
        self._lines: list[bytes] = []
        self._literal = bytearray()
        self._literals = 0

    def line(self, line: Line) -> bool:
        """Take a line of the MOVE; False if it announces a literal the proxy refuses."""
        self._lines.append(line.data)
        if line.literal is not None:
            self._literals += 1
            return self._literals == 1 and line.literal <= self._max_literal
        return True

    def literal(self, data: bytes | memoryview) -> None:
        self._literal += data

    @property
    def tag(self) -> bytes:
        return self._lines[0].split(b" ", 1)[0]

    def request(self) -> MoveRequest:
        """Parse the collected command (call once its last line is in), and start over."""
        first, *rest = self._lines
        literal = bytes(self._literal) if self._literals else None
        request = parse_move(first, literal, rest[0] if literal is not None else b"")
        self.clear()
        return request

    def clear(self) -> None:
        self._lines, self._literal, self._literals = [], bytearray(), 0


class ClientHost(Protocol):
    """What the client's commands need of their session beyond its parts: the state they
    read, the state they change (each through a method of the session), the end of the
    connection."""

    @property
    def tls(self) -> bool: ...

    @property
    def caps(self) -> Capabilities | None: ...

    @property
    def wants_client_data(self) -> bool: ...

    @property
    def login_settling(self) -> bool: ...

    @property
    def authenticated(self) -> bool: ...

    @property
    def compressed(self) -> bool: ...

    def upstream_capabilities(self, caps: Capabilities | None) -> None: ...

    def request_tls(self) -> None: ...

    def start_compression(self) -> None: ...

    def close(self, reason: str, bye: bytes, level: int = logging.WARNING) -> None: ...


class ClientInput:
    """Reads the client's commands and decides, for each, where it goes."""

    __slots__ = (
        "_capture", "_collector", "_counters", "_data_idle", "_data_tag", "_forwarding", "_host",
        "_inflight", "_invalid", "_literal_tag", "_log", "_mode", "_moves", "_offer", "_output",
        "_settings", "framer", "held",
    )  # fmt: skip

    def __init__(
        self,
        host: ClientHost,
        settings: SessionSettings,
        output: Output,
        inflight: CommandsInFlight,
        moves: MoveRunner,
        offer: Offer,
        counters: Counters,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._host, self._settings, self._output, self._inflight = host, settings, output, inflight
        self._moves, self._offer, self._counters, self._log = moves, offer, counters, log
        self.framer = Framer(settings.max_line)
        self._mode = Mode.FORWARD
        self._collector = MoveCollector(settings.max_mailbox_literal)
        master = settings.rollback_master if settings.rollback == "master" else None
        self._capture = CredentialCapture(master)
        self._data_tag: bytes | None = None  # AUTHENTICATE/IDLE in progress
        self._data_idle = False
        self._invalid = 0  # invalid command lines in a row
        self.held: Line | None = None  # a command waiting for its tag to be unambiguous
        self._forwarding: bytes = b""  # tag of the client command being forwarded
        self._literal_tag: bytes | None = None  # its synchronizing literal awaits the server's "+"

    def process(self) -> None:
        """Look at the client's commands while the session wants them."""
        host = self._host
        while not self.framer.exhausted and host.wants_client_data:
            try:
                event = self.framer.next_event()
            except LineTooLong:
                host.close("client line too long", b"Line too long.")
                return
            if event is None:
                return
            if isinstance(event, Literal):
                self._fragment(event.data)
            elif event.first:
                self._command(event)
            else:
                self._fragment(event.data, event)

    def completed(self, tag: bytes) -> None:
        """A client command with ``tag`` had its tagged reply."""
        if tag == self._literal_tag:  # refused before its literal: none will come
            self._literal_tag = None
            self.framer.cancel_literal()
            self._mode = Mode.FORWARD
        if tag == self._data_tag:
            self._data_tag = None
        if tag == self._offer.selecting:
            self._offer.selecting = None
        self._release_held()

    def retry_held(self) -> None:
        """Look again at the command held back, if it may go now."""
        self._release_held()

    def continued(self) -> None:
        """The server's ``+`` for the client: it may send its literal now."""
        self._literal_tag = None

    def _command(self, line: Line) -> None:
        self._capture.cut_short()
        if self._data_tag is not None:  # an AUTHENTICATE response or IDLE's DONE: data
            self._output.to_upstream += line.data
            self._keep(self._capture.data_line(line.data))
            if self._data_idle:
                self._data_tag = None
            return
        start = parse_command_start(line.data)
        if start is None:
            self._invalid_command(line)
            return
        self._invalid = 0
        if self._inflight.in_doubt(start) or self._host.login_settling:
            # Looked at again once the other command with its tag completes, or (with a
            # journal) once the login's reply has gone to the client: the journal's recovery
            # runs on this very connection in between.
            self.held = line
            return
        name, tag = start.name, start.tag
        self._counters.commands += 1
        if name in EMULATED_COMMANDS and self._offer.executes_move():
            self._collect_move(line)
        elif name in MOVE_COMMANDS:  # the upstream has MOVE, or no UIDPLUS and "refuse"
            self._moves.forwarded(name, line.data[start.args_offset :], self._host.caps)
            self._forward(line, start)
        elif name == b"COMPRESS":
            self._compress(line, start)
        elif name == b"STARTTLS":
            self._starttls(line, tag)
        elif name == b"LIST" and self._offer.adds_special_use(self._host.caps):
            self._list(line, start)
        elif name == b"ID":  # with or without the proxy's own ID before it
            self._client_id(line, start)
        elif name in AUTH_COMMANDS and self._settings.require_tls and not self._host.tls:
            self._log.info("%s before STARTTLS refused", name.decode())
            self._reject(line, tag + b" NO [PRIVACYREQUIRED] Use STARTTLS first.\r\n")
        else:
            self._forward(line, start)

    def _invalid_command(self, line: Line) -> None:
        self._invalid += 1
        if self._invalid >= _MAX_INVALID:
            self._host.close("too many invalid commands", b"Too many invalid IMAP commands.")
            return
        tag = line.data.split(b" ", 1)[0]
        tag = tag if is_tag(tag) and b"\n" not in tag else b"*"
        self._log.debug("bad command line from client")
        self._reject(line, tag + b" BAD Error in IMAP command received by server.\r\n")

    def _release_held(self) -> None:
        line = self.held
        if line is None:
            return
        start = parse_command_start(line.data)
        assert start is not None  # held only after it parsed
        if not self._inflight.in_doubt(start) and not self._host.login_settling:
            self.held = None
            self._command(line)

    def _compress(self, line: Line, start: CommandStart) -> None:
        """COMPRESS DEFLATE (RFC 4978): the OK is the last byte sent as it is."""
        host, tag = self._host, start.tag
        mechanism = line_body(line.data)[start.args_offset :].strip().upper()
        if not self._settings.compress:
            reply = b"NO COMPRESS is not available through this proxy."
        elif host.compressed:
            reply = b"NO [COMPRESSIONACTIVE] DEFLATE is active already."
        elif not host.authenticated:
            reply = b"BAD COMPRESS is valid only after login."
        elif line.literal is not None or not mechanism:
            reply = b"BAD Expected COMPRESS DEFLATE."
        elif mechanism != b"DEFLATE":
            reply = b"NO Unknown compression mechanism."
        elif self._inflight.count or not self._output.replies_at_once:
            reply = b"BAD Finish the other commands before COMPRESS."
        else:
            self._output.reply(tag + b" OK DEFLATE active.\r\n")
            host.start_compression()
            return
        self._reject(line, tag + b" " + reply + b"\r\n")

    def _starttls(self, line: Line, tag: bytes) -> None:
        if self._host.compressed:  # TLS would have to go under the compression (RFC 4978 §3)
            self._reject(line, tag + b" BAD STARTTLS is not allowed after COMPRESS.\r\n")
        elif not self._settings.tls_offered or self._host.tls:
            state = "already active" if self._host.tls else "not available through this proxy"
            self._reject(line, tag + b" BAD STARTTLS " + state.encode() + b".\r\n")
        elif self._inflight.count or line.literal is not None:
            self._reject(line, tag + b" BAD Finish the other commands before STARTTLS.\r\n")
        else:
            self._output.reply(tag + b" OK Begin TLS negotiation now.\r\n")
            self._host.request_tls()
            # Whatever the client sent after STARTTLS in plaintext is thrown away (RFC 9051
            # §6.2.1): it could have been injected by a man in the middle.
            self.framer = Framer(self._settings.max_line)

    def _list(self, line: Line, start: CommandStart) -> None:
        """A LIST with the SPECIAL-USE selection or return option the upstream cannot answer:
        sent on as a plain LIST, alone (held until nothing else is in flight), so that every LIST
        response until its tagged reply is its own."""
        caps = self._host.caps
        plain = None
        if line.literal is None:
            list_extended = caps is not None and b"LIST-EXTENDED" in caps.names
            plain = specialuse.plain_list(line.data, start.args_offset, list_extended)
        if plain is None:
            self._forward(line, start)
        elif self._inflight.count:
            self.held = line
        else:
            new_line, selection = plain
            if selection:
                self._offer.selecting = start.tag
            self._forward(Line(new_line, True), start)

    def _client_id(self, line: Line, start: CommandStart) -> None:
        """The client's own ID goes on without any x- field it tried to set: a server that
        trusts the proxy's address would believe the client's x-originating-ip otherwise."""
        if line.literal is not None:
            self._reject(line, start.tag + b" BAD ID with literals is not supported here.\r\n")
            return
        fields = strip_x_fields(line_body(line.data)[start.args_offset :])
        if fields is None:
            self._reject(line, start.tag + b" BAD Invalid ID arguments.\r\n")
            return
        new_line = line.data[: start.args_offset] + b" " + fields + b"\r\n"
        self._forward(Line(new_line, True), start)

    def _forward(self, line: Line, start: CommandStart) -> None:
        self._mode = Mode.FORWARD
        self._forwarding = start.tag
        self._note_literal(line)
        self._output.to_upstream += line.data
        self._inflight.sent(line, start)
        if start.name in AUTH_COMMANDS:
            self._host.upstream_capabilities(None)  # unknown: they change when authenticated
            if self._settings.rollback != "off" or self._settings.journal:
                self._keep(self._capture.command(line, start))
        if start.name in _DATA_COMMANDS:
            self._data_tag = start.tag
            self._data_idle = start.name == b"IDLE"

    def _fragment(self, data: bytes | memoryview, line: Line | None = None) -> None:
        """A literal chunk, or a line continuing a command after a literal."""
        if self._mode is Mode.FORWARD:
            self._output.to_upstream += data
            if line is not None:
                self._note_literal(line)
            self._keep(self._capture.fragment(data, line))
        elif self._mode is Mode.COLLECT:
            if line is None:
                self._collector.literal(data)
            else:
                self._collect_move(line)
        elif line is not None:  # a line of a command already refused
            self._skip_rest(line)

    def _note_literal(self, line: Line) -> None:
        """A forwarded line announcing a synchronizing literal: the client sends it only after
        the server's "+"; if the server answers the command instead, it never comes."""
        if line.literal is not None and line.sync:
            self._literal_tag = self._forwarding

    def _keep(self, captured: tuple[bytes, Credentials] | None) -> None:
        """Credentials captured for the login in flight under their tag."""
        if captured is not None:
            self._inflight.logs_in_with(*captured)

    def _collect_move(self, line: Line) -> None:
        self._mode = Mode.COLLECT
        if not self._collector.line(line):
            tag = self._collector.tag
            self._collector.clear()
            self._log.info("MOVE from client with an oversized or extra literal refused")
            self._reject(line, tag + b" BAD Mailbox name too long or malformed.\r\n")
        elif line.literal is not None:
            if line.sync:
                self._output.reply(b"+ Ready for literal data\r\n")
        else:
            self._mode = Mode.FORWARD
            self._moves.collected(self._collector.request())

    def _reject(self, line: Line, reply: bytes) -> None:
        """Answer a command the proxy will not forward and skip whatever else belongs to it."""
        self._output.reply(reply)
        self._skip_rest(line)

    def _skip_rest(self, line: Line) -> None:
        """After ``line`` of a refused command: what of the command is still to come."""
        if line.literal is None:
            self._mode = Mode.FORWARD  # nothing: the next line is a new command
        elif line.sync:
            self.framer.cancel_literal()  # refused: the client will not send its literal
            self._mode = Mode.FORWARD
        else:
            self._mode = Mode.DISCARD  # a non-synchronizing literal comes anyway: drop it
