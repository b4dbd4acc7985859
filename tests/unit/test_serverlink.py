"""The trio driver of the proxy's own conversations (shell/serverlink.py), over memory streams.

A scripted server on the other end; trio's memory streams and MockClock instead of sockets and
sleeps.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from imapmoveproxy.move.request import RollbackRequest
from imapmoveproxy.move.rollback import Credentials, Rollback
from imapmoveproxy.shell.serverlink import ServerClient, ServerLink
from imapmoveproxy.wire.conversation import Conversation, ConversationError


async def line(stream: trio.abc.Stream, buffer: bytearray) -> bytes:
    """One line the client sent."""
    while b"\n" not in buffer:
        data = await stream.receive_some(1000)
        assert data, buffer
        buffer += data
    end = buffer.index(b"\n") + 1
    sent = bytes(buffer[:end])
    del buffer[:end]
    return sent


async def test_one_command_at_a_time_with_a_literal_after_the_go_ahead():
    client_end, server_end = trio.testing.memory_stream_pair()
    client = ServerClient(client_end, Conversation(b"c"), greeting=b"* OK [CAPABILITY IMAP4rev1] ")

    async def server() -> None:
        buffer = bytearray()
        assert await line(server_end, buffer) == b"c1 APPEND x {3}\r\n"
        await server_end.send_all(b"* 1 EXISTS\r\n+ go\r\n")
        assert await line(server_end, buffer) == b"abc\r\n"
        await server_end.send_all(b"* 2 EXISTS\r\nc1 OK [APPENDUID 1 2] done\r\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await server_end.send_all(b"hi\r\n")  # the rest of the greeting read with the stream
        greeting = await client.greeting()
        assert greeting.line == b"* OK [CAPABILITY IMAP4rev1] hi\r\n"
        assert client.peer.caps.names == {b"IMAP4REV1"}
        exchange = await client.command([b"APPEND x {3}\r\n", b"abc\r\n"])
    assert [response.line for response in exchange.untagged] == [
        b"* 1 EXISTS\r\n", b"* 2 EXISTS\r\n"
    ]  # fmt: skip
    assert exchange.tagged.status == b"OK" and exchange.tagged.code == b"APPENDUID 1 2"


async def test_a_closed_or_broken_connection_ends_a_command():
    client_end, server_end = trio.testing.memory_stream_pair()
    client = ServerClient(client_end, Conversation(b"c"))
    await server_end.send_all(b"* OK hi\r\n")
    await server_end.send_eof()
    assert (await client.greeting()).line == b"* OK hi\r\n"
    with pytest.raises(ConversationError, match="the connection was closed"):
        await client.command([b"NOOP\r\n"])
    broken = trio.testing.lockstep_stream_pair()[0]
    broken.receive_some = _broken  # type: ignore[method-assign]
    with pytest.raises(ConversationError, match="the connection was closed"):
        await ServerClient(broken, Conversation(b"c")).greeting()


async def _broken(max_bytes: int | None = None) -> bytes:
    raise trio.BrokenResourceError("reset")


async def test_each_read_is_bounded_by_the_timeout(mock_clock: trio.testing.MockClock):
    mock_clock.autojump_threshold = 0
    client_end, _server_end = trio.testing.memory_stream_pair()
    client = ServerClient(client_end, Conversation(b"c"), timeout=5)
    started = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await client.greeting()
    assert trio.current_time() - started == 5


async def test_a_second_session_runs_until_the_server_closes_the_connection():
    client_end, server_end = trio.testing.memory_stream_pair()
    rollback = Rollback(RollbackRequest(b"T", b"7", (5,), (1,)), Credentials(b"u", b"u", b"p"))
    link = ServerLink(client_end, rollback, math.inf, b"* OK hi\r\n")
    script = [
        (b"rb1 LOGIN u p\r\n", b"rb1 OK\r\n"),
        (b"rb2 SELECT T\r\n", b"* OK [UIDVALIDITY 7] x\r\nrb2 OK\r\n"),
        (b"rb3 UID FETCH 5 (UID)\r\n", b"* 1 FETCH (UID 5)\r\nrb3 OK\r\n"),
        (b"rb4 UID STORE 5 +FLAGS.SILENT (\\Deleted)\r\n", b"rb4 OK\r\n"),
        (b"rb5 UID EXPUNGE 5\r\n", b"* 1 EXPUNGE\r\nrb5 OK\r\n"),
        (b"rb6 UID FETCH 5 (UID)\r\n", b"rb6 OK\r\n"),
        (b"rb7 LOGOUT\r\n", b"* BYE\r\nrb7 OK\r\n"),
    ]

    async def server() -> None:
        buffer = bytearray()
        for expected, answer in script:
            assert await line(server_end, buffer) == expected
            await server_end.send_all(answer)
        await trio.sleep(1)
        assert not rollback.done  # answered LOGOUT, but the connection is still open
        await server_end.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await link.run(lambda: rollback.done)
    assert rollback.done and rollback.error is None and rollback.missing == frozenset()
