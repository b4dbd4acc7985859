"""Test harness: the proxy as a real process, and a raw IMAP client that records every byte.

The raw client deliberately does not use the proxy's own framing code, so a framing bug in the
proxy cannot hide itself in the tests.
"""

from __future__ import annotations

import contextlib
import enum
import imaplib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import clientview
from clientview import ClientView
from servers import HOST, DovecotServer, ImapServer, find_free_port

ROOT = Path(__file__).resolve().parent.parent


class ProxyProcess:
    """``python -m imapmoveproxy`` listening on 127.0.0.1, in front of ``upstream`` (None: the
    backends of the ``--config`` in ``extra``); its code comes from ``code`` (another checkout,
    for the benchmarks' comparisons of two versions)."""

    def __init__(
        self,
        upstream: tuple[str, int] | None,
        log_path: Path,
        *extra: str,
        code: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = find_free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        command = [
            sys.executable, "-m", "imapmoveproxy",
            "--listen", f"{HOST}:{self.port}",
            *(["--upstream", f"{upstream[0]}:{upstream[1]}"] if upstream else []),
            "--log-level", "debug", *extra,
        ]  # fmt: skip
        # Each proxy its own journal (a SQLite journal is one process's).
        if "--journal" not in extra:
            command += ["--journal", str(log_path.with_name(f"journal-{self.port}.sqlite"))]
        environ = {**os.environ, **(env or {}), "PYTHONPATH": str(code)}
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=environ, cwd=code
        )
        # Ready once every listener accepts: the plain one, and the implicit-TLS one if any
        # (opened after the plain one).
        ports = [self.port]
        if "--listen-tls" in extra:
            ports.append(int(extra[extra.index("--listen-tls") + 1].rsplit(":", 1)[1]))
        clientview.PROXIES.update((HOST, port) for port in ports)  # imaplib sessions watched
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited: {self.log_text()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, ports[0]), 0.5):
                ports.pop(0)
            if not ports:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"proxy did not start listening: {self.log_text()}")

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first match of the regular expression ``pattern`` in the log, waiting for it."""
        deadline = time.monotonic() + timeout
        while (match := re.search(pattern, self.log_text())) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the proxy log: {self.log_text()[-2000:]}")
            time.sleep(0.05)
        return match

    def memory_kib(self, field: str = "VmRSS") -> int:
        """A memory figure of the proxy process from /proc (VmRSS: now, VmHWM: peak), in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


@contextlib.contextmanager
def running_proxy(
    upstream: tuple[str, int] | None, log_path: Path, *extra: str
) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(upstream, log_path, *extra)
    try:
        yield proxy
    finally:
        proxy.stop()


class RawClient:
    """Sends raw command bytes and reads responses up to a tagged one, literals included.

    A :class:`clientview.ClientView` watches the session (every command sent, every response
    read) and raises AssertionError when a response breaks what the client was told; pass
    ``oracle=False`` for a session that speaks garbage on purpose or to a server that itself
    breaks the rules (and say why)."""

    view: ClientView | None = None  # also for subclasses that do not call this __init__

    def __init__(
        self, address: tuple[str, int], timeout: float = 10.0, *, oracle: bool = True
    ) -> None:
        if oracle:
            self.view = ClientView(f"RawClient to {address[0]}:{address[1]}")
            clientview.WATCHED.append(self.view)
        self.sock = socket.create_connection(address, timeout)
        self.sock.settimeout(timeout)
        self._buf = b""
        self.greeting = self._read_response()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        if self.view is not None:
            self.view.client(data)
        self.sock.sendall(data)

    def dribble(self, data: bytes, pause: float = 0.002) -> None:
        """Send ``data`` one byte per TCP segment, pausing between bytes (a very slow client)."""
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.view is not None:
            self.view.client(data)
        for byte in data:
            self.sock.sendall(bytes([byte]))
            time.sleep(pause)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; unread: {self._buf!r}")
        self._buf += chunk

    def _read_line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            self._fill()
        line, self._buf = self._buf[: end + 2], self._buf[end + 2 :]
        return line

    def _read_response(self) -> bytes:
        """One whole response: a line, plus literals and continuation lines it announces."""
        response = self._read_line()
        while (match := re.search(rb"\{(\d+)\}\r\n$", response)) is not None:
            size = int(match.group(1))
            while len(self._buf) < size:
                self._fill()
            response += self._buf[:size]
            self._buf = self._buf[size:]
            response += self._read_line()
        if self.view is not None:
            self.view.server(response)
        return response

    def read_until(self, tag: bytes) -> list[bytes]:
        """All responses up to and including the tagged one for ``tag``."""
        responses = []
        for _ in range(1_000_000):
            response = self._read_response()
            responses.append(response)
            if response.startswith(tag + b" "):
                return responses
        raise AssertionError("no tagged response")

    def command(self, tag: bytes, command: bytes) -> list[bytes]:
        self.send(tag + b" " + command + b"\r\n")
        return self.read_until(tag)

    def continuation(self) -> bytes:
        response = self._read_response()
        assert response.startswith(b"+"), response
        return response

    def login(self, user: str, password: str) -> list[bytes]:
        replies = self.command(b"L1", f'LOGIN "{user}" "{password}"'.encode())
        assert replies[-1].startswith(b"L1 OK"), replies
        return replies

    def logout(self) -> None:
        """LOGOUT, up to its tagged OK: the end of the session is then known to the server (imap4d
        writes a session's flag changes to its mbox files only then, before it answers)."""
        replies = self.command(b"Z", b"LOGOUT")
        assert replies[-1].startswith(b"Z OK"), replies


class CompressedClient(RawClient):
    """A :class:`RawClient` that turns on COMPRESS=DEFLATE after login (:meth:`compress`), then
    deflates what it sends, flushed with ``flush`` after each send (zlib.Z_SYNC_FLUSH; mbsync
    uses Z_PARTIAL_FLUSH), and inflates what it reads. Its own zlib streams: the proxy's code
    is not used to check itself."""

    flush = zlib.Z_SYNC_FLUSH
    _deflate: Any = None
    _inflate: Any = None

    def compress(self, flush: int = zlib.Z_SYNC_FLUSH) -> list[bytes]:
        replies = self.command(b"Z1", b"COMPRESS DEFLATE")
        assert replies[-1].startswith(b"Z1 OK"), replies
        assert not self._buf, "bytes after the OK came with it: the proxy compressed too late"
        self.flush = flush
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        return replies

    def send(self, data: bytes, flush: int | None = None) -> None:
        """Send ``data``; on a compressed connection flushed with ``flush`` (default: the
        client's own), zlib.Z_NO_FLUSH to send a command in pieces."""
        if self._deflate is None:
            super().send(data)
            return
        if self.view is not None:
            self.view.client(data)
        z = self._deflate
        self.sock.sendall(z.compress(data) + z.flush(self.flush if flush is None else flush))

    def _fill(self) -> None:
        if self._inflate is None:
            super()._fill()
            return
        for _ in range(1_000_000):  # until some bytes inflate (a sync flush ends each burst)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unread: {self._buf!r}")
            data = self._inflate.decompress(chunk)
            if data:
                self._buf += data
                return


def watch_imaplib(setattr_: Callable[[object, str, object], None]) -> None:
    """Give every imaplib connection to a proxy of :data:`clientview.PROXIES` a ClientView that
    sees all it sends and reads (``setattr_``: ``monkeypatch.setattr``, undone after the test).
    imapclient and imap_tools sessions run on imaplib, so they are watched too."""
    imap4 = imaplib.IMAP4
    original_open, readline, read, send = imap4.open, imap4.readline, imap4.read, imap4.send

    def view_of(imap: imaplib.IMAP4) -> ClientView | None:
        view: ClientView | None = getattr(imap, "_client_view", None)
        return view

    def open_(self: imaplib.IMAP4, *args: Any, **kwargs: Any) -> None:
        original_open(self, *args, **kwargs)
        with contextlib.suppress(OSError, AttributeError):
            peer = self.sock.getpeername()[:2]
            if peer in clientview.PROXIES:
                view = ClientView(f"imaplib to {peer[0]}:{peer[1]}")
                clientview.WATCHED.append(view)
                self._client_view = view  # type: ignore[attr-defined]

    def readline_(self: imaplib.IMAP4) -> bytes:
        line = readline(self)
        if (view := view_of(self)) is not None:
            view.server_bytes(line)
        return line

    def read_(self: imaplib.IMAP4, size: int) -> bytes:
        data = read(self, size)
        if (view := view_of(self)) is not None:
            view.server_bytes(data)
        return data

    def send_(self: imaplib.IMAP4, data: bytes) -> None:
        if (view := view_of(self)) is not None:
            view.client(data)
        send(self, data)

    for name, function in [("open", open_), ("readline", readline_), ("read", read_),
                           ("send", send_)]:  # fmt: skip
        setattr_(imap4, name, function)


class RelayAction(enum.Enum):
    """What an :class:`InterceptingRelay` does with the command line in which the pattern's
    n-th occurrence is seen (bytes before that line are always forwarded first)."""

    FORWARD = "forward"  # run the hook, then forward (the default)
    DROP_BEFORE = "drop before"  # do not forward the line; close both sides
    DROP_AFTER = "drop after"  # forward the line, then close both sides at once
    INJECT = "inject"  # forward the line, then send ``reply`` to the proxy as if from the server
    ANSWER = "answer instead"  # do not forward the line; send ``reply`` to the proxy instead
    SWALLOW = "swallow"  # do not forward the line, answer nothing: a server that stalls


class InterceptingRelay:
    """A TCP relay between the proxy and a real server that runs a hook before forwarding the
    proxy's n-th occurrence of a command: the way to hold a real server still between two
    steps of a MOVE, which no real server can be told to do.

    With an ``action`` other than FORWARD, the relay also does what no real server does at that
    point (see :class:`RelayAction`): the upstream connection drops just before or just after
    the command, or a reply the server never sent reaches the proxy. ``reply`` is bytes, or a
    function of the matched command's tag. Occurrences are counted per connection (the
    proxy's rollback session is a connection of its own); the hook and the action run once.
    An injected reply reaches the proxy before anything the server sends after the command.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        pattern: bytes,
        occurrence: int,
        hook: Callable[[], None] | None = None,
        *,
        action: RelayAction = RelayAction.FORWARD,
        reply: bytes | Callable[[bytes], bytes] = b"",
    ) -> None:
        self._upstream = upstream
        self._pattern = pattern
        self._occurrence = occurrence
        self._hook = hook
        self._action = action
        self._reply = reply
        self.hook_ran = threading.Event()
        self.matched = b""  # the command line the action was taken on
        self.received = b""  # what the proxy sent through the relay, all connections together
        self.connections = 0  # accepted so far
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.2)
        self.address = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            server = socket.create_connection(self._upstream, 10)
            to_client = threading.Lock()  # the server's bytes and injected ones never interleave
            for source, sink, watch in ((client, server, True), (server, client, False)):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink, watch, to_client), daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _pump(
        self, source: socket.socket, sink: socket.socket, watch: bool, to_client: threading.Lock
    ) -> None:
        seen = 0
        source.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if watch:
                self.received += data
            if watch and not self.hook_ran.is_set():
                if self._action is not RelayAction.FORWARD:
                    at = self._nth(data, seen)
                    if at is not None:
                        if not self._intercept(data, at, source, sink, to_client):
                            break
                        continue
                seen += data.count(self._pattern)
                if seen >= self._occurrence:
                    if self._hook is not None:
                        self._hook()
                    self.hook_ran.set()
            try:
                if watch:
                    sink.sendall(data)
                else:
                    with to_client:
                        sink.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _nth(self, data: bytes, seen: int) -> int | None:
        """Where in ``data`` the pattern's n-th occurrence starts, if it is in there."""
        at = -1
        for _ in range(self._occurrence - seen):
            at = data.find(self._pattern, at + 1)
            if at < 0:
                return None
        return at

    def _intercept(
        self,
        data: bytes,
        at: int,
        client: socket.socket,
        server: socket.socket,
        to_client: threading.Lock,
    ) -> bool:
        """Take the action on the line of ``data`` holding the match at ``at``; return whether
        the connection goes on."""
        start = data.rfind(b"\n", 0, at) + 1
        while (end := data.find(b"\n", at)) < 0 and not self._stop.is_set():
            try:  # the rest of the line, still on its way
                more = client.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not more:
                break
            data += more
        end = len(data) if end < 0 else end + 1
        head, line, tail = data[:start], data[start:end], data[end:]
        self.matched = line
        reply = self._reply(line.split(b" ", 1)[0]) if callable(self._reply) else self._reply
        if self._hook is not None:
            self._hook()
        action = self._action
        try:
            with to_client:  # nothing the server sends meanwhile can overtake the reply
                if action is RelayAction.ANSWER:
                    server.sendall(head)
                    client.sendall(reply)
                    server.sendall(tail)
                elif action is RelayAction.SWALLOW:
                    server.sendall(head + tail)
                elif action is RelayAction.INJECT:
                    server.sendall(head + line)
                    client.sendall(reply)
                    server.sendall(tail)
                else:
                    server.sendall(head + line if action is RelayAction.DROP_AFTER else head)
        except OSError:
            return False
        finally:
            self.hook_ran.set()
        if action in (RelayAction.DROP_BEFORE, RelayAction.DROP_AFTER):
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            return False
        return True

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()


@contextlib.contextmanager
def dovecot_with(root: Path, name: str, extra_config: str) -> Iterator[DovecotServer]:
    """A Dovecot with MOVE hidden and ``extra_config`` appended (TLS, trusted networks...)."""
    server = DovecotServer(root, variant="legacy", name=name, extra_config=extra_config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def venv_tool(name: str, package: str) -> str:
    """The path of a command-line tool installed by pip (on PATH or beside this Python);
    the test fails, never skips, when it is missing."""
    import pytest

    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} not installed: pip install {package}", pytrace=False)
    return found


def message_ids(server: ImapServer, user: str, boxes: tuple[str, ...]) -> Counter[str]:
    """How often each Message-ID occurs across ``boxes``, read directly from the server."""
    found: Counter[str] = Counter()
    for box in boxes:
        imap = server.connect(user)
        _, count = imap.select(box, readonly=True)
        if count != [b"0"]:
            _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            for item in data:
                if isinstance(item, tuple):
                    match = re.search(rb"<([^>]+)>", item[1])
                    assert match, item
                    found[match.group(1).decode()] += 1
        imap.logout()
    return found


def run_probe(
    upstream: tuple[str, int] | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``imapmoveproxy probe`` as a process, with ``--upstream`` unless None (``--json`` etc.
    in ``args``; ``env`` added to this process's environment)."""
    where = ["--upstream", f"{upstream[0]}:{upstream[1]}"] if upstream else []
    command = [sys.executable, "-m", "imapmoveproxy", "probe", *where, "--timeout", "20", *args]
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=180, env=environ, check=False
    )


_COUNT_RE = re.compile(rb"\* (\d+) (EXISTS|RECENT|EXPUNGE)(?:\r\n)?$")


def assert_counts_consistent(responses: list[bytes], exists: int) -> None:
    """Along ``responses`` (a client's view, starting with ``exists`` messages): no EXPUNGE of a
    message beyond the count, and no RECENT announcing more messages than the client was told of."""
    for response in responses:
        match = _COUNT_RE.match(response)
        if match is None:
            continue
        number, kind = int(match.group(1)), match.group(2)
        if kind == b"EXISTS":
            exists = number
        elif kind == b"EXPUNGE":
            assert number <= exists, (response, exists, responses)
            exists -= 1
        else:
            assert number <= exists, (response, exists, responses)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except HTTPError as error:
        return error.code, error.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{selector}}}" if labels else "")) + r" ([0-9.e+]+)$"
    match = re.search(pattern, text, re.M)
    assert match, f"{name} {labels} not in metrics"
    return float(match.group(1))


def subjects_and_flags(
    server: ImapServer, user: str, mailbox: str, timeout: float = 10.0
) -> list[tuple[str, frozenset[str]]]:
    """(subject, flags but \\Recent) of every message of ``mailbox``, read on the server itself
    (``timeout``: for each response, enough for thousands of messages on a busy machine)."""
    with RawClient(server.address, timeout, oracle=False) as client:  # straight to the server
        client.login(user, server.password)
        selected = client.command(b"s", b"EXAMINE " + mailbox.encode())
        assert selected[-1].startswith(b"s OK"), selected
        if any(re.match(rb"\* 0 EXISTS", reply) for reply in selected):
            client.logout()
            return []
        replies = client.command(b"f", b"FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        client.logout()
    found = []
    for reply in replies[:-1]:
        subject = re.search(rb"Subject: (\S+)", reply, re.IGNORECASE)
        flags = re.search(rb"FLAGS \(([^)]*)\)", reply)
        assert subject and flags, reply
        kept = frozenset(flags.group(1).decode().split()) - {"\\Recent"}
        found.append((subject.group(1).decode(), kept))
    return found
