"""Profile the proxy process with py-spy while the bulk or flood FETCH runs through it.

    pip install py-spy
    python bench/profile.py bulk [--seconds 10] [--native]
    python bench/profile.py flood
    python bench/profile.py noop

Prints the functions with the most samples (self and inclusive).  Not part of ``run.py``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client import Client
from common import BenchDovecot, seed_maildir, start_proxy

WORKLOADS = {
    "bulk": (200, 256 * 1024, b"FETCH 1:* BODY[]"),
    "flood": (100_000, 200, b"FETCH 1:* (UID FLAGS)"),
    "noop": (10, 200, b"NOOP"),  # one round trip at a time: where a command's latency goes
}


def _group(frame: str) -> str:
    if frame.startswith(("_SocketType._nonblocking_helper", "EpollIOManager")):
        return "socket and epoll system calls (trio/_socket.py, _io_epoll.py)"
    if "imapmoveproxy/" in frame:
        return "imapmoveproxy code"
    if "trio/" in frame or "outcome/" in frame:
        return "trio machinery (scheduler, locks, checkpoints)"
    return "other"


def summarize(raw: Path, top: int, lines: bool = False) -> None:
    """Print the top frames of py-spy's raw (collapsed stack) output."""
    own: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not lines:
            frames = [frame.rsplit(":", 1)[0] for frame in frames]  # drop line numbers
        total += count
        own[frames[-1]] += count
        groups[_group(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"{total} samples (async stacks are partial: trust 'self' more than 'inclusive')")
    print("\n-- self samples by group --")
    for group, count in groups.most_common():
        print(f"{100 * count / total:5.1f}%  {group}")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"\n-- top {top} by {title} samples --")
        for frame, count in counter.most_common(top):
            print(f"{100 * count / total:5.1f}%  {frame}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument("--lines", action="store_true", help="keep line numbers in frames")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    count, size, command = WORKLOADS[args.workload]
    root = Path(tempfile.mkdtemp(prefix="imp-prof-", dir="/dev/shm"))
    try:
        with BenchDovecot(root / "dovecot", variant="legacy") as dovecot:
            user = dovecot.new_user()
            seed_maildir(dovecot, user, count, size)
            with start_proxy(dovecot.address, root / "proxy.log") as proxy:
                client = Client(proxy.address)
                client.login(user, dovecot.password)
                client.command(b"EXAMINE INBOX")
                client.command(command)  # warm-up
                raw = root / "profile.txt"
                extra = ["--native"] if args.native else []
                spy = subprocess.Popen(
                    [
                        *(py_spy, "record", "--pid", str(proxy.process.pid), "--format", "raw"),
                        *("--output", str(raw), "--duration", str(args.seconds), "--nonblocking"),
                        *extra,
                    ],
                    stdout=subprocess.DEVNULL,
                )
                deadline = time.monotonic() + args.seconds + 1
                fetches = 0
                while time.monotonic() < deadline and fetches < 10_000:
                    client.command(command)
                    fetches += 1
                spy.wait(60)
                client.close()
                print(f"{fetches} x {command.decode()}")
                summarize(raw, args.top, args.lines)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
