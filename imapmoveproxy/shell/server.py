"""The trio shell's front: listeners, connection limits, the PROXY header, TLS with clients,
the upstream connection, /readyz, and the drain on SIGTERM.

Each accepted client gets its own upstream connection and a :class:`.connection.Connection`;
all protocol decisions are made by :class:`..engine.session.Session`.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import signal
import time
from collections.abc import Callable

import trio

from ..config import Address, Config, ConfigError
from ..engine.session import SHUTDOWN_BYE, Session
from ..metrics import Metrics, serve_http
from ..wire.proxyproto import V2_MAX, Endpoint, ProxyHeader, ProxyHeaderError, parse
from .backends import Backend, backends
from .connection import UNAVAILABLE, Connection, bye_and_close
from .journal import JournalKeeper, sweep
from .locks import make_move_locks
from .readiness import UpstreamReadiness
from .routing import Router, log_in
from .tls import Certificates, UpstreamUnavailable

log = logging.getLogger(__name__)

SHUTTING_DOWN = b"* BYE " + SHUTDOWN_BYE + b"\r\n"
TOO_MANY = b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"


class Proxy:
    """Accepts clients and gives each its own upstream connection."""

    def __init__(self, config: Config, reload: Callable[[], Config] | None = None) -> None:
        self.config = config
        self._reload = reload  # the configuration anew, for SIGHUP (routing mode's routes)
        self._ids = itertools.count(1)
        self._connections: set[Connection] = set()
        self.certificates = (
            Certificates(config.tls_cert, config.tls_key)
            if config.tls_cert and config.tls_key
            else None
        )
        self.metrics = Metrics()
        self.metrics.before_scrape.append(self._publish_counts)
        self.locks = make_move_locks(config, self.metrics)
        self._draining = False
        # Routing mode: ready while not draining (one backend down is that backend's users').
        self._readiness = (
            UpstreamReadiness(config.upstream, config.connect_timeout) if config.upstream else None
        )
        self._setting_up = 0  # connections accepted and not yet closed
        self._logging_in: set[trio.CancelScope] = set()  # routing mode: clients not logged in
        self._per_address: dict[str, int] = {}  # the same, by the address they come from
        tls_offered = self.certificates is not None
        # Routing mode: the proxy takes the login and connects the user's backend.
        self.router = Router(config, tls_offered=tls_offered) if config.backends else None
        self.backends = (
            self.router.backends if self.router else backends(config, tls_offered=tls_offered)
        )
        namespaces = [backend.journal_namespace for backend in self.backends.values()]
        self.journal = JournalKeeper(config, self.metrics, namespaces)

    def users_connected(self, backend: Backend) -> set[bytes]:
        """The users logged in through this proxy to ``backend`` right now."""
        return {
            user
            for connection in self._connections
            if connection.backend is backend and (user := connection.session.user) is not None
        }

    def _publish_counts(self) -> None:
        for connection in self._connections:
            connection.publish_counts()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until SIGTERM/SIGINT, then drain.

        ``task_status.started`` gets the bound listeners: plain ones first, then TLS ones.
        """
        plain = await self._listen(self.config.listen, "plain")
        implicit = await self._listen(self.config.listen_tls, "TLS")
        http = await self._listen(self.config.metrics, "metrics")
        async with (
            self.locks.running(),
            self.journal.running(),
            trio.open_nursery() as connections,
        ):
            if self.config.rollback == "master" and self.journal.on:
                connections.start_soon(sweep, self)
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
                                if self.certificates is not None:
                                    self.certificates.reload()
                                self._reload_routes()
                                continue
                            log.info("%s: draining", signal.Signals(signum).name)
                            self._draining = True
                            accepting.cancel()
            for listener in plain + implicit:
                await listener.aclose()
            await self._drain(connections)
        if self.router is not None:
            await self.router.aclose()

    def _reload_routes(self) -> None:
        """SIGHUP in routing mode: the backends and routes anew from the configuration; every
        connection keeps the backend it has (a failed reload keeps the routes there are)."""
        if self.router is None or self._reload is None:
            return
        try:
            config = self._reload()
        except ConfigError as exc:
            log.error("routes not reloaded, keeping the previous ones: %s", exc)
            return
        if not config.backends:
            log.error("routes not reloaded: leaving routing mode needs a restart")
            return
        self.router.reload(config)
        self.backends = self.router.backends
        self.journal.namespaces = [backend.journal_namespace for backend in self.backends.values()]
        log.info("routes reloaded: backends %s", ", ".join(config.backends))

    async def _listen(self, address: Address | None, kind: str) -> list[trio.SocketListener]:
        if address is None:
            return []
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        for listener in listeners:
            where = listener.socket.getsockname()[:2]
            upstreams = ", ".join(str(backend) for backend in self.backends.values())
            log.info("listening (%s) on %s, upstream %s", kind, where, upstreams)
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
        return not self._draining and (self._readiness is None or await self._readiness.check())

    async def _drain(self, connections: trio.Nursery) -> None:
        """Let MOVEs in flight finish, tell every other client BYE, within drain_timeout."""
        for connection in list(self._connections):
            connection.shutdown()
        for login in list(self._logging_in):  # nothing to finish there: they go at once
            login.cancel()
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
            await bye_and_close(socket_stream, TOO_MANY)
            return
        self._setting_up += 1
        self._per_address[address] = per_address + 1
        started = time.monotonic()
        try:
            # Set up in a coroutine of its own, whose frame is not kept for the connection's life.
            connection = await self._open(socket_stream, tls)
            if connection is None:
                return
            self._connections.add(connection)
            self.metrics.connections.inc()
            try:
                await connection.run()
            finally:
                self._connections.discard(connection)
                self.metrics.connections.dec()
                self._closed(connection, time.monotonic() - started)
        finally:
            self._setting_up -= 1
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    async def _open(self, socket_stream: trio.SocketStream, tls: bool) -> Connection | None:
        """The client's connection, once its upstream connection is open (None: refused)."""
        conn_id = f"c{next(self._ids)}"
        conn_log = logging.LoggerAdapter(log, {"conn": conn_id})
        client: trio.abc.Stream = socket_stream
        metrics = self.metrics
        metrics.connections_total.inc()
        addresses = await self._client_addresses(socket_stream, conn_log)
        if addresses is None:
            metrics.rejected.labels("proxy_protocol").inc()
            await trio.aclose_forcefully(socket_stream)
            return None
        if tls:
            tls_stream = await self.start_tls(socket_stream, conn_log)
            if tls_stream is None:
                metrics.rejected.labels("tls_handshake").inc()
                return None
            client = tls_stream
        if self.router is not None:
            with trio.CancelScope() as login:
                self._logging_in.add(login)
                try:
                    routed = await log_in(self, client, addresses, tls, conn_id, conn_log)
                finally:
                    self._logging_in.discard(login)
            if login.cancelled_caught:  # the drain began
                metrics.rejected.labels("draining").inc()
                await trio.aclose_forcefully(client)
                return None
            if routed is None:
                metrics.rejected.labels("no_login").inc()
                await trio.aclose_forcefully(client)
                return None
            if self._draining:
                routed.session.shutdown()  # tell it to come back, with the BYE the others get
            return Connection(
                routed.client, routed.upstream, routed.session, self, routed.backend, b"",
                addresses, conn_log,
            )  # fmt: skip
        backend = self.backends[""]
        opened = await self._connect(backend, client, conn_log, _format(addresses[0]), addresses)
        if opened is None:
            metrics.rejected.labels("upstream_unavailable").inc()
            return None
        upstream, greeting = opened
        if self._draining:  # accepted just before the drain began: tell it to come back
            metrics.rejected.labels("draining").inc()
            await trio.aclose_forcefully(upstream)
            await bye_and_close(client, SHUTTING_DOWN)
            return None
        session = Session(backend.settings, conn_id, tls=tls, addresses=addresses)
        return Connection(client, upstream, session, self, backend, greeting, addresses, conn_log)

    def _closed(self, connection: Connection, duration: float) -> None:
        """Count and log a connection that has ended."""
        connection.publish_counts()
        session = connection.session
        counters = session.counters
        moves = ",".join(f"{k}={v}" for k, v in sorted(counters.moves.items())) or "0"
        connection.log.info(
            "closed client=%s%s upstream=%s duration=%.3fs bytes_in=%d bytes_out=%d "
            "commands=%d moves=%s%s",
            _format(connection.addresses[0]),
            " tls" if session.tls else "",
            connection.backend,
            duration,
            counters.bytes_from_client,
            counters.bytes_from_upstream,
            counters.commands,
            moves,
            f" reason={connection.close_reason}" if connection.close_reason else "",
        )

    async def start_tls(
        self, stream: trio.abc.Stream, conn_log: logging.LoggerAdapter
    ) -> trio.SSLStream | None:
        """Server-side TLS handshake with a client, bounded in time; None if it failed."""
        assert self.certificates is not None
        tls = trio.SSLStream(stream, self.certificates.context, server_side=True)
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
        backend: Backend,
        client: trio.abc.Stream,
        conn_log: logging.LoggerAdapter,
        peer: str,
        addresses: tuple[Endpoint, Endpoint],
    ) -> tuple[trio.abc.Stream, bytes] | None:
        started = time.monotonic()
        try:
            with trio.fail_after(backend.config.connect_timeout):
                opened = await backend.open(addresses)
            self.metrics.upstream_seconds.observe(time.monotonic() - started)
            return opened
        except (OSError, trio.TooSlowError, UpstreamUnavailable) as exc:
            self.metrics.upstream_errors.inc()
            conn_log.warning(
                "client=%s upstream %s unavailable: %s", peer, backend, exc or "timed out"
            )
            await bye_and_close(client, UNAVAILABLE)
            return None


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


async def _alive() -> bool:
    return True  # answering at all is the proof: the event loop runs
