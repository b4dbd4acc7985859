"""COMPRESS=DEFLATE between client and proxy (RFC 4978), against real servers that lack it:
Dovecot with MOVE hidden, and imap4d (guarded MOVEs). The upstream link stays plain.

The client is :class:`harness.CompressedClient`: its own zlib streams, flushed after each write
with a sync flush, or with a partial flush as mbsync does. Each test fails without the proxy's
COMPRESS: its COMPRESS then gets NO.
"""

from __future__ import annotations

import base64
import contextlib
import random
import re
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import CompressedClient, ProxyProcess, RawClient, running_proxy
from servers import ImapServer, make_message

MIB = 1024 * 1024
SERVERS = {
    "dovecot-legacy": ("dovecot_legacy", ()),
    "imap4d-guarded": ("imap4d", ("--no-uidplus", "guarded")),
}
# imap4d parses a message it is given at about 1 MB/s on this machine: a smaller bomb for it
BOMB = {"dovecot_legacy": 64 * MIB, "imap4d": 16 * MIB}


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> ImapServer:
    fixture, _ = SERVERS[request.param]
    return request.getfixturevalue(fixture)


@pytest.fixture
def front(
    server: ImapServer, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[ProxyProcess]:
    _, args = SERVERS[request.node.callspec.params["server"]]
    with running_proxy(server.address, tmp_path / "proxy.log", *args) as proxy:
        yield proxy


def _subjects(server: ImapServer, user: str, mailbox: bytes) -> list[bytes]:
    """The subjects in ``mailbox``, asked of the server itself."""
    with RawClient(server.address, oracle=False) as client:
        client.login(user, server.password)
        selected = client.command(b"s", b"EXAMINE " + mailbox)
        assert selected[-1].startswith(b"s OK"), selected
        if any(re.match(rb"\* 0 EXISTS", r) for r in selected):
            return []
        replies = client.command(b"f", b"FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
        client.logout()
    return sorted(re.findall(rb"Subject: ([^\r]+)", b"".join(replies), re.IGNORECASE))


def _read_tags(client: RawClient, tags: bytes) -> list[bytes]:
    """Every response up to the tagged replies of all of ``tags`` (one-letter tags), in
    whatever order the server completes them (Dovecot runs a NOOP and a FETCH at once)."""
    responses: list[bytes] = []
    left = {bytes([tag]) for tag in tags}
    for _ in range(10_000):
        response = client._read_response()
        responses.append(response)
        left.discard(response.split(b" ", 1)[0])
        if not left:
            return responses
    raise AssertionError(f"no tagged reply for {left}: {responses}")


@pytest.mark.parametrize(
    "flush", [zlib.Z_SYNC_FLUSH, zlib.Z_PARTIAL_FLUSH], ids=["sync", "partial"]
)
def test_pipelined_commands_and_a_move_over_a_compressed_connection(
    server: ImapServer, front: ProxyProcess, flush: int
):
    user = server.new_user()
    server.seed(user, "INBOX", [make_message(f"message {i}") for i in range(1, 6)])
    server.seed(user, "Trash", [])
    with CompressedClient(front.address) as client:
        client.login(user, server.password)
        capabilities = client.command(b"c", b"CAPABILITY")
        assert b" COMPRESS=DEFLATE" in capabilities[0], capabilities
        client.compress(flush)
        # One write: every command pipelined behind the others, the MOVE among them.
        client.send(
            b"s SELECT INBOX\r\nf FETCH 1:* (FLAGS)\r\nm MOVE 2:3 Trash\r\n"
            b"n NOOP\r\ng FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n"
        )
        replies = _read_tags(client, b"sfmng")
        tagged = sorted(r.split(b" ", 2)[:2] for r in replies if not r.startswith((b"*", b"+")))
        assert tagged == [[b"f", b"OK"], [b"g", b"OK"], [b"m", b"OK"], [b"n", b"OK"], [b"s", b"OK"]]
        assert sum(1 for r in replies if re.match(rb"\* \d+ EXPUNGE", r)) == 2
        left = re.findall(rb"Subject: ([^\r]+)", b"".join(replies), re.IGNORECASE)
        assert left == [b"message 1", b"message 4", b"message 5"]
        again = client.command(b"c", b"COMPRESS DEFLATE")
        assert again[-1].startswith(b"c NO [COMPRESSIONACTIVE]"), again
        client.logout()
    assert _subjects(server, user, b"Trash") == [b"message 2", b"message 3"]
    assert "compression started" in front.log_text()


def test_a_command_sent_in_pieces_and_flushed_only_at_its_end_goes_through(
    server: ImapServer, front: ProxyProcess
):
    user = server.new_user()
    server.seed(user, "INBOX", [])
    message = make_message("in pieces", "x" * 5000 + "\r\n")
    with CompressedClient(front.address) as client:
        client.login(user, server.password)
        client.compress()
        client.send(b"a APPEND INBOX {%d}\r\n" % len(message))
        client.continuation()
        client.send(message[:3000], zlib.Z_NO_FLUSH)  # nothing the proxy can read yet
        client.send(message[3000:] + b"\r\n")  # the flush comes with the command's end
        replies = client.read_until(b"a")
        assert replies[-1].startswith(b"a OK"), replies
        client.logout()
    assert _subjects(server, user, b"INBOX") == [b"in pieces"]


def test_a_decompression_bomb_is_relayed_with_bounded_memory(
    server: ImapServer, front: ProxyProcess, request: pytest.FixtureRequest
):
    """An APPEND literal of 64 MiB (16 for imap4d) of one repeated line, 300 times smaller
    compressed: the proxy inflates it in pieces as the server takes them, and its memory does
    not grow with it."""
    user = server.new_user()
    server.seed(user, "INBOX", [])
    size = BOMB[SERVERS[request.node.callspec.params["server"]][0]]
    head = b"From: bomb@example.com\r\nSubject: bomb\r\n\r\n"  # imap4d needs a From:
    line = b"a" * 78 + b"\r\n"  # lines: imap4d is slow on a line of megabytes
    body = head + line * ((size - len(head)) // len(line))
    size = len(body)
    with CompressedClient(front.address, timeout=120) as client:
        client.login(user, server.password)
        client.compress()
        before = front.memory_kib("VmHWM")
        client.send(b"a APPEND INBOX {%d}\r\n" % size)
        client.continuation()
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = deflate.compress(body) + deflate.flush(zlib.Z_NO_FLUSH)
        assert len(bomb) * 300 < size
        client.sock.sendall(bomb)
        client._deflate = deflate  # the stream goes on: the command's end, then a flush
        client.send(b"\r\n")
        replies = client.read_until(b"a")
        assert replies[-1].startswith(b"a OK"), replies
        growth = (front.memory_kib("VmHWM") - before) / 1024
        selected = client.command(b"s", b"SELECT INBOX")
        assert b"* 1 EXISTS\r\n" in selected, selected
        sized = client.command(b"f", b"FETCH 1 (RFC822.SIZE)")
        stored = re.search(rb"RFC822.SIZE (\d+)", b"".join(sized))
        assert stored and int(stored.group(1)) >= size, sized  # imap4d adds its own headers
        client.logout()
    assert growth < 8, f"proxy peak memory grew by {growth:.0f} MiB inflating the bomb"


def test_a_line_bomb_ends_the_connection_with_bounded_memory(
    server: ImapServer, front: ProxyProcess
):
    """1 GiB without a line end, 1 MiB compressed: the proxy says BYE once the line is too long
    and inflates no more of it."""
    user = server.new_user()
    with CompressedClient(front.address, timeout=60, oracle=False) as client:
        client.login(user, server.password)
        client.compress()
        before = front.memory_kib("VmHWM")
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        piece = deflate.compress(b"x" * (64 * MIB))
        client.send(b"a NOOP ", zlib.Z_NO_FLUSH)
        client._deflate = deflate
        with contextlib.suppress(OSError):  # the proxy may close before all of it is sent
            for _ in range(16):
                client.sock.sendall(piece)
        assert client._read_response() == b"* BYE Line too long.\r\n"
        growth = (front.memory_kib("VmHWM") - before) / 1024
    assert growth < 8, f"proxy peak memory grew by {growth:.0f} MiB"
    assert "client line too long" in front.log_text()


def test_a_client_gone_while_compressed_output_is_written_ends_only_its_connection(
    server: ImapServer, front: ProxyProcess
):
    """A compressed client resets its connection in the middle of a 4 MB FETCH of mail that
    does not compress: the proxy's write fails, the connection ends (the client's stream is
    cut in the middle of a deflate block: nothing more can be said on it), and a new compressed
    session is served."""
    user = server.new_user()
    noise = base64.encodebytes(random.Random(4978).randbytes(3 * MIB)).replace(b"\n", b"\r\n")
    server.seed(user, "INBOX", [make_message("noise", noise.decode())])
    gone = CompressedClient(front.address, oracle=False)  # its FETCH is never read whole
    gone.login(user, server.password)
    gone.compress()
    gone.command(b"s", b"SELECT INBOX")
    port = gone.sock.getsockname()[1]
    gone.send(b"f FETCH 1 BODY[]\r\n")
    gone._fill()  # the FETCH has begun
    gone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.close()  # a reset, with megabytes still to send it
    front.wait_for_log(rf"closed client=[^ ]*:{port}\b")
    with CompressedClient(front.address, timeout=60) as client:  # imap4d: the mbox lock
        client.login(user, server.password)
        client.compress()
        client.command(b"s", b"SELECT INBOX")
        fetched = client.command(b"f", b"FETCH 1 BODY[]")
        assert noise[:1000] in fetched[0], fetched[0][:300]
        assert fetched[-1].startswith(b"f OK"), fetched[-1]
        client.logout()
