"""Bulk data read into reused buffers (shell/connection.py ``Buffers``) arrives intact.

The shell reads big pieces into a few buffers it keeps, and the session queues big pieces of
upstream bytes for the client as views into them: a buffer handed out again while a view into it
is still queued would send the client other bytes than the server's. Here clients that read
slowly (so that views stay queued) fetch and append messages of 20 MB through the proxy in front
of the real legacy Dovecot, several at once (more buffers held than the pool keeps), with
content that any overwritten piece would change; and the pool's rule is checked on a pipe.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import threading
import time

from harness import ProxyProcess
from servers import ImapServer, make_message
from test_engine import Sender
from test_hostile import logged_in

from imapmoveproxy.shell.connection import Buffers

MIB = 1024 * 1024


def random_message(subject: str, size: int, seed: int) -> bytes:
    """A message of about ``size`` bytes whose every line differs (hex of random bytes)."""
    rng = random.Random(seed)
    text = rng.randbytes(size // 2).hex().encode()
    body = b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    return make_message(subject) + body + b"\r\n"


def read_slowly(sock: socket.socket, until: re.Pattern[bytes], chunk: int, pause: float) -> bytes:
    """Read ``chunk`` bytes at a time, pausing between reads, until ``until`` matches the end."""
    received = bytearray()
    deadline = time.monotonic() + 300
    while not until.search(received, max(0, len(received) - 200)):
        assert time.monotonic() < deadline, received[-300:]
        data = sock.recv(chunk)
        if not data:
            break
        received += data
        time.sleep(pause)
    return bytes(received)


def literal_of(response: bytes, start: bytes) -> bytes:
    """The literal of the FETCH response that begins with ``start``."""
    match = re.search(re.escape(start) + rb"[^\r\n]*\{(\d+)\}\r\n", response)
    assert match, response[:300]
    return response[match.end() : match.end() + int(match.group(1))]


def test_a_slow_reader_gets_a_20_mb_fetch_intact_while_it_appends_20_mb(
    dovecot_legacy: ImapServer, proxy: ProxyProcess
):
    """A 20 MB FETCH read 64 KB at a time with pauses, and a 20 MB APPEND sent in the same
    write: every byte of both arrives as sent, and the proxy holds no more than its buffers."""
    user = dovecot_legacy.new_user()
    fetched = random_message("fetched", 20 * MIB, seed=1)
    appended = random_message("appended", 20 * MIB, seed=2)
    dovecot_legacy.seed(user, "INBOX", [fetched])
    dovecot_legacy.seed(user, "Bulk", [])
    before = proxy.memory_kib("VmHWM")
    with logged_in(proxy, dovecot_legacy, user) as client:
        client.command(b"s", b"SELECT INBOX")
        request = b"f FETCH 1 BODY.PEEK[]\r\na APPEND Bulk {%d+}\r\n" % len(appended)
        sender = Sender(client.sock, request + appended + b"\r\n")
        sender.start()
        received = read_slowly(client.sock, re.compile(rb"\r\na OK[^\r]*\r\n$"), 64 * 1024, 0.002)
        sender.join(60)
    assert sender.error is None
    assert re.search(rb"\r\nf OK", received), received[-300:]
    body = literal_of(received, b"* 1 FETCH (")
    assert hashlib.sha256(body).digest() == hashlib.sha256(fetched).digest()
    growth = (proxy.memory_kib("VmHWM") - before) / 1024
    assert growth < 16, f"proxy peak memory grew by {growth:.0f} MiB"
    imap = dovecot_legacy.connect(user)  # the APPEND, read straight from Dovecot
    try:
        imap.select("Bulk", readonly=True)
        _, data = imap.fetch("1", "(BODY.PEEK[])")
    finally:
        imap.logout()
    stored = data[0][1] if isinstance(data[0], tuple) else b""
    assert hashlib.sha256(stored).digest() == hashlib.sha256(appended).digest()


def test_slow_readers_at_once_hold_more_buffers_than_the_pool_keeps_and_get_their_bytes(
    dovecot_legacy: ImapServer, proxy: ProxyProcess
):
    """Six clients fetch different 4 MB messages at once, each reading slowly: together they
    hold more reads than the pool keeps (the rest get buffers of their own), and each gets
    exactly its message."""
    messages = [random_message(f"reader {i}", 4 * MIB, seed=10 + i) for i in range(6)]
    users = []
    for message in messages:
        users.append(dovecot_legacy.new_user())
        dovecot_legacy.seed(users[-1], "INBOX", [message])
    bodies: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def fetch(index: int) -> None:
        try:
            with logged_in(proxy, dovecot_legacy, users[index]) as client:
                client.command(b"s", b"SELECT INBOX")
                client.sock.sendall(b"f FETCH 1 BODY.PEEK[]\r\n")
                received = read_slowly(
                    client.sock, re.compile(rb"\r\nf OK[^\r]*\r\n$"), 16384, 0.001
                )
            bodies[index] = literal_of(received, b"* 1 FETCH (")
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(len(messages))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    for index, message in enumerate(messages):
        assert hashlib.sha256(bodies[index]).digest() == hashlib.sha256(message).digest(), index
    assert "Traceback" not in proxy.log_text(), proxy.log_text()[-3000:]


def test_a_buffer_is_read_into_again_only_once_nothing_refers_to_it():
    """The pool's rule, on a pipe: a read held (as the session holds a view queued for a slow
    client) is never read into again; one let go of is; short reads are copies."""
    pool = Buffers(size=64 * 1024, most=2)
    read_end, write_end = os.pipe()
    try:

        def read(data: bytes) -> bytes | bytearray:
            os.write(write_end, data)
            return pool.read(read_end)

        first = read(b"a" * 40_000)
        view = memoryview(first)[100:200]  # queued for a client
        del first
        second = read(b"b" * 40_000)
        assert bytes(view) == b"a" * 100
        assert view.obj is not second  # another buffer
        third = read(b"c" * 40_000)  # both held, and the pool is full: a new object
        assert bytes(view) == b"a" * 100 and bytes(second[:3]) == b"bbb"
        assert not any(third is buffer for buffer in (view.obj, second))
        held = id(view.obj)
        del view, second, third
        fourth = read(b"d" * 50_000)  # a free buffer again, cut to what was read
        assert id(fourth) == held and fourth == b"d" * 50_000
        del fourth
        short = read(b"e" * 10)
        assert type(short) is bytes and short == b"e" * 10
        again = read(b"f" * 33_000)  # still the same buffer, grown back before the read
        assert type(again) is bytearray and again == b"f" * 33_000
    finally:
        os.close(read_end)
        os.close(write_end)
