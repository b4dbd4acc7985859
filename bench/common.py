"""Shared pieces of the benchmarks: servers (Dovecot, HAProxy, the proxy), /proc readers, seeding.

Everything listens on 127.0.0.1 and lives below one temporary directory per run.  The test-suite
launchers are reused from ``tests/`` (imported by path: nothing below ``tests/`` is modified).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import ProxyProcess  # noqa: E402
from servers import HOST, DovecotServer, find_binary, find_free_port  # noqa: E402

__all__ = [
    "HOST",
    "ROOT",
    "BenchDovecot",
    "HAProxy",
    "Row",
    "Stopwatch",
    "cpu_seconds",
    "find_free_port",
    "median",
    "minor_faults",
    "percentile",
    "raise_nofile",
    "rss_kib",
    "seed_maildir",
    "start_proxy",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Row:
    """One line of the result table."""

    name: str
    reference: str
    proxy: str
    ratio: float | None
    target: str
    met: bool | None
    note: str = ""

    def cells(self) -> list[str]:
        ratio = "-" if self.ratio is None else f"{self.ratio:.3f}"
        met = "-" if self.met is None else ("yes" if self.met else "**NO**")
        return [self.name, self.reference, self.proxy, ratio, self.target, met]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


# -- /proc ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (threads included), from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def minor_faults(pid: int) -> int:
    """Minor page faults of ``pid`` so far (minflt, field 10 of /proc/PID/stat): pages the
    kernel had to map, and zero, because the process's allocator gave memory back and took it
    again."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[7])


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, from /proc/PID/status."""
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return int(match.group(1))


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard if allowed) to ``wanted``; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_soft = hard if hard == resource.RLIM_INFINITY else min(max(soft, wanted), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return int(new_soft)


# -- Dovecot -------------------------------------------------------------------------------------


class BenchDovecot(DovecotServer):
    """The test-suite Dovecot, tuned for benchmarks.

    * no rawlog (homes are created without the ``rawlog`` directory, so nothing is recorded);
    * limits high enough for ``sessions`` concurrent post-login sessions (one ``imap`` process
      each) and a performance-mode ``imap-login`` (``service_count = 0``).
    """

    def __init__(
        self, root: Path, *, variant: Literal["legacy", "native"], sessions: int = 1000
    ) -> None:
        self.sessions = sessions
        limit = sessions + 200
        extra = f"""
service imap {{
  process_limit = {limit}
  client_limit = 1
}}
service imap-login {{
  service_count = 0
  process_min_avail = 2
  process_limit = 8
  client_limit = {limit}
}}
"""
        super().__init__(root, variant=variant, name=f"bench-{variant}", extra_config=extra)

    def _write_config(self) -> None:
        super()._write_config()
        limit = self.sessions + 200
        text = self.config_path.read_text()
        replacements = {
            r"^default_process_limit = \d+$": f"default_process_limit = {limit}",
            r"^default_client_limit = \d+$": f"default_client_limit = {limit * 2}",
            r"^rawlog_dir = .*$": "# rawlog disabled for benchmarks",
            r"^auth_verbose = yes$": "auth_verbose = no",
            r"mail_max_userip_connections = \d+": f"mail_max_userip_connections = {limit}",
        }
        for pattern, value in replacements.items():
            text, count = re.subn(pattern, value, text, flags=re.M)
            if count != 1:
                raise RuntimeError(f"BenchDovecot: {pattern!r} not found in the Dovecot config")
        self.config_path.write_text(text)

    def _add_user(self, user: str) -> None:
        home = self.home_dir / user
        home.mkdir()
        os.chown(home, self.mail_uid, self.mail_gid)
        home.chmod(0o700)

    def maildir(self, user: str) -> Path:
        return self.home_dir / user / "Maildir"

    def process_count(self, name: str = "imap") -> int:
        """Number of processes of this instance whose command is ``dovecot/<name>``."""
        if self.proc is None:
            return 0
        count = 0
        # Not Path.glob: it stats each match, and a process that exits meanwhile raises.
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):  # it exited meanwhile
                text = Path("/proc", pid, "stat").read_text()
                # pgrp (field 5) is the master's pid: start_new_session=True.
                fields = text[text.rindex(")") + 2 :].split()
                if int(fields[2]) == self.proc.pid and f"({name})" in text[: text.rindex(")") + 1]:
                    count += 1
        return count


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid)


def seed_maildir(
    server: BenchDovecot, user: str, count: int, size: int, *, seen_every: int = 0
) -> int:
    """Write ``count`` messages of about ``size`` bytes straight into ``user``'s INBOX maildir.

    Files use LF line endings with Dovecot's own ``S=`` (file size) and ``W=`` (CRLF size)
    filename fields, so Dovecot needs not read them to learn their sizes.  Every
    ``seen_every``-th message is flagged \\Seen.  Returns the total CRLF size.
    """
    maildir = server.maildir(user)
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    header = (
        "From: bench@example.com\nTo: rcpt@example.com\nSubject: bench message {i}\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-ID: <{i}.{tok}@bench.test>\n\n"
    )
    token = secrets.token_hex(4)
    # A body of 76-character lines of random-looking text (no compression games).
    line = (secrets.token_urlsafe(57)[:76] + "\n").encode()
    total = 0
    cur = maildir / "cur"
    for i in range(1, count + 1):
        head = header.format(i=i, tok=token).encode()
        body_lines = max(0, (size - len(head)) // len(line))
        data = head + line * body_lines
        crlf_size = len(data) + data.count(b"\n")
        flags = "S" if seen_every and i % seen_every == 0 else ""
        name = f"{now}.M{i}P{os.getpid()}.bench,S={len(data)},W={crlf_size}:2,{flags}"
        fd = os.open(cur / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, server.mail_uid, server.mail_gid)
        finally:
            os.close(fd)
        total += crlf_size
    _chown_tree(maildir, server.mail_uid, server.mail_gid)
    return total


# -- HAProxy -------------------------------------------------------------------------------------


class HAProxy:
    """Debian's haproxy in ``mode tcp``, no logging, one thread, in front of ``upstream``."""

    def __init__(self, root: Path, upstream: tuple[str, int], maxconn: int = 1000) -> None:
        self.root = root
        self.upstream = upstream
        self.maxconn = maxconn
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> HAProxy:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = find_free_port()
        config = self.root / "haproxy.cfg"
        config.write_text(
            f"""global
    maxconn {self.maxconn}
    nbthread 1

defaults
    mode tcp
    timeout connect 10s
    timeout client 1h
    timeout server 1h

frontend imap
    bind {HOST}:{self.port}
    default_backend dovecot

backend dovecot
    server dovecot {self.upstream[0]}:{self.upstream[1]}
"""
        )
        out = (self.root / "haproxy.out").open("ab")
        self.proc = subprocess.Popen(
            [find_binary("haproxy"), "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {(self.root / 'haproxy.out').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(self.address, 0.5):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("haproxy did not start listening")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the proxy -----------------------------------------------------------------------------------


@contextlib.contextmanager
def start_proxy(
    upstream: tuple[str, int], log_path: Path, code: Path = ROOT, *extra: str
) -> Iterator[ProxyProcess]:
    """``python -m imapmoveproxy`` at log level warning (inherits this process's rlimits), with
    the connection limits raised: every benchmark client comes from 127.0.0.1. Its code comes
    from ``code``: this checkout, or another one to compare with."""
    limits = log_path.with_suffix(".toml")
    limits.write_text("max_connections = 100000\nmax_connections_per_address = 100000\n")
    proxy = ProxyProcess(
        upstream, log_path, "--log-level", "warning", "--config", str(limits), *extra, code=code
    )
    try:
        yield proxy
    finally:
        proxy.stop()


@contextlib.contextmanager
def start_trio_relay(
    upstream: tuple[str, int], log_path: Path
) -> Iterator[tuple[tuple[str, int], int]]:
    """bench/trio_relay.py in front of ``upstream``: the least a trio relay adds or holds; its
    address and process id."""
    port = find_free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("trio_relay.py")), str(port),
             f"{upstream[0]}:{upstream[1]}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"trio_relay.py did not start: {log_path.read_text()}")
            time.sleep(0.05)
        yield (HOST, port), process.pid
    finally:
        process.kill()
        process.wait(60)  # the kernel closes every socket it held (5,000 idle ones: seconds)
