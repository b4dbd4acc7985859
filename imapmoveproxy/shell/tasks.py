"""The tasks a connection runs for its MOVEs, beside the tasks that move its bytes.

* A MOVE the session says is ready (:class:`..engine.effects.MoveReady`) starts under the
  source mailbox's lock (:mod:`.locks`),
  held until the MOVE's tagged reply. A lock free in this process is taken and given back
  right there, by whoever ran the session; otherwise the MOVE task waits for it (a lock that
  cannot be had becomes the MOVE's tagged NO).
* The journal (:mod:`.journal`): a MOVE's entry written before the MOVE goes on; at login, the
  user's unfinished entries handed to the session under their mailboxes' locks, and what the
  recovery did with them settled once it is over.
* Second sessions of the client's user, each over a new upstream connection bounded by
  ``rollback_timeout``, while the MOVE waits for them: the rollback that removes a failed
  MOVE's copies, and the check that restores the flags a server's COPY lost (guarded MOVEs).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from ..engine.effects import CheckFlags, FinishedMove, RunRollback
from ..journal.entry import Entry
from ..move.copyflags import FlagCheckRequest, FlagRestore
from ..move.request import RollbackRequest
from ..move.rollback import Credentials, Rollback, SecondSession
from .journal import locked_entries
from .locks import LockError
from .second import run_second_session

if TYPE_CHECKING:
    from .connection import Connection


class MoveTasks:
    """Starts, for one connection, the tasks its session asks for."""

    __slots__ = ("_connection", "_held", "_locking", "_ready", "_started", "flag_checks")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._locking = False  # a task holds (or waits for) the mailbox lock for a MOVE
        self._held: bytes | None = None  # the lock taken at once for the running MOVE (no task)
        self._ready: bytes | None = None  # the lock the MOVE announced ready waits for
        self.flag_checks = 0  # second sessions checking a MOVE's copies, still running
        self._started: float | None = None  # when the running MOVE began upstream

    def ready(self, key: bytes) -> None:
        """A MOVE waits only for the lock ``key`` (:meth:`start_due` starts it)."""
        self._ready = key

    def rollback(self, nursery: trio.Nursery, effect: RunRollback) -> None:
        nursery.start_soon(self._rollback, effect.request, effect.credentials)

    def check_flags(self, nursery: trio.Nursery, effect: CheckFlags) -> None:
        self.flag_checks += 1
        nursery.start_soon(self._check_flags, effect.request, effect.credentials)

    def start_due(self, nursery: trio.Nursery) -> bool:
        """Start the MOVE announced ready once no other holds a lock; whether it was started
        right here (its lock free in this process)."""
        key = self._ready
        if key is None or self._locking or self._held is not None:
            return False
        self._ready = None
        if self._connection.proxy.locks.take_now(key):
            self._held = key
            self._begin()
            self._release_when_done()  # answered at once (bad syntax, read-only...)
            return True
        self._locking = True
        nursery.start_soon(self._run_move, key)
        return False

    def release(self) -> None:
        """The connection ends: give back the lock taken at once, if still held."""
        if self._held is not None:
            self._connection.proxy.locks.release(self._held)
            self._held = None

    def _release_when_done(self) -> None:
        if self._held is not None and not self._connection.session.move_running:
            self.release()

    def _begin(self) -> None:
        """Start the ready MOVE, its lock held."""
        connection = self._connection
        self._started = time.monotonic()
        connection.upstream_heard = trio.current_time()
        connection.session.start_move()

    def finished(self, move: FinishedMove) -> None:
        """A MOVE was answered: give back its lock taken at once, and count it with the time
        it took."""
        self._release_when_done()
        started, self._started = self._started, None
        elapsed = None if started is None else time.monotonic() - started
        self._connection.proxy.metrics.move_done(move, elapsed, self._connection.backend.name)

    async def _run_move(self, key: bytes) -> None:
        """Hold the source mailbox's lock from the MOVE's start to its tagged reply."""
        connection = self._connection
        session = connection.session
        try:
            async with connection.proxy.locks.hold(key):
                self._begin()
                connection.after_session()
                await connection.changed.until(lambda: not session.move_running)
        except LockError as exc:
            connection.log.warning("MOVE refused: %s", type(exc).__name__)
            session.refuse_move(exc.code, exc.text)
        finally:
            self._locking = False
        connection.after_session()  # the commands pipelined behind, a next MOVE among them

    async def record(self, entry: Entry) -> None:
        """Write a MOVE's journal entry; the MOVE goes on once it is durable."""
        connection = self._connection
        journal = connection.proxy.journal
        durable = await journal.record(connection.backend.journal_namespace, entry)
        connection.session.move_recorded(durable)
        connection.after_session()

    async def forget(self, entry_id: str) -> None:
        connection = self._connection
        await connection.proxy.journal.forget(connection.backend.journal_namespace, entry_id)

    async def resume(self, user: bytes) -> None:
        """Hand the session the user's unfinished entries under their mailboxes' locks
        (:func:`.journal.locked_entries`), held until the recovery is over, then settle them."""
        connection = self._connection
        session, backend = connection.session, connection.backend
        async with locked_entries(connection.proxy, backend, user) as entries:
            session.resume_entries(entries or [])
            connection.after_session()
            if not entries:
                return
            await connection.changed.until(
                lambda: session.resumes.settling or session.close_reason is not None
            )
            verdicts, session.resumes.verdicts = session.resumes.verdicts, []
            journal = connection.proxy.journal
            await journal.settle(backend.journal_namespace, verdicts, session.conn_id)
            session.resume_settled()
            connection.after_session()

    async def _rollback(self, request: RollbackRequest, credentials: Credentials) -> None:
        """Run the second session that removes a failed MOVE's copies."""
        connection = self._connection
        rollback = Rollback(request, credentials, connection.config.max_set_bytes)
        error = await self._run_second(rollback)
        unfinished = None if rollback.done else "second session did not finish"
        error = error or rollback.error or unfinished
        connection.session.rollback_finished(error, rollback.missing)
        connection.after_session()

    async def _check_flags(self, request: FlagCheckRequest, credentials: Credentials) -> None:
        """Run the second session that checks (and restores) the flags of a MOVE's copies."""
        connection = self._connection
        try:
            restore = FlagRestore(request, credentials, connection.config.max_set_bytes)
            error = await self._run_second(restore)
            result, detail = restore.outcome()
            if error is not None and restore.ending:  # its work was done, the rest is not known
                connection.log.warning(
                    "%s: the server may still write its view of %r after the MOVE's reply",
                    error,
                    request.mailbox.decode("utf-8", "replace"),
                )
            connection.session.flag_check_finished(result, "; ".join(filter(None, (detail, error))))
            connection.after_session()
        finally:
            self.flag_checks -= 1
            connection.changed.fire()

    async def _run_second(self, peer: SecondSession) -> str | None:
        """Drive ``peer`` (:func:`run_second_session`), bounded by ``rollback_timeout``."""
        connection = self._connection
        try:
            return await run_second_session(
                connection.backend, peer, connection.addresses, connection.config.rollback_timeout
            )
        finally:
            connection.upstream_heard = trio.current_time()  # the MOVE waits for its upstream
