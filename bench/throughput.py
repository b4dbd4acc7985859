"""Benchmarks 1, 2 and 5: one big FETCH through HAProxy and through the proxy, same Dovecot.

Each round runs the same FETCH over three persistent connections (straight to Dovecot, through
HAProxy, through the proxy), in a rotating order; the ratio proxy/HAProxy is taken per round
(paired, so slow phases of the noisy machine hit both) and the median ratio is reported.  The
relays' CPU time (utime+stime from /proc) is summed over their own FETCHes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from client import Client
from common import Row, cpu_seconds, median

PATHS = ("direct", "haproxy", "proxy")


@dataclass(slots=True)
class PathStats:
    seconds: list[float] = field(default_factory=list)
    size: int = 0
    total_bytes: int = 0
    cpu: float = 0.0


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
        for _ in range(warmup):  # Dovecot builds its caches, the page cache fills
            for client in clients.values():
                client.command(command)
        stats = {path: PathStats() for path in PATHS}
        ratios = []
        for round_no in range(rounds):
            shift = round_no % len(PATHS)
            rates: dict[str, float] = {}
            for path in PATHS[shift:] + PATHS[:shift]:
                pid = pids.get(path)
                cpu_before = cpu_seconds(pid) if pid else 0.0
                _, size, seconds = clients[path].command(command)
                if pid:
                    stats[path].cpu += cpu_seconds(pid) - cpu_before
                stats[path].seconds.append(seconds)
                stats[path].size = size
                stats[path].total_bytes += size
                rates[path] = size / seconds
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
        _direct_row(result),
        Row(
            "5. CPU per GB relayed (bulk)",
            f"HAProxy {cpu_h:.2f} s/GB",
            f"{cpu_p:.2f} s/GB",
            cpu_ratio,
            "<= 1.3",
            None if cpu_ratio is None else cpu_ratio <= 1.3,
        ),
    ]


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
