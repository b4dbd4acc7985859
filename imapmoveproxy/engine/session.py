"""One proxied IMAP connection, sans-IO: client bytes and upstream bytes in, bytes for each out.

The session streams everything through untouched except what it must understand:

* capability lists, rewritten wherever they appear (:mod:`.capabilities`);
* the client's command boundaries and tags, to know when earlier commands have completed;
* AUTHENTICATE and IDLE, whose client lines are data rather than commands;
* MOVE and UID MOVE, collected whole and handed to :class:`.move.MoveEmulation`;
* the selected mailbox's name (for the MOVE's rights check) and the credentials of LOGIN and
  AUTHENTICATE PLAIN, kept in memory for a rollback's second session (:mod:`.rollback`);
* COMPRESS=DEFLATE, done by the session itself once the client has logged in: what goes to the
  client is compressed as it is taken (:class:`.output.Output`), what comes from it inflated in
  bounded pieces as the session looks at it; STARTTLS, done by the proxy itself when it has a
  certificate (the caller runs the handshake);
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

import logging

from ..journal.entry import Entry
from ..move.copyflags import Result
from ..move.rollback import Credentials
from ..wire.capabilities import Capabilities
from ..wire.deflate import InflateError, Inflater
from ..wire.framing import Framer
from ..wire.proxyproto import Endpoint
from .channel import upstream_channel
from .client import ClientInput
from .effects import Close, Effect, StartTls
from .inflight import CommandsInFlight
from .mailbox import SelectedMailbox
from .moves import MoveRunner
from .offer import Offer
from .output import Output
from .resumes import ResumeRunner
from .settings import Counters, SessionSettings
from .upstream import UpstreamResponses

__all__ = ["SHUTDOWN_BYE", "Counters", "Session", "SessionSettings"]

log = logging.getLogger(__name__)

INFLATE_PIECE = 256 * 1024  # the most client bytes inflated at a time
SHUTDOWN_BYE = b"[UNAVAILABLE] Server shutting down, please reconnect."


class Session:
    """The protocol state of one client connection and its upstream connection.

    The caller feeds it bytes (:meth:`receive_client`, :meth:`receive_upstream`), sends what it
    queues (:meth:`take_to_client`, :meth:`take_to_upstream`), and acts on the effects it
    queues as things happen (:meth:`take_effects`, :mod:`.effects`): TLS with the client, a
    MOVE ready to start under its mailbox's lock, a second session, a MOVE answered, the end of
    the connection. The work is shared by :class:`ClientInput` (the
    client's commands), :class:`UpstreamResponses` (the upstream's responses),
    :class:`MoveRunner` (MOVEs) and :class:`CommandsInFlight` (what a tagged reply answers).
    """

    __slots__ = (
        "_effects", "_inflater", "_shutting_down", "_tls_pending", "addresses", "authenticated",
        "caps", "channel", "client", "close_reason", "conn_id", "counters", "credentials",
        "inflight", "log", "mailbox", "moves", "offer", "output", "resumes", "settings", "tls",
        "upstream", "upstream_framer", "user",
    )  # fmt: skip

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
        self._tls_pending = False  # StartTls queued, the handshake not done yet
        self._effects: list[Effect] = []  # for the caller: take_effects()
        self.addresses = addresses  # the client's and the address it connected to
        self.counters = Counters()
        self.close_reason: str | None = None  # set when the connection must end
        self.log = logging.LoggerAdapter(log, {"conn": conn_id})
        self.upstream_framer = Framer(self.settings.max_upstream_line)
        self.output = Output(self.upstream_framer)
        self.channel = upstream_channel(self.output, self.log)
        self.caps: Capabilities | None = None  # the upstream's; None: unknown in this state
        self.authenticated = False
        self.credentials: Credentials | None = None  # for a rollback's second session
        self.user: bytes | None = None  # whose login the server accepted, if known
        self.mailbox = SelectedMailbox()
        self.inflight = CommandsInFlight()
        # Each helper gets the parts it uses, and the session only as its narrow host.
        settings, output, inflight = self.settings, self.output, self.inflight
        counters, logger = self.counters, self.log
        self.moves = MoveRunner(
            self, settings, output, self.channel, inflight, self.mailbox, counters, logger
        )
        self.resumes = ResumeRunner(self, settings, output, self.channel, logger)
        self.offer = Offer(self, settings)  # what the proxy adds; whether it executes MOVE
        moves, offer = self.moves, self.offer
        self.client = ClientInput(self, settings, output, inflight, moves, offer, counters, logger)
        self.upstream = UpstreamResponses(
            self, self.upstream_framer, output, self.channel, inflight, self.mailbox, moves,
            self.resumes, self.client, offer, counters, settings, logger, addresses,
        )  # fmt: skip
        self._shutting_down = False
        self._inflater: Inflater | None = None  # COMPRESS=DEFLATE: the client's bytes inflated

    # ------------------------------------------------------------------ bytes in and out

    def receive_client(self, data: bytes | bytearray) -> None:
        self.counters.bytes_from_client += len(data)
        if self._inflater is None:
            self.client.framer.feed(data)
        else:
            self._inflater.feed(data)
        self._client_commands()
        self.moves.announce()

    def _client_commands(self) -> None:
        """Look at the client's commands; on a compressed connection, inflate more of what the
        client sent as long as the framer has room for it (the backlog), a piece at a time: a
        decompression bomb is inflated only as fast as its commands go through."""
        client, backlog = self.client, self.settings.backlog
        client.process()  # may start compression (COMPRESS)
        while (inflater := self._inflater) is not None and inflater.pending:
            if self.close_reason is not None:
                return
            room = backlog - client.framer.buffered
            if room <= 0:
                return  # resume() goes on once the client's commands have been looked at
            try:
                piece = inflater.take(min(room, INFLATE_PIECE))
            except InflateError as exc:
                self.log.warning("client sent data that does not inflate: %s", exc)
                self.close("invalid compressed data from client", b"Invalid compressed data.")
                return
            if not piece:
                return
            client.framer.feed(piece)
            client.process()

    def receive_upstream(self, data: bytes | bytearray) -> None:
        self.counters.bytes_from_upstream += len(data)
        self.upstream_framer.feed(data)
        self.upstream.process()
        self.resume()

    def take_to_client(self) -> bytearray:
        return self.output.take_to_client()

    def take_to_upstream(self) -> bytearray:
        return self.output.take_to_upstream()

    def resume(self) -> None:
        """Output has been delivered: look at client commands held back by the backlog."""
        if not self.moving:
            self.client.retry_held()
            self._client_commands()
        self.moves.announce()

    def take_effects(self) -> list[Effect]:
        """What the caller must now do (:mod:`.effects`), in the order it arose; each once."""
        effects = self._effects
        if effects:
            self._effects = []
        return effects

    def queue(self, effect: Effect) -> None:
        """Ask the caller for ``effect`` (:meth:`take_effects`)."""
        self._effects.append(effect)

    @property
    def wants_client_data(self) -> bool:
        """Whether the session looks at the client's next command now. Not while a MOVE holds
        back the client's later commands, nor while the output of earlier ones waits for a
        peer that does not read it: the client's bytes then wait in the framer (bounded by
        :meth:`room_for_client`, which the caller checks before reading more)."""
        return (
            self.upstream.greeted  # the proxy's ID, if any, must precede the client's first
            and not self.moving
            and self.close_reason is None
            and not self._shutting_down
            and not self._tls_pending
            and self.client.held is None
            and self.resumes.held is None
            and self.output_has_room()
        )

    @property
    def login_settling(self) -> bool:
        """With a journal, a login is in flight or its reply held back: commands after it wait,
        as the journal's recovery may run on this connection before the reply goes on."""
        return self.settings.journal and (self.inflight.logging_in or self.resumes.busy)

    # The backpressure rule, in one place: the session looks at client commands, and the caller
    # reads the client, only while the output for either peer is under the backlog; the caller
    # reads the upstream while the bytes ready for the client are (never waiting for the upstream
    # writer: a server that stops reading while it writes must always be read from).

    def output_has_room(self) -> bool:
        """The bytes queued for the client and for the upstream are under the backlog."""
        output, backlog = self.output, self.settings.backlog
        return output.pending_to_client < backlog and output.pending_to_upstream < backlog

    def room_for_client(self) -> bool:
        """The caller may read more client bytes: those not looked at yet and the output are
        under the backlog, and nothing the client sent waits to be inflated."""
        inflater = self._inflater
        return (
            self.client.framer.buffered < self.settings.backlog
            and self.output_has_room()
            and (inflater is None or not inflater.pending)
        )

    def room_for_upstream(self) -> bool:
        """The caller may read more upstream bytes: those ready for the client are under the
        backlog (replies held back behind the response being relayed do not count: only
        reading the rest of that response releases them)."""
        return self.output.ready_to_client < self.settings.backlog

    @property
    def client_buffered(self) -> int:
        """Client bytes received and not yet looked at."""
        return self.client.framer.buffered

    @property
    def client_literal_owed(self) -> int:
        """Bytes of the literal the client is sending that have not come yet (0 on a compressed
        connection: how many bytes on the wire they take is unknown, and a reader waiting for
        that many would wait for bytes that never come)."""
        return 0 if self._inflater is not None else self.client.framer.literal_owed

    @property
    def upstream_literal_owed(self) -> int:
        """Bytes of the literal the upstream is sending that have not come yet."""
        return self.upstream_framer.literal_owed

    @property
    def line_pending(self) -> bool:
        """The client has sent the start of a command line, and not its end."""
        return self.client.framer.in_line

    # ------------------------------------------------------------------ events from the caller

    def tls_established(self) -> None:
        """The TLS handshake the session asked for with :class:`.effects.StartTls` is done."""
        self.tls = True
        self._tls_pending = False

    def routed(
        self, reply: bytes, credentials: Credentials, client: bytes, upstream: bytes
    ) -> None:
        """The proxy logged in to the backend for the client (routing mode,
        :mod:`.prelogin`): ``reply`` is the login's tagged OK with the backend's capabilities;
        ``client`` and ``upstream`` what each sent after the login."""
        line = self.upstream.routed(reply)
        settings = self.settings
        if settings.rollback == "master":
            credentials = credentials.as_master(*settings.rollback_master)
        self.logged_in(credentials)  # kept only as the rollback setting says
        if not self.resumes.hold(line):  # held while the journal is looked at
            self.output.to_client += line
        if upstream:
            self.receive_upstream(upstream)
        if client:
            self.receive_client(client)

    def login_timed_out(self) -> None:
        """The client did not authenticate in the time allowed: end the connection."""
        if not self.authenticated and self.close_reason is None:
            self.close("no login in time", b"Autologout: no login in time.", logging.INFO)

    def line_timed_out(self) -> None:
        """The client did not finish a command line in the time allowed: end the connection."""
        if self.close_reason is None:
            self.close("client line not finished in time", b"Line not finished in time.")

    def shutdown(self) -> None:
        """The proxy is stopping: a MOVE in progress finishes first, then the client gets BYE."""
        self._shutting_down = True
        if not self.moving:
            self.close("proxy shutting down", SHUTDOWN_BYE, logging.INFO)

    def upstream_closed(self) -> None:
        """The upstream connection ended; tell the client unless the upstream already did."""
        if not self.upstream.said_bye and self.close_reason is None:
            during = " during a MOVE" if self.moving else ""
            self.close(f"upstream closed the connection{during}", b"Mail server connection lost.")

    # ------------------------------------------------------------------ MOVE

    @property
    def move_running(self) -> bool:
        """A MOVE has been started and has not had its tagged reply yet."""
        return self.moves.running is not None

    @property
    def moving(self) -> bool:
        """A MOVE has been received and has not had its tagged reply yet."""
        return self.moves.running is not None or self.moves.waiting is not None

    @property
    def move_waits_for_upstream(self) -> bool:
        """A MOVE waits for a reply of the client's upstream connection (not for a second
        session): the caller bounds that wait in time (:meth:`move_stalled`)."""
        return self.moves.waits_for_upstream

    def start_move(self) -> None:
        """Begin the MOVE that :class:`.effects.MoveReady` announced."""
        self.moves.start()
        self.resume()  # if answered at once (bad syntax, read-only, no rights...)

    def refuse_move(self, code: bytes, text: bytes) -> None:
        """Answer the MOVE that :class:`.effects.MoveReady` announced with a tagged NO instead of
        starting it (its mailbox's lock could not be had), then go on with later commands."""
        self.moves.refuse(code, text)
        self.resume()

    def move_stalled(self) -> None:
        """The upstream has not answered the running MOVE in time: abandon the connection. What
        has been done so far stays as it is (at worst messages in both mailboxes, none lost)."""
        self.close(
            "the mail server stopped answering during a MOVE",
            b"[UNAVAILABLE] The mail server stopped answering.",
        )

    def rollback_finished(self, error: str | None, missing: frozenset[int] = frozenset()) -> None:
        """The second session of :class:`.effects.RunRollback` ended (``error`` None: it succeeded;
        ``missing``: the copies it found gone from the target already)."""
        self.moves.rollback_finished(error, missing)
        self.resume()  # commands the client pipelined behind the MOVE

    def move_recorded(self, durable: bool) -> None:
        """The journal entry :class:`.effects.RecordMove` asked for is durable (``durable``), or
        cannot be and the MOVE may not go on without it."""
        self.moves.recorded(durable)
        self.resume()

    def resume_entries(self, entries: list[Entry]) -> None:
        """The unfinished journal entries :class:`.effects.LookupJournal` asked for, their
        mailboxes' locks held: finish them, then the client's login reply goes on."""
        self.resumes.entries(entries)
        self.resume()

    def resume_settled(self) -> None:
        """The journal has the recovery's verdicts: the login's reply goes to the client."""
        self.resumes.settled()
        self.resume()

    def flag_check_finished(self, result: Result, detail: str) -> None:
        """The second session of :class:`.effects.CheckFlags` ended: the MOVE is answered."""
        self.moves.flags_checked(result, detail)
        self.resume()  # commands the client pipelined behind the MOVE

    # ------------------------------------------------------------------ for the parts

    def after_move(self) -> None:
        """A MOVE had its tagged reply."""
        if self._shutting_down:
            self.close("proxy shutting down", SHUTDOWN_BYE, logging.INFO)

    def upstream_capabilities(self, caps: Capabilities | None) -> None:
        """The upstream listed its capabilities (None: they change, with the authentication
        state, and are unknown until it lists them again)."""
        self.caps = caps

    def logged_in(self, credentials: Credentials | None) -> None:
        """The upstream accepted a login (``credentials``: those to replay for a second
        session, if captured), or greeted with PREAUTH."""
        self.authenticated = True
        self.user = credentials.user if credentials is not None else None
        self.credentials = credentials if self.settings.rollback != "off" else None
        self.resumes.logged_in(self.user)

    @property
    def compressed(self) -> bool:
        """The client's connection is compressed (COMPRESS=DEFLATE)."""
        return self._inflater is not None

    def start_compression(self) -> None:
        """The client's COMPRESS had its OK (queued last): compress everything after it, and
        inflate everything the client sends after its command (what it sent already too)."""
        self.output.start_compression()
        self._inflater = Inflater()
        rest = self.client.framer.take_rest()
        if rest:  # sent before the OK: only a client compressing at once sends anything
            self._inflater.feed(rest)
        self.log.info("compression started")

    def request_tls(self) -> None:
        """The client's STARTTLS had its OK: the caller starts TLS once that is delivered."""
        self._tls_pending = True
        self.queue(StartTls())

    def close(self, reason: str, bye: bytes, level: int = logging.WARNING) -> None:
        """End the connection: log ``reason``, and tell the client ``* BYE <bye>``."""
        self.log.log(level, "closing connection: %s", reason)
        self.close_reason = reason
        self.output.reply(b"* BYE " + bye + b"\r\n")
        self.queue(Close(reason))
