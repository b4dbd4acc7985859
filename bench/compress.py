"""Benchmark 6: COMPRESS=DEFLATE with the client (RFC 4978), beside Dovecot's own.

The same mailbox of mixed mail (text of varying length, a third with a base64 attachment of
random bytes) is fetched whole through the proxy without and with COMPRESS, and straight from
a Dovecot with its imap_zlib plugin without and with its COMPRESS. Reported: the bytes on the
client's wire, and the CPU time per GB of mail of whoever compresses (the proxy's process;
Dovecot's imap process of that session). Then idle connections (LOGIN, COMPRESS, IDLE) through
the proxy: its RSS per connection, without and with COMPRESS.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from client import ResponseScanner
from common import BenchDovecot, cpu_seconds

_TEXT = b" ".join(
    path.read_bytes() for path in sorted(Path("/usr/share/common-licenses").glob("*"))[:8]
).split()


def seed_mixed(server: BenchDovecot, user: str, count: int) -> int:
    """``count`` messages into ``user``'s INBOX maildir, the same for every server (a fixed
    seed); return their total size."""
    rng = random.Random(6154)
    maildir = server.maildir(user)
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(count):
        start = rng.randrange(len(_TEXT) - 4000)
        words = _TEXT[start : start + rng.randrange(100, 4000)]
        lines = [b" ".join(words[n : n + 12]) for n in range(0, len(words), 12)]
        body = b"\n".join(lines) + b"\n"
        head = (
            f"From: Person {i % 37} <p{i % 37}@example.org>\nTo: rcpt@example.com\n"
            f"Subject: Re: topic {i % 53} (message {i})\nMessage-ID: <{i}.{rng.random()}@bench>\n"
            f"Date: Thu, 01 Jan 2026 00:{i % 60:02d}:00 +0000\nMIME-Version: 1.0\n"
        ).encode()
        if i % 3 == 0:
            blob = base64.encodebytes(rng.randbytes(rng.randrange(2000, 30000)))
            message = (
                head + b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n'
                b"Content-Type: text/plain\n\n" + body + b"--b\nContent-Type: "
                b"application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
                + blob
                + b"--b--\n"
            )
        else:
            message = head + b"Content-Type: text/plain\n\n" + body
        (maildir / "cur" / f"{i}.bench:2,S").write_bytes(message)
        total += len(message) + message.count(b"\n")
    for path in [maildir, *maildir.rglob("*")]:
        os.chown(path, server.mail_uid, server.mail_gid)
    return total


class ZlibDovecot(BenchDovecot):
    """A Dovecot with its own COMPRESS (imap_zlib)."""

    def _plugins_config(self) -> str:
        return "protocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n}"


@dataclass(slots=True, frozen=True)
class Fetched:
    mail: int  # bytes of the FETCH's responses, uncompressed
    wire: int  # bytes on the client's wire
    cpu: float  # CPU seconds of the process measured


class WireClient:
    """A blocking client that counts the bytes on its wire, compressed or not."""

    def __init__(self, address: tuple[str, int], user: str, password: str) -> None:
        self.sock = socket.create_connection(address, 120)
        self._inflate: zlib._Decompress | None = None
        self._deflate: zlib._Compress | None = None
        self._tags = 0
        self._buf = bytearray(1 << 20)
        self.sock.recv(65536)  # the greeting
        self.command(f'LOGIN "{user}" "{password}"'.encode())

    def compress(self) -> None:
        tagged = self.command(b"COMPRESS DEFLATE")[0]
        if b" OK " not in tagged:
            raise RuntimeError(f"COMPRESS refused: {tagged!r}")
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)

    def send(self, data: bytes) -> None:
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def command(self, text: bytes, tag: bytes | None = None) -> tuple[bytes, int, int]:
        """Send ``text``; wait for the tagged reply (or ``tag``'s line, such as b"+"); return
        it, the bytes received and those on the wire."""
        self._tags += 1
        mine = b"c%d" % self._tags
        self.send(mine + b" " + text + b"\r\n")
        scanner = ResponseScanner(tag or mine)
        mail = wire = 0
        view = memoryview(self._buf)
        for _ in range(10_000_000):
            count = self.sock.recv_into(view)
            if not count:
                raise RuntimeError("connection closed")
            wire += count
            data = view[:count] if self._inflate is None else self._inflate.decompress(view[:count])
            mail += len(data)
            scanner.feed(memoryview(data))
            if scanner.done:
                return scanner.tagged, mail, wire
        raise RuntimeError("no tagged reply")

    def close(self) -> None:
        self.sock.close()


def _imap_pids(server: BenchDovecot) -> set[int]:
    """The pids of ``server``'s imap processes (one per logged-in session)."""
    assert server.proc is not None
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            text = Path("/proc", pid, "stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[2]) == server.proc.pid and "(imap)" in text[: text.rindex(")") + 1]:
                found.add(int(pid))
    return found


def fetch_all(
    address: tuple[str, int],
    user: str,
    password: str,
    *,
    compress: bool,
    pid: int | None = None,
    server: BenchDovecot | None = None,
    rounds: int = 3,
) -> Fetched:
    """FETCH 1:* BODY[] ``rounds`` times in one session; the CPU of ``pid``, or of the
    session's own imap process of ``server``."""
    before = _imap_pids(server) if server is not None else set()
    client = WireClient(address, user, password)
    try:
        if server is not None:
            (pid,) = _imap_pids(server) - before
        assert pid is not None
        if compress:
            client.compress()
        client.command(b"EXAMINE INBOX")
        client.command(b"FETCH 1:* BODY.PEEK[]")  # warm-up: caches, the allocator
        mail = wire = 0
        cpu = cpu_seconds(pid)
        for _ in range(rounds):
            _, got, on_wire = client.command(b"FETCH 1:* BODY.PEEK[]")
            mail, wire = mail + got, wire + on_wire
        return Fetched(mail, wire, cpu_seconds(pid) - cpu)
    finally:
        client.close()


def open_idle(
    address: tuple[str, int], user: str, password: str, count: int, *, compress: bool
) -> list[WireClient]:
    """``count`` sessions, each logged in (compressed if asked) and in IDLE."""
    clients = []
    for _ in range(count):
        client = WireClient(address, user, password)
        if compress:
            client.compress()
        client.command(b"IDLE", tag=b"+")
        clients.append(client)
    time.sleep(0.5)  # the proxy's tasks settle
    return clients
