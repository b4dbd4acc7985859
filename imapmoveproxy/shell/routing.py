"""Routing mode in trio: the not-authenticated state with the client, the lookup of the user's
backend, and the login there.

:class:`Router` answers which backend a login goes to: the static ``routes`` table, or an
``auth_http`` service (nginx's protocol, so that an auth service written for nginx works
unchanged) asked over HTTP with httpx, its answers kept ``route_cache_ttl`` seconds. A lookup
that fails, is late, or names a server that is not a configured backend is ``NO
[UNAVAILABLE]``, never a guess. Failed logins are slowed per client address.

:func:`log_in` drives :class:`..engine.prelogin.PreLogin` over the client's stream until a
backend accepts a login: it connects that backend (its TLS, PROXY header), tells it the client's
address by ID where the configuration allows, replays the login, and returns the connection for
a :class:`.connection.Connection`. A refused login leaves nothing behind: its backend connection
is closed and the client may try again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import trio

from ..config import Config
from ..engine import routes
from ..engine.channel import id_command
from ..engine.effects import Close, StartTls
from ..engine.prelogin import PreLogin, RouteLogin
from ..engine.routes import Refused, Routed
from ..engine.session import Session
from ..move.rollback import Credentials
from ..wire import responses
from ..wire.conversation import Conversation, ConversationError
from ..wire.grammar import code_name, line_body
from ..wire.proxyproto import Endpoint
from .backends import Backend, backends, session_settings
from .serverlink import ServerClient
from .tls import UpstreamUnavailable

if TYPE_CHECKING:
    from .server import Proxy

log = logging.getLogger(__name__)
Log = logging.LoggerAdapter

_CACHE_SIZE = 10_000  # lookup answers kept
_FAILURES_KEPT = 10_000  # client addresses whose failed logins are remembered
_FAILURE_MEMORY = 300.0  # seconds a failed login slows the next ones from its address
_MOST_DELAYS = 8  # failures that each add login_failure_delay
_MAX_STEPS = 100_000  # reads and replies before login (login_timeout bounds them too)


@dataclass(slots=True, frozen=True)
class Destination:
    """Where a login goes: the backend, and the user name to log in there with."""

    backend: Backend
    credentials: Credentials


class Router:
    """Finds each login's backend; reloaded (SIGHUP) without touching connections."""

    def __init__(self, config: Config, *, tls_offered: bool) -> None:
        self._tls_offered = tls_offered
        self._cache: OrderedDict[bytes, tuple[float, Routed]] = OrderedDict()
        self._cache_secret = os.urandom(32)
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._http: httpx.AsyncClient | None = None
        for name in ("httpx", "httpcore"):  # a line per request otherwise; the proxy logs its own
            logging.getLogger(name).setLevel(logging.WARNING)
        self.reload(config)

    def reload(self, config: Config) -> None:
        """Take ``config``'s backends and routes; connections keep the backend they have."""
        self.config = config
        self.backends = backends(config, tls_offered=self._tls_offered)
        self._addresses = {
            name: (b.address.host, b.address.port) for name, b in self.backends.items()
        }
        self._cache.clear()

    async def route(
        self,
        credentials: Credentials,
        attempt: int,
        client_ip: str,
        conn_log: logging.LoggerAdapter,
    ) -> Destination | Refused:
        """The backend for this login, or why not (the table routes by whose mailboxes: the
        authorization identity of an AUTHENTICATE PLAIN, if it has one)."""
        user = credentials.user.decode("utf-8", "replace")
        if self.config.route_lookup is None:
            name = routes.static_route(self.config.routes, user)
            if name is None:
                conn_log.info("login of %r refused: no route", user)
                return Refused(b"NO [AUTHENTICATIONFAILED] Authentication failed.")
            return Destination(self.backends[name], credentials)
        answer = await self._lookup(credentials, attempt, client_ip, conn_log)
        if isinstance(answer, Refused):
            conn_log.info("login of %r refused by the lookup", user)
            return answer
        if answer.user is not None:
            credentials = Credentials(
                answer.user, answer.user, credentials.password, credentials.plain
            )
        return Destination(self.backends[answer.backend], credentials)

    async def _lookup(
        self,
        credentials: Credentials,
        attempt: int,
        client_ip: str,
        conn_log: logging.LoggerAdapter,
    ) -> Routed | Refused:
        config = self.config
        assert config.route_lookup is not None
        # Keyed by a secret of this process's: what is kept says nothing outside it.
        secret = credentials.login + b"\0" + credentials.password
        key = hashlib.blake2b(secret, key=self._cache_secret, digest_size=32).digest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=config.route_lookup_timeout)
        headers = routes.lookup_headers(credentials.login, credentials.password, attempt, client_ip)
        try:
            with trio.fail_after(config.route_lookup_timeout):
                response = await self._http.get(config.route_lookup, headers=headers)
            if response.status_code != 200:  # nginx reads the headers of a 200 only
                raise routes.BadAnswer(f"HTTP status {response.status_code}")
            answer = routes.lookup_answer(response.headers, self._addresses)
        except (httpx.HTTPError, trio.TooSlowError, routes.BadAnswer) as exc:
            why = str(exc) or type(exc).__name__
            conn_log.warning("route lookup failed: %s", why)
            return Refused(routes.UNAVAILABLE)
        if isinstance(answer, Routed) and config.route_cache_ttl > 0:
            self._cache[key] = (now + config.route_cache_ttl, answer)
            self._cache.move_to_end(key)
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return answer

    def failure_delay(self, client_ip: str) -> float:
        """A login from ``client_ip`` failed: how long its NO waits (longer after each recent
        failure from that address, up to eight times login_failure_delay)."""
        now = time.monotonic()
        count, last = self._failures.pop(client_ip, (0, now))
        count = 1 if now - last > _FAILURE_MEMORY else count + 1
        self._failures[client_ip] = (count, now)
        if len(self._failures) > _FAILURES_KEPT:
            self._failures.popitem(last=False)
        return self.config.login_failure_delay * min(count, _MOST_DELAYS)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


@dataclass(slots=True)
class Opened:
    """A client logged in to its backend: the connection to hand to a Connection."""

    client: trio.abc.Stream
    backend: Backend
    upstream: trio.abc.Stream
    session: Session


@dataclass(slots=True, frozen=True)
class _LoggedIn:
    destination: Destination
    stream: trio.abc.Stream
    reply: bytes  # the tagged OK for the client, with the backend's capabilities
    rest: bytes  # what the backend sent after it


async def log_in(
    proxy: Proxy,
    client: trio.abc.Stream,
    addresses: tuple[Endpoint, Endpoint],
    tls: bool,
    conn_id: str,
    conn_log: logging.LoggerAdapter,
) -> Opened | None:
    """The not-authenticated state with the client, until a backend accepts its login (None:
    the client left, failed too often or ran out of time; the caller closes its connection)."""
    router = proxy.router
    assert router is not None
    config = router.config
    settings = session_settings(config, tls_offered=proxy.certificates is not None)
    pre = PreLogin(settings, conn_log, tls=tls, attempts=config.login_attempts)
    attempt = 0
    try:
        with trio.move_on_after(config.login_timeout):
            for _ in range(_MAX_STEPS):
                await client.send_all(pre.take_output())
                effects = pre.take_effects()
                for effect in effects:
                    if isinstance(effect, Close):
                        return None
                    if isinstance(effect, StartTls):
                        secured = await proxy.start_tls(client, conn_log)
                        if secured is None:
                            return None
                        client = secured
                        pre.tls_established()
                        continue
                    attempt += 1
                    done = await _route(router, proxy, effect, attempt, addresses, conn_log)
                    if isinstance(done, _LoggedIn):
                        backend = done.destination.backend
                        session = Session(
                            backend.settings, conn_id, tls=pre.tls, addresses=addresses
                        )
                        session.routed(
                            done.reply, done.destination.credentials, pre.rest(), done.rest
                        )
                        return Opened(client, backend, done.stream, session)
                    pre.refused(done.reply, final=done.final)
                if effects:
                    continue
                data = await client.receive_some(64 * 1024)
                if not data:
                    return None
                pre.receive(data)
        pre.timed_out()
        with trio.move_on_after(1.0):  # the BYE, if the client reads it
            await client.send_all(pre.take_output())
        return None
    except (trio.BrokenResourceError, trio.ClosedResourceError):  # the client has gone
        return None


async def _route(
    router: Router,
    proxy: Proxy,
    login: RouteLogin,
    attempt: int,
    addresses: tuple[Endpoint, Endpoint],
    conn_log: logging.LoggerAdapter,
) -> _LoggedIn | Refused:
    """Find the login's backend and log in there; or why not, after the failure's delay."""
    client_ip = addresses[0][0]
    logins = proxy.metrics.logins
    found = await router.route(login.credentials, attempt, client_ip, conn_log)
    if isinstance(found, Refused):
        unavailable = found.reply == routes.UNAVAILABLE
        logins.labels("", "unavailable" if unavailable else "refused").inc()
        if not unavailable:
            await trio.sleep(max(found.wait, router.failure_delay(client_ip)))
        return found
    backend = found.backend
    try:
        done = await _backend_login(found, login.tag, addresses, router.config.max_line_length)
    except (OSError, trio.TooSlowError, UpstreamUnavailable, ConversationError) as exc:
        proxy.metrics.upstream_errors.inc()
        logins.labels(backend.name, "unavailable").inc()
        conn_log.warning("backend %s unavailable: %s", backend, exc or "timed out")
        return Refused(b"NO [UNAVAILABLE] Mail server not available, try again later.")
    if isinstance(done, Refused):
        logins.labels(backend.name, "refused").inc()
        user = found.credentials.login.decode("utf-8", "replace")
        conn_log.info("login of %r refused by backend %s", user, backend)
        await trio.sleep(router.failure_delay(client_ip))
        return done
    logins.labels(backend.name, "ok").inc()
    conn_log.info("logged in to backend %s", backend)
    return done


async def _backend_login(
    destination: Destination, tag: bytes, addresses: tuple[Endpoint, Endpoint], max_line: int
) -> _LoggedIn | Refused:
    """Connect the backend, say who the client is (ID) where allowed, and replay the login."""
    backend = destination.backend
    with trio.fail_after(backend.config.connect_timeout):
        stream, greeting = await backend.open(addresses)
    kept = False
    try:
        server = ServerClient(stream, Conversation(b"imp", max_line), greeting=greeting)
        first = (await server.greeting()).line
        if first[:5].upper() != b"* OK ":
            raise UpstreamUnavailable(f"greeting {line_body(first)[:80]!r}")
        if not server.peer.caps.names:
            await server.command([b"CAPABILITY\r\n"])
        caps = server.peer.caps
        if backend.settings.forward_id and b"ID" in caps.names:
            await server.command([id_command(addresses)])
        reply = (await server.command(destination.credentials.command(caps))).tagged
        if reply.status != b"OK":
            code = b"[" + reply.code + b"] " if reply.code else b""
            if reply.status == b"BAD":
                raise UpstreamUnavailable(f"login answered BAD {reply.text[:80]!r}")
            return Refused(b"NO " + code + reply.text)
        if code_name(reply.code) == b"CAPABILITY":
            assert reply.code is not None
            names = reply.code[11:]
        else:
            names = b""
            for response in (await server.command([b"CAPABILITY\r\n"])).untagged:
                if responses.is_capability(response.line):
                    names = line_body(response.line)[13:]
        line = tag + b" OK [CAPABILITY " + names + b"] " + reply.text + b"\r\n"
        kept = True
        return _LoggedIn(destination, stream, line, server.peer.take_rest())
    finally:
        if not kept:
            await trio.aclose_forcefully(stream)
