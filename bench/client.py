"""A lean blocking IMAP client for the benchmarks: raw socket, 1 MiB reads, C-speed scanning.

It only needs to know where the tagged reply of the command it sent is, so it skips literals
by length and jumps over runs of plain lines with ``bytearray.find`` instead of looking at each
line in Python.  It is not a parser: it counts bytes and returns the tagged line.
"""

from __future__ import annotations

import re
import socket
import time

_LITERAL = re.compile(rb"\{(\d+)[+-]?\}\r\n$")
RECV_SIZE = 1 << 20
MAX_CARRY = 1 << 20  # longest incomplete line kept between reads


class ImapError(RuntimeError):
    pass


class ResponseScanner:
    """Finds the tagged reply for ``tag`` in a byte stream, skipping literals by length."""

    __slots__ = ("_buf", "_literal_left", "_tagsp", "done", "tagged")

    def __init__(self, tag: bytes) -> None:
        self._tagsp = tag + b" "
        self._buf = bytearray()
        self._literal_left = 0
        self.done = False
        self.tagged = b""

    def feed(self, view: memoryview) -> None:
        """Consume one chunk of received bytes (the caller reuses ``view``'s buffer)."""
        n = len(view)
        if not self._buf and self._literal_left >= n:
            self._literal_left -= n  # the common case for big literals: no copy at all
            return
        self._buf += view
        self._scan()

    def _scan(self) -> None:
        buf = self._buf
        tagsp = self._tagsp
        pos = 0
        n = len(buf)
        while pos < n and not self.done:
            if self._literal_left:
                take = min(self._literal_left, n - pos)
                self._literal_left -= take
                pos += take
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            mark = buf.find(b"}\r\n", pos)
            last = buf.rfind(b"\n", pos, n if mark < 0 else mark)
            if last >= pos:
                # Lines pos..last announce no literal: only a tagged reply start matters here.
                if buf[pos : pos + len(tagsp)] == tagsp:
                    start = pos
                else:
                    found = buf.find(b"\n" + tagsp, pos, last + 1)
                    start = -1 if found < 0 else found + 1
                if start >= 0:
                    end = buf.find(b"\n", start)
                    if end < 0:
                        pos = start
                        break
                    self.tagged = bytes(buf[start : end + 1])
                    self.done = True
                    pos = end + 1
                    break
                pos = last + 1
                continue
            line = bytes(buf[pos : nl + 1])
            pos = nl + 1
            if line.startswith(tagsp):
                self.tagged = line
                self.done = True
                break
            match = _LITERAL.search(line)
            if match is not None:
                self._literal_left = int(match.group(1))
        del buf[:pos]
        if len(buf) > MAX_CARRY:
            raise ImapError("line too long")


class Client:
    """One IMAP connection.  ``command()`` returns (tagged line, bytes received, seconds)."""

    def __init__(self, address: tuple[str, int], timeout: float = 120.0) -> None:
        self.sock = socket.create_connection(address, timeout)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._rbuf = bytearray(RECV_SIZE)
        self._view = memoryview(self._rbuf)
        self._tags = 0
        greeting = self._read_until(b"*")  # the greeting is the first "* ..." line
        if not greeting[0].startswith(b"* OK"):
            raise ImapError(f"bad greeting {greeting[0]!r}")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_until(self, tag: bytes, keep: list[bytes] | None = None) -> tuple[bytes, int]:
        scanner = ResponseScanner(tag)
        total = 0
        recv_into = self.sock.recv_into
        view = self._view
        for _ in range(10_000_000):
            count = recv_into(view)
            if not count:
                raise ImapError("connection closed")
            total += count
            if keep is not None:
                keep.append(bytes(view[:count]))
            scanner.feed(view[:count])
            if scanner.done:
                return scanner.tagged, total
        raise ImapError("no tagged reply")

    def command(
        self, text: bytes, *, check: bool = True, keep: list[bytes] | None = None
    ) -> tuple[bytes, int, float]:
        """Send one command; ``keep`` (if given) receives every chunk of its answer."""
        self._tags += 1
        tag = b"b%d" % self._tags
        start = time.perf_counter()
        self.sock.sendall(tag + b" " + text + b"\r\n")
        tagged, size = self._read_until(tag, keep)
        seconds = time.perf_counter() - start
        if check and not tagged.startswith(tag + b" OK"):
            raise ImapError(f"{text[:60]!r} failed: {tagged!r}")
        return tagged, size, seconds

    def text(self, text: bytes) -> bytes:
        """Run a command with a small answer and return the whole answer."""
        keep: list[bytes] = []
        self.command(text, keep=keep)
        return b"".join(keep)

    def login(self, user: str, password: str) -> None:
        self.command(f'LOGIN "{user}" "{password}"'.encode())
