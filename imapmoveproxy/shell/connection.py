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

The connection's own task watches the clock (:mod:`.clock`); the MOVE's lock and the second
sessions are tasks of their own (:mod:`.tasks`). Every decision about the protocol is the
session's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..engine.session import Session
from ..wire.proxyproto import Endpoint
from .clock import CLOSE_GRACE, Supervisor
from .tasks import MoveTasks

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
        self.proxy = proxy
        self._greeting = greeting  # already read from the upstream (after its STARTTLS)
        self.addresses = addresses  # the client's, and the one it connected to
        self.log = logging.LoggerAdapter(log, {"conn": session.conn_id})
        # Each waiter has its own signal, so that a session step wakes only who can act on it.
        self.changed = Signal()  # room in the backlogs, output delivered, a MOVE's end
        self._client_work = Signal()  # bytes for the client writer
        self._upstream_work = Signal()  # bytes for the upstream writer
        self.watch = Signal()  # a change the supervisor's deadlines depend on
        self._client_send = trio.Lock()  # the client writer, or a TLS handshake with the client
        self._sending_client = 0  # bytes the client writer is sending now
        self._sending_upstream = False
        # The sockets written directly while their writer is idle (None: TLS, or not a socket),
        # and what such a write left for the writer.
        self._client_fd = _plain_fd(client)
        self._upstream_fd = _plain_fd(upstream)
        self._client_rest: bytes | bytearray | memoryview = b""
        self._upstream_rest: bytes | bytearray | memoryview = b""
        self.client_gone = False
        self.upstream_gone = False
        self.upstream_heard = trio.current_time()  # when upstream bytes last went or came
        self.line_started = math.inf  # when the client began the line it has not finished
        self._nursery: trio.Nursery | None = None
        self._commands_counted = 0
        self._expunged_counted = 0  # session.counters.expunged_rewritten already counted
        self._tasks = MoveTasks(self)
        self._clock = Supervisor(self)

    def shutdown(self) -> None:
        """The proxy is stopping: BYE now, or once the MOVE in progress has finished."""
        self.session.shutdown()
        self.after_session()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._read_upstream)
                nursery.start_soon(self._read_client)
                nursery.start_soon(self._write_upstream)
                nursery.start_soon(self._write_client)
                await self._clock.run()
                # Bounded by rollback_timeout each: a MOVE's flags are restored even when the
                # client logs out at once.
                await self.changed.until(lambda: not self._tasks.flag_checks)
                nursery.cancel_scope.cancel()
        except Exception:  # a bug must cost one connection, never the proxy
            self.log.exception("internal error, closing the connection")
            self.session.close_reason = "internal error"
            await bye_and_close(self.client, b"* BYE [SERVERBUG] Internal proxy error.\r\n")
        finally:
            self._nursery = None  # closed: shutdown() and rollbacks start nothing more
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                await trio.aclose_forcefully(self.upstream)
                if self.session.close_reason and not self.client_gone:
                    await _linger(self.client)  # let the client read its BYE
                await trio.aclose_forcefully(self.client)

    @property
    def delivered_to_client(self) -> bool:
        return not (self.session.pending_to_client or self._sending_client or self._client_rest)

    # ------------------------------------------------------------------ readers

    async def _read_upstream(self) -> None:
        session = self.session
        with trio.move_on_after(self.config.connect_timeout) as greeting_wait:
            data = self._greeting or await _receive(self.upstream)
        if greeting_wait.cancelled_caught:
            self.log.warning("upstream %s sent no greeting in time", self.config.upstream)
            await _send(self.client, UNAVAILABLE)
            self.client_gone = True  # nothing more for it: end now
            self.after_session()
            return
        counted = self.proxy.metrics.bytes_from_upstream
        backlog = session.settings.backlog

        def room() -> bool:
            return session.ready_to_client < backlog

        size = SMALL_RECEIVE
        while data:
            size = RECEIVE_SIZE if len(data) >= size else SMALL_RECEIVE
            self.upstream_heard = trio.current_time()
            counted.inc(len(data))
            session.receive_upstream(data)
            self.after_session()
            # Backpressure: a client that does not read stops us reading the upstream. (Replies
            # held back behind the response being relayed do not count: only reading the rest
            # of that response releases them.)
            if not room():
                await self.changed.until(room)
            data = await _receive(self.upstream, size)
        session.upstream_closed()  # after LOGOUT's BYE, or it dropped us
        self.upstream_gone = True
        self.after_session()

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
                self.line_started = math.inf  # not read meanwhile: the client is not late
                await self.changed.until(room)
            data = await _receive(self.client, size)
            if not data:
                break
            size = RECEIVE_SIZE if len(data) >= size else SMALL_RECEIVE
            if b"\n" in data or not session.line_pending:  # the next line has its own time
                self.line_started = math.inf
            if session.line_pending:
                self.line_started = min(self.line_started, trio.current_time())
            self.proxy.metrics.bytes_from_client.inc(len(data))
            session.receive_client(data)
            self.after_session()
            if session.starttls_requested and not await self._start_client_tls():
                break
        self.client_gone = True
        self.after_session()

    async def _start_client_tls(self) -> bool:
        """STARTTLS from the client: once its OK has been sent, the handshake."""
        await self.changed.until(lambda: self.delivered_to_client)
        async with self._client_send:  # nothing may be sent to the client in between
            tls = await self.proxy.start_tls(self.client, self.log)
            if tls is None:
                return False
            self.client = tls
            self._client_fd = None
        self.session.tls_established()
        self.after_session()
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
                if not self.client_gone:
                    self.client_gone = not await _send(self.client, data)
            self._sending_client = 0
            session.resume()
            self.after_session()

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
            sent = await _send(self.upstream, data)
            self._sending_upstream = False
            self.upstream_heard = trio.current_time()  # a MOVE's wait for a reply starts
            if not sent:
                session.upstream_closed()
            session.resume()
            self.after_session()

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
                self.upstream_heard = trio.current_time()  # a MOVE's wait for a reply starts
                wrote = True
            if (
                session.ready_to_client
                and self._client_fd is not None
                and not self._sending_client
                and not self._client_rest
                and not self.client_gone
                and not self._client_send.locked()  # a TLS handshake
            ):
                self._client_rest = _write_some(self._client_fd, session.take_to_client())
                wrote = True
            if not wrote or not session.client_buffered:
                return
            session.resume()

    # ------------------------------------------------------------------ after the session ran

    def after_session(self) -> None:
        """React to what the session now asks for, and wake the tasks that can act on it."""
        session, metrics = self.session, self.proxy.metrics
        self._write_now()
        if session.counters.commands != self._commands_counted:
            metrics.commands.inc(session.counters.commands - self._commands_counted)
            self._commands_counted = session.counters.commands
        rewritten = session.counters.expunged_rewritten
        if rewritten != self._expunged_counted:
            metrics.expunged_rewritten.inc(rewritten - self._expunged_counted)
            self._expunged_counted = rewritten
        self._tasks.count_finished()
        if self._nursery is not None:
            self._tasks.start_due(self._nursery)
        if self._client_rest or session.ready_to_client:
            self._client_work.fire()
        if self._upstream_rest or session.pending_to_upstream:
            self._upstream_work.fire()
        self.changed.fire()
        if self._clock.changed():
            self.watch.fire()


async def _send(stream: trio.abc.Stream, data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` could be sent (False: the peer has gone)."""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


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
