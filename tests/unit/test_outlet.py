"""The outlets (imapmoveproxy/shell/outlet.py) over trio.testing's memory streams (the writer
task's path for TLS and any stream that is not a plain socket) and over a socketpair (the
direct writes and the writer's writev path, which need a real socket). No sleeps: a test
waits until every task is blocked (:func:`.settle.settle`), then looks."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio
import trio.testing

from imapmoveproxy.engine.output import NO_COPY, Output
from imapmoveproxy.shell.outlet import Outlet, Signal, ToClient, ToUpstream
from imapmoveproxy.wire.framing import Framer

from .settle import settle


def _piece(number: int, size: int) -> bytes:
    """``size`` bytes that say which piece they are: a reordered or repeated piece shows."""
    stamp = b"<%07d>" % number
    return (stamp * (size // len(stamp) + 1))[:size]


def _queue_for_client(output: Output, count: int, first: int = 0) -> bytes:
    """Queue ``count`` pieces for the client, big ones (each its own buffer, as a relayed
    literal is) between small ones (copied into one buffer); return what they add up to."""
    queued: list[bytes] = []
    for number in range(first, first + count):
        piece = _piece(number, NO_COPY + number % 7 if number % 3 else 1 + number % 50)
        output.relay(memoryview(piece) if len(piece) >= NO_COPY else piece)
        queued.append(piece)
    return b"".join(queued)


class Recorder:
    """The outlet's ``sent`` and the writer's ``after`` callbacks, recorded."""

    def __init__(self) -> None:
        self.sent: list[bool] = []
        self.after = 0

    def on_sent(self, ok: bool) -> None:
        self.sent.append(ok)

    def on_after(self) -> None:
        self.after += 1


def _outlet(
    kind: Callable[..., Outlet], stream: trio.abc.Stream
) -> tuple[Outlet, Output, Recorder]:
    output = Output(Framer(1024))
    recorder = Recorder()
    return kind(stream, output, recorder.on_sent), output, recorder


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int, chunk: int = 65536) -> bytes:
    received = bytearray()
    while len(received) < size:
        data = await stream.receive_some(min(chunk, size - len(received)))
        assert data, f"the stream ended after {len(received)} of {size} bytes"
        received += data
    return bytes(received)


async def _nothing_more(stream: trio.abc.ReceiveStream) -> None:
    """Nothing follows what was received (nothing duplicated): the stream has no bytes now."""
    await settle()
    with trio.move_on_after(0) as scope:  # only what is already there
        extra = await stream.receive_some(65536)
        pytest.fail(f"bytes beyond what was queued: {extra[:80]!r}")
    assert scope.cancelled_caught


# ---------------------------------------------------------------------- Signal


async def test_a_signal_wakes_every_waiter_and_is_not_remembered(nursery: trio.Nursery) -> None:
    signal = Signal()
    signal.fire()  # nobody waits: nothing is kept for a later waiter
    woken: list[int] = []

    async def waiter(number: int) -> None:
        await signal.wait()
        woken.append(number)

    for number in range(3):
        nursery.start_soon(waiter, number)
    await settle()
    assert woken == []
    signal.fire()
    await settle()
    assert sorted(woken) == [0, 1, 2]


async def test_until_waits_for_its_condition_however_often_the_signal_fires(
    nursery: trio.Nursery,
) -> None:
    signal = Signal()
    state = {"value": 0}
    done: list[int] = []

    async def wait_for_three() -> None:
        await signal.until(lambda: state["value"] >= 3)
        done.append(state["value"])

    nursery.start_soon(wait_for_three)
    for value in (1, 2):
        state["value"] = value
        signal.fire()
        await settle()
        assert done == []
    state["value"] = 3
    signal.fire()
    await settle()
    assert done == [3]


# ---------------------------------------------------------------------- memory streams


async def test_a_stream_gets_every_buffer_in_order_and_intact(nursery: trio.Nursery) -> None:
    send_stream, receive_stream = trio.testing.memory_stream_one_way_pair()
    outlet, output, recorder = _outlet(ToClient, send_stream)
    assert not outlet.write_now()  # not a plain socket: only the writer writes
    expected = _queue_for_client(output, 1500)
    outlet.kick(nursery, recorder.on_after)
    received = await _receive_exactly(receive_stream, len(expected))
    assert received == expected
    await _nothing_more(receive_stream)
    assert recorder.sent and all(recorder.sent)
    assert recorder.after == len(recorder.sent)
    assert not outlet.busy and not outlet.has_work()


async def test_a_slow_reader_makes_the_writer_wait_and_loses_nothing(
    nursery: trio.Nursery,
) -> None:
    """Lockstep streams: a send completes only once the reader has taken all of it."""
    client_end, test_end = trio.testing.lockstep_stream_pair()
    outlet, output, recorder = _outlet(ToClient, client_end)
    expected = _queue_for_client(output, 200)
    outlet.kick(nursery, recorder.on_after)
    await settle()
    assert outlet.busy  # the writer holds what it took, waiting for the reader
    assert recorder.sent == []
    received = await _receive_exactly(test_end, 1000, chunk=1000)
    # Output queued while the writer waits goes after what it holds, once.
    expected += _queue_for_client(output, 200, first=200)
    outlet.kick(nursery, recorder.on_after)
    await settle()
    assert recorder.sent == []
    received += await _receive_exactly(test_end, len(expected) - len(received), chunk=4099)
    assert received == expected
    await settle()
    assert recorder.sent and all(recorder.sent)
    assert not outlet.busy


async def test_upstream_output_goes_out_in_order_across_many_takes(nursery: trio.Nursery) -> None:
    send_stream, receive_stream = trio.testing.memory_stream_one_way_pair()
    outlet, output, recorder = _outlet(ToUpstream, send_stream)
    expected = b""
    for number in range(50):
        command = b"imp%d NOOP %s\r\n" % (number, _piece(number, 100 * number))
        output.to_upstream += command
        expected += command
        outlet.kick(nursery, recorder.on_after)
        if number % 7 == 0:
            await settle()
    assert await _receive_exactly(receive_stream, len(expected)) == expected
    await _nothing_more(receive_stream)
    assert all(recorder.sent)


async def test_a_closed_peer_is_reported_and_ends_the_writing(nursery: trio.Nursery) -> None:
    send_stream, receive_stream = trio.testing.memory_stream_one_way_pair()
    outlet, output, recorder = _outlet(ToClient, send_stream)
    await receive_stream.aclose()
    _queue_for_client(output, 10)
    outlet.kick(nursery, recorder.on_after)
    await settle()
    assert recorder.sent == [False]  # told, once, without an exception
    assert not outlet.busy
    outlet.closed = True  # as the connection does: the client is gone
    _queue_for_client(output, 10)
    outlet.kick(nursery, recorder.on_after)
    await settle()
    assert recorder.sent == [False, True]  # dropped, not sent and not raised
    assert not outlet.has_work()


async def test_an_outlet_with_nothing_to_send_starts_no_writer(nursery: trio.Nursery) -> None:
    send_stream, _ = trio.testing.memory_stream_one_way_pair()
    outlet, _, recorder = _outlet(ToClient, send_stream)
    outlet.kick(nursery, recorder.on_after)
    assert nursery.child_tasks == frozenset()


# ---------------------------------------------------------------------- a plain socket


async def _socket_pair(buffer: int | None = None) -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected pair of plain sockets (the outlet's end first); ``buffer``: small kernel
    buffers, so that the writer has to wait for the reader."""
    ours, theirs = trio.socket.socketpair()
    if buffer is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    return trio.SocketStream(ours), trio.SocketStream(theirs)


async def test_a_plain_socket_gets_every_buffer_in_order_by_direct_writes_and_writev() -> None:
    """More buffers than one writev takes (IOV_MAX), more bytes than the socket holds."""
    ours, theirs = await _socket_pair()
    outlet, output, recorder = _outlet(ToClient, ours)
    expected = _queue_for_client(output, 3000)
    received = b""
    async with trio.open_nursery() as nursery:  # ends only once the writer has ended
        assert outlet.write_now()
        assert outlet.busy  # the socket did not take it all: the rest is the writer's
        # What comes before the writer runs must not be written ahead of that rest.
        expected += _queue_for_client(output, 10, first=3000)
        assert not outlet.write_now()
        outlet.kick(nursery, recorder.on_after)
        received = await _receive_exactly(theirs, len(expected))
    assert received == expected
    await _nothing_more(theirs)
    assert recorder.sent and all(recorder.sent)
    assert not outlet.busy
    await ours.aclose()
    await theirs.aclose()


async def test_a_direct_write_that_fits_needs_no_writer() -> None:
    ours, theirs = await _socket_pair()
    outlet, output, recorder = _outlet(ToClient, ours)
    output.reply(b"* OK small\r\n")
    async with trio.open_nursery() as nursery:
        assert outlet.write_now()
        assert not outlet.busy
        outlet.kick(nursery, recorder.on_after)
        assert nursery.child_tasks == frozenset()
    assert await _receive_exactly(theirs, 12) == b"* OK small\r\n"
    assert recorder.sent == []


async def test_a_slow_reader_of_a_plain_socket_makes_the_writer_wait_and_loses_nothing(
    nursery: trio.Nursery,
) -> None:
    ours, theirs = await _socket_pair(buffer=4096)
    outlet, output, recorder = _outlet(ToClient, ours)
    expected = _queue_for_client(output, 300)
    assert outlet.write_now()
    outlet.kick(nursery, recorder.on_after)
    await settle()
    assert outlet.busy and recorder.sent == []  # the writer waits for room
    # Output queued meanwhile is not written ahead of the rest.
    expected += _queue_for_client(output, 300, first=300)
    assert not outlet.write_now()
    outlet.kick(nursery, recorder.on_after)
    received = await _receive_exactly(theirs, 3001)
    await settle()
    assert recorder.sent == []  # a little read: room for a little, not for the rest
    while len(received) < len(expected):  # a reader that takes a little at a time
        received += await _receive_exactly(theirs, min(3001, len(expected) - len(received)))
    assert received == expected
    await _nothing_more(theirs)
    assert recorder.sent and all(recorder.sent)
    assert not outlet.busy and not outlet.has_work()


async def test_a_closed_peer_ends_the_plain_socket_writer_cleanly() -> None:
    ours, theirs = await _socket_pair(buffer=4096)
    outlet, output, recorder = _outlet(ToClient, ours)
    _queue_for_client(output, 300)
    async with trio.open_nursery() as nursery:  # ends only once the writer has ended
        assert outlet.write_now()
        assert outlet.busy
        outlet.kick(nursery, recorder.on_after)
        await settle()
        assert recorder.sent == []
        await theirs.aclose()
    assert recorder.sent == [False]
    assert recorder.after == 1
    assert not outlet.busy
    await ours.aclose()


async def test_a_direct_write_to_a_closed_peer_leaves_it_to_the_writer_to_report() -> None:
    ours, theirs = await _socket_pair()
    outlet, output, recorder = _outlet(ToClient, ours)
    await theirs.aclose()
    _queue_for_client(output, 5)
    async with trio.open_nursery() as nursery:
        outlet.write_now()
        outlet.kick(nursery, recorder.on_after)
    assert recorder.sent == [False]
    assert not outlet.busy
    await ours.aclose()


async def test_a_closed_outlet_writes_nothing_more() -> None:
    ours, theirs = await _socket_pair()
    outlet, output, recorder = _outlet(ToClient, ours)
    outlet.closed = True
    output.reply(b"* BYE nobody hears this\r\n")
    async with trio.open_nursery() as nursery:
        assert not outlet.write_now()
        outlet.kick(nursery, recorder.on_after)
    await _nothing_more(theirs)
    assert recorder.sent == [True]
    await ours.aclose()
    await theirs.aclose()
