"""One proxied IMAP connection, sans-IO: client bytes and upstream bytes in, bytes for each out.

The session streams everything through untouched except what it must understand:

* capability lists, rewritten wherever they appear (:mod:`.capabilities`);
* the client's command boundaries and tags, to know when earlier commands have completed;
* AUTHENTICATE and IDLE, whose client lines are data rather than commands;
* MOVE and UID MOVE, collected whole and handed to :class:`.move.MoveEmulation`;
* the selected mailbox's name (for the MOVE's rights check) and the credentials of LOGIN and
  AUTHENTICATE PLAIN, kept in memory for a rollback's second session (:mod:`.rollback`);
* COMPRESS, which a terminating proxy cannot honour, answered NO; STARTTLS, done by the proxy
  itself when it has a certificate (the caller runs the handshake);
* LOGIN/AUTHENTICATE before TLS when TLS is required, and ID (the proxy's own goes first, with
  the client's address; the client's loses its x- fields);
* upstream replies it cannot place, which end the connection.

Every response from the upstream is relayed unchanged except capability lists and what the
proxy's own commands cause; runs of plain untagged responses are relayed in one piece.

MOVE is a barrier: it starts once every earlier command has its tagged reply, and client bytes
that follow it are not looked at (and the caller stops reading them) until the MOVE's tagged reply
has been queued for the client.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass, field

from . import capabilities
from .capabilities import Capabilities
from .copyflags import FlagCheck, FlagRecorder, Result
from .framing import Framer, Line, LineTooLong, Literal
from .inflight import AUTH_COMMANDS, CommandsInFlight, CredentialCapture
from .move import (
    MoveEmulation,
    MoveRequest,
    RollbackRequest,
    UpstreamCommand,
    parse_move,
    policy_for,
)
from .proxyproto import Endpoint
from .rollback import Credentials
from .syntax import (
    CommandStart,
    Tagged,
    code_name,
    is_tag,
    line_body,
    parse_command_start,
    parse_tagged,
    strip_x_fields,
)

log = logging.getLogger(__name__)

_MOVE_COMMANDS = (b"MOVE", b"UID MOVE")
_DATA_COMMANDS = (b"AUTHENTICATE", b"IDLE")  # client lines after these are not commands
_MAX_INVALID = 10  # invalid command lines in a row that end the connection (as in Dovecot)
_NOT_UNTAGGED = re.compile(rb"\n[^*]")
_EXPUNGE_LINE = re.compile(rb"\* \d+ EXPUNGE\r\n")
# Inside a line, what makes the session look at it by itself: a literal announcement, a response
# code (capabilities, UIDVALIDITY, READ-ONLY...), BYE, EXISTS, RECENT, imap4d's EXPUNGED
# (rewritten) and (at a line start) CAPABILITY.
_LOOK_AT = (
    b"}\r\n", b"}\n", b"[", b"* BYE", b" EXISTS\r\n", b" RECENT\r\n", b" EXPUNGED\r\n",
    b"\n* C", b"\n* c",
)  # fmt: skip
# GNU Mailutils imap4d's non-standard answer to EXPUNGE, which clients ignore (their message
# counts drift); the proxy sends it on as the ``* n EXPUNGE`` it stands for.
_EXPUNGED_RE = re.compile(rb"\* (\d+) EXPUNGED\r?\n$", re.IGNORECASE)


_NOT_EXPUNGE = re.compile(rb"\n(?!\* \d+ EXPUNGE\r\n)")


def _first_non_expunge(buf: bytes | bytearray, start: int) -> int:
    """Where the first line that is not ``* n EXPUNGE`` lies (``len(buf)``: none)."""
    if not _EXPUNGE_LINE.match(buf, start):
        return start
    match = _NOT_EXPUNGE.search(buf, start)
    return len(buf) if match is None else match.start() + 1


def _first_stop(buf: bytes | bytearray, start: int) -> int:
    """Where the first line the session must see alone begins or lies (``len(buf)``: none).

    A run of plain untagged responses (a FETCH flood, say) is relayed in one piece; found with
    a few ``bytes.find`` calls, this costs far less than looking at each line in Python.
    """
    if buf[start : start + 1] != b"*" or buf[start : start + 3] in (b"* C", b"* c"):
        return start
    stop = len(buf)
    match = _NOT_UNTAGGED.search(buf, start, stop)
    if match is not None:
        stop = match.start() + 1
    for needle in _LOOK_AT:
        found = buf.find(needle, start, stop)
        if found >= 0:
            stop = found
    return stop


SHUTDOWN_BYE = b"[UNAVAILABLE] Server shutting down, please reconnect."
_UIDVALIDITY_RE = re.compile(rb"\* OK \[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_COUNT_RE = re.compile(rb"\* (\d+) (EXISTS|RECENT)\r?\n$", re.IGNORECASE)


# The outcome counted for a MOVE refused because its lock could not be had, by response code.
LOCK_REFUSALS = {b"INUSE": "lock-timeout", b"UNAVAILABLE": "lock-unavailable"}


@dataclass(slots=True, frozen=True)
class SessionSettings:
    max_line: int = 65536  # longest command line accepted from the client
    # Upstream lines are long when they list many messages (SEARCH of 100,000 UIDs is ~600 KB).
    max_upstream_line: int = 16 * 1024 * 1024
    max_mailbox_literal: int = 4096  # longest mailbox name a MOVE may carry as a literal
    max_set_bytes: int = 8192  # longest UID set the proxy puts in one upstream command
    guarded: bool = False  # emulate MOVE without UIDPLUS too (the "guarded" policy)
    tls_offered: bool = False  # the proxy has a certificate: STARTTLS on plain connections
    require_tls: bool = False  # no LOGIN/AUTHENTICATE before TLS
    forward_id: bool = False  # tell an upstream with ID the client's address (x-originating-ip)
    chunk_size: int = 1000  # most messages one COPY of a MOVE takes (0: no limit)
    # Credentials for the second session that removes the copies of a failed MOVE: "client"
    # (those of the client's LOGIN or AUTHENTICATE PLAIN), "master" (rollback_master's, for the
    # client's user) or "off".
    rollback: str = "client"
    rollback_master: tuple[bytes, bytes] = (b"", b"")  # (login, password)
    # Bytes the session lets wait for either peer before it stops reading client commands: the
    # caller stops reading from a side whose output it has not been able to deliver (backpressure).
    backlog: int = 256 * 1024


class Mode(enum.Enum):
    """What happens to the rest of the client command being received."""

    FORWARD = "forward"
    COLLECT = "collect"  # a MOVE the proxy will execute itself
    DISCARD = "discard"  # a command already answered with BAD; its remaining bytes are dropped


@dataclass(slots=True, frozen=True)
class FinishedMove:
    """A MOVE answered, for the metrics."""

    policy: str
    outcome: str
    rollback: str = ""  # "", "done", "failed", "impossible"
    duplicates: int = 0  # messages left in both mailboxes
    expunge_retries: int = 0  # UID EXPUNGEs that removed too few and were tried once more


@dataclass(slots=True)
class Counters:
    bytes_from_client: int = 0
    bytes_from_upstream: int = 0
    commands: int = 0
    moves: dict[str, int] = field(default_factory=dict)
    expunged_rewritten: int = 0  # imap4d's "* n EXPUNGED" relayed as "* n EXPUNGE"


class Session:
    """The protocol state of one client connection and its upstream connection."""

    def __init__(
        self,
        settings: SessionSettings | None = None,
        conn_id: str = "-",
        tls: bool = False,
        addresses: tuple[Endpoint, Endpoint] | None = None,
    ) -> None:
        self.settings = settings or SessionSettings()
        self.conn_id = conn_id
        self.tls = tls  # the client's connection is encrypted
        self.starttls_requested = False  # the caller must now start TLS with the client
        self._addresses = addresses  # the client's and the address it connected to
        self.counters = Counters()
        self.close_reason: str | None = None  # set when the connection must end
        self._log = logging.LoggerAdapter(log, {"conn": conn_id})
        self._client = Framer(self.settings.max_line)
        self._upstream = Framer(self.settings.max_upstream_line)
        self._to_client = bytearray()
        self._to_upstream = bytearray()
        self._deferred = bytearray()  # proxy replies waiting for the upstream response to end
        self._caps: Capabilities | None = None  # None: unknown in the current state
        self._greeted = False
        self._inflight = CommandsInFlight()
        self._data_tag: bytes | None = None  # AUTHENTICATE/IDLE in progress
        self._data_idle = False
        self._mode = Mode.FORWARD
        self._move_lines: list[bytes] = []
        self._move_literal = bytearray()
        self._move_literal_count = 0
        self._waiting_move: MoveRequest | None = None
        self._move: MoveEmulation | None = None
        self._continuation: list[bytes] = []  # segments of our command waiting for "+"
        self._relay = True  # whether the upstream response being received goes to the client
        self._tag_counter = 0
        self._upstream_said_bye = False
        self._read_only = False  # the selected mailbox was opened read-only (EXAMINE)
        self._uidvalidity = b""
        self._exists: int | None = None  # messages in the selected mailbox, at most
        self._recent: int | None = None  # the RECENT count the client was last shown
        self._shutting_down = False
        self._finished_moves: list[FinishedMove] = []  # for the metrics
        self._id_tag: bytes | None = None  # the proxy's own ID command, awaiting its reply
        self.authenticated = False
        self._selected: bytes | None = None  # the selected mailbox's name, when known
        self._rights: bytes | None = None  # MYRIGHTS on the selected mailbox, once learned
        self._capture = CredentialCapture(
            self.settings.rollback_master if self.settings.rollback == "master" else None
        )
        self._credentials: Credentials | None = None  # for a rollback's second session
        self._rollback_running = False
        self._flag_checks: list[FlagCheck] = []  # for the caller to run after their MOVE
        self._invalid = 0  # invalid command lines in a row
        self._held: Line | None = None  # a command waiting for its tag to be unambiguous
        self._forwarding: bytes = b""  # tag of the client command being forwarded
        self._literal_tag: bytes | None = None  # its synchronizing literal awaits the server's "+"

    # ------------------------------------------------------------------ caller interface

    def receive_client(self, data: bytes | bytearray) -> None:
        self.counters.bytes_from_client += len(data)
        self._client.feed(data)
        self._process_client()

    def receive_upstream(self, data: bytes | bytearray) -> None:
        self.counters.bytes_from_upstream += len(data)
        self._upstream.feed(data)
        self._process_upstream()
        if self._move is None and self._waiting_move is None:
            self._process_client()

    def take_to_client(self) -> bytearray:
        data, self._to_client = self._to_client, bytearray()
        return data

    def take_to_upstream(self) -> bytearray:
        data, self._to_upstream = self._to_upstream, bytearray()
        return data

    def tls_established(self) -> None:
        """The TLS handshake the session asked for with :attr:`starttls_requested` is done."""
        self.tls = True
        self.starttls_requested = False

    def login_timed_out(self) -> None:
        """The client did not authenticate in the time allowed: end the connection."""
        if not self.authenticated and self.close_reason is None:
            self._close("no login in time", b"Autologout: no login in time.", logging.INFO)

    @property
    def line_pending(self) -> bool:
        """The client has sent the start of a command line, and not its end."""
        return self._client.in_line

    def line_timed_out(self) -> None:
        """The client did not finish a command line in the time allowed: end the connection."""
        if self.close_reason is None:
            self._close("client line not finished in time", b"Line not finished in time.")

    def shutdown(self) -> None:
        """The proxy is stopping: a MOVE in progress finishes first, then the client gets BYE."""
        self._shutting_down = True
        if not self.moving:
            self._close("proxy shutting down", SHUTDOWN_BYE, logging.INFO)

    def upstream_closed(self) -> None:
        """The upstream connection ended; tell the client unless the upstream already did."""
        if not self._upstream_said_bye and self.close_reason is None:
            during = " during a MOVE" if self.moving else ""
            self._close(f"upstream closed the connection{during}", b"Mail server connection lost.")

    @property
    def wants_client_data(self) -> bool:
        """Whether the session looks at the client's next command now. Not while a MOVE holds
        back the client's later commands, nor while the output of earlier ones waits for a
        peer that does not read it: the client's bytes then wait in the framer (bounded by
        :attr:`client_buffered`, which the caller checks before reading more)."""
        return (
            self._greeted  # the proxy's ID, if any, must precede the client's first command
            and self._move is None
            and self._waiting_move is None
            and self.close_reason is None
            and not self._shutting_down
            and not self.starttls_requested
            and self._held is None
            and self.pending_to_client < self.settings.backlog
            and len(self._to_upstream) < self.settings.backlog
        )

    @property
    def pending_to_client(self) -> int:
        """Bytes queued for the client, the replies held back behind a response included."""
        return len(self._to_client) + len(self._deferred)

    @property
    def ready_to_client(self) -> int:
        """Bytes :meth:`take_to_client` would return now."""
        return len(self._to_client)

    @property
    def pending_to_upstream(self) -> int:
        return len(self._to_upstream)

    @property
    def client_buffered(self) -> int:
        """Client bytes received and not yet looked at."""
        return self._client.buffered

    def resume(self) -> None:
        """Output has been delivered: look at client commands held back by the backlog."""
        if self._move is None and self._waiting_move is None:
            self._process_client()

    @property
    def move_ready(self) -> bool:
        """A MOVE waits only for :meth:`start_move`: every earlier command has completed.

        The caller first takes the lock for :attr:`move_key`, so that two connections never
        emulate MOVEs out of the same mailbox at once: both COPYs could succeed before either
        expunges, leaving a message in two targets (a native MOVE does no better: Dovecot 2.3,
        four sessions moving the same messages, left each of them four times).
        """
        return self._waiting_move is not None and not self._inflight.count and self._move is None

    @property
    def move_key(self) -> bytes:
        """Identifies the selected mailbox (its UIDVALIDITY) for serialising MOVEs."""
        return self._uidvalidity

    @property
    def reply_pending(self) -> bool:
        """A reply of the proxy's own waits for the upstream response being relayed to end."""
        return bool(self._deferred)

    @property
    def move_running(self) -> bool:
        """A MOVE has been started and has not had its tagged reply yet."""
        return self._move is not None

    @property
    def move_waits_for_upstream(self) -> bool:
        """A MOVE waits for a reply of the client's upstream connection (not for a second
        session): the caller bounds that wait in time (:meth:`move_stalled`)."""
        return self._move is not None and not self._rollback_running

    def move_stalled(self) -> None:
        """The upstream has not answered the running MOVE in time: abandon the connection. What
        has been done so far stays as it is (at worst messages in both mailboxes, none lost)."""
        self._close(
            "the mail server stopped answering during a MOVE",
            b"[UNAVAILABLE] The mail server stopped answering.",
        )

    @property
    def moving(self) -> bool:
        """A MOVE has been received and has not had its tagged reply yet."""
        return self._move is not None or self._waiting_move is not None

    # ------------------------------------------------------------------ client -> upstream

    def _process_client(self) -> None:
        framer = self._client
        while self.wants_client_data:
            try:
                event = framer.next_event()
            except LineTooLong:
                self._close("client line too long", b"Line too long.")
                return
            if event is None:
                return
            if isinstance(event, Literal):
                self._client_fragment(event.data)
            elif event.first:
                self._client_command(event)
            else:
                self._client_fragment(event.data, event)

    def _client_command(self, line: Line) -> None:
        self._capture.cut_short()
        if self._data_tag is not None:  # an AUTHENTICATE response or IDLE's DONE: data
            self._to_upstream += line.data
            self._keep(self._capture.data_line(line.data))
            if self._data_idle:
                self._data_tag = None
            return
        start = parse_command_start(line.data)
        if start is None:
            self._invalid += 1
            if self._invalid >= _MAX_INVALID:
                self._close("too many invalid commands", b"Too many invalid IMAP commands.")
                return
            tag = line.data.split(b" ", 1)[0]
            tag = tag if is_tag(tag) and b"\n" not in tag else b"*"
            self._log.debug("bad command line from client")
            self._reject(line, tag + b" BAD Error in IMAP command received by server.\r\n")
            return
        self._invalid = 0
        if self._inflight.in_doubt(start):
            self._held = line  # looked at again once the other command with its tag completes
            return
        name = start.name
        self.counters.commands += 1
        if name in _MOVE_COMMANDS and self._collects_move():
            self._collect_move(line)
        elif name in _MOVE_COMMANDS:  # the upstream has MOVE, or no UIDPLUS and "refuse"
            assert self._caps is not None
            policy = "native" if self._caps.native_move else "refused"
            sequence_set = line.data[start.args_offset :].split(b" ", 2)[1:2]
            self._count_move(name, b"".join(sequence_set), policy, "forwarded")
            self._forward_command(line, start)
        elif name == b"COMPRESS":
            self._reject(line, start.tag + b" NO COMPRESS is not available through this proxy.\r\n")
        elif name == b"STARTTLS":
            self._starttls(line, start.tag)
        elif name == b"ID":  # with or without the proxy's own ID before it
            self._client_id(line, start)
        elif name in AUTH_COMMANDS and self.settings.require_tls and not self.tls:
            self._log.info("%s before STARTTLS refused", name.decode())
            self._reject(line, start.tag + b" NO [PRIVACYREQUIRED] Use STARTTLS first.\r\n")
        else:
            self._forward_command(line, start)

    def _release_held(self) -> None:
        line = self._held
        if line is None:
            return
        start = parse_command_start(line.data)
        assert start is not None  # held only after it parsed
        if not self._inflight.in_doubt(start):
            self._held = None
            self._client_command(line)

    def _starttls(self, line: Line, tag: bytes) -> None:
        if not self.settings.tls_offered or self.tls:
            state = "already active" if self.tls else "not available through this proxy"
            self._reject(line, tag + b" BAD STARTTLS " + state.encode() + b".\r\n")
        elif self._inflight.count or line.literal is not None:
            self._reject(line, tag + b" BAD Finish the other commands before STARTTLS.\r\n")
        else:
            self._reply(tag + b" OK Begin TLS negotiation now.\r\n")
            self.starttls_requested = True
            # Whatever the client sent after STARTTLS in plaintext is thrown away (RFC 9051
            # §6.2.1): it could have been injected by a man in the middle.
            self._client = Framer(self.settings.max_line)

    def _send_id(self) -> None:
        """Tell the upstream who the client is, before the client's first command (Dovecot
        believes it from addresses in its login_trusted_networks)."""
        assert self._addresses is not None
        (client_ip, client_port), (local_ip, local_port) = self._addresses
        fields = (
            f'"x-originating-ip" "{client_ip}" "x-originating-port" "{client_port}" '
            f'"x-connected-ip" "{local_ip}" "x-connected-port" "{local_port}"'
        )
        self._id_tag = self._new_tag()
        self._to_upstream += self._id_tag + b" ID (" + fields.encode() + b")\r\n"

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
        self._forward_command(Line(new_line, True), start)

    def _forward_command(self, line: Line, start: CommandStart) -> None:
        self._mode = Mode.FORWARD
        self._forwarding = start.tag
        self._note_literal(line)
        self._to_upstream += line.data
        self._inflight.sent(line, start)
        if start.name in AUTH_COMMANDS:
            self._caps = None  # the capabilities change with the authentication state
            if self.settings.rollback != "off":
                self._keep(self._capture.command(line, start))
        if start.name in _DATA_COMMANDS:
            self._data_tag = start.tag
            self._data_idle = start.name == b"IDLE"

    def _client_fragment(self, data: bytes | memoryview, line: Line | None = None) -> None:
        """A literal chunk, or a line continuing a command after a literal."""
        if self._mode is Mode.FORWARD:
            self._to_upstream += data
            if line is not None:
                self._note_literal(line)
            self._keep(self._capture.fragment(data, line))
        elif self._mode is Mode.COLLECT:
            if line is None:
                self._move_literal += data
            else:
                self._collect_move(line)
        elif line is not None:  # a line of a command already refused
            self._skip_rest(line)

    def _note_literal(self, line: Line) -> None:
        """A forwarded line announcing a synchronizing literal: the client sends it only after
        the server's "+"; if the server answers the command instead, it never comes."""
        if line.literal is not None and line.sync:
            self._literal_tag = self._forwarding

    # ------------------------------------------------------------------ remembered state

    def _keep(self, captured: tuple[bytes, Credentials] | None) -> None:
        """Credentials captured for the login in flight under their tag."""
        if captured is not None:
            self._inflight.logs_in_with(*captured)

    def _reject(self, line: Line, reply: bytes) -> None:
        """Answer a command the proxy will not forward and skip whatever else belongs to it."""
        self._reply(reply)
        self._skip_rest(line)

    def _skip_rest(self, line: Line) -> None:
        """After ``line`` of a refused command: what of the command is still to come."""
        if line.literal is None:
            self._mode = Mode.FORWARD  # nothing: the next line is a new command
        elif line.sync:
            self._client.cancel_literal()  # refused: the client will not send its literal
            self._mode = Mode.FORWARD
        else:
            self._mode = Mode.DISCARD  # a non-synchronizing literal comes anyway: drop it

    # ------------------------------------------------------------------ MOVE

    def _collects_move(self) -> bool:
        return self._caps is None or self._offers_move(self._caps)

    def _collect_move(self, line: Line) -> None:
        self._mode = Mode.COLLECT
        self._move_lines.append(line.data)
        if line.literal is not None:
            self._move_literal_count += 1
            if self._move_literal_count > 1 or line.literal > self.settings.max_mailbox_literal:
                tag = self._move_lines[0].split(b" ", 1)[0]
                self._clear_collected()
                self._log.info("MOVE from client with an oversized or extra literal refused")
                self._reject(line, tag + b" BAD Mailbox name too long or malformed.\r\n")
                return
            if line.sync:
                self._reply(b"+ Ready for literal data\r\n")
            return
        first, *rest = self._move_lines
        if self._move_literal_count:
            request = parse_move(first, bytes(self._move_literal), rest[0])
        else:
            request = parse_move(first, None, b"")
        self._clear_collected()
        self._mode = Mode.FORWARD
        self._waiting_move = request

    def _clear_collected(self) -> None:
        self._move_lines = []
        self._move_literal = bytearray()
        self._move_literal_count = 0

    def start_move(self) -> None:
        """Begin the MOVE that :attr:`move_ready` announced."""
        request = self._waiting_move
        assert request is not None
        self._waiting_move = None
        if not self.authenticated:  # as a native server answers a MOVE before login
            self._reply(request.tag + b" BAD Error in IMAP command received by server.\r\n")
            self._process_client()
            return
        self._move = MoveEmulation(
            request,
            read_only=self._read_only,
            guarded=self.settings.guarded,
            new_tag=self._new_tag,
            emit=self._reply,
            max_set_bytes=self.settings.max_set_bytes,
            chunk_size=self.settings.chunk_size,
            source=self._selected,
            rights=self._rights,
            exists=self._exists,
            recent=self._recent,
            flags=FlagRecorder() if self.settings.guarded else None,
        )
        self._send(self._move.start(self._caps))
        self._after_move_step()
        if self._move is None:  # answered at once (bad syntax, read-only, no rights...)
            self._process_client()

    def refuse_move(self, code: bytes, text: bytes) -> None:
        """Answer the MOVE that :attr:`move_ready` announced with a tagged NO instead of
        starting it (its mailbox's lock could not be had), then go on with later commands."""
        request = self._waiting_move
        assert request is not None
        self._waiting_move = None
        self._reply(request.tag + b" NO [" + code + b"] " + text + b"\r\n")
        kind = b"UID MOVE" if request.uid else b"MOVE"
        outcome = LOCK_REFUSALS.get(code, "lock-refused")
        self._count_move(kind, request.sequence_set, "none", outcome)
        if self._shutting_down:
            self._close("proxy shutting down", SHUTDOWN_BYE, logging.INFO)
        self._process_client()

    def take_rollback(self) -> tuple[RollbackRequest, Credentials] | None:
        """A second session the caller must run now, reporting to :meth:`rollback_finished`."""
        move = self._move
        if move is None or move.rollback_request is None or self._rollback_running:
            return None
        assert self._credentials is not None  # see _after_move_step
        self._rollback_running = True
        return move.rollback_request, self._credentials

    def rollback_finished(self, error: str | None, missing: frozenset[int] = frozenset()) -> None:
        """The second session of :meth:`take_rollback` ended (``error`` None: it succeeded;
        ``missing``: the copies it found gone from the target already)."""
        move = self._move
        assert move is not None and self._rollback_running
        self._rollback_running = False
        if error is not None:
            self._log.warning("rollback of a failed MOVE failed: %s", error)
        self._send(move.on_rollback(error, missing=missing))
        self._after_move_step()
        if self._move is None:
            self._process_client()  # commands the client pipelined behind the MOVE

    def take_flag_checks(self) -> list[FlagCheck]:
        """Second sessions the caller must run now (they never hold back the client), each
        reporting to :meth:`flag_check_finished`."""
        checks, self._flag_checks = self._flag_checks, []
        return checks

    def flag_check_finished(self, check: FlagCheck, result: Result, detail: str) -> None:
        """The flags of a guarded MOVE's copies were checked: its log line says what became
        of them."""
        level = logging.INFO if result in (Result.KEPT, Result.RESTORED) else logging.WARNING
        because = f" ({detail})" if detail else ""
        self._log.log(level, "%s flags=%s%s", check.log_line, result.value, because)

    def _after_move_step(self) -> None:
        move = self._move
        if move is not None and move.rollback_request is not None and self._credentials is None:
            why = "off" if self.settings.rollback == "off" else "no credentials to replay"
            self._send(move.on_rollback(f"second sessions are {why}", attempted=False))
        if move is None or not move.done:
            return
        self._move = None
        self._rights = move.rights if move.outcome == "moved" else None
        self._recent = move.recent  # it may have shown a RECENT held back
        policy = move.policy.value if move.policy else "none"
        kind = b"UID MOVE" if move.request.uid else b"MOVE"
        self._count_move(kind, move.request.sequence_set, policy, move.outcome, move)
        if self._shutting_down:
            self._close("proxy shutting down", SHUTDOWN_BYE, logging.INFO)

    def _count_move(
        self,
        kind: bytes,
        sequence_set: bytes,
        policy: str,
        outcome: str,
        move: MoveEmulation | None = None,
    ) -> None:
        """Log a MOVE answered, and count it for the connection's summary and the metrics."""
        shown = sequence_set[:60] + (b"..." if len(sequence_set) > 60 else b"")
        rollback, duplicates, retries = (
            (move.rollback, move.duplicates, move.expunge_retries) if move else ("", 0, 0)
        )
        line = (
            f"{kind.decode()} {shown.decode('ascii', 'replace')}: policy={policy} outcome={outcome}"
            + (f" rollback={rollback}" if rollback else "")
            + (f" expunge_retries={retries}" if retries else "")
        )
        request = None
        if move is not None and move.flags is not None and outcome == "moved":
            request = move.flags.request(move.request.mailbox, self._selected)
        if request is not None:  # logged once the copies' flags are checked
            self._flag_checks.append(FlagCheck(request, self._credentials, line))
        else:
            self._log.info("%s", line)
        if move is not None and move.duplicates:
            self._log.warning("MOVE left messages in both mailboxes: %s", move.reply.decode())
        key = f"{policy}-{outcome}"
        self.counters.moves[key] = self.counters.moves.get(key, 0) + 1
        self._finished_moves.append(FinishedMove(policy, outcome, rollback, duplicates, retries))

    def take_finished_moves(self) -> list[FinishedMove]:
        """Every MOVE answered since the last call."""
        moves, self._finished_moves = self._finished_moves, []
        return moves

    def _new_tag(self) -> bytes:
        self._tag_counter += 1
        return b"imp%d" % self._tag_counter

    def _send(self, commands: list[UpstreamCommand]) -> None:
        for segments in commands:
            self._to_upstream += segments[0]
            self._log.debug("to upstream: %r", segments[0][:200])
            self._continuation = segments[1:]

    # ------------------------------------------------------------------ upstream -> client

    def _process_upstream(self) -> None:
        framer = self._upstream
        # Once the connection is ending nothing more is relayed or acted on, except the rest of
        # a response the BYE waits behind.
        while self.close_reason is None or self._deferred:
            move = self._move
            if move is None and self._greeted and self._id_tag is None:
                # Fast path: relay in one piece the run of untagged responses that need no look
                # (a FETCH flood is ~100 bytes a line; one at a time would cost 4 µs each).
                run = framer.plain_run(_first_stop)
                if run:
                    self._to_client += run
                    self._flush_deferred()
                    continue
            elif move is not None and move.expunging:
                # The same for the EXPUNGE responses of a big MOVE: relayed, and counted.
                run = framer.plain_run(_first_non_expunge)
                if run:
                    move.expunged(bytes(run).count(b"\n"))
                    self._to_client += run
                    continue
            try:
                event = framer.next_event()
            except LineTooLong:
                self._close("upstream line too long", b"The mail server sent an overlong line.")
                return
            if event is None:
                return
            if type(event) is Line and event.first:
                self._relay = self._upstream_response(event.data)
            elif self._relay:
                self._to_client += event.data
            self._flush_deferred()

    def _flush_deferred(self) -> None:
        if self._deferred and self._upstream.at_boundary:
            self._to_client += self._deferred
            self._deferred = bytearray()

    def _upstream_response(self, line: bytes) -> bool:
        """Handle the first line of an upstream response; return whether it goes to the client."""
        if not self._greeted:
            self._greeted = True
            self.authenticated = line[:10].upper() == b"* PREAUTH "
            self._to_client += self._capabilities(line)
            if self.settings.forward_id and self._caps and b"ID" in self._caps.names:
                self._send_id()
            return True
        lead = line[:1]
        if self._id_tag is not None and line[:5].upper() == b"* ID ":
            return False  # the answer to the proxy's own ID
        if lead == b"*":
            expunged = _EXPUNGED_RE.match(line)
            if expunged:
                line = b"* " + expunged.group(1) + b" EXPUNGE\r\n"
                self.counters.expunged_rewritten += 1
            if line[2:5].upper() == b"BYE":
                self._upstream_said_bye = True
            if b"[" in line or line[2:13].upper() == b"CAPABILITY ":
                line = self._capabilities(line)
                match = _UIDVALIDITY_RE.match(line)
                if match:
                    self._uidvalidity = match.group(1)
            count = _COUNT_RE.match(line)
            exists = count is not None and count.group(2).upper() == b"EXISTS"
            if count is not None and exists:  # expunges only lower it: this stays an upper bound
                self._exists = int(count.group(1))
            if self._move is not None and not self._move.on_untagged(line):
                return False
            if count is not None and not exists:
                self._recent = int(count.group(1))
            self._to_client += line
            return True
        if lead == b"+":
            if self._continuation:
                self._to_upstream += self._continuation.pop(0)
                return False
            self._literal_tag = None  # the client may send its literal now
            self._to_client += line
            return True
        reply = parse_tagged(line)
        if reply is None or not self._expects(reply.tag):
            # A reply the proxy cannot place: everything after it may be out of step, and a
            # MOVE built on it could lose mail. End the connection rather than guess.
            what = "malformed line" if reply is None else "reply to a tag nobody sent"
            self._log.warning("%s from upstream: %r", what, line[:100])
            self._close(f"upstream protocol error ({what})", b"The mail server misbehaved.")
            return False
        if reply.tag == self._id_tag:
            self._id_tag = None
            return False
        move = self._move
        if move is not None and move.answers(reply.tag):
            return self._move_reply(move, reply, line)
        self._complete_client_command(reply)
        if reply.code is not None:
            name = code_name(reply.code)
            if name in (b"READ-ONLY", b"READ-WRITE"):
                self._read_only = name == b"READ-ONLY"
            elif name == b"CAPABILITY":
                line = self._capabilities(line)
        self._to_client += line
        return True

    def _move_reply(self, move: MoveEmulation, reply: Tagged, line: bytes) -> bool:
        self._continuation = []
        forwarded = not move.owns(reply.tag)  # the client's own MOVE, sent on as it was
        if forwarded:
            self._to_client += line
        self._send(move.on_tagged(reply, self._caps))
        self._after_move_step()
        return forwarded

    def _expects(self, tag: bytes) -> bool:
        """Whether a tagged reply with ``tag`` answers a command someone sent."""
        move = self._move
        return (
            tag in self._inflight or tag == self._id_tag or (move is not None and move.answers(tag))
        )

    def _complete_client_command(self, reply: Tagged) -> None:
        completion = self._inflight.complete(reply.tag, reply.status == b"OK")
        if reply.tag == self._literal_tag:  # refused before its literal: none will come
            self._literal_tag = None
            self._client.cancel_literal()
            self._mode = Mode.FORWARD
        if reply.tag == self._data_tag:
            self._data_tag = None
        if completion.logged_in:  # bound to this very login: one not captured leaves none
            self.authenticated = True
            self._credentials = completion.credentials
        elif completion.selection:
            self._selected = completion.mailbox
            self._rights = None
        self._release_held()

    def _capabilities(self, line: bytes) -> bytes:
        new_line, caps = capabilities.rewrite_line(line, self._additions)
        if caps is not None:
            self._caps = caps
        return new_line

    def _additions(self, caps: Capabilities) -> list[bytes]:
        """What the proxy adds to the upstream's capability list ``caps``."""
        added = [b"MOVE"] if self._offers_move(caps) else []
        if self.settings.tls_offered and not self.tls:
            added.append(b"STARTTLS")
            if self.settings.require_tls:
                added.append(b"LOGINDISABLED")
        return added

    def _offers_move(self, caps: Capabilities) -> bool:
        return policy_for(caps, self.settings.guarded).emulated

    # ------------------------------------------------------------------ proxy's own replies

    def _reply(self, data: bytes) -> None:
        """Queue a reply of the proxy's own, never inside an upstream response being relayed."""
        if self._upstream.at_boundary:
            self._to_client += data
        else:
            self._deferred += data

    def _close(self, reason: str, bye: bytes, level: int = logging.WARNING) -> None:
        """End the connection: log ``reason``, and tell the client ``* BYE <bye>``."""
        self._log.log(level, "closing connection: %s", reason)
        self.close_reason = reason
        self._reply(b"* BYE " + bye + b"\r\n")
