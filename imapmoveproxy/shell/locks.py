"""Locks that keep two MOVEs out of one mailbox from running at once.

Emulating MOVE takes several upstream commands; two emulations out of one mailbox at once could
both COPY a message before either expunges it, leaving it in two targets. A MOVE therefore runs
under a lock on its source mailbox, keyed by the mailbox's UIDVALIDITY (mailboxes whose values
collide are merely serialised; a shared mailbox keeps its UIDVALIDITY under every name).

* :class:`MoveLocks` serialises the MOVEs of this process.
* :class:`RedisMoveLocks` serialises those of every replica sharing one Redis or Valkey: a lease
  (``SET NX PX`` with a random token), renewed while the MOVE runs, released by a Lua
  check-and-delete, expiring on its own if the process dies. It takes the in-process lock
  first, so this process's own MOVEs never compete for the lease, and falls back to that lock
  alone when Redis cannot be reached (or refuses the MOVE, by policy).

Either waits at most ``move_lock_timeout`` seconds, then raises :class:`LockTimeout`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import trio

from ..config import Config

if TYPE_CHECKING:
    import coredis
    from coredis.tokens import PureToken

    from ..metrics import Metrics

log = logging.getLogger(__name__)

# Seconds one Redis command may take (connecting included) before Redis counts as unreachable.
OPERATION_TIMEOUT = 2.0
# Unreachable-Redis warnings are logged at most once per this many seconds (all are counted).
WARNING_INTERVAL = 60.0
KEY_PREFIX = b"imapmoveproxy:move:"
SENTINEL_SCHEME = "redis+sentinel"
T = TypeVar("T")

# KEYS[1] lock, ARGV[1] token, ARGV[2] lease (ms): extend the lease only if still the owner.
RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] lock, ARGV[1] token: delete the lock only if still the owner.
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class LockError(Exception):
    """The MOVE cannot have its lock; ``code`` and ``text`` make the client's tagged NO."""

    code = b""
    text = b""


class LockTimeout(LockError):
    """Another MOVE out of the same mailbox held the lock for longer than the wait allowed."""

    code = b"INUSE"
    text = b"Another MOVE out of this mailbox is in progress, try again later."


class LockUnavailable(LockError):
    """The lock service cannot be reached, and move_lock_unavailable = "refuse"."""

    code = b"UNAVAILABLE"
    text = b"MOVE lock service unavailable, try again later."


class MoveLockService(Protocol):
    def hold(self, key: bytes) -> contextlib.AbstractAsyncContextManager[None]:
        """Wait for the lock on ``key`` (bounded), hold it for the body, release it."""
        ...

    def take_now(self, key: bytes) -> bool:
        """Take the lock on ``key`` at once if that needs no waiting (then :meth:`release`
        gives it back); False if it cannot be had that way (:meth:`hold` then)."""
        ...

    def release(self, key: bytes) -> None:
        """Give back a lock that :meth:`take_now` took."""
        ...

    def running(self) -> contextlib.AbstractAsyncContextManager[object]:
        """The lifetime of the lock service's connections: around the proxy's serving."""
        ...


class MoveLocks:
    """One lock per key, in this process."""

    def __init__(self, timeout: float, metrics: Metrics | None = None) -> None:
        self._timeout = timeout
        self._metrics = metrics
        self._locks: dict[bytes, tuple[trio.Semaphore, int]] = {}

    def running(self) -> contextlib.AbstractAsyncContextManager[object]:
        return contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def hold(self, key: bytes) -> AsyncIterator[None]:
        started = trio.current_time()
        await self.acquire(key, started + self._timeout)
        if self._metrics is not None:
            self._metrics.move_lock_wait.observe(trio.current_time() - started)
        try:
            yield
        finally:
            self.release(key)

    def take_now(self, key: bytes) -> bool:
        """Take the lock on ``key`` if nobody holds or awaits it: an uncontended MOVE then
        costs no task and no trip through the scheduler."""
        if key in self._locks:
            return False
        semaphore = trio.Semaphore(1)
        semaphore.acquire_nowait()
        self._locks[key] = (semaphore, 1)
        if self._metrics is not None:
            self._metrics.move_lock_wait.observe(0)
        return True

    async def acquire(self, key: bytes, deadline: float) -> None:
        """Take the lock on ``key`` by ``deadline`` (trio time), or raise LockTimeout."""
        semaphore, users = self._locks.get(key, (trio.Semaphore(1), 0))
        self._locks[key] = (semaphore, users + 1)
        try:
            with trio.move_on_at(deadline):
                await semaphore.acquire()
                return
            if self._metrics is not None:
                self._metrics.move_lock_timeouts.inc()
            raise LockTimeout
        except BaseException:
            self._forget(key)
            raise

    def release(self, key: bytes) -> None:
        self._locks[key][0].release()
        self._forget(key)

    def _forget(self, key: bytes) -> None:
        semaphore, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (semaphore, users - 1)


class _Unreachable(Exception):
    """Redis did not answer a command in time, or the connection failed."""


class RedisMoveLocks:
    """A lease per key in Redis/Valkey, shared by every process that uses the same server and
    the same ``namespace`` (the upstream's address), on top of this process's :class:`MoveLocks`.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: bytes,
        timeout: float,
        lease: float,
        refuse_unavailable: bool,
        metrics: Metrics,
    ) -> None:
        # Imported here: coredis takes a second to import, and most proxies do without it.
        from coredis.exceptions import RedisError
        from coredis.tokens import PureToken

        self._client, self._lifetime = open_redis(url)
        self._nx: Literal[PureToken.NX] = PureToken.NX
        self._failures = (RedisError, OSError, trio.TooSlowError)
        self._prefix = KEY_PREFIX + namespace + b":" if namespace else KEY_PREFIX
        self._timeout = timeout
        self._lease_ms = int(lease * 1000)
        self._refuse = refuse_unavailable
        self._metrics = metrics
        self._describe = redacted(url)  # for log lines
        self._local = MoveLocks(timeout)
        self._renew = self._client.register_script(RENEW)
        self._release = self._client.register_script(RELEASE)
        self._warned_at: float | None = None
        self._renewals: trio.Nursery  # opened by running()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for context in self._lifetime:
                await stack.enter_async_context(context)
            async with trio.open_nursery() as self._renewals:
                yield
                self._renewals.cancel_scope.cancel()

    @contextlib.asynccontextmanager
    async def hold(self, key: bytes) -> AsyncIterator[None]:
        started = trio.current_time()
        deadline = started + self._timeout
        name = self._prefix + key
        await self._local.acquire(key, deadline)
        try:
            token = secrets.token_hex(16).encode()
            shared = await self._acquire(name, token, deadline)
            self._metrics.move_lock_wait.observe(trio.current_time() - started)
            if not shared:
                yield
                return
            renewing = trio.CancelScope()
            self._renewals.start_soon(self._keep, name, token, renewing)
            try:
                yield
            finally:
                renewing.cancel()
                with trio.CancelScope(shield=True):
                    await self._give_back(name, token)
        finally:
            self._local.release(key)

    def take_now(self, key: bytes) -> bool:
        """Never: the shared lease needs a round trip to Redis."""
        return False

    def release(self, key: bytes) -> None:
        raise AssertionError("take_now never takes a shared lock")

    async def _acquire(self, name: bytes, token: bytes, deadline: float) -> bool:
        """Take the lease by ``deadline``: True once held; False if Redis cannot be reached and
        the policy is to proceed without it. Raises LockTimeout or LockUnavailable."""
        pause = 0.01
        while True:
            try:
                request = self._client.set(name, token, condition=self._nx, px=self._lease_ms)
                if await self._call(request):
                    return True
            except _Unreachable as exc:
                self._unreachable("cannot take a MOVE lock", exc)
                if self._refuse:
                    raise LockUnavailable from exc
                return False
            now = trio.current_time()
            if now >= deadline:
                self._metrics.move_lock_timeouts.inc()
                raise LockTimeout
            await trio.sleep(min(pause, deadline - now))
            pause = min(pause * 2, 0.2)

    async def _keep(self, name: bytes, token: bytes, scope: trio.CancelScope) -> None:
        """Renew the lease every third of its length until ``scope`` is cancelled."""
        with scope:
            await self._renew_forever(name, token)

    async def _renew_forever(self, name: bytes, token: bytes) -> None:
        while True:
            await trio.sleep(self._lease_ms / 3000)
            try:
                renewed: object = await self._call(
                    self._renew(keys=[name], args=[token, self._lease_ms])
                )
            except _Unreachable as exc:
                self._unreachable("cannot renew a MOVE lock", exc)
                continue
            if not renewed:  # expired (Redis stalled or restarted): another MOVE may run now
                self._metrics.move_lock_errors.inc()
                log.warning(
                    "MOVE lock %r lost before the MOVE ended", name.decode(errors="replace")
                )
                return

    async def _give_back(self, name: bytes, token: bytes) -> None:
        try:
            await self._call(self._release(keys=[name], args=[token]))
        except _Unreachable as exc:  # the lease expires on its own
            self._unreachable("cannot release a MOVE lock", exc)

    async def _call(self, request: Awaitable[T]) -> T:
        """Await one Redis command, bounded by OPERATION_TIMEOUT."""
        try:
            with trio.fail_after(OPERATION_TIMEOUT):
                return await request
        except self._failures as exc:
            raise _Unreachable(str(exc) or type(exc).__name__) from exc

    def _unreachable(self, what: str, exc: Exception) -> None:
        """Count a failed Redis command; warn at most once per WARNING_INTERVAL."""
        self._metrics.move_lock_errors.inc()
        now = trio.current_time()
        if self._warned_at is None or now - self._warned_at >= WARNING_INTERVAL:
            self._warned_at = now
            then = "refusing MOVEs" if self._refuse else "MOVEs proceed under this process's lock"
            log.warning("%s on %s: %s (%s)", what, self._describe, exc, then)


def make_move_locks(config: Config, metrics: Metrics) -> MoveLockService:
    """The MOVE locks ``config`` asks for: in this process, or shared through ``move_lock``."""
    if config.move_lock is None:
        return MoveLocks(config.move_lock_timeout, metrics)
    return RedisMoveLocks(
        config.move_lock,
        # Routing mode: each key begins with its backend's address (Backend.lock_prefix).
        namespace=str(config.upstream).encode() if config.upstream else b"",
        timeout=config.move_lock_timeout,
        lease=config.move_lock_lease,
        refuse_unavailable=config.move_lock_unavailable == "refuse",
        metrics=metrics,
    )


def open_redis(
    url: str,
) -> tuple[coredis.Redis[bytes], list[contextlib.AbstractAsyncContextManager[object]]]:
    """A client for a ``redis://``, ``rediss://`` or ``redis+sentinel://`` URL (config.py
    checks its form), and the contexts its connections live in, outermost first.

    ``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`` asks the Sentinels
    for SERVICE's primary, and again after a failover."""
    import coredis
    from coredis.connection import TCPLocation
    from coredis.exceptions import ConnectionError as RedisConnectionError
    from coredis.retry import ConstantRetryPolicy

    timeout = OPERATION_TIMEOUT
    # One retry: a connection Redis has closed (a restart, say) is replaced at once.
    retry = ConstantRetryPolicy((RedisConnectionError, TimeoutError), retries=1, delay=0.01)
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        client = coredis.Redis.from_url(
            url, retry_policy=retry, connect_timeout=timeout, stream_timeout=timeout
        )
        return client, [client]
    locations = [
        TCPLocation(host.strip("[]"), int(port))
        for host, _, port in (
            item.rpartition(":") for item in parts.netloc.rpartition("@")[2].split(",")
        )
    ]
    service, _, db = parts.path.strip("/").partition("/")
    sentinel = coredis.Sentinel(
        locations, retry_policy=retry, connect_timeout=timeout, stream_timeout=timeout
    )
    password = unquote(parts.password) if parts.password else None
    primary = sentinel.primary_for(
        service, db=int(db or 0), password=password, connect_timeout=timeout, stream_timeout=timeout
    )
    return primary, [sentinel, primary]


def redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(parts.password, "***", 1)).geturl()
