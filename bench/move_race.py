"""Concurrent MOVEs of the same mail (the table in docs/deployment.md, "Running several replicas").

Four sessions of one user each run ``UID MOVE 1:* Archive`` three times on an INBOX of 300
messages, all starting together (a barrier), against: native Dovecot MOVE with no proxy; one
proxy in front of legacy Dovecot; two proxies each with its own lock; two and three proxies
sharing the lock in redis-server. Afterwards every Message-ID in INBOX and Archive is counted.

    python bench/move_race.py [--repeat N]      (as root: the test servers need it)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import ProxyProcess, RawClient, message_ids  # noqa: E402
from servers import DovecotServer, ImapServer, RedisServer, make_message  # noqa: E402

SESSIONS, ROUNDS, MESSAGES = 4, 3, 300


def race(server: ImapServer, addresses: list[tuple[str, int]]) -> tuple[int, int]:
    """Messages lost and extra copies after the four sessions' MOVEs."""
    user = server.new_user()
    server.seed(user, "INBOX", [make_message(f"m{i}") for i in range(MESSAGES)])
    server.seed(user, "Archive", [])
    start = threading.Barrier(SESSIONS)
    errors: list[BaseException] = []

    def session(n: int) -> None:
        try:
            with RawClient(addresses[n % len(addresses)], timeout=120) as client:
                client.login(user, server.password)
                client.command(b"s", b"SELECT INBOX")
                start.wait(60)
                for _ in range(ROUNDS):
                    client.command(b"m", b"UID MOVE 1:* Archive")
                client.logout()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    if errors:
        raise errors[0]
    found = message_ids(server, user, ("INBOX", "Archive"))
    return MESSAGES - len(found), sum(found.values()) - len(found)


@contextlib.contextmanager
def proxies(
    upstream: tuple[str, int], root: Path, count: int, *extra: str
) -> Iterator[list[tuple[str, int]]]:
    running = [ProxyProcess(upstream, root / f"proxy{n}.log", *extra) for n in range(count)]
    try:
        yield [proxy.address for proxy in running]
    finally:
        for proxy in running:
            proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each path")
    repeat = parser.parse_args().repeat
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        native = DovecotServer(root / "native", variant="native").start()
        legacy = DovecotServer(root / "legacy", variant="legacy").start()
        redis = RedisServer(root / "redis").start()
        lock = ("--move-lock", redis.url)
        try:
            paths = [
                ("native Dovecot 2.3 MOVE, no proxy", native, None, 0, ()),
                ("one proxy in front of legacy Dovecot", legacy, legacy, 1, ()),
                ("two proxies, each its own lock", legacy, legacy, 2, ()),
                ("two proxies sharing the lock in Redis", legacy, legacy, 2, lock),
                ("three proxies sharing the lock in Redis", legacy, legacy, 3, lock),
            ]
            print("| path | messages lost | duplicates |\n|---|---|---|")
            for name, server, upstream, count, extra in paths:
                results = []
                for _ in range(repeat):
                    if upstream is None:
                        results.append(race(server, [server.address]))
                        continue
                    with proxies(upstream.address, root, count, *extra) as addresses:
                        results.append(race(server, addresses))
                lost = "/".join(str(r[0]) for r in results)
                duplicates = "/".join(str(r[1]) for r in results)
                print(f"| {name} | {lost} | {duplicates} |", flush=True)
        finally:
            for stoppable in (native, legacy, redis):
                stoppable.stop()


if __name__ == "__main__":
    main()
