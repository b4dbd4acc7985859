"""The journal as the proxy uses it: the store the configuration names (:mod:`..journal.store`),
what a failure means (``journal_unavailable``), its metrics and log lines.

A SQLite journal belongs to one proxy process at a time (an exclusive ``flock`` on a file beside
it): a MOVE running in another process would otherwise look unfinished. Replicas share a
Redis/Valkey journal instead, where the MOVE lock tells a running MOVE from a dead one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import trio

from ..journal.entry import Entry, Unreadable
from ..journal.store import Journal, JournalError, SqliteJournal, open_journal
from ..move.resume import ResumeSession, Verdict
from ..move.rollback import Credentials
from .locks import LockError
from .second import run_second_session

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import Metrics
    from .backends import Backend
    from .server import Proxy

log = logging.getLogger(__name__)

WARNING_INTERVAL = 60.0  # journal failures are logged at most once a minute (all are counted)
GAUGE_INTERVAL = 30.0  # how often the pending entries are counted for the metrics


class JournalKeeper:
    """The proxy's journal, or none (``journal = "off"``). Each call names the namespace of
    the entry's server (:attr:`.backends.Backend.journal_namespace`); ``namespaces`` are all
    of this proxy's, for the metrics."""

    def __init__(self, config: Config, metrics: Metrics, namespaces: list[str]) -> None:
        self._store: Journal | None = open_journal(config.journal_location, config.journal_fsync)
        self._proceed = config.journal_unavailable == "proceed"
        self._metrics = metrics
        self._warned_at: float | None = None
        self._broken: str | None = None  # why every call fails (the file is someone else's)
        self.namespaces = namespaces

    @property
    def on(self) -> bool:
        return self._store is not None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        store = self._store
        if store is None:
            yield
            return
        async with contextlib.AsyncExitStack() as stack:
            if isinstance(store, SqliteJournal):
                stack.enter_context(self._exclusive(store))
            await stack.enter_async_context(store.running())
            log.info("MOVE journal: %s", store.description)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._count_pending, store)
                yield
                nursery.cancel_scope.cancel()

    @contextlib.contextmanager
    def _exclusive(self, store: SqliteJournal) -> Iterator[None]:
        path = store.path.with_name(store.path.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("a")
        except OSError as exc:
            self._broken = f"cannot open {path}: {exc.strerror}"
            self._failed("cannot use the journal", JournalError(self._broken))
            yield
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._broken = f"{store.path} is in use by another proxy process"
                self._failed("cannot use the journal", JournalError(self._broken))
            yield

    async def record(self, namespace: str, entry: Entry) -> bool:
        """Write ``entry``; whether the MOVE may go on (written, or the policy is to proceed)."""
        try:
            await self._call().put(namespace, entry)
        except JournalError as exc:
            self._failed("cannot record a MOVE", exc)
            return self._proceed
        return True

    async def forget(self, namespace: str, entry_id: str) -> None:
        try:
            await self._call().remove(namespace, entry_id)
        except JournalError as exc:  # recovery at the next login finds nothing left to do
            self._failed("cannot remove a finished MOVE's entry", exc)

    async def pending(self, namespace: str, user: bytes) -> list[Entry]:
        """The user's readable entries (those unreadable are reported, and left alone)."""
        try:
            stored = await self._call().pending(namespace, user)
        except JournalError as exc:
            self._failed("cannot read the journal at login", exc)
            return []
        entries = []
        for entry_id, entry in stored:
            if isinstance(entry, Unreadable):
                self._metrics.journal_recoveries.labels("unreadable").inc()
                log.warning("journal entry %s left alone: %s", entry_id, entry)
            else:
                entries.append(entry)
        return entries

    async def settle(self, namespace: str, verdicts: list[Verdict], conn: str) -> None:
        """Log each recovery, count it, and remove the entries it finished with."""
        for verdict in verdicts:
            entry = verdict.entry
            self._metrics.journal_recoveries.labels(verdict.outcome.value).inc()
            log.log(
                logging.WARNING if verdict.kept else logging.INFO,
                "[%s] journal recovery of MOVE %s (%s: %d UIDs of %r to %r, phase %s): %s%s%s",
                conn, entry.id, entry.user.decode("latin-1"), len(entry.uids),
                entry.source.decode("latin-1"), entry.target.decode("latin-1"),
                entry.phase.value, verdict.outcome.value,
                f", {verdict.moved} moved" if verdict.moved else "",
                f" ({verdict.detail})" if verdict.detail else "",
            )  # fmt: skip
            if not verdict.kept:
                await self.forget(namespace, entry.id)

    async def unfinished(self, namespace: str) -> list[Entry]:
        """The readable entries of ``namespace``."""
        try:
            listed = await self._call().listing([namespace])
        except JournalError as exc:
            self._failed("cannot read the journal", exc)
            return []
        return [entry for _, (_, entry) in listed if isinstance(entry, Entry)]

    def _call(self) -> Journal:
        store = self._store
        assert store is not None
        if self._broken is not None:
            raise JournalError(self._broken)
        return store

    def _failed(self, what: str, exc: JournalError) -> None:
        self._metrics.journal_errors.inc()
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARNING_INTERVAL:
            self._warned_at = now
            then = "MOVEs go on without it" if self._proceed else "MOVEs are refused"
            log.warning("%s: %s (%s)", what, exc, then)

    async def _count_pending(self, store: Journal) -> None:
        while True:
            with contextlib.suppress(JournalError):
                if self._broken is None:
                    listed = [entry for _, (_, entry) in await store.listing(self.namespaces)]
                    now = time.time()
                    ages = [now - entry.created for entry in listed if isinstance(entry, Entry)]
                    self._metrics.journal_pending.set(len(listed))
                    self._metrics.journal_oldest.set(max(ages, default=0.0))
            await trio.sleep(GAUGE_INTERVAL)


SWEEP_INTERVAL = 300.0  # seconds between two looks at the journal (rollback = "master")


async def sweep(proxy: Proxy) -> None:
    """With master credentials (``rollback = "master"``): finish the journal's unfinished
    entries without waiting for their users' next login, at start-up and every
    ``SWEEP_INTERVAL`` seconds. A user with a session on this proxy is left to it (the next
    login), and each user's entries are finished under their mailboxes' locks, as at login: an
    entry of a MOVE running on another replica is gone once its lock is had."""
    keeper = proxy.journal
    while True:
        for backend in proxy.backends.values():
            namespace = backend.journal_namespace
            users = {entry.user for entry in await keeper.unfinished(namespace)}
            for user in sorted(users - proxy.users_connected(backend)):
                await finish_user(proxy, backend, user)
        await trio.sleep(SWEEP_INTERVAL)


async def finish_user(proxy: Proxy, backend: Backend, user: bytes) -> list[Verdict]:
    """Recover ``user``'s entries on ``backend`` through its master login, under their
    mailboxes' locks; what became of each."""
    config = backend.config
    login = (config.rollback_master_user or "").encode()
    credentials = Credentials(user, login, (config.rollback_master_password or "").encode(), True)
    namespace = backend.journal_namespace
    async with locked_entries(proxy, backend, user) as entries:
        if not entries:
            return []
        session = ResumeSession(entries, credentials, config.max_set_bytes)
        error = await run_second_session(backend, session, None, config.rollback_timeout)
        if error or session.error:
            log.warning(
                "journal recovery of %s without a login: %s",
                user.decode("latin-1"), error or session.error,
            )  # fmt: skip
        await proxy.journal.settle(namespace, session.verdicts, "sweep")
        return session.verdicts


@contextlib.asynccontextmanager
async def locked_entries(
    proxy: Proxy, backend: Backend, user: bytes
) -> AsyncIterator[list[Entry] | None]:
    """``user``'s unfinished entries on ``backend``, each source mailbox's MOVE lock held until
    the block ends (None: a lock could not be had in time). They are read again once the
    locks are held: a MOVE still running elsewhere held one, and its entry is gone by then."""
    keeper, namespace = proxy.journal, backend.journal_namespace
    entries = await keeper.pending(namespace, user)
    keys = sorted({entry.source_validity for entry in entries})
    async with contextlib.AsyncExitStack() as stack:
        try:
            for key in keys:
                await stack.enter_async_context(proxy.locks.hold(backend.lock_prefix + key))
        except LockError as exc:
            log.warning("journal recovery of %s postponed: %r", user.decode("latin-1"), exc)
            yield None
            return
        again = await keeper.pending(namespace, user) if keys else []
        yield [entry for entry in again if entry.source_validity in keys]
