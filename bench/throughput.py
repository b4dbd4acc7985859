"""Benchmarks 1, 2 and 5: one big FETCH through HAProxy and through the proxy, same Dovecot.

Each round runs the same FETCH over three persistent connections (straight to Dovecot, through
HAProxy, through the proxy), in a rotating order; the ratio proxy/HAProxy is taken per round
(paired, so slow phases of the noisy machine hit both) and the median ratio is reported.  The
relays' CPU time (utime+stime from /proc) and minor page faults are summed over their own
FETCHes only.

The relays are fresh processes: the first FETCH through each (the warm-up round, after the one
straight to Dovecot has filled its caches) is reported apart, since a fresh process's allocator
has yet to settle (its heap grows and is trimmed again: page faults, each a page to zero).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from client import Client
from common import Row, cpu_seconds, median, minor_faults

PATHS = ("direct", "haproxy", "proxy")


@dataclass(slots=True)
class PathStats:
    seconds: list[float] = field(default_factory=list)
    size: int = 0
    total_bytes: int = 0
    cpu: float = 0.0
    faults: int = 0  # minor page faults of the relay process
    first: Fetch | None = None  # the first FETCH through a fresh relay


@dataclass(slots=True, frozen=True)
class Fetch:
    """One FETCH: its size, time, and the relay's CPU time and minor page faults."""

    size: int
    seconds: float
    cpu: float
    faults: int

    @property
    def rate(self) -> float:
        return self.size / self.seconds


@dataclass(slots=True)
class Measurement:
    stats: dict[str, PathStats]
    ratios: list[float]  # proxy throughput / HAProxy throughput, per round

    def rate(self, path: str) -> float:
        """Median bytes per second."""
        stats = self.stats[path]
        return stats.size / median(stats.seconds)

    def cpu_per_gb(self, path: str) -> float:
        stats = self.stats[path]
        return stats.cpu / (stats.total_bytes / 1e9)

    def faults_per_mb(self, path: str) -> float:
        stats = self.stats[path]
        return stats.faults / (stats.total_bytes / 1e6)

    def first(self, path: str) -> Fetch:
        first = self.stats[path].first
        assert first is not None
        return first


def _fetch(client: Client, command: bytes, pid: int | None) -> Fetch:
    """``command`` through ``client``, with what it cost the relay ``pid`` (if any)."""
    cpu_before = cpu_seconds(pid) if pid else 0.0
    faults_before = minor_faults(pid) if pid else 0
    _, size, seconds = client.command(command)
    if not pid:
        return Fetch(size, seconds, 0.0, 0)
    return Fetch(size, seconds, cpu_seconds(pid) - cpu_before, minor_faults(pid) - faults_before)


def measure(
    addresses: dict[str, tuple[str, int]],
    pids: dict[str, int],
    user: str,
    password: str,
    command: bytes,
    rounds: int,
    warmup: int = 1,
) -> Measurement:
    clients = {path: Client(addresses[path]) for path in PATHS}
    try:
        for client in clients.values():
            client.login(user, password)
            client.command(b"EXAMINE INBOX")  # read-only: BODY[] does not set \Seen
        stats = {path: PathStats() for path in PATHS}
        for _ in range(warmup):  # Dovecot builds its caches, the page cache fills
            for path, client in clients.items():
                fetch = _fetch(client, command, pids.get(path))
                stats[path].first = stats[path].first or fetch
        ratios = []
        for round_no in range(rounds):
            shift = round_no % len(PATHS)
            rates: dict[str, float] = {}
            for path in PATHS[shift:] + PATHS[:shift]:
                fetch = _fetch(clients[path], command, pids.get(path))
                path_stats = stats[path]
                path_stats.cpu += fetch.cpu
                path_stats.faults += fetch.faults
                path_stats.seconds.append(fetch.seconds)
                path_stats.size = fetch.size
                path_stats.total_bytes += fetch.size
                rates[path] = fetch.rate
            ratios.append(rates["proxy"] / rates["haproxy"])
        sizes = [s.size for s in stats.values()]
        # Only the tagged line may differ ("... completed (0.012 + 0.000 + 0.011 secs).").
        if max(sizes) - min(sizes) > 64:
            raise RuntimeError(f"the three paths returned different sizes: {sizes}")
        return Measurement(stats, ratios)
    finally:
        for client in clients.values():
            client.close()


def _mbps(rate: float) -> str:
    return f"{rate / 1e6:.0f} MB/s"


def rows_bulk(result: Measurement, count: int, size_kib: int) -> list[Row]:
    ratio = median(result.ratios)
    label = f"{count} x {size_kib} KiB"
    cpu_h, cpu_p = result.cpu_per_gb("haproxy"), result.cpu_per_gb("proxy")
    cpu_ratio = cpu_p / cpu_h if cpu_h else None
    return [
        Row(
            f"1. bulk FETCH BODY[] ({label}), throughput",
            f"HAProxy {_mbps(result.rate('haproxy'))}",
            _mbps(result.rate("proxy")),
            ratio,
            ">= 1.0",
            ratio >= 1.0,
        ),
        _first_row(result),
        _direct_row(result),
        Row(
            "5. CPU per GB relayed (bulk)",
            f"HAProxy {cpu_h:.2f} s/GB",
            f"{cpu_p:.2f} s/GB",
            cpu_ratio,
            "<= 1.3",
            None if cpu_ratio is None else cpu_ratio <= 1.3,
        ),
        _first_cpu_row(result),
        _faults_row(result),
    ]


def _first_row(result: Measurement) -> Row:
    """The first FETCH through a fresh process of each relay: one sample, hence context."""
    haproxy, proxy = result.first("haproxy"), result.first("proxy")
    return Row("context: first FETCH of a fresh process, throughput",
               f"HAProxy {_mbps(haproxy.rate)}", _mbps(proxy.rate), proxy.rate / haproxy.rate,
               "", None)  # fmt: skip


def _first_cpu_row(result: Measurement) -> Row:
    haproxy, proxy = result.first("haproxy"), result.first("proxy")
    cpu_h, cpu_p = haproxy.cpu / (haproxy.size / 1e9), proxy.cpu / (proxy.size / 1e9)
    return Row("context: CPU per GB, first FETCH of a fresh process", f"HAProxy {cpu_h:.2f} s/GB",
               f"{cpu_p:.2f} s/GB", cpu_p / cpu_h if cpu_h else None, "", None)  # fmt: skip


def _faults_row(result: Measurement) -> Row:
    """Minor page faults per MB relayed: steady state (the measured rounds), and the first
    FETCH of a fresh process."""

    def faults(path: str) -> str:
        first = result.first(path)
        return f"{result.faults_per_mb(path):.1f} ({first.faults / (first.size / 1e6):.1f})"

    return Row("context: minor page faults per MB relayed, steady (first FETCH)",
               f"HAProxy {faults('haproxy')}", faults("proxy"), None, "", None)  # fmt: skip


def _direct_row(result: Measurement) -> Row:
    """The client reading the same data straight from Dovecot: what neither relay can beat."""
    return Row("context: client straight from Dovecot", _mbps(result.rate("direct")), "", None,
               "", None)  # fmt: skip


def rows_flood(result: Measurement, count: int) -> list[Row]:
    ratio = median(result.ratios)
    responses = count / median(result.stats["proxy"].seconds)
    cpu_h, cpu_p = result.cpu_per_gb("haproxy"), result.cpu_per_gb("proxy")
    size = result.stats["proxy"].size
    return [
        Row(
            f"2. flood FETCH 1:* (UID FLAGS), {count} msgs ({size / 1e6:.1f} MB), throughput",
            f"HAProxy {_mbps(result.rate('haproxy'))}",
            f"{_mbps(result.rate('proxy'))} ({responses / 1e3:.0f}k resp/s)",
            ratio,
            ">= 1.0",
            ratio >= 1.0,
        ),
        _direct_row(result),
        Row(
            "context: CPU per GB relayed (flood)",
            f"HAProxy {cpu_h:.1f} s/GB",
            f"{cpu_p:.1f} s/GB",
            cpu_p / cpu_h if cpu_h else None,
            "",
            None,
        ),
    ]
