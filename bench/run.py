"""Run the imapmoveproxy benchmarks and print a Markdown table.

    python bench/run.py                      # everything (about 4 minutes)
    python bench/run.py --quick              # small sizes: a smoke run (about 20 s)
    python bench/run.py bulk flood           # a subset: bulk (incl. CPU/GB), flood, move, journal,
                                             # latency, compress, scale
    python bench/run.py scale --connections 2000
    python bench/run.py --engine ../other    # the proxy's code from another checkout
    python bench/run.py latency --compare ../other   # a second proxy version in the same run

Must run as root (Dovecot switches users).  Everything listens on 127.0.0.1 and lives in a
temporary directory (on tmpfs by default, ``--dir`` to change) removed at the end (``--keep``
keeps it, with the logs).

Every figure is a ratio against a reference measured in the same run (HAProxy in tcp mode, or
native Dovecot MOVE), because the machine is noisy: absolute numbers are printed as context.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import compress
import journal
import latency
import move
import scale
import throughput
from common import (
    ROOT,
    BenchDovecot,
    HAProxy,
    Row,
    raise_nofile,
    rss_kib,
    seed_maildir,
    start_proxy,
    start_trio_relay,
)

# scale last: its 5,000 Dovecot processes, exiting, load the machine for a minute
BENCHMARKS = ("bulk", "flood", "move", "journal", "latency", "compress", "scale")


@dataclass(slots=True, frozen=True)
class Sizes:
    bulk_count: int
    bulk_kib: int
    bulk_rounds: int
    flood_count: int
    flood_rounds: int
    move_one_repeats: int
    move_many: int
    move_many_repeats: int
    move_chunked: int  # more than the default move_chunk_size (1000): moved in chunks
    move_chunked_repeats: int
    connections: int
    latency_commands: int  # of each command, per path
    latency_move_repeats: int
    compress_messages: int  # of mixed mail, fetched without and with COMPRESS
    compress_idle: int  # idle connections without and with COMPRESS


FULL = Sizes(200, 256, 10, 100_000, 7, 21, 1000, 7, 5000, 3, 5000, 2000, 41, 1000, 500)
QUICK = Sizes(40, 256, 3, 10_000, 3, 7, 100, 3, 1500, 1, 300, 300, 11, 200, 100)


def engine_label(code: Path) -> str:
    """``proxy@<commit>`` for a checkout being compared (its directory's name if not git)."""
    head = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return f"proxy@{head.stdout.strip() if head.returncode == 0 else code.name}"


class Bench:
    def __init__(
        self,
        root: Path,
        sizes: Sizes,
        selected: list[str],
        engine: Path = ROOT,
        compare: tuple[Path, ...] = (),
    ) -> None:
        self.root = root
        self.sizes = sizes
        self.selected = selected
        self.engine = engine  # where the proxy's code comes from
        self.compare = {engine_label(code): code for code in compare}
        self.rows: list[Row] = []
        self.stack = contextlib.ExitStack()
        self.legacy = BenchDovecot(root / "legacy", variant="legacy", sessions=sizes.connections)
        self.native: BenchDovecot | None = None

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def run(self) -> None:
        with self.stack:
            self.log(f"starting Dovecot (legacy) in {self.root}")
            self.stack.enter_context(self.legacy)
            for name in self.selected:
                started = time.monotonic()
                getattr(self, f"bench_{name}")()
                self.log(f"{name} done in {time.monotonic() - started:.0f} s")

    # -- 1, 2, 5 -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _relays(self, tag: str) -> Iterator[tuple[dict[str, tuple[str, int]], dict[str, int]]]:
        with (
            HAProxy(self.root / f"haproxy-{tag}", self.legacy.address) as haproxy,
            start_proxy(self.legacy.address, self.root / f"proxy-{tag}.log", self.engine) as proxy,
        ):
            addresses = {
                "direct": self.legacy.address,
                "haproxy": haproxy.address,
                "proxy": proxy.address,
            }
            pids = {"haproxy": haproxy.pid, "proxy": proxy.process.pid}
            yield addresses, pids

    def bench_bulk(self) -> None:
        sizes = self.sizes
        user = self.legacy.new_user("bulk")
        seed_maildir(self.legacy, user, sizes.bulk_count, sizes.bulk_kib * 1024)
        self.log(f"bulk: {sizes.bulk_count} x {sizes.bulk_kib} KiB, {sizes.bulk_rounds} rounds")
        with self._relays("bulk") as (addresses, pids):
            result = throughput.measure(
                addresses, pids, user, self.legacy.password, b"FETCH 1:* BODY[]", sizes.bulk_rounds
            )
        self.rows += throughput.rows_bulk(result, sizes.bulk_count, sizes.bulk_kib)

    def bench_flood(self) -> None:
        sizes = self.sizes
        user = self.legacy.new_user("flood")
        with_time = time.monotonic()
        seed_maildir(self.legacy, user, sizes.flood_count, 200, seen_every=3)
        self.log(
            f"flood: seeded {sizes.flood_count} messages in {time.monotonic() - with_time:.1f} s"
        )
        with self._relays("flood") as (addresses, pids):
            result = throughput.measure(
                addresses,
                pids,
                user,
                self.legacy.password,
                b"FETCH 1:* (UID FLAGS)",
                sizes.flood_rounds,
            )
        self.rows += throughput.rows_flood(result, sizes.flood_count)

    # -- 3 -------------------------------------------------------------------------------------

    def _native(self) -> BenchDovecot:
        """The Dovecot that offers MOVE itself, started on first use."""
        if self.native is None:
            self.native = BenchDovecot(self.root / "native", variant="native")
            self.stack.enter_context(self.native)
        return self.native

    def bench_move(self) -> None:
        native = self._native()
        logs = self.root / "proxy-move.log", self.root / "proxy-move-native.log"
        with (
            start_proxy(self.legacy.address, logs[0], self.engine) as proxy_legacy,
            start_proxy(native.address, logs[1], self.engine) as proxy_native,
        ):
            for count, repeats, target in (
                (1, self.sizes.move_one_repeats, None),  # its target is in 'latency'
                (self.sizes.move_many, self.sizes.move_many_repeats, 1.15),
                (self.sizes.move_chunked, self.sizes.move_chunked_repeats, None),
            ):
                self.log(f"move: {count} message(s), {repeats} repeats")
                times = move.run(
                    self.legacy, native, proxy_legacy.address, proxy_native.address, count, repeats
                )
                self.rows += move.rows(times, count, target)

    def bench_journal(self) -> None:
        for count, repeats in (
            (1, self.sizes.move_one_repeats),
            (self.sizes.move_many, self.sizes.move_many_repeats),
        ):
            self.log(f"journal: {count} message(s), {repeats} repeats")
            self.rows.append(journal.run(self.legacy, self.root, self.engine, count, repeats))

    # -- 6 -------------------------------------------------------------------------------------

    def bench_latency(self) -> None:
        sizes, legacy = self.sizes, self.legacy
        native = self._native()
        engines = {"proxy": self.engine} | self.compare
        user = latency.seed_commands_user(legacy)
        with contextlib.ExitStack() as stack:
            haproxy = stack.enter_context(HAProxy(self.root / "haproxy-latency", legacy.address))
            proxies = {
                name: stack.enter_context(
                    start_proxy(legacy.address, self.root / f"{name}-latency.log", code)
                ).address
                for name, code in engines.items()
            }
            relay, _ = stack.enter_context(
                start_trio_relay(legacy.address, self.root / "trio-relay.log")
            )
            addresses = {"direct": legacy.address, "haproxy": haproxy.address} | proxies
            addresses[latency.TRIO_RELAY] = relay
            self.log(f"latency: {sizes.latency_commands} of each command, paths {list(addresses)}")
            times = latency.command_latency(
                addresses, user, legacy.password, sizes.latency_commands
            )
            self.rows += latency.rows_commands(times, list(engines))
            self.log(f"latency: MOVE of 1 message, {sizes.latency_move_repeats} repeats")
            moves = latency.move_one(legacy, native, proxies, sizes.latency_move_repeats)
            self.rows += latency.rows_move(moves, list(engines))

    # -- 4 -------------------------------------------------------------------------------------

    def bench_compress(self) -> None:
        sizes, legacy, password = self.sizes, self.legacy, self.legacy.password
        zlib_dovecot = compress.ZlibDovecot(self.root / "zlib", variant="native")
        self.stack.enter_context(zlib_dovecot)
        user = legacy.new_user("mixed")
        own = zlib_dovecot.new_user("mixed")
        size = compress.seed_mixed(legacy, user, sizes.compress_messages)
        compress.seed_mixed(zlib_dovecot, own, sizes.compress_messages)
        self.log(f"compress: {sizes.compress_messages} mixed messages, {size / 1e6:.1f} MB")
        with start_proxy(legacy.address, self.root / "proxy-compress.log", self.engine) as proxy:
            pid = proxy.process.pid
            plain = compress.fetch_all(proxy.address, user, password, compress=False, pid=pid)
            packed = compress.fetch_all(proxy.address, user, password, compress=True, pid=pid)
            idle = {}
            for on in (False, True):
                before = scale.settle_rss(pid, 0.3)
                clients = compress.open_idle(
                    proxy.address, user, password, sizes.compress_idle, compress=on
                )
                idle[on] = (scale.settle_rss(pid) - before) / sizes.compress_idle
                for client in clients:
                    client.close()
        address = zlib_dovecot.address
        own_plain = compress.fetch_all(address, own, password, compress=False, server=zlib_dovecot)
        own_packed = compress.fetch_all(address, own, password, compress=True, server=zlib_dovecot)
        self.log(f"compress: proxy {plain} / {packed}; Dovecot {own_plain} / {own_packed}")

        def per_gb(fetched: compress.Fetched) -> float:
            return fetched.cpu / (fetched.mail / 1e9)

        self.rows += [
            Row(
                "6. bytes on the client's wire, FETCH of mixed mail, with COMPRESS",
                f"without {plain.wire / 1e6:.1f} MB",
                f"{packed.wire / 1e6:.1f} MB (Dovecot's own: {own_packed.wire / 1e6:.1f} MB)",
                packed.wire / plain.wire,
                "(context)",
                None,
            ),
            Row(
                "6. CPU per GB of mail, proxy with COMPRESS",
                f"without {per_gb(plain):.2f} s/GB",
                f"{per_gb(packed):.2f} s/GB",
                per_gb(packed) / per_gb(plain),
                "(context)",
                None,
            ),
            Row(
                "context: Dovecot's imap process, its own COMPRESS",
                f"without {per_gb(own_plain):.2f} s/GB",
                f"{per_gb(own_packed):.2f} s/GB",
                per_gb(own_packed) / per_gb(own_plain),
                "",
                None,
            ),
            Row(
                f"6. proxy RSS per idle connection ({sizes.compress_idle} LOGIN+COMPRESS+IDLE)",
                f"without {idle[False]:.1f} KiB",
                f"{idle[True]:.1f} KiB",
                idle[True] / idle[False] if idle[False] > 0 else None,
                "(context)",
                None,
            ),
        ]

    def bench_scale(self) -> None:
        count = self.sizes.connections
        users = [self.legacy.new_user("idle") for _ in range(math.ceil(count / 500))]
        password = self.legacy.password
        legacy = self.legacy

        def dovecot_idle() -> bool:
            return legacy.process_count("imap") <= 2

        def hold(address: tuple[str, int], pid: int | None, label: str) -> tuple[float, int, int]:
            """Open ``count`` idle sessions; return (seconds, RSS before, RSS after)."""
            if not scale.wait_until(dovecot_idle, 120):
                raise RuntimeError("Dovecot sessions of the previous step did not end")
            before = scale.settle_rss(pid, 0.3) if pid else 0
            sockets, seconds = scale.open_idle(address, users, password, count)
            try:
                after = scale.settle_rss(pid) if pid else 0
                self.log(
                    f"scale: {label}: {count} idle in {seconds:.1f} s; "
                    f"Dovecot imap processes: {legacy.process_count('imap')}, "
                    f"MemAvailable {_mem_available_mib()} MiB"
                )
            finally:
                scale.close_all(sockets)
            return seconds, before, after

        self.log(f"scale: {count} connections (MemAvailable {_mem_available_mib()} MiB)")
        direct_s, _, _ = hold(legacy.address, None, "direct")
        with HAProxy(self.root / "haproxy-scale", legacy.address, maxconn=count + 100) as haproxy:
            haproxy_s, h_before, h_after = hold(haproxy.address, haproxy.pid, "haproxy")
        with start_trio_relay(legacy.address, self.root / "trio-relay-scale.log") as (relay, pid):
            _, t_before, t_after = hold(relay, pid, "trio relay")
        with start_proxy(legacy.address, self.root / "proxy-scale.log", self.engine) as proxy:
            pid = proxy.process.pid
            # Warm-up: a few connections so one-time allocations are not counted per connection.
            warm, _ = scale.open_idle(proxy.address, users, password, min(20, count))
            scale.close_all(warm)
            proxy_s, p_before, p_after = hold(proxy.address, pid, "proxy")
            idle_rss = rss_kib(pid)
        per_proxy = (p_after - p_before) / count
        per_haproxy = (h_after - h_before) / count
        per_relay = (t_after - t_before) / count
        self.log(
            f"scale: proxy RSS {p_before} -> {p_after} KiB ({idle_rss} KiB after close); "
            f"HAProxy RSS {h_before} -> {h_after} KiB"
        )
        self.rows += [
            Row(
                f"4. RSS per idle connection ({count} LOGIN+IDLE)",
                f"HAProxy {per_haproxy:.1f} KiB",
                f"{per_proxy:.1f} KiB",
                per_proxy / per_haproxy if per_haproxy > 0 else None,
                "<= 16 KiB",
                per_proxy <= 16,
            ),
            Row(
                "context: the least a trio relay holds (bench/trio_relay.py)",
                f"HAProxy {per_haproxy:.1f} KiB",
                f"{per_relay:.1f} KiB (proxy: {per_proxy / per_relay:.2f} x this)",
                per_relay / per_haproxy if per_haproxy > 0 else None,
                "",
                None,
            ),
            Row(
                f"4. time to open {count} idle connections",
                f"direct {direct_s:.1f} s",
                f"{proxy_s:.1f} s",
                proxy_s / direct_s,
                "(context)",
                None,
            ),
            Row(
                "context: same through HAProxy",
                f"direct {direct_s:.1f} s",
                f"{haproxy_s:.1f} s",
                haproxy_s / direct_s,
                "",
                None,
            ),
        ]


def _mem_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return -1


def table(rows: list[Row]) -> str:
    header = ["benchmark", "reference", "proxy", "ratio", "target", "met?"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "benchmarks", nargs="*", metavar="BENCHMARK", help=f"subset of {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--connections", type=int, help="idle connections for 'scale'")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where the temporary directory (mail, configs, logs) goes; default /dev/shm "
        "(tmpfs: Dovecot's disk I/O would otherwise dominate MOVE and add noise)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--engine", type=Path, default=ROOT, help="the checkout the proxy's code comes from"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        metavar="CHECKOUT",
        help="'latency' also measures the proxy from this checkout, in the same run (repeatable)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("must run as root (Dovecot switches to dovenull/nobody)")
    unknown = sorted(set(args.benchmarks) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {BENCHMARKS}")
    sizes = QUICK if args.quick else FULL
    if args.connections:
        sizes = replace(sizes, connections=args.connections)
    selected = [b for b in BENCHMARKS if b in args.benchmarks] or list(BENCHMARKS)
    limit = raise_nofile(2 * sizes.connections + 2000)
    if "scale" in selected and limit < 2 * sizes.connections + 200:
        parser.error(f"RLIMIT_NOFILE is {limit}: too low for {sizes.connections} connections")
    root = Path(tempfile.mkdtemp(prefix="imp-bench-", dir=args.dir))
    bench = Bench(root, sizes, selected, args.engine.resolve(), tuple(args.compare))
    started = time.monotonic()
    failure: BaseException | None = None
    try:
        bench.run()
    except Exception as exc:  # report what was measured so far
        failure = exc
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\nimapmoveproxy benchmarks ({'quick' if args.quick else 'full'}; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; Python {platform.python_version()};"
        f" {time.monotonic() - started:.0f} s)\n"
    )
    print(table(bench.rows))
    print(
        f"\nMail, configs and logs under {args.dir or tempfile.gettempdir()}. HAProxy: mode tcp, "
        "nbthread 1, no logging. Proxy: --log-level warning. Throughput ratios are the median of "
        "per-round ratios (paths take turns); MOVE ratios are median(proxy)/median(native); RSS is "
        "VmRSS after minus before, over the connection count."
    )
    if failure is not None:
        print(f"\nFAILED: {type(failure).__name__}: {failure}")
        raise failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
