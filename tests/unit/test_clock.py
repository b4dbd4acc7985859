"""The connection's clock (imapmoveproxy/shell/clock.py), on trio's MockClock: no sockets and no
real time. The supervisor watches a stand-in of the connection that has exactly the members
clock.py reads, around a real sans-IO session (tests/driver.py); what the tests look at is what
the client would see (the BYE, when the connection ends), never the supervisor's own state.

Time moves only by ``MockClock.jump``; :func:`advance` then lets every task that is due run."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import trio
import trio.testing
from driver import Driver, greeted, started

from imapmoveproxy.config import Address, Config
from imapmoveproxy.engine.effects import Close
from imapmoveproxy.shell.clock import CLOSE_GRACE, Supervisor

from .settle import settle

# Distinct values, so that a deadline taken from the wrong setting shows.
CONFIG = Config(
    upstream=Address("127.0.0.1", 143),
    login_timeout=50.0,
    line_timeout=20.0,
    move_step_timeout=90.0,
    drain_timeout=30.0,
)
EPSILON = 2.0**-10  # exact in binary: the times add up exactly

AUTOLOGOUT = b"* BYE Autologout: no login in time.\r\n"
LINE_LATE = b"* BYE Line not finished in time.\r\n"
STALLED = b"* BYE [UNAVAILABLE] The mail server stopped answering.\r\n"
UPSTREAM_LOST = b"* BYE Mail server connection lost.\r\n"


class Supervised:
    """What :class:`Supervisor` supervises, as connection.py provides it, without sockets: the
    client reads what the session queued for it whenever the session has run (unless
    ``client_reads`` is False), and the supervisor's task reports when the connection ends."""

    def __init__(self, driver: Driver, nursery: trio.Nursery, config: Config = CONFIG) -> None:
        # The members clock.py uses.
        self.session = driver.session
        self.config = config
        self.log = logging.LoggerAdapter(logging.getLogger("test_clock"), {"conn": "t"})
        self.upstream_gone = False
        self.close_reason: str | None = None  # the session's Close, as connection.py keeps it
        self.client_gone = False
        self.line_started = math.inf
        self.upstream_heard = trio.current_time()
        # The test's side.
        self.driver = driver
        self.nursery = nursery
        self.client_reads = True
        self.client_saw = b""
        self.ended_at: float | None = None  # when the supervisor ended the connection
        self.stopped = 0  # supervisor runs that ended with nothing due
        self.clock = Supervisor(self)  # type: ignore[arg-type]

    @property
    def delivered_to_client(self) -> bool:
        return not self.session.output.pending_to_client

    def after_session(self) -> None:
        for close in self.driver.take(Close):
            self.close_reason = close.reason
        if self.client_reads:
            self.client_saw += self.driver.seen()
        self.clock.poke(self.nursery, self._supervise)

    async def _supervise(self) -> None:
        if await self.clock.run():
            assert self.ended_at is None, "the connection was ended twice"
            self.ended_at = trio.current_time()
        else:
            self.stopped += 1

    # ------------------------------------------------------------------ the peers act

    def client(self, data: bytes) -> None:
        """Client bytes; a line has its time from its first byte (connection.py keeps it)."""
        pending_before = self.session.line_pending
        sent = self.driver.client(data)
        if not self.session.line_pending:
            self.line_started = math.inf
        elif not pending_before or b"\n" in data:
            self.line_started = trio.current_time()
        if sent:
            self.upstream_heard = trio.current_time()
        self.after_session()

    def upstream(self, data: bytes) -> None:
        self.upstream_heard = trio.current_time()
        self.driver.upstream(data)
        self.after_session()

    def client_leaves(self) -> None:
        self.client_gone = True
        self.after_session()

    def byes(self) -> list[bytes]:
        self.client_saw += self.driver.seen() if self.client_reads else b""
        return [line + b"\r\n" for line in self.client_saw.split(b"\r\n") if b"* BYE" in line]


async def advance(clock: trio.testing.MockClock, seconds: float) -> None:
    """Let what the last events started run, move the clock on, and let whatever is due run."""
    await settle()
    clock.jump(seconds)
    await settle()


async def up_to(clock: trio.testing.MockClock, conn: Supervised, seconds: float) -> None:
    """Move the clock ``seconds`` on: up to an instant before, nothing has been sent or ended."""
    await advance(clock, seconds - EPSILON)
    assert conn.byes() == []
    assert conn.ended_at is None
    await advance(clock, EPSILON)


@pytest.fixture
def clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    return mock_clock


# ---------------------------------------------------------------------- login_timeout


async def test_login_deadline_ends_a_connection_that_never_logs_in(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    start = trio.current_time()
    conn = Supervised(greeted(), nursery)
    conn.after_session()  # as Connection.run does: not logged in, the login deadline is due
    await up_to(clock, conn, CONFIG.login_timeout)
    assert conn.byes() == [AUTOLOGOUT]
    assert conn.session.close_reason == "no login in time"
    assert conn.ended_at == pytest.approx(start + CONFIG.login_timeout)


async def test_login_deadline_is_kept_however_busy_the_client_is(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """Commands that are not a login do not move the login deadline."""
    start = trio.current_time()
    conn = Supervised(greeted(), nursery)
    conn.after_session()
    for number in range(4):
        await advance(clock, CONFIG.login_timeout / 5)
        conn.client(b"n%d NOOP\r\n" % number)
        conn.upstream(b"n%d OK done\r\n" % number)
    await advance(clock, CONFIG.login_timeout / 5)
    assert conn.byes() == [AUTOLOGOUT]
    assert conn.ended_at == pytest.approx(start + CONFIG.login_timeout)


async def test_a_login_in_time_ends_the_supervisor_and_nobody_is_logged_out(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    conn = Supervised(greeted(), nursery)
    conn.after_session()
    await advance(clock, CONFIG.login_timeout / 2)
    conn.client(b"a LOGIN user pass\r\n")
    conn.upstream(b"a OK Logged in\r\n")
    await settle()
    assert conn.stopped == 1  # nothing due any more: the supervisor's task has ended
    await advance(clock, CONFIG.login_timeout * 10)
    assert conn.byes() == []
    assert conn.ended_at is None
    assert b"a OK Logged in" in conn.client_saw


# ---------------------------------------------------------------------- line_timeout


async def test_a_line_left_unfinished_past_line_timeout_ends_the_connection(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    conn = Supervised(started(), nursery)
    conn.after_session()
    start = trio.current_time()
    conn.client(b"s SEARCH TEXT ")
    await advance(clock, CONFIG.line_timeout / 2)
    conn.client(b"hello")  # a line that grows is still late
    await up_to(clock, conn, CONFIG.line_timeout / 2)
    assert conn.byes() == [LINE_LATE]
    assert conn.session.close_reason == "client line not finished in time"
    assert conn.ended_at == pytest.approx(start + CONFIG.line_timeout)
    assert b"SEARCH" not in conn.driver.sent()  # the unfinished command never went upstream


async def test_nothing_due_ends_the_supervisor_and_poke_starts_it_again(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    conn = Supervised(started(), nursery)
    conn.after_session()
    conn.client(b"s SEARCH TEXT ")
    await advance(clock, CONFIG.line_timeout - 1)
    conn.client(b"hello\r\n")  # finished in time: nothing is due any more
    await settle()
    assert conn.stopped == 1
    conn.upstream(b"* SEARCH\r\ns OK done\r\n")
    await advance(clock, CONFIG.line_timeout * 10)  # an idle connection is never cut off
    assert conn.byes() == []
    assert b"s OK done" in conn.client_saw
    # A new unfinished line: poke() starts the supervisor again, with the line's own time.
    start = trio.current_time()
    conn.client(b"t NO")
    await up_to(clock, conn, CONFIG.line_timeout)
    assert conn.byes() == [LINE_LATE]
    assert conn.ended_at == pytest.approx(start + CONFIG.line_timeout)


async def test_a_logged_in_connection_with_nothing_due_starts_no_supervisor(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    conn = Supervised(started(), nursery)
    conn.after_session()
    conn.client(b"n NOOP\r\n")
    conn.upstream(b"n OK done\r\n")
    await settle()
    assert conn.stopped == 0  # never started, so never stopped
    await advance(clock, 1e6)
    assert conn.byes() == []
    assert conn.ended_at is None


# ---------------------------------------------------------------------- move_step_timeout


def _moving(nursery: trio.Nursery, config: Config = CONFIG) -> Supervised:
    """A logged-in connection whose client has just sent a MOVE the upstream must answer."""
    conn = Supervised(started(), nursery, config)
    conn.after_session()
    conn.client(b"m UID MOVE 1:2 Trash\r\n")
    assert conn.session.move_waits_for_upstream, conn.driver.commands
    return conn


async def test_a_move_step_unanswered_past_move_step_timeout_ends_the_connection(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    start = trio.current_time()
    conn = _moving(nursery)
    await up_to(clock, conn, CONFIG.move_step_timeout)
    assert conn.byes() == [STALLED]
    assert conn.session.close_reason == "the mail server stopped answering during a MOVE"
    assert b"m OK" not in conn.client_saw
    assert conn.ended_at == pytest.approx(start + CONFIG.move_step_timeout)


async def test_each_upstream_answer_gives_the_move_step_its_time_again(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    conn = _moving(nursery)
    await advance(clock, CONFIG.move_step_timeout - 1)
    conn.upstream(conn.driver.tagged(b"NOOP", b"OK"))  # part of the answer: heard from
    assert conn.session.move_waits_for_upstream
    heard = trio.current_time()
    await up_to(clock, conn, CONFIG.move_step_timeout)
    assert conn.byes() == [STALLED]
    assert conn.ended_at == pytest.approx(heard + CONFIG.move_step_timeout)


# ---------------------------------------------------------------------- client gone, drain


async def test_a_client_gone_with_nothing_running_ends_the_connection_at_once(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    conn = Supervised(started(), nursery)
    conn.after_session()
    gone = trio.current_time()
    conn.client_leaves()
    await settle()
    assert conn.ended_at == gone


async def test_a_client_gone_during_a_move_waits_drain_timeout_for_it(
    clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    conn = _moving(nursery)
    await advance(clock, 1)
    gone = trio.current_time()
    conn.client_leaves()
    await advance(clock, CONFIG.drain_timeout / 2)
    conn.upstream(conn.driver.tagged(b"NOOP", b"OK"))  # the MOVE goes on meanwhile
    await up_to(clock, conn, CONFIG.drain_timeout / 2)
    assert conn.ended_at == pytest.approx(gone + CONFIG.drain_timeout)
    assert "MOVE not finished within drain_timeout" in caplog.text


async def test_a_move_stalled_after_its_client_left_ends_before_drain_timeout(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    config = dataclasses.replace(CONFIG, move_step_timeout=10.0, drain_timeout=100.0)
    start = trio.current_time()
    conn = _moving(nursery, config)
    conn.client_leaves()
    await up_to(clock, conn, config.move_step_timeout)
    assert conn.session.close_reason == "the mail server stopped answering during a MOVE"
    assert conn.ended_at == pytest.approx(start + config.move_step_timeout)


# ---------------------------------------------------------------------- closing grace


async def test_a_closing_connection_ends_once_its_bye_is_delivered(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    conn = Supervised(started(), nursery)
    conn.after_session()
    closed = trio.current_time()
    conn.upstream_gone = True
    conn.session.upstream_closed()
    conn.after_session()
    await settle()
    assert conn.byes() == [UPSTREAM_LOST]
    assert conn.ended_at == closed


async def test_a_client_that_does_not_read_its_bye_has_close_grace(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    conn = Supervised(started(), nursery)
    conn.after_session()
    conn.client_reads = False
    closed = trio.current_time()
    conn.upstream_gone = True
    conn.session.upstream_closed()
    conn.after_session()
    await up_to(clock, conn, CLOSE_GRACE)
    assert conn.ended_at == pytest.approx(closed + CLOSE_GRACE)


async def test_a_bye_delivered_during_the_grace_ends_the_connection_then(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    conn = Supervised(started(), nursery)
    conn.after_session()
    conn.client_reads = False
    conn.upstream_gone = True
    conn.session.upstream_closed()
    conn.after_session()
    await advance(clock, CLOSE_GRACE / 2)
    assert conn.ended_at is None
    conn.client_reads = True  # the client reads at last
    delivered = trio.current_time()
    conn.after_session()
    await settle()
    assert conn.byes() == [UPSTREAM_LOST]
    assert conn.ended_at == delivered


async def test_the_supervisor_sleeps_through_the_grace_after_a_line_timeout(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    conn = Supervised(started(), nursery)
    conn.after_session()
    conn.client_reads = False  # a client that sends half a line and reads nothing
    start = trio.current_time()
    conn.client(b"s SEARCH TEXT ")
    await advance(clock, CONFIG.line_timeout)  # fails if the supervisor never blocks
    assert conn.session.close_reason == "client line not finished in time"
    assert conn.ended_at is None  # the grace: the BYE is not read
    await advance(clock, CLOSE_GRACE)
    assert conn.ended_at == pytest.approx(start + CONFIG.line_timeout + CLOSE_GRACE)
