"""One direction's output: direct writes, and the task that writes what they could not.

The client and the upstream each have an :class:`Outlet`. Whoever ran the session writes its
output straight to a plain socket (:meth:`Outlet.write_now`), as much as the socket takes without
waiting; a writer task sends the rest (and everything on a TLS stream). A round trip then costs
no task switch, and a peer that stops reading still never blocks the other direction. The writer
of a plain socket runs only while there is a rest to send (:meth:`Outlet.kick`): an idle
connection has no writer tasks.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable

import trio

from ..engine.output import Buffer, Output

_MOST_BUFFERS = 1024  # IOV_MAX: the most buffers one writev takes


class Signal:
    """Wakes every task waiting on it; a task re-checks its own condition after waking. Firing
    a signal that no task waits on costs nothing, and so does an idle connection's signal (its
    event is made by the first waiter)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: trio.Event | None = None

    def fire(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.wait()


class Outlet(abc.ABC):
    """The output of one direction, as the session's :class:`Output` queues it (:class:`ToClient`,
    :class:`ToUpstream`); ``sent`` is told after each of the writer's writes whether it went
    through (False: the peer has gone); ``closed`` stops all writing (a client gone)."""

    __slots__ = (
        "_fd", "_lock", "_output", "_sent", "_writing", "closed", "rest", "sending", "stream",
        "work",
    )  # fmt: skip

    def __init__(
        self, stream: trio.abc.Stream, output: Output, sent: Callable[[bool], None]
    ) -> None:
        self.stream = stream
        self._fd = _plain_fd(stream)  # None: TLS, or not a socket: no direct writes
        self._output = output
        self._sent = sent
        self._lock: trio.Lock | None = None  # made on first use (:attr:`lock`)
        self.work = Signal()  # bytes for the writer
        self.rest: list[Buffer] = []  # what a direct write left
        self.sending = 0  # bytes the writer is sending now
        self.closed = False
        self._writing = False  # the writer task runs

    @abc.abstractmethod
    def _take(self) -> list[Buffer]:
        """What the session queued for the peer, taken."""

    @abc.abstractmethod
    def _queued(self) -> int:
        """How many bytes :meth:`_take` would hand out."""

    @property
    def lock(self) -> trio.Lock:
        """Held by the writer while it sends, or by a TLS handshake on the stream."""
        if self._lock is None:
            self._lock = trio.Lock()
        return self._lock

    def secured(self, stream: trio.abc.Stream) -> None:
        """The stream is now ``stream`` (TLS): no more direct writes."""
        self.stream, self._fd = stream, None

    @property
    def busy(self) -> bool:
        """Bytes taken from the session and not yet handed to the kernel."""
        return bool(self.sending or self.rest)

    def has_work(self) -> bool:
        return len(self.rest) > 0 or self._queued() > 0

    def write_now(self) -> bool:
        """Write the queued bytes straight to the socket if the writer is idle; whether any
        were written."""
        locked = self._lock is not None and self._lock.locked()
        if self._fd is None or self.busy or self.closed or locked:
            return False
        if not self._queued():
            return False
        self.rest = _write_some(self._fd, self._take())
        return True

    def kick(self, nursery: trio.Nursery, after: Callable[[], None]) -> None:
        """Have the writer send what there is: wake it, or start it (reporting to ``after``)."""
        if not self.has_work():
            return
        if self._writing:
            self.work.fire()
        else:
            self._writing = True
            nursery.start_soon(self._run, after)

    async def _run(self, after: Callable[[], None]) -> None:
        """The writer task: send what there is, then let ``after`` react; a plain socket's
        writer ends once all is sent (direct writes serve until a rest piles up again)."""
        try:
            while True:
                if not self.has_work():
                    if self._fd is not None:
                        return
                    await self.work.until(self.has_work)
                data = self.rest or self._take()
                self.rest = []
                self.sending = sum(len(buffer) for buffer in data)
                async with self.lock:
                    if self.closed:
                        ok = True
                    elif self._fd is None:
                        ok = await _send_buffers(self.stream, data)
                    else:
                        ok = await _send_plain(self._fd, data)
                self.sending = 0
                self._sent(ok)
                after()
        finally:
            self._writing = False


class ToClient(Outlet):
    __slots__ = ()

    def _take(self) -> list[Buffer]:
        return self._output.take_client_buffers()

    def _queued(self) -> int:
        return self._output.ready_to_client


class ToUpstream(Outlet):
    __slots__ = ()

    def _take(self) -> list[Buffer]:
        return self._output.take_upstream_buffers()

    def _queued(self) -> int:
        return self._output.pending_to_upstream


async def send(stream: trio.abc.Stream, data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` could be sent (False: the peer has gone)."""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


async def _send_buffers(stream: trio.abc.Stream, buffers: list[Buffer]) -> bool:
    for buffer in buffers:
        if not await send(stream, buffer):
            return False
    return True


def plain_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under ``stream`` if it is a plain one (None: TLS, or not a socket), which the
    shell reads, writes and tunes itself, past trio's stream wrappers."""
    return stream.socket if type(stream) is trio.SocketStream else None


def _plain_fd(stream: trio.abc.Stream) -> int | None:
    sock = plain_socket(stream)
    return None if sock is None else sock.fileno()


async def _send_plain(fd: int, buffers: list[Buffer]) -> bool:
    """Send ``buffers`` to the non-blocking socket ``fd`` as it takes them, many per system
    call (trio's stream sends one buffer per call, through several layers); whether they could
    be sent (False: the peer has gone)."""
    while buffers:
        try:
            sent = os.writev(fd, buffers[:_MOST_BUFFERS])
        except BlockingIOError:
            try:
                await trio.lowlevel.wait_writable(fd)
            except trio.ClosedResourceError:
                return False
            continue
        except OSError:  # reset, broken pipe, closed
            return False
        buffers = _unsent(buffers, sent)
    return True


def _write_some(fd: int, buffers: list[Buffer]) -> list[Buffer]:
    """Write to the non-blocking socket ``fd`` what it takes now of ``buffers``, in one system
    call; return the rest (all of it after an error, which the writer then meets again and
    handles)."""
    try:
        sent = os.writev(fd, buffers[:_MOST_BUFFERS])
    except OSError:  # BlockingIOError included
        return buffers
    return _unsent(buffers, sent)


def _unsent(buffers: list[Buffer], sent: int) -> list[Buffer]:
    """What of ``buffers`` is left once their first ``sent`` bytes have gone."""
    for index, buffer in enumerate(buffers):
        if sent < len(buffer):
            return [memoryview(buffer)[sent:], *buffers[index + 1 :]]
        sent -= len(buffer)
    return []
