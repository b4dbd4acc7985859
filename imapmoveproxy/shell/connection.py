"""One client connection in trio: four tasks around a sans-IO :class:`.session.Session`.

Each stream has one task that reads it and one that writes it, and no lock or buffer is shared
by the two directions:

* the client reader feeds client bytes to the session while the session's backlogs (bytes for
  either peer, client bytes not looked at yet) are under their bound; otherwise it waits, and the
  client's own TCP window then stops the client (backpressure, never memory);
* the upstream reader feeds upstream bytes while the bytes for the client are under the bound;
  it never waits for the upstream writer, so a server that stops reading while it writes (as
  every server does when its output is full) is always read from;
* the two writers send whatever the session has queued for their peer.

On a round trip the writers are not even woken: the task that ran the session writes the output
straight to a plain socket whose writer is idle, as much as the socket takes without waiting, and
leaves only the rest to that writer (so a peer that does not read still never stops the other
direction). A command and its reply then cost one task step each way (bench/latency.py).

The connection's own task watches the clock: the login deadline, a MOVE whose upstream stops
answering, the drain of a client gone in the middle of a MOVE, and the last words of a connection
that is closing. Every decision about the protocol is the session's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from ..engine.session import Session
from ..move.copyflags import FlagCheck, FlagRestore, Result
from ..move.request import RollbackRequest
from ..move.rollback import Credentials, Rollback, SecondSession
from ..wire.proxyproto import Endpoint
from .locks import LockError
from .tls import UpstreamUnavailable

if TYPE_CHECKING:
    from .server import Proxy

log = logging.getLogger(__name__)

# Bytes asked of the kernel per read: large reads halve the per-byte cost of bulk relaying
# (bench/), and memory is only taken while data is actually there. A reader asks for the large
# size only after a read that filled the small one: a buffer of 1 MiB is allocated by mmap and
# shrunk by mremap, three system calls per read that a round trip does not need.
RECEIVE_SIZE = 1024 * 1024
SMALL_RECEIVE = 64 * 1024  # below glibc's mmap threshold (128 KiB)
UNAVAILABLE = b"* BYE [UNAVAILABLE] Upstream server not available, try again later.\r\n"
CLOSE_GRACE = 2.0  # seconds a closing connection has to deliver its last words


class Signal:
    """Wakes every task waiting on it; a task re-checks its own condition after waking. Firing
    a signal that no task waits on costs nothing."""

    __slots__ = ("_event", "_waiting")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._waiting = 0

    def fire(self) -> None:
        if self._waiting:
            self._event.set()
            self._event = trio.Event()

    async def wait(self) -> None:
        self._waiting += 1
        try:
            await self._event.wait()
        finally:
            self._waiting -= 1

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.wait()


class Connection:
    """Moves bytes between one client, its session and its upstream connection."""

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
        # Each waiter has its own signal, so that a session step wakes only who can act on it.
        self._changed = Signal()  # room in the backlogs, output delivered, a MOVE's end
        self._client_work = Signal()  # bytes for the client writer
        self._upstream_work = Signal()  # bytes for the upstream writer
        self._watch = Signal()  # a change the supervisor's deadline depends on (_watch_key)
        self._watched: tuple[bool, ...] = ()  # _watch_key() when the supervisor last looked
        self._client_send = trio.Lock()  # the client writer, or a TLS handshake with the client
        self._sending_client = 0  # bytes the client writer is sending now
        self._sending_upstream = False
        # The sockets written directly while their writer is idle (None: TLS, or not a socket),
        # and what such a write left for the writer.
        self._client_fd = _plain_fd(client)
        self._upstream_fd = _plain_fd(upstream)
        self._client_rest: bytes | bytearray | memoryview = b""
        self._upstream_rest: bytes | bytearray | memoryview = b""
        self._client_gone = False
        self._upstream_gone = False
        self._upstream_heard = trio.current_time()  # when upstream bytes last went or came
        self._line_started = math.inf  # when the client began the line it has not finished
        self._move_task = False  # a task holds (or waits for) the mailbox lock for a MOVE
        self._nursery: trio.Nursery | None = None
        self._commands_counted = 0
        self._expunged_counted = 0  # session.counters.expunged_rewritten already counted
        self._move_started: float | None = None
        self._flag_checks = 0  # second sessions checking a MOVE's copies, still running

    def shutdown(self) -> None:
        """The proxy is stopping: BYE now, or once the MOVE in progress has finished."""
        self.session.shutdown()
        self._after_session()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._read_upstream)
                nursery.start_soon(self._read_client)
                nursery.start_soon(self._write_upstream)
                nursery.start_soon(self._write_client)
                await self._supervise()
                # Bounded by rollback_timeout each: a MOVE's flags are restored even when the
                # client logs out at once.
                await self._changed.until(lambda: not self._flag_checks)
                nursery.cancel_scope.cancel()
        except Exception:  # a bug must cost one connection, never the proxy
            self._log.exception("internal error, closing the connection")
            self.session.close_reason = "internal error"
            await bye_and_close(self.client, b"* BYE [SERVERBUG] Internal proxy error.\r\n")
        finally:
            self._nursery = None  # closed: shutdown() and rollbacks start nothing more
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                await trio.aclose_forcefully(self.upstream)
                if self.session.close_reason and not self._client_gone:
                    await _linger(self.client)  # let the client read its BYE
                await trio.aclose_forcefully(self.client)

    # ------------------------------------------------------------------ the clock

    async def _supervise(self) -> None:
        """Return when the connection must end, after the session's last words are sent."""
        session, config = self.session, self.config
        login_deadline = trio.current_time() + config.login_timeout
        closing_since = math.inf
        gone_since = math.inf
        while True:
            now = trio.current_time()
            if session.close_reason is not None or self._upstream_gone:
                closing_since = min(closing_since, now)
                done = self._delivered_to_client or self._client_gone
                if done or now >= closing_since + CLOSE_GRACE:
                    return
                deadline = closing_since + CLOSE_GRACE
            elif self._client_gone:
                gone_since = min(gone_since, now)
                if not session.moving or now >= gone_since + config.drain_timeout:
                    if session.moving:
                        self._log.warning("client gone; MOVE not finished within drain_timeout")
                    return
                deadline = gone_since + config.drain_timeout
            elif session.line_pending and now >= self._line_started + config.line_timeout:
                session.line_timed_out()
                self._after_session()
                continue
            elif not session.authenticated:
                if now >= login_deadline:
                    session.login_timed_out()
                    self._after_session()
                    continue
                deadline = login_deadline
            else:
                deadline = math.inf
            if session.line_pending:
                deadline = min(deadline, self._line_started + config.line_timeout)
            if session.move_waits_for_upstream and session.close_reason is None:
                stall = self._upstream_heard + config.move_step_timeout
                if now >= stall:
                    session.move_stalled()
                    self._after_session()
                    continue
                deadline = min(deadline, stall)
            self._watched = self._watch_key()
            if deadline == math.inf:
                await self._watch.wait()
            else:
                with trio.move_on_at(deadline):
                    await self._watch.wait()

    def _watch_key(self) -> tuple[bool, ...]:
        """What the supervisor's deadline depends on, besides times that only move later (a
        deadline computed from their old value makes it wake early and look again)."""
        session = self.session
        return (
            session.close_reason is not None or self._upstream_gone,
            self._client_gone,
            session.authenticated,
            session.line_pending and self._line_started < math.inf,
            session.move_waits_for_upstream,
        )

    @property
    def _delivered_to_client(self) -> bool:
        return not (self.session.pending_to_client or self._sending_client or self._client_rest)

    # ------------------------------------------------------------------ readers

    async def _read_upstream(self) -> None:
        session = self.session
        with trio.move_on_after(self.config.connect_timeout) as greeting_wait:
            data = self._greeting or await self._receive(self.upstream)
        if greeting_wait.cancelled_caught:
            self._log.warning("upstream %s sent no greeting in time", self.config.upstream)
            await self._send(self.client, UNAVAILABLE)
            self._client_gone = True  # nothing more for it: end now
            self._after_session()
            return
        counted = self._proxy.metrics.bytes_from_upstream
        backlog = session.settings.backlog

        def room() -> bool:
            return session.ready_to_client < backlog

        size = SMALL_RECEIVE
        while data:
            size = RECEIVE_SIZE if len(data) >= size else SMALL_RECEIVE
            self._upstream_heard = trio.current_time()
            counted.inc(len(data))
            session.receive_upstream(data)
            self._after_session()
            # Backpressure: a client that does not read stops us reading the upstream. (Replies
            # held back behind the response being relayed do not count: only reading the rest
            # of that response releases them.)
            if not room():
                await self._changed.until(room)
            data = await self._receive(self.upstream, size)
        session.upstream_closed()  # after LOGOUT's BYE, or it dropped us
        self._upstream_gone = True
        self._after_session()

    async def _read_client(self) -> None:
        session, backlog = self.session, self.session.settings.backlog

        def room() -> bool:
            return (
                session.client_buffered < backlog
                and session.pending_to_upstream < backlog
                and session.pending_to_client < backlog
            )

        size = SMALL_RECEIVE
        while True:
            if not room():
                self._line_started = math.inf  # not read meanwhile: the client is not late
                await self._changed.until(room)
            data = await self._receive(self.client, size)
            if not data:
                break
            size = RECEIVE_SIZE if len(data) >= size else SMALL_RECEIVE
            if b"\n" in data or not session.line_pending:  # the next line has its own time
                self._line_started = math.inf
            if session.line_pending:
                self._line_started = min(self._line_started, trio.current_time())
            self._proxy.metrics.bytes_from_client.inc(len(data))
            session.receive_client(data)
            self._after_session()
            if session.starttls_requested and not await self._start_client_tls():
                break
        self._client_gone = True
        self._after_session()

    async def _start_client_tls(self) -> bool:
        """STARTTLS from the client: once its OK has been sent, the handshake."""
        await self._changed.until(lambda: self._delivered_to_client)
        async with self._client_send:  # nothing may be sent to the client in between
            tls = await self._proxy.start_tls(self.client, self._log)
            if tls is None:
                return False
            self.client = tls
            self._client_fd = None
        self.session.tls_established()
        self._after_session()
        return True

    # ------------------------------------------------------------------ writers

    async def _write_client(self) -> None:
        session = self.session

        def work() -> bool:
            # (Replies held back behind an upstream response wait for its end, in the session.)
            return len(self._client_rest) > 0 or session.ready_to_client > 0

        while True:
            if not work():
                await self._client_work.until(work)
            data = self._client_rest or session.take_to_client()
            self._client_rest = b""
            self._sending_client = len(data)
            async with self._client_send:
                if not self._client_gone:
                    self._client_gone = not await self._send(self.client, data)
            self._sending_client = 0
            session.resume()
            self._after_session()

    async def _write_upstream(self) -> None:
        session = self.session

        def work() -> bool:
            return len(self._upstream_rest) > 0 or session.pending_to_upstream > 0

        while True:
            if not work():
                await self._upstream_work.until(work)
            data = self._upstream_rest or session.take_to_upstream()
            self._upstream_rest = b""
            self._sending_upstream = True
            sent = await self._send(self.upstream, data)
            self._sending_upstream = False
            self._upstream_heard = trio.current_time()  # a MOVE's wait for a reply starts
            if not sent:
                session.upstream_closed()
            session.resume()
            self._after_session()

    def _write_now(self) -> None:
        """Write the session's output straight to each plain socket whose writer is idle, as
        much as the socket takes without waiting; the writer gets the rest."""
        session = self.session
        for _ in range(4):  # delivered output lets held-back commands through: more output
            wrote = False
            if (
                session.pending_to_upstream
                and self._upstream_fd is not None
                and not self._sending_upstream
                and not self._upstream_rest
            ):
                self._upstream_rest = _write_some(self._upstream_fd, session.take_to_upstream())
                self._upstream_heard = trio.current_time()  # a MOVE's wait for a reply starts
                wrote = True
            if (
                session.ready_to_client
                and self._client_fd is not None
                and not self._sending_client
                and not self._client_rest
                and not self._client_gone
                and not self._client_send.locked()  # a TLS handshake
            ):
                self._client_rest = _write_some(self._client_fd, session.take_to_client())
                wrote = True
            if not wrote or not session.client_buffered:
                return
            session.resume()

    # ------------------------------------------------------------------ after the session ran

    def _after_session(self) -> None:
        """React to what the session now asks for, and wake the tasks that can act on it."""
        session, metrics = self.session, self._proxy.metrics
        self._write_now()
        if session.counters.commands != self._commands_counted:
            metrics.commands.inc(session.counters.commands - self._commands_counted)
            self._commands_counted = session.counters.commands
        rewritten = session.counters.expunged_rewritten
        if rewritten != self._expunged_counted:
            metrics.expunged_rewritten.inc(rewritten - self._expunged_counted)
            self._expunged_counted = rewritten
        for move in session.take_finished_moves():
            started, self._move_started = self._move_started, None
            elapsed = None if started is None else time.monotonic() - started
            metrics.move_done(move, elapsed)
        if self._nursery is not None:
            rollback = session.take_rollback()
            if rollback is not None:
                self._nursery.start_soon(self._rollback, *rollback)
            for check in session.take_flag_checks():
                self._flag_checks += 1
                self._nursery.start_soon(self._check_flags, check)
            if session.move_ready and not self._move_task:
                self._move_task = True
                self._nursery.start_soon(self._run_move)
        if self._client_rest or session.ready_to_client:
            self._client_work.fire()
        if self._upstream_rest or session.pending_to_upstream:
            self._upstream_work.fire()
        self._changed.fire()
        watched = self._watch_key()
        if watched[0] or watched != self._watched:  # closing: it waits for the last words
            self._watch.fire()

    async def _run_move(self) -> None:
        """Hold the source mailbox's lock from the MOVE's start to its tagged reply."""
        session = self.session
        try:
            async with self._proxy.locks.hold(session.move_key):
                self._move_started = time.monotonic()
                self._upstream_heard = trio.current_time()
                session.start_move()
                self._after_session()
                await self._changed.until(lambda: not session.move_running)
        except LockError as exc:
            self._log.warning("MOVE refused: %s", type(exc).__name__)
            session.refuse_move(exc.code, exc.text)
        finally:
            self._move_task = False
        self._after_session()  # the commands pipelined behind, a next MOVE among them

    async def _rollback(self, request: RollbackRequest, credentials: Credentials) -> None:
        """Run the second session that removes a failed MOVE's copies, bounded in time."""
        rollback = Rollback(request, credentials, self.config.max_set_bytes)
        error = await self._run_second(rollback)
        self._upstream_heard = trio.current_time()  # the MOVE waits for its upstream again
        unfinished = None if rollback.done else "second session did not finish"
        self.session.rollback_finished(error or rollback.error or unfinished, rollback.missing)
        self._after_session()

    async def _check_flags(self, check: FlagCheck) -> None:
        """Run the second session that checks (and restores) the flags of a MOVE's copies."""
        try:
            if check.credentials is None:
                why = "off" if self.config.rollback == "off" else "without credentials to replay"
                result, detail = Result.UNKNOWN, f"second sessions are {why}"
            else:
                restore = FlagRestore(check.request, check.credentials, self.config.max_set_bytes)
                error = await self._run_second(restore)
                result, detail = restore.outcome()
                detail = "; ".join(filter(None, (detail, error)))
            self._proxy.metrics.copy_flags.labels(result.value).inc()
            self.session.flag_check_finished(check, result, detail)
        finally:
            self._flag_checks -= 1
            self._changed.fire()

    async def _run_second(self, peer: SecondSession) -> str | None:
        """Drive ``peer`` over a new upstream connection, bounded by ``rollback_timeout``;
        what went wrong with the connection, if anything did."""
        try:
            with trio.fail_after(self.config.rollback_timeout):
                async with self._second_session() as (stream, greeting):
                    data: bytes | bytearray = greeting
                    for _ in range(100_000):  # bounded: the timeout bounds it too
                        if not data:
                            data = await self._receive(stream)
                            if not data:
                                peer.connection_lost()
                        peer.receive(data)
                        data = b""
                        outgoing = peer.take_outgoing()
                        if outgoing:
                            await stream.send_all(outgoing)
                        if peer.done:
                            break
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, UpstreamUnavailable) as exc:
            return f"second session: {exc or 'timed out'}"
        return None

    @asynccontextmanager
    async def _second_session(self) -> AsyncIterator[tuple[trio.abc.Stream, bytes]]:
        stream, greeting = await self._proxy.open_upstream(self._addresses)
        try:
            yield stream, greeting
        finally:
            await trio.aclose_forcefully(stream)

    # ------------------------------------------------------------------ bytes

    @staticmethod
    async def _send(stream: trio.abc.Stream, data: bytes | bytearray | memoryview) -> bool:
        """Whether ``data`` could be sent (False: the peer has gone)."""
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    @staticmethod
    async def _receive(stream: trio.abc.Stream, size: int = RECEIVE_SIZE) -> bytes | bytearray:
        if type(stream) is trio.SocketStream:
            return await _receive_plain(stream.socket, size)
        try:
            return await stream.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""


def _plain_fd(stream: trio.abc.Stream) -> int | None:
    return stream.socket.fileno() if type(stream) is trio.SocketStream else None


def _write_some(fd: int, data: bytearray) -> bytes | bytearray | memoryview:
    """Write to the non-blocking socket ``fd`` what it takes now; return the rest (all of it
    after an error, which the writer then meets again and handles)."""
    try:
        sent = os.write(fd, data)
    except OSError:  # BlockingIOError included
        return data
    return memoryview(data)[sent:] if sent < len(data) else b""


async def _receive_plain(sock: trio.socket.SocketType, size: int) -> bytes:
    """``SocketStream.receive_some`` for a round trip: wait until the socket is readable, then
    read once (trio's first reads, which find nothing while a reply is awaited, and its stream
    wrappers cost a system call and several microseconds per read); b"" when the peer has gone."""
    fd = sock.fileno()
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return os.read(fd, size)
        except BlockingIOError:  # readable, then not (another reader cannot exist here)
            continue
        except OSError:
            return b""


async def bye_and_close(stream: trio.abc.Stream, bye: bytes) -> None:
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
