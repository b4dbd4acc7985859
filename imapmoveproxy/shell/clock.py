"""A connection's clock: every deadline it keeps, watched by the connection's own task.

The login deadline (``login_timeout``), a command line left unfinished (``line_timeout``), a MOVE
whose upstream stops answering (``move_step_timeout``), the drain of a client gone in the
middle of a MOVE (``drain_timeout``), and the grace a closing connection has to deliver its
last words. The task sleeps until the nearest deadline, or until something it depends on
changes (:meth:`Supervisor.key`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .connection import Connection

CLOSE_GRACE = 2.0  # seconds a closing connection has to deliver its last words


class Supervisor:
    """Ends the connection, or tells its session, when a deadline passes."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.watched: tuple[bool, ...] = ()  # :meth:`key` when the supervisor last looked

    async def run(self) -> None:
        """Return when the connection must end, after the session's last words are sent."""
        connection = self._connection
        session, config = connection.session, connection.config
        login_deadline = trio.current_time() + config.login_timeout
        closing_since = math.inf
        gone_since = math.inf
        while True:
            now = trio.current_time()
            if session.close_reason is not None or connection.upstream_gone:
                closing_since = min(closing_since, now)
                done = connection.delivered_to_client or connection.client_gone
                if done or now >= closing_since + CLOSE_GRACE:
                    return
                deadline = closing_since + CLOSE_GRACE
            elif connection.client_gone:
                gone_since = min(gone_since, now)
                if not session.moving or now >= gone_since + config.drain_timeout:
                    if session.moving:
                        connection.log.warning(
                            "client gone; MOVE not finished within drain_timeout"
                        )
                    return
                deadline = gone_since + config.drain_timeout
            elif session.line_pending and now >= connection.line_started + config.line_timeout:
                session.line_timed_out()
                connection.after_session()
                continue
            elif not session.authenticated:
                if now >= login_deadline:
                    session.login_timed_out()
                    connection.after_session()
                    continue
                deadline = login_deadline
            else:
                deadline = math.inf
            if session.line_pending:
                deadline = min(deadline, connection.line_started + config.line_timeout)
            if session.move_waits_for_upstream and session.close_reason is None:
                stall = connection.upstream_heard + config.move_step_timeout
                if now >= stall:
                    session.move_stalled()
                    connection.after_session()
                    continue
                deadline = min(deadline, stall)
            self.watched = self.key()
            if deadline == math.inf:
                await connection.watch.wait()
            else:
                with trio.move_on_at(deadline):
                    await connection.watch.wait()

    def key(self) -> tuple[bool, ...]:
        """What the deadlines depend on, besides times that only move later (a deadline
        computed from their old value makes the supervisor wake early and look again)."""
        connection = self._connection
        session = connection.session
        return (
            session.close_reason is not None or connection.upstream_gone,
            connection.client_gone,
            session.authenticated,
            session.line_pending and connection.line_started < math.inf,
            session.move_waits_for_upstream,
        )

    def changed(self) -> bool:
        """Whether the supervisor must look again (while closing it waits for the last words)."""
        key = self.key()
        return key[0] or key != self.watched
