"""Where journal entries live: a SQLite file (the default), Redis/Valkey (shared by replicas), or
nowhere (``journal = "off"``).

Every entry belongs to a namespace, the address of its server (the ``upstream``, or a routing
mode's backend), as the MOVE locks do. A store answers :meth:`~Journal.put` (durable when it
returns), :meth:`~Journal.remove`, :meth:`~Journal.pending` (a user's entries) and
:meth:`~Journal.listing` (those of some namespaces, for operators and the metrics). A failure raises
:class:`JournalError`; what then happens to a MOVE is the ``journal_unavailable`` setting's call.

* :class:`SqliteJournal`: stdlib ``sqlite3`` in WAL mode with ``synchronous=FULL``: a commit is
  on disk (the WAL fsynced) before :meth:`put` returns, so an entry survives the process and
  the machine. With ``journal_fsync = false``, ``synchronous=NORMAL``: a commit is in the WAL
  file, which survives the process's death (SIGKILL, OOM, a container restarted) but not the
  machine's. Calls run in a worker thread, one at a time.
* :class:`RedisJournal`: an entry is one key, indexed by user and by namespace, written by one
  Lua script (all or nothing). It is as durable as the Redis server is configured to be
  (``appendonly yes`` with ``appendfsync everysec`` or ``always``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import trio

from .entry import Entry, Unreadable

if TYPE_CHECKING:
    import coredis

OPERATION_TIMEOUT = 2.0  # seconds one Redis command may take
REDIS_PREFIX = b"imapmoveproxy:journal:"

T = TypeVar("T")
Stored = tuple[str, Entry | Unreadable]  # an entry's id, and the entry (or why it is unreadable)


class JournalError(Exception):
    """The journal could not be read or written."""


class Journal(Protocol):
    description: str  # for logs: where it lives (no password)

    def running(self) -> contextlib.AbstractAsyncContextManager[object]: ...

    async def put(self, namespace: str, entry: Entry) -> None: ...

    async def remove(self, namespace: str, entry_id: str) -> None: ...

    async def pending(self, namespace: str, user: bytes) -> list[Stored]: ...

    async def listing(self, namespaces: list[str]) -> list[tuple[str, Stored]]: ...


def _read(entry_id: str, body: str | bytes) -> Stored:
    try:
        return entry_id, Entry.from_json(body)
    except Unreadable as exc:
        return entry_id, exc


class SqliteJournal:
    """Entries in one SQLite file, shared by every proxy on the host that names it."""

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS moves (id TEXT PRIMARY KEY, upstream TEXT NOT NULL, "
        "user TEXT NOT NULL, created REAL NOT NULL, body TEXT NOT NULL)"
    )

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = path
        self._synchronous = "FULL" if fsync else "NORMAL"
        self.description = f"SQLite {path}"
        self._db: sqlite3.Connection | None = None
        self._lock = trio.Lock()  # one call at a time on the connection

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[object]:
        try:
            yield self
        finally:
            if self._db is not None:
                self._db.close()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self._synchronous}")
                db.execute("PRAGMA busy_timeout=5000")
                db.execute(self._SCHEMA)
            except (OSError, sqlite3.Error) as exc:
                raise JournalError(f"cannot open {self.path}: {exc}") from exc
            self._db = db
        return self._db

    async def _call(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        def run() -> list[tuple[object, ...]]:
            try:
                return self._connect().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"{self.path}: {exc}") from exc

        async with self._lock:
            return await trio.to_thread.run_sync(run)

    async def put(self, namespace: str, entry: Entry) -> None:
        await self._call(
            "INSERT OR REPLACE INTO moves VALUES (?, ?, ?, ?, ?)",
            entry.id, namespace, entry.user.decode("latin-1"), entry.created, entry.to_json(),
        )  # fmt: skip

    async def remove(self, namespace: str, entry_id: str) -> None:
        await self._call("DELETE FROM moves WHERE upstream = ? AND id = ?", namespace, entry_id)

    async def pending(self, namespace: str, user: bytes) -> list[Stored]:
        rows = await self._call(
            "SELECT id, body FROM moves WHERE upstream = ? AND user = ? ORDER BY created",
            namespace, user.decode("latin-1"),
        )  # fmt: skip
        return [_read(str(entry_id), str(body)) for entry_id, body in rows]

    async def listing(self, namespaces: list[str]) -> list[tuple[str, Stored]]:
        marks = ", ".join("?" * len(namespaces))
        rows = await self._call(
            f"SELECT upstream, id, body FROM moves WHERE upstream IN ({marks}) ORDER BY created",
            *namespaces,
        )
        return [
            (str(upstream), _read(str(entry_id), str(body))) for upstream, entry_id, body in rows
        ]


# KEYS[1] entry, KEYS[2] the user's index, KEYS[3] the namespace's index; ARGV[1] id, ARGV[2] body
_PUT = """
redis.call('set', KEYS[1], ARGV[2])
redis.call('sadd', KEYS[2], ARGV[1])
redis.call('sadd', KEYS[3], ARGV[1])
return 1
"""
# the same keys; ARGV[1] id
_REMOVE = """
redis.call('del', KEYS[1])
redis.call('srem', KEYS[2], ARGV[1])
redis.call('srem', KEYS[3], ARGV[1])
return 1
"""


class RedisJournal:
    """Entries in Redis/Valkey: ``<prefix><namespace>:e:<id>`` holds one, ``...:u:<user>`` and
    ``<prefix><namespace>`` index them."""

    def __init__(self, url: str) -> None:
        from coredis.exceptions import RedisError

        from ..shell.locks import open_redis, redacted

        self.description = f"Redis {redacted(url)}"
        self._client: coredis.Redis[bytes]
        self._client, self._lifetime = open_redis(url)
        self._failures = (RedisError, OSError, trio.TooSlowError)
        self._put = self._client.register_script(_PUT)
        self._remove = self._client.register_script(_REMOVE)
        self._users: dict[str, bytes] = {}  # entry id -> user, for remove()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[object]:
        async with contextlib.AsyncExitStack() as stack:
            for context in self._lifetime:
                await stack.enter_async_context(context)
            yield self

    @staticmethod
    def _keys(namespace: str, entry_id: str, user: bytes) -> list[bytes]:
        index = REDIS_PREFIX + namespace.encode()
        return [index + b":e:" + entry_id.encode(), index + b":u:" + user.hex().encode(), index]

    async def _call(self, request: Awaitable[T]) -> T:
        try:
            with trio.fail_after(OPERATION_TIMEOUT):
                return await request
        except self._failures as exc:
            raise JournalError(f"{self.description}: {exc or type(exc).__name__}") from exc

    async def put(self, namespace: str, entry: Entry) -> None:
        self._users[entry.id] = entry.user
        keys = self._keys(namespace, entry.id, entry.user)
        await self._call(self._put(keys=keys, args=[entry.id, entry.to_json()]))

    async def remove(self, namespace: str, entry_id: str) -> None:
        user = self._users.pop(entry_id, None)
        if user is None:  # written by another process: its user is in the entry
            body = await self._call(self._client.get(self._keys(namespace, entry_id, b"")[0]))
            if body is None:
                return
            found = _read(entry_id, body)[1]
            user = found.user if isinstance(found, Entry) else b""
        keys = self._keys(namespace, entry_id, user)
        await self._call(self._remove(keys=keys, args=[entry_id]))

    async def _entries(self, namespace: str, ids: set[bytes]) -> list[Stored]:
        ordered = sorted(ids)
        if not ordered:
            return []
        keys = [self._keys(namespace, entry_id.decode(), b"")[0] for entry_id in ordered]
        bodies = await self._call(self._client.mget(keys))
        found = [
            _read(entry_id.decode(), body)
            for entry_id, body in zip(ordered, bodies, strict=True)
            if body is not None
        ]
        return sorted(found, key=lambda stored: _created(stored[1]))

    async def pending(self, namespace: str, user: bytes) -> list[Stored]:
        index = self._keys(namespace, "", user)[1]
        ids: set[bytes] = await self._call(self._client.smembers(index))
        return await self._entries(namespace, ids)

    async def listing(self, namespaces: list[str]) -> list[tuple[str, Stored]]:
        listed: list[tuple[str, Stored]] = []
        for namespace in namespaces:
            ids: set[bytes] = await self._call(
                self._client.smembers(self._keys(namespace, "", b"")[2])
            )
            listed += [(namespace, stored) for stored in await self._entries(namespace, ids)]
        return listed


def _created(entry: Entry | Unreadable) -> float:
    return entry.created if isinstance(entry, Entry) else 0.0


def open_journal(location: str, fsync: bool = True) -> Journal | None:
    """The journal at ``location`` (a SQLite path or a redis:// URL; see
    :attr:`..config.Config.journal_location`), or None for "off"."""
    if location == "off":
        return None
    if "://" in location:
        return RedisJournal(location)
    return SqliteJournal(Path(location), fsync)
