"""Benchmark 4: thousands of idle (logged in, IDLE) connections through a relay.

One selectors loop in the bench process opens the connections, at most ``window`` of them
in progress at a time, each going greeting -> LOGIN -> IDLE -> "+ idling".  Finished ones are
unregistered and just held open.  The relay's RSS (VmRSS) is read before and after.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from common import rss_kib

GREETING, LOGIN, IDLE = range(3)


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    state: int = GREETING
    buf: bytes = b""
    connected: bool = False


class OpenError(RuntimeError):
    pass


def open_idle(
    address: tuple[str, int],
    users: list[str],
    password: str,
    count: int,
    *,
    window: int = 64,
    timeout: float = 300.0,
) -> tuple[list[socket.socket], float]:
    """Open ``count`` idle sessions; return the sockets and the seconds it took."""
    selector = selectors.DefaultSelector()
    done: list[socket.socket] = []
    started = 0
    active = 0
    begin = time.perf_counter()
    deadline = time.monotonic() + timeout
    logins = [f'a LOGIN "{user}" "{password}"\r\n'.encode() for user in users]

    def start_one() -> None:
        nonlocal started, active
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise OpenError(f"connect: {errno.errorcode.get(code, code)}")
        conn = _Conn(sock, connected=code == 0)
        selector.register(sock, selectors.EVENT_WRITE if code else selectors.EVENT_READ, conn)
        started += 1
        active += 1

    try:
        while len(done) < count:
            while active < window and started < count:
                start_one()
            if time.monotonic() > deadline:
                raise OpenError(f"timeout: {len(done)} of {count} connections idle")
            for key, events in selector.select(timeout=1.0):
                conn: _Conn = key.data
                sock = conn.sock
                if not conn.connected:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise OpenError(f"connect: {errno.errorcode.get(code, code)}")
                    conn.connected = True
                    selector.modify(sock, selectors.EVENT_READ, conn)
                    continue
                if not events & selectors.EVENT_READ:
                    continue
                data = sock.recv(65536)
                if not data:
                    raise OpenError(f"connection closed by peer (state {conn.state}): {conn.buf!r}")
                conn.buf += data
                while b"\n" in conn.buf:
                    line, _, conn.buf = conn.buf.partition(b"\n")
                    if conn.state == GREETING:
                        if not line.startswith(b"* OK"):
                            raise OpenError(f"bad greeting {line!r}")
                        sock.sendall(logins[len(done) % len(logins)])
                        conn.state = LOGIN
                    elif conn.state == LOGIN and line.startswith(b"a "):
                        if not line.startswith(b"a OK"):
                            raise OpenError(f"LOGIN failed: {line!r}")
                        sock.sendall(b"i IDLE\r\n")
                        conn.state = IDLE
                    elif conn.state == IDLE and line.startswith(b"+"):
                        selector.unregister(sock)
                        done.append(sock)
                        active -= 1
                        break
                    elif conn.state == IDLE and line.startswith(b"i "):
                        raise OpenError(f"IDLE failed: {line!r}")
        return done, time.perf_counter() - begin
    except BaseException:
        for sock in done:
            sock.close()
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        raise
    finally:
        selector.close()


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def settle_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS after it stopped moving (or after ``seconds`` x 5), in KiB."""
    last = rss_kib(pid)
    for _ in range(5):
        time.sleep(seconds)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last
