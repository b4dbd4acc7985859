"""The trio shell: listeners, the upstream connection, the two pumps, timeouts, shutdown.

All protocol decisions are made by :class:`.session.Session`; this module only moves bytes
between sockets and the session and closes connections.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import math
import signal
import time

import trio

from .config import Address, Config
from .locks import LockError, make_move_locks
from .metrics import Metrics, serve_http
from .move import RollbackRequest
from .proxyproto import V2_MAX, Endpoint, ProxyHeader, ProxyHeaderError, build_v2, parse
from .rollback import Credentials, Rollback
from .session import SHUTDOWN_BYE, Session, SessionSettings
from .tls import Certificates, UpstreamUnavailable, open_upstream, upstream_context

log = logging.getLogger(__name__)

# Bytes asked of the kernel per read: large reads halve the per-byte cost of bulk relaying
# (bench/), and memory is only taken while data is actually there.
RECEIVE_SIZE = 1024 * 1024
UNAVAILABLE = b"* BYE [UNAVAILABLE] Upstream server not available, try again later.\r\n"
SHUTTING_DOWN = b"* BYE " + SHUTDOWN_BYE + b"\r\n"
TOO_MANY = b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"


class Proxy:
    """Accepts clients and gives each its own upstream connection."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._ids = itertools.count(1)
        self._connections: set[Connection] = set()
        self._certificates = (
            Certificates(config.tls_cert, config.tls_key)
            if config.tls_cert and config.tls_key
            else None
        )
        self._upstream_tls = upstream_context(config)
        self.metrics = Metrics()
        self.locks = make_move_locks(config, self.metrics)
        self._draining = False
        self._setting_up = 0  # connections accepted and not yet closed
        self._per_address: dict[str, int] = {}  # the same, by the address they come from
        self._settings = SessionSettings(
            max_line=config.max_line_length,
            max_mailbox_literal=config.max_mailbox_literal,
            max_set_bytes=config.max_set_bytes,
            guarded=config.no_uidplus == "guarded",
            tls_offered=self._certificates is not None,
            require_tls=config.require_tls,
            forward_id=config.upstream_id and not config.upstream_proxy_protocol,
            chunk_size=config.move_chunk_size,
            rollback=config.rollback,
            rollback_master=(
                (config.rollback_master_user or "").encode(),
                (config.rollback_master_password or "").encode(),
            ),
        )

    async def serve(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until SIGTERM/SIGINT, then drain.

        ``task_status.started`` gets the bound listeners: plain ones first, then TLS ones.
        """
        plain = await self._listen(self.config.listen, "plain")
        implicit = await self._listen(self.config.listen_tls, "TLS")
        http = await self._listen(self.config.metrics, "metrics")
        async with self.locks.running(), trio.open_nursery() as connections:
            if http:  # in the outer nursery: /readyz says "draining" while MOVEs finish
                connections.start_soon(serve_http, http, self.metrics, _alive, self._ready)
            with trio.CancelScope() as accepting:
                async with trio.open_nursery() as acceptors:
                    for listener in plain + implicit:
                        tls = listener in implicit
                        acceptors.start_soon(self._accept, listener, connections, tls)
                    task_status.started(plain + implicit)
                    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                    with trio.open_signal_receiver(*signals) as received:
                        async for signum in received:
                            if signum == signal.SIGHUP:
                                if self._certificates is not None:
                                    self._certificates.reload()
                                continue
                            log.info("%s: draining", signal.Signals(signum).name)
                            self._draining = True
                            accepting.cancel()
            for listener in plain + implicit:
                await listener.aclose()
            await self._drain(connections)

    async def _listen(self, address: Address | None, kind: str) -> list[trio.SocketListener]:
        if address is None:
            return []
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        for listener in listeners:
            where = listener.socket.getsockname()[:2]
            log.info("listening (%s) on %s, upstream %s", kind, where, self.config.upstream)
        return listeners

    async def _accept(
        self, listener: trio.SocketListener, nursery: trio.Nursery, tls: bool
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # out of file descriptors, say: back off, keep serving
                log.error("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self.handle, stream, tls)

    async def _ready(self) -> bool:
        """Ready for clients: not draining, and the upstream accepts connections."""
        if self._draining:
            return False
        upstream = self.config.upstream
        with trio.move_on_after(min(2.0, self.config.connect_timeout)):
            try:
                stream = await trio.open_tcp_stream(upstream.host, upstream.port)
            except OSError:
                return False
            await trio.aclose_forcefully(stream)
            return True
        return False

    async def _drain(self, connections: trio.Nursery) -> None:
        """Let MOVEs in flight finish, tell every other client BYE, within drain_timeout."""
        for connection in list(self._connections):
            connection.shutdown()
        with trio.move_on_after(self.config.drain_timeout) as timer:
            while self._setting_up:  # also those still connecting to the upstream
                await trio.sleep(0.05)
        if timer.cancelled_caught:
            log.warning("drain timeout: closing %d connections", self._setting_up)
        connections.cancel_scope.cancel()

    async def handle(self, socket_stream: trio.SocketStream, tls: bool = False) -> None:
        # Behind a load balancer (PROXY protocol) every connection comes from the balancer:
        # then only the total is limited here.
        address = "" if self.config.proxy_protocol else _endpoint(socket_stream, remote=True)[0]
        per_address = self._per_address.get(address, 0)
        if self._setting_up >= self.config.max_connections or (
            address and per_address >= self.config.max_connections_per_address
        ):
            log.warning("connection from %s refused: too many connections", address)
            self.metrics.rejected.labels("limit").inc()
            await _bye_and_close(socket_stream, TOO_MANY)
            return
        self._setting_up += 1
        self._per_address[address] = per_address + 1
        try:
            await self._handle(socket_stream, tls)
        finally:
            self._setting_up -= 1
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    async def _handle(self, socket_stream: trio.SocketStream, tls: bool) -> None:
        conn_id = f"c{next(self._ids)}"
        conn_log = logging.LoggerAdapter(log, {"conn": conn_id})
        started = time.monotonic()
        client: trio.abc.Stream = socket_stream
        metrics = self.metrics
        metrics.connections_total.inc()
        addresses = await self._client_addresses(socket_stream, conn_log)
        if addresses is None:
            metrics.rejected.labels("proxy_protocol").inc()
            await trio.aclose_forcefully(socket_stream)
            return
        peer = _format(addresses[0])
        if tls:
            tls_stream = await self.start_tls(socket_stream, conn_log)
            if tls_stream is None:
                metrics.rejected.labels("tls_handshake").inc()
                return
            client = tls_stream
        opened = await self._connect(client, conn_log, peer, addresses)
        if opened is None:
            metrics.rejected.labels("upstream_unavailable").inc()
            return
        upstream, greeting = opened
        if self._draining:  # accepted just before the drain began: tell it to come back
            metrics.rejected.labels("draining").inc()
            await trio.aclose_forcefully(upstream)
            await _bye_and_close(client, SHUTTING_DOWN)
            return
        session = Session(self._settings, conn_id, tls=tls, addresses=addresses)
        connection = Connection(client, upstream, session, self, greeting, addresses)
        self._connections.add(connection)
        metrics.connections.inc()
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            metrics.connections.dec()
            counters = session.counters
            moves = ",".join(f"{k}={v}" for k, v in sorted(counters.moves.items())) or "0"
            conn_log.info(
                "closed client=%s%s upstream=%s duration=%.3fs bytes_in=%d bytes_out=%d "
                "commands=%d moves=%s%s",
                peer,
                " tls" if session.tls else "",
                self.config.upstream,
                time.monotonic() - started,
                counters.bytes_from_client,
                counters.bytes_from_upstream,
                counters.commands,
                moves,
                f" reason={session.close_reason}" if session.close_reason else "",
            )

    async def start_tls(
        self, stream: trio.abc.Stream, conn_log: logging.LoggerAdapter
    ) -> trio.SSLStream | None:
        """Server-side TLS handshake with a client, bounded in time; None if it failed."""
        assert self._certificates is not None
        tls = trio.SSLStream(stream, self._certificates.context, server_side=True)
        with trio.move_on_after(self.config.tls_handshake_timeout) as timer:
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                conn_log.info("client TLS handshake failed: %s", exc.__cause__ or exc)
                await trio.aclose_forcefully(stream)
                return None
        if timer.cancelled_caught:
            conn_log.info("client TLS handshake timed out")
            await trio.aclose_forcefully(stream)
            return None
        return tls

    async def _client_addresses(
        self, stream: trio.SocketStream, conn_log: logging.LoggerAdapter
    ) -> tuple[Endpoint, Endpoint] | None:
        """The client's address and the one it connected to: from the socket, or from a
        PROXY protocol header if the listener expects one (and the sender is trusted)."""
        peer, local = _endpoint(stream, remote=True), _endpoint(stream, remote=False)
        if not self.config.proxy_protocol:
            return peer, local
        address = ipaddress.ip_address(peer[0])
        if not any(address in network for network in self.config.proxy_protocol_trusted):
            conn_log.warning("PROXY protocol from untrusted %s refused", _format(peer))
            return None
        try:
            with trio.fail_after(self.config.connect_timeout):
                header = await read_proxy_header(stream)
        except (ProxyHeaderError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            reason = exc or "timeout"
            conn_log.warning("bad PROXY protocol header from %s: %s", _format(peer), reason)
            return None
        return header.source or peer, header.destination or local

    async def _connect(
        self,
        client: trio.abc.Stream,
        conn_log: logging.LoggerAdapter,
        peer: str,
        addresses: tuple[Endpoint, Endpoint],
    ) -> tuple[trio.abc.Stream, bytes] | None:
        upstream = self.config.upstream
        started = time.monotonic()
        try:
            with trio.fail_after(self.config.connect_timeout):
                opened = await self.open_upstream(addresses)
            self.metrics.upstream_seconds.observe(time.monotonic() - started)
            return opened
        except (OSError, trio.TooSlowError, UpstreamUnavailable) as exc:
            self.metrics.upstream_errors.inc()
            conn_log.warning(
                "client=%s upstream %s unavailable: %s", peer, upstream, exc or "timed out"
            )
            await _bye_and_close(client, UNAVAILABLE)
            return None

    async def open_upstream(
        self, addresses: tuple[Endpoint, Endpoint]
    ) -> tuple[trio.abc.Stream, bytes]:
        """A new upstream connection for the client at ``addresses`` (with the PROXY header
        if configured); the greeting, if it has been read already."""
        preamble = build_v2(*addresses) if self.config.upstream_proxy_protocol else b""
        return await open_upstream(self.config, self._upstream_tls, preamble)


class Connection:
    """Pumps bytes between one client, its session and its upstream connection."""

    def __init__(
        self,
        client: trio.abc.Stream,
        upstream: trio.abc.Stream,
        session: Session,
        proxy: Proxy,
        greeting: bytes,
        addresses: tuple[Endpoint, Endpoint],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.session = session
        self.config = proxy.config
        self._proxy = proxy
        self._greeting = greeting  # already read from the upstream (after its STARTTLS)
        self._addresses = addresses  # the client's, and the one it connected to
        self._log = logging.LoggerAdapter(log, {"conn": session.conn_id})
        self._client_lock = trio.Lock()
        self._upstream_lock = trio.Lock()
        self._resume = trio.Event()
        self._cancel = trio.CancelScope()
        self._locks = proxy.locks
        self._locking = False  # a task takes the lock for the waiting MOVE and runs it
        self._move_finished = trio.Event()  # set once the MOVE under the lock has its reply
        self._nursery: trio.Nursery | None = None
        self._move_started: float | None = None  # when the running MOVE began upstream
        self._commands_counted = 0

    def shutdown(self) -> None:
        """The proxy is stopping: BYE now, or once the MOVE in progress has finished."""
        self.session.shutdown()
        if self._nursery is not None:
            # A connection whose pumps have ended is closing already: nothing left to send.
            with contextlib.suppress(RuntimeError):  # "Nursery is closed to new arrivals"
                self._nursery.start_soon(self._flush)

    async def run(self) -> None:
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._pump_upstream)
                    nursery.start_soon(self._pump_client)
        except Exception:  # a bug must cost one connection, never the proxy
            self._log.exception("internal error, closing the connection")
            self.session.close_reason = "internal error"
            await _bye_and_close(self.client, b"* BYE [SERVERBUG] Internal proxy error.\r\n")
        finally:
            self._nursery = None  # closed: shutdown() and rollbacks start nothing more
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await trio.aclose_forcefully(self.upstream)
                if self.session.close_reason:  # the client was told BYE: let it read that
                    await self._send_client()  # queued by one pump as the other ended it
                    await _linger(self.client)
                await trio.aclose_forcefully(self.client)

    async def _pump_upstream(self) -> None:
        session = self.session
        with trio.move_on_after(self.config.connect_timeout) as greeting_wait:
            data = self._greeting or await self._receive(self.upstream)
        if greeting_wait.cancelled_caught:
            log.warning("upstream %s sent no greeting in time", self.config.upstream)
            await self._send(self.client, UNAVAILABLE)
            self._cancel.cancel()
            return
        counted = self._proxy.metrics.bytes_from_upstream
        while data:
            counted.inc(len(data))
            session.receive_upstream(data)
            await self._flush()
            data = await self._receive(self.upstream)
        session.upstream_closed()  # after LOGOUT's BYE, or it dropped us
        await self._send_client()
        self._cancel.cancel()

    async def _pump_client(self) -> None:
        session = self.session
        login_deadline = trio.current_time() + self.config.login_timeout
        while True:
            # Until the client has logged in, its time is limited (no task of its own for
            # that: idle connections are many, and each task costs memory).
            data: bytes | bytearray = b""
            deadline = math.inf if session.authenticated else login_deadline
            with trio.move_on_at(deadline) as waiting:
                while not session.wants_client_data:
                    if session.close_reason:
                        return
                    self._resume = trio.Event()
                    await self._resume.wait()
                data = await self._receive(self.client)
            if waiting.cancelled_caught:
                if session.authenticated:  # logged in while this read waited: no deadline
                    continue
                session.login_timed_out()
                await self._flush()
                return
            if not data:
                break
            self._proxy.metrics.bytes_from_client.inc(len(data))
            session.receive_client(data)
            await self._flush()
            if session.starttls_requested:
                await self._start_client_tls()
        # The client has gone. A MOVE it started is completed upstream before we close.
        with trio.move_on_after(self.config.drain_timeout):
            while session.moving:
                self._resume = trio.Event()
                await self._resume.wait()
        self._cancel.cancel()

    async def _start_client_tls(self) -> None:
        """STARTTLS from the client: the session has queued its OK; now the handshake."""
        async with self._client_lock:  # nothing may be sent to the client in between
            tls = await self._proxy.start_tls(self.client, self._log)
            if tls is None:
                self._cancel.cancel()
                return
            self.client = tls
        self.session.tls_established()

    async def _flush(self) -> None:
        session = self.session
        async with self._upstream_lock:
            data = session.take_to_upstream()
            if data:
                await self._send(self.upstream, data)
        await self._send_client()
        if session.close_reason and not session.reply_pending:
            self._cancel.cancel()
        if not session.move_running:
            self._move_finished.set()
        self._proxy.metrics.commands.inc(session.counters.commands - self._commands_counted)
        self._commands_counted = session.counters.commands
        for move in session.take_finished_moves():
            started, self._move_started = self._move_started, None
            elapsed = None if started is None else time.monotonic() - started
            self._proxy.metrics.move_done(move, elapsed)
        rollback = session.take_rollback()
        if rollback is not None and self._nursery is not None:
            self._nursery.start_soon(self._rollback, *rollback)
        if session.move_ready and not self._locking and self._nursery is not None:
            self._locking = True  # the other pump must not start one for the same MOVE
            self._nursery.start_soon(self._move_under_lock)
        if session.wants_client_data:
            self._resume.set()  # the client pump may read again

    async def _move_under_lock(self) -> None:
        """Take the lock on the source mailbox, run the waiting MOVE to its reply, release;
        or answer the MOVE with NO if the lock cannot be had."""
        session = self.session
        try:
            async with self._locks.hold(session.move_key):
                self._move_finished = trio.Event()
                self._move_started = time.monotonic()
                session.start_move()
                await self._flush()
                await self._move_finished.wait()
        except LockError as exc:
            self._log.warning("MOVE refused: %s", type(exc).__name__)
            session.refuse_move(exc.code, exc.text)
        self._locking = False
        await self._flush()  # the commands pipelined behind, a next MOVE among them

    async def _rollback(self, request: RollbackRequest, credentials: Credentials) -> None:
        """Run the second session that removes a failed MOVE's copies, bounded in time."""
        rollback = Rollback(request, credentials, self.config.max_set_bytes)
        error: str | None = None
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(self.config.rollback_timeout):
                stream, greeting = await self._proxy.open_upstream(self._addresses)
                data: bytes | bytearray = greeting
                for _ in range(100_000):  # bounded: the timeout bounds it too
                    if not data:
                        data = await self._receive(stream)
                        if not data:
                            rollback.connection_lost()
                    rollback.receive(data)
                    data = b""
                    outgoing = rollback.take_outgoing()
                    if outgoing:
                        await stream.send_all(outgoing)
                    if rollback.done:
                        break
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, UpstreamUnavailable) as exc:
            error = f"second session: {exc or 'timed out'}"
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)
        self.session.rollback_finished(
            error or rollback.error or _unfinished(rollback), rollback.missing
        )
        await self._flush()

    async def _send_client(self) -> None:
        async with self._client_lock:
            data = self.session.take_to_client()
            if data:
                await self._send(self.client, data)

    async def _send(self, stream: trio.abc.Stream, data: bytes | bytearray) -> None:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if stream is self.upstream:
                self._cancel.cancel()
            # A client that has gone cannot be told anything; upstream work goes on.

    @staticmethod
    async def _receive(stream: trio.abc.Stream) -> bytes | bytearray:
        try:
            return await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""


def _unfinished(rollback: Rollback) -> str | None:
    return None if rollback.done else "second session did not finish"


def _endpoint(stream: trio.SocketStream, remote: bool) -> Endpoint:
    try:
        name = stream.socket.getpeername() if remote else stream.socket.getsockname()
    except OSError:
        return ("0.0.0.0", 0)
    return str(name[0]), int(name[1])


def _format(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def read_proxy_header(stream: trio.SocketStream) -> ProxyHeader:
    """Read a PROXY header exactly, not a byte further: what follows may be a TLS handshake."""
    data = b""
    for _ in range(V2_MAX):
        result = parse(data)
        if result is not None:
            return result[0]
        if data[:1] != b"\r":  # v1: a line, read a byte at a time (at most 107)
            want = 1
        elif len(data) < 16:  # v2: the fixed part, then the length it announces
            want = 16 - len(data)
        else:
            want = 16 + int.from_bytes(data[14:16], "big") - len(data)
        chunk = await stream.receive_some(want)
        if not chunk:
            raise ProxyHeaderError("connection closed in the PROXY header")
        data += chunk
    raise ProxyHeaderError("PROXY header too long")


async def _bye_and_close(stream: trio.abc.Stream, bye: bytes) -> None:
    """A last word to a client the proxy will not serve, bounded in time, then close (it may
    be closed already, as after an internal error: then nothing is said)."""
    with (
        trio.move_on_after(1),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await stream.send_all(bye)
    await trio.aclose_forcefully(stream)


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then read and drop what the client still sends, for a second at most.

    Closing a socket with unread bytes makes the kernel reset the connection, and a reset can
    make the client's kernel discard the BYE it has not read yet."""
    with (
        trio.move_on_after(1),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        if isinstance(stream, trio.SocketStream):
            await stream.send_eof()
        for _ in range(1024):  # at most 64 MiB
            if not await stream.receive_some(65536):
                return


async def _alive() -> bool:
    return True  # answering at all is the proof: the event loop runs
