"""A connection's clock: every deadline it keeps, watched by a task of its own.

The login deadline (``login_timeout``), a command line left unfinished (``line_timeout``), a MOVE
whose upstream stops answering (``move_step_timeout``), the drain of a client gone in the
middle of a MOVE (``drain_timeout``), and the grace a closing connection has to deliver its
last words. The task sleeps until the nearest deadline, or until something it depends on
changes (:class:`Watched`). It runs only while there is a deadline: a logged-in
connection with no unfinished line and no MOVE waiting has none, and no task for it either
(memory an idle connection keeps).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple

import trio

from .outlet import Signal

if TYPE_CHECKING:
    from .connection import Connection

CLOSE_GRACE = 2.0  # seconds a closing connection has to deliver its last words


class Watched(NamedTuple):
    """What the supervisor's deadlines depend on (:meth:`Supervisor.watched`), besides times
    that only move later (a deadline computed from their old value makes the supervisor wake
    early and look again). The supervisor looks again whenever it changes."""

    closing: bool  # the session said Close, or the upstream has gone: the grace to say BYE
    client_gone: bool  # the drain of a MOVE the client left
    logged_in: bool  # if not, the login deadline
    line_unfinished: bool  # the client began a line and has not ended it: the line deadline
    move_waits: bool  # a MOVE waits for the upstream's reply: the MOVE step's deadline

    @property
    def nothing_due(self) -> bool:
        """No deadline at all: logged in, not closing, the client there, no unfinished line,
        no MOVE waiting for the upstream (the supervisor then has no task)."""
        return not (
            self.closing
            or self.client_gone
            or not self.logged_in
            or self.line_unfinished
            or self.move_waits
        )


class Supervisor:
    """Ends the connection, or tells its session, when a deadline passes."""

    __slots__ = ("_connection", "_login_deadline", "_running", "_wake", "_watched")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._login_deadline = trio.current_time() + connection.config.login_timeout
        self._wake = Signal()  # a change the deadlines depend on
        self._watched: Watched | None = None  # :meth:`watched` when the supervisor last looked
        self._running = False

    def poke(self, nursery: trio.Nursery, task: Callable[[], Awaitable[None]]) -> None:
        """After a session step: wake the supervisor if what it watches changed, or start
        ``task`` (which runs :meth:`run`) if something is now due."""
        watched = self.watched()
        if self._running:
            if watched.closing or watched != self._watched:  # closing: the last words may be out
                self._wake.fire()
        elif not watched.nothing_due:
            self._running = True
            nursery.start_soon(task)

    async def run(self) -> bool:
        """True when the connection must end, after the session's last words are sent; False
        once nothing is due any more (:meth:`poke` starts the supervisor again)."""
        connection = self._connection
        session, config = connection.session, connection.config
        closing_since = math.inf
        gone_since = math.inf
        while True:
            now = trio.current_time()
            if connection.close_reason is not None or connection.upstream_gone:
                closing_since = min(closing_since, now)
                done = connection.delivered_to_client or connection.client_gone
                if done or now >= closing_since + CLOSE_GRACE:
                    return True
                deadline = closing_since + CLOSE_GRACE
            elif connection.client_gone:
                gone_since = min(gone_since, now)
                if not session.moving or now >= gone_since + config.drain_timeout:
                    if session.moving:
                        connection.log.warning(
                            "client gone; MOVE not finished within drain_timeout"
                        )
                    return True
                deadline = gone_since + config.drain_timeout
            elif session.line_pending and now >= connection.line_started + config.line_timeout:
                session.line_timed_out()
                connection.after_session()
                continue
            elif not session.authenticated:
                if now >= self._login_deadline:
                    session.login_timed_out()
                    connection.after_session()
                    continue
                deadline = self._login_deadline
            else:
                deadline = math.inf
            if session.line_pending and closing_since == gone_since == math.inf:
                # (closing or gone: the line's passed deadline would wake it again and again)
                deadline = min(deadline, connection.line_started + config.line_timeout)
            if session.move_waits_for_upstream and connection.close_reason is None:
                stall = connection.upstream_heard + config.move_step_timeout
                if now >= stall:
                    session.move_stalled()
                    connection.after_session()
                    continue
                deadline = min(deadline, stall)
            self._watched = self.watched()
            if self._watched.nothing_due:  # poke() starts the supervisor again when it is not
                self._running = False
                return False
            with trio.move_on_at(deadline):
                await self._wake.wait()

    def watched(self) -> Watched:
        """What the deadlines depend on, now."""
        connection = self._connection
        session = connection.session
        return Watched(
            connection.close_reason is not None or connection.upstream_gone,
            connection.client_gone,
            session.authenticated,
            session.line_pending and connection.line_started < math.inf,
            session.move_waits_for_upstream,
        )
