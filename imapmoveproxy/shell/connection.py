"""One client connection in trio: a reader per stream around a sans-IO :class:`.session.Session`.

Each stream has one task that reads it and, while there is output it could not take at once,
one that writes it; no lock or buffer is shared by the two directions:

* the client reader feeds client bytes to the session while the session's backlogs (bytes for
  either peer, client bytes not looked at yet) are under their bound; otherwise it waits, and the
  client's own TCP window then stops the client (backpressure, never memory);
* the upstream reader feeds upstream bytes while the bytes for the client are under the bound;
  it never waits for the upstream writer, so a server that stops reading while it writes (as
  every server does when its output is full) is always read from;
* whoever ran the session writes its output straight to a plain socket whose writer is idle
  (:meth:`.outlet.Outlet.write_now`), as much as the socket takes at once; a writer task
  (:mod:`.outlet`) sends the rest, and everything on a TLS stream. A command and its reply then
  cost one task step each way (bench/latency.py), and an idle connection has no writer tasks.

The connection's own task reads the client; a task watches the clock while a deadline is due
(:mod:`.clock`); a MOVE waiting for its mailbox's lock and the second sessions are tasks of their
own (:mod:`.tasks`). Every decision about the protocol is the session's."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from socket import SO_RCVLOWAT, SOL_SOCKET
from typing import TYPE_CHECKING

import trio

from ..engine.effects import (
    CheckFlags,
    Close,
    Effect,
    ForgetMove,
    LookupJournal,
    MoveFinished,
    MoveReady,
    RecordMove,
    RunRollback,
    StartTls,
)
from ..engine.session import Session
from ..wire.proxyproto import Endpoint
from .clock import CLOSE_GRACE, Supervisor
from .outlet import Signal, ToClient, ToUpstream, plain_socket, send
from .tasks import MoveTasks

if TYPE_CHECKING:
    from .backends import Backend
    from .server import Proxy

# A plain socket in the middle of a big literal wakes its reader only once this much more of it
# has come (SO_RCVLOWAT), never more than the literal still owes (so it always comes): bulk data
# (a FETCH of messages, an APPEND) is relayed in fewer, larger pieces, and what relaying costs is
# mostly Python's work per piece (bench/: CPU per GB relayed). Smaller literals and everything
# else are read as soon as their first byte is there.
BULK_PIECE = 256 * 1024
# Bytes asked of the kernel per read: large reads cut the per-byte cost of bulk relaying
# (bench/: reads of at most 256 KiB cost a fifth more CPU per GB than these). A reader asks for
# the large size only after a read that filled the small one, or inside a big literal; a plain
# socket's large reads go into reused buffers (:class:`Buffers`).
RECEIVE_SIZE = 1024 * 1024
SMALL_RECEIVE = 64 * 1024  # below glibc's mmap threshold (128 KiB)
UNAVAILABLE = b"* BYE [UNAVAILABLE] Upstream server not available, try again later.\r\n"


class Connection:
    """Moves bytes between one client, its session and its upstream connection."""

    __slots__ = (
        "_client_reads", "_clock", "_greeting", "_nursery", "_published", "_tasks",
        "_tls_due", "_to_client", "_to_upstream", "_upstream_reads", "addresses", "backend",
        "changed", "client", "close_reason", "config", "line_started", "log", "proxy", "session",
        "upstream", "upstream_gone", "upstream_heard",
    )  # fmt: skip

    def __init__(
        self,
        client: trio.abc.Stream,
        upstream: trio.abc.Stream,
        session: Session,
        proxy: Proxy,
        backend: Backend,
        greeting: bytes,
        addresses: tuple[Endpoint, Endpoint],
        conn_log: logging.LoggerAdapter,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.session = session
        self.config = backend.config
        self.proxy = proxy
        self.backend = backend
        self._greeting = greeting  # already read from the upstream (after its STARTTLS)
        self.addresses = addresses  # the client's, and the one it connected to
        self.log = conn_log
        # Each waiter has its own signal, so that a session step wakes only who can act on it.
        self.changed = Signal()  # room in the backlogs, output delivered, a MOVE's end
        self._to_client = ToClient(client, session.output, self._client_sent)
        self._to_upstream = ToUpstream(upstream, session.output, self._upstream_sent)
        self.upstream_gone = False
        # why the connection ends: the session's Close, or an internal error of the proxy's
        self.close_reason: str | None = None
        self._tls_due = False  # the session's StartTls: the client reader does the handshake
        self.upstream_heard = trio.current_time()  # when upstream bytes last went or came
        self.line_started = math.inf  # when the client began the line it has not finished
        self._nursery: trio.Nursery | None = None
        self._published = (0, 0, 0, 0)  # the session's counts already added to the metrics
        self._upstream_reads = Reads(upstream)
        self._client_reads = Reads(client)
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
                self.after_session()  # not logged in: the supervisor keeps the login deadline
                await self._read_client()
                # The supervisor now ends the connection (:meth:`_supervise`).
        except Exception:  # a bug must cost one connection, never the proxy
            self.log.exception("internal error, closing the connection")
            self.close_reason = "internal error"
            await bye_and_close(self.client, b"* BYE [SERVERBUG] Internal proxy error.\r\n")
        finally:
            self._nursery = None  # closed: shutdown() and rollbacks start nothing more
            self._tasks.release()
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                await trio.aclose_forcefully(self.upstream)
                if self.close_reason and not self.client_gone:
                    await _linger(self.client)  # let the client read its BYE
                await trio.aclose_forcefully(self.client)

    async def _supervise(self) -> None:
        """The supervisor's task, while a deadline is due; it ends the connection."""
        if not await self._clock.run():
            return  # nothing due any more
        # Bounded by rollback_timeout each: a MOVE's flags are restored even when the client
        # logs out at once.
        await self.changed.until(lambda: not self._tasks.flag_checks)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def delivered_to_client(self) -> bool:
        return not (self.session.output.pending_to_client or self._to_client.busy)

    @property
    def client_gone(self) -> bool:
        return self._to_client.closed

    @client_gone.setter
    def client_gone(self, gone: bool) -> None:
        self._to_client.closed = gone

    # ------------------------------------------------------------------ readers

    async def _read_upstream(self) -> None:
        session = self.session
        data = await self._upstream_greeting()
        if data is None:
            self.log.warning("upstream %s sent no greeting in time", self.backend)
            await send(self.client, UNAVAILABLE)
            self.client_gone = True  # nothing more for it: end now
            self.after_session()
            return
        size = SMALL_RECEIVE
        while data:
            self.upstream_heard = trio.current_time()
            session.receive_upstream(data)
            size = self._upstream_reads.read_size(len(data), size)
            data = b""  # a reused buffer is free again once its views have been written
            self.after_session()
            # Backpressure: a client that does not read stops us reading the upstream.
            if not session.room_for_upstream():
                await self.changed.until(session.room_for_upstream)
            data = await _receive(self.upstream, size)
        session.upstream_closed()  # after LOGOUT's BYE, or it dropped us
        self.upstream_gone = True
        self.after_session()

    async def _upstream_greeting(self) -> bytes | bytearray | None:
        """The upstream's first bytes (None: none in time)."""
        greeting, self._greeting = self._greeting, b""  # not kept for the connection's life
        if self.session.upstream.greeted:  # routing mode: the proxy has logged in already
            return await _receive(self.upstream)
        with trio.move_on_after(self.config.connect_timeout):
            return greeting or await _receive(self.upstream)
        return None

    async def _read_client(self) -> None:
        session = self.session
        size = SMALL_RECEIVE
        while True:
            if not session.room_for_client():
                self.line_started = math.inf  # not read meanwhile: the client is not late
                await self.changed.until(session.room_for_client)
            data = await _receive(self.client, size)
            if not data:
                break
            session.receive_client(data)
            if not session.line_pending:
                self.line_started = math.inf
            elif b"\n" in data and not session.compressed:  # it began in this read
                self.line_started = trio.current_time()
            else:  # it began in this read, or goes on from an earlier one (compressed: unknown)
                self.line_started = min(self.line_started, trio.current_time())
            size = self._client_reads.read_size(len(data), size)
            data = b""  # a reused buffer is free again once nothing refers to it
            self.after_session()
            if self._tls_due and not await self._start_client_tls():
                break
        self.client_gone = True
        self.after_session()

    async def _start_client_tls(self) -> bool:
        """STARTTLS from the client: once its OK has been sent, the handshake."""
        self._tls_due = False
        await self.changed.until(lambda: self.delivered_to_client)
        async with self._to_client.lock:  # nothing may be sent to the client in between
            tls = await self.proxy.start_tls(self.client, self.log)
            if tls is None:
                return False
            self.client = tls
            self._to_client.secured(tls)
            self._client_reads = Reads(tls)  # a TLS stream: no low-water mark
        self.session.tls_established()
        self.after_session()
        return True

    # ------------------------------------------------------------------ writers

    def _client_sent(self, ok: bool) -> None:
        if not ok:
            self.client_gone = True  # a client that has gone cannot be told anything
        self.session.resume()

    def _upstream_sent(self, ok: bool) -> None:
        self.upstream_heard = trio.current_time()  # a MOVE's wait for a reply starts
        if not ok:
            self.session.upstream_closed()
        self.session.resume()

    def _write_now(self) -> None:
        """Write the session's output straight to each plain socket whose writer is idle; the
        writer gets the rest (:meth:`Outlet.write_now`)."""
        session = self.session
        for _ in range(4):  # delivered output lets held-back commands through: more output
            wrote = False
            if self._to_upstream.write_now():
                self.upstream_heard = trio.current_time()  # a MOVE's wait for a reply starts
                wrote = True
            wrote = self._to_client.write_now() or wrote
            if not wrote or not session.client_buffered:
                return
            session.resume()

    # ------------------------------------------------------------------ after the session ran

    def publish_counts(self) -> None:
        """Add to the proxy's metrics what the session has counted since the last call: done
        when the metrics are scraped and when the connection ends, never per read or command
        (a counter's increment costs more than the rest of a NOOP's bookkeeping)."""
        counters, metrics = self.session.counters, self.proxy.metrics
        now = (
            counters.bytes_from_client,
            counters.bytes_from_upstream,
            counters.commands,
            counters.expunged_rewritten,
        )
        outlets = (
            metrics.bytes_from_client,
            metrics.bytes_from_upstream,
            metrics.commands,
            metrics.expunged_rewritten,
        )
        for counter, count, published in zip(outlets, now, self._published, strict=True):
            if count != published:
                counter.inc(count - published)
        self._published = now

    def after_session(self) -> None:
        """React to what the session now asks for, and wake the tasks that can act on it."""
        session, nursery = self.session, self._nursery
        self._write_now()
        # After any step, not only a read: a client's literal refused by the server is owed no
        # more, and the client's next command must wake its reader.
        self._upstream_reads.follow(session.upstream_literal_owed)
        self._client_reads.follow(session.client_literal_owed)
        while True:
            effects = session.take_effects()
            if effects:
                self._act(effects, nursery)
            if nursery is None or not self._tasks.start_due(nursery):
                break
            self._write_now()  # the MOVE's first commands
        if nursery is not None:
            self._to_client.kick(nursery, self.after_session)
            self._to_upstream.kick(nursery, self.after_session)
            self._clock.poke(nursery, self._supervise)
        self.changed.fire()

    def _act(self, effects: list[Effect], nursery: trio.Nursery | None) -> None:
        """Do what the session asks for (:mod:`..engine.effects`), in order."""
        tasks = self._tasks
        for effect in effects:
            match effect:
                case Close(reason):
                    self.close_reason = reason
                case StartTls():
                    self._tls_due = True
                case MoveFinished(move):
                    tasks.finished(move)
                case _ if nursery is None:
                    pass  # the connection has ended: nothing more starts
                case MoveReady(key):
                    tasks.ready(self.backend.lock_prefix + key)
                case RunRollback():
                    tasks.rollback(nursery, effect)
                case CheckFlags():
                    tasks.check_flags(nursery, effect)
                case RecordMove(entry):
                    nursery.start_soon(tasks.record, entry)
                case ForgetMove(entry_id):
                    nursery.start_soon(tasks.forget, entry_id)
                case LookupJournal(user):
                    nursery.start_soon(tasks.resume, user)


class Reads:
    """How one stream is read: the size asked of each read, and a plain socket's SO_RCVLOWAT,
    following the literal its peer is sending (:data:`BULK_PIECE`)."""

    __slots__ = ("_socket", "mark")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._socket = plain_socket(stream)
        self.mark = 1

    def read_size(self, got: int, asked: int) -> int:
        """What to ask of the next read, after one that asked ``asked`` and got ``got``: the
        large size after a read that filled the small one, or while waiting for a big piece."""
        return RECEIVE_SIZE if got >= asked or self.mark > 1 else SMALL_RECEIVE

    def follow(self, owed: int) -> None:
        """The literal being received still owes ``owed`` bytes: set the mark (lowering it
        wakes a reader waiting with the bytes it now wants already there)."""
        wanted = min(owed, BULK_PIECE) if owed > SMALL_RECEIVE else 1
        if wanted != self.mark and self._socket is not None:
            with contextlib.suppress(OSError):  # a socket closed already: its reader is done
                self._socket.setsockopt(SOL_SOCKET, SO_RCVLOWAT, wanted)
            self.mark = wanted


class Buffers:
    """The buffers that large reads of plain sockets go into, reused: relaying bulk data then
    allocates nothing per read. (A new object per read made glibc grow and trim its heap, and
    the kernel map and zero those pages again: thousands of page faults per big FETCH, a third
    more CPU per GB, the most on a fresh process; bench/ reports the faults per MB.)

    The bytes read are handed to the session as the buffer itself, cut to their length: the
    framer reads them in place, and the session queues big pieces of upstream bytes for the
    client as views into them, written later (:mod:`..engine.output`). So a buffer is handed
    out again only once nothing at all refers to it any more: no view queued (a slow client
    keeps them), no framer keeping the start of a line. When every buffer is held and there are
    :attr:`most` of them, a read gets a new object of its own, as without the pool.

    Held buffers are told apart by their reference count (every view holds one, through the
    buffer it was made from), compared with that of a free buffer in the same place
    (:data:`_FREE`), so no owner has to give a buffer back and none can forget to."""

    __slots__ = ("_buffers", "most", "size")

    def __init__(self, size: int = RECEIVE_SIZE, most: int = 8) -> None:
        self.size = size
        self.most = most  # 8 MiB: the reads that two bulk transfers to slow clients hold
        self._buffers: list[bytearray] = []

    def read(self, fd: int) -> bytes | bytearray:
        """One read of up to :attr:`size` bytes from ``fd`` (os.read's errors)."""
        buffer = self._free()
        if buffer is None:
            return os.read(fd, self.size)
        got = os.readv(fd, (buffer,))
        if got * 2 < len(buffer):
            # A short read is copied (it is small), and the buffer stays free: CPython would
            # reallocate a bytearray cut to less than half its size, and its growing back.
            return bytes(memoryview(buffer)[:got])
        del buffer[got:]  # in place: the memory stays (see above)
        return buffer

    def _free(self) -> bytearray | None:
        buffers, size = self._buffers, self.size
        for index in range(len(buffers)):
            if _references(buffers, index) == _FREE:
                buffer = buffers[index]
                if len(buffer) < size:  # cut to its last read: its memory is still there
                    buffer += _ZEROS[: size - len(buffer)]
                return buffer
        if len(buffers) < self.most:
            buffers.append(bytearray(size))
            return buffers[-1]
        return None


def _references(buffers: list[bytearray], index: int) -> int:
    return sys.getrefcount(buffers[index])


_FREE = _references([bytearray()], 0)  # the count of a buffer that only the pool refers to
_ZEROS = memoryview(bytes(RECEIVE_SIZE))
_BUFFERS = Buffers()


async def _receive(stream: trio.abc.Stream, size: int = RECEIVE_SIZE) -> bytes | bytearray:
    """Bytes from ``stream``; b"" when the peer has gone.

    A plain socket is read as a round trip needs: wait until it is readable, then read once
    (trio's first reads, which find nothing while a reply is awaited, and its stream wrappers
    cost a system call and several microseconds per read; one coroutine frame less per waiting
    reader is memory an idle connection keeps). A large read goes into a reused buffer
    (:class:`Buffers`), which the caller must not keep referring to once the session has it."""
    sock = plain_socket(stream)
    if sock is None:
        try:
            return await stream.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
    fd = sock.fileno()
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return _BUFFERS.read(fd) if size > SMALL_RECEIVE else os.read(fd, size)
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
