"""Benchmark 6: the latency the proxy adds to each command, and what a one-message MOVE costs.

Per command: one logged-in connection per path (straight to Dovecot, through HAProxy, through
the proxy, and through other proxy versions being compared) runs the same command in batches,
the paths taking turns batch by batch so that the noisy machine slows them alike. The latency a
relay adds is its percentile minus the direct one (p50 and p99); the ratio is the proxy's added
latency over HAProxy's. A context row gives what the least relay written in trio adds
(bench/trio_relay.py): the part of the proxy's latency that is trio's and Python's.

MOVE of one message: the proxy in front of the legacy Dovecot against the floor that Dovecot
itself sets, the same three commands typed by hand straight to it one at a time (COPY, STORE
+FLAGS.SILENT (\\Deleted), UID EXPUNGE of the copied UID); native MOVE (native Dovecot) beside
it. Every mover moves one message back and forth between INBOX and Other; the SELECT and the
look-up of the message's UID before each move are not timed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from client import Client
from common import BenchDovecot, Row, median, percentile, seed_maildir
from move import take_turns

MESSAGES = 100  # in the mailbox the commands run on: the UID SEARCH names all of them
BATCH = 50  # commands a path runs before the next one takes its turn
TARGET = 1.2  # added latency over HAProxy's, and a MOVE over the hand-typed floor

COMMANDS: tuple[tuple[str, Callable[[int], bytes]], ...] = (
    ("NOOP", lambda _: b"NOOP"),
    ("FETCH 1 (FLAGS)", lambda _: b"FETCH 1 (FLAGS)"),
    ("UID FETCH n BODY.PEEK[HEADER]", lambda i: b"UID FETCH %d BODY.PEEK[HEADER]" % (i + 1)),
    (f"UID SEARCH ALL ({MESSAGES} messages)", lambda _: b"UID SEARCH ALL"),
)

Address = tuple[str, int]
TRIO_RELAY = "trio relay"  # the path through bench/trio_relay.py, if measured


def seed_commands_user(server: BenchDovecot) -> str:
    user = server.new_user("latency")
    seed_maildir(server, user, MESSAGES, 2048, seen_every=2)
    return user


def command_latency(
    addresses: dict[str, Address], user: str, password: str, count: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds per command, by command label and path (``count`` of each, per path)."""
    clients = {path: Client(address) for path, address in addresses.items()}
    times: dict[str, dict[str, list[float]]] = {label: {} for label, _ in COMMANDS}
    try:
        for client in clients.values():
            client.login(user, password)
            client.command(b"EXAMINE INBOX")
        paths = list(clients)
        for label, make in COMMANDS:
            for client in clients.values():  # warm-up: Dovecot's caches, the relays' buffers
                for i in range(BATCH):
                    client.command(make(i % MESSAGES))
            samples: dict[str, list[float]] = {path: [] for path in paths}
            for batch in range(-(-count // BATCH)):
                shift = batch % len(paths)
                for path in paths[shift:] + paths[:shift]:
                    command = clients[path].command
                    for i in range(BATCH):
                        samples[path].append(command(make(i % MESSAGES))[2])
            times[label] = samples
        return times
    finally:
        for client in clients.values():
            client.close()


def _us(seconds: float, sign: str = "") -> str:
    return f"{seconds * 1e6:{sign}.0f} us"


def rows_commands(times: dict[str, dict[str, list[float]]], proxies: list[str]) -> list[Row]:
    """Rows for the proxy (the first of ``proxies``, with the target) and the others."""
    rows = []
    for label, samples in times.items():
        for name, fraction in (("p50", 0.5), ("p99", 0.99)):
            direct = percentile(samples["direct"], fraction)
            haproxy = percentile(samples["haproxy"], fraction) - direct
            for proxy in proxies:
                added = percentile(samples[proxy], fraction) - direct
                ratio = added / haproxy if haproxy > 0 else None
                main = proxy == proxies[0]
                rows.append(
                    Row(
                        f"6. {label}: added latency {name}" + ("" if main else f", {proxy}"),
                        f"HAProxy {_us(haproxy, '+')} (direct {_us(direct)})",
                        _us(added, "+"),
                        ratio,
                        f"<= {TARGET}" if main else "",
                        None if not main or ratio is None else ratio <= TARGET,
                    )
                )
            if TRIO_RELAY in samples:
                relay = percentile(samples[TRIO_RELAY], fraction) - direct
                proxy = percentile(samples[proxies[0]], fraction) - direct
                rows.append(
                    Row(
                        f"context: {label} {name}: the least a trio relay adds (trio_relay.py)",
                        f"HAProxy {_us(haproxy, '+')}",
                        f"{_us(relay, '+')} (proxy: {proxy / relay:.2f} x this)"
                        if relay > 0
                        else _us(relay, "+"),
                        relay / haproxy if haproxy > 0 else None,
                        "",
                        None,
                    )
                )
    return rows


# -- MOVE of one message --------------------------------------------------------------------------

MAILBOXES = (b"INBOX", b"Other")
_UID = re.compile(rb"\* 1 FETCH \(UID (\d+)\)")


@dataclass(slots=True)
class OneMover:
    """Moves the one message of its user between INBOX and Other; ``by_hand``: as COPY, STORE,
    UID EXPUNGE typed one at a time, else as the MOVE (``uid``: UID MOVE) command itself."""

    client: Client
    uid: bool
    by_hand: bool
    current: int = 0
    times: list[float] = field(default_factory=list)

    def move(self, record: bool) -> None:
        source, target = MAILBOXES[self.current], MAILBOXES[1 - self.current]
        command = self.client.command
        command(b"SELECT " + source)
        found = _UID.search(self.client.text(b"FETCH 1 (UID)"))
        if found is None:
            raise RuntimeError(f"no message in {source!r}")
        uid = found.group(1)
        which = uid if self.uid else b"1"
        prefix = b"UID " if self.uid else b""
        if self.by_hand:
            seconds = command(prefix + b"COPY " + which + b" " + target)[2]
            seconds += command(prefix + b"STORE " + which + b" +FLAGS.SILENT (\\Deleted)")[2]
            seconds += command(b"UID EXPUNGE " + uid)[2]
        else:
            seconds = command(prefix + b"MOVE " + which + b" " + target)[2]
        self.current = 1 - self.current
        if record:
            self.times.append(seconds)


def _mover(server: BenchDovecot, address: Address, uid: bool, by_hand: bool) -> OneMover:
    user = server.new_user("move1")
    seed_maildir(server, user, 1, 4096)
    client = Client(address)
    client.login(user, server.password)
    client.command(b"CREATE Other")
    return OneMover(client, uid, by_hand)


def move_one(
    legacy: BenchDovecot, native: BenchDovecot, proxies: dict[str, Address], repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds per one-message MOVE, by kind (MOVE, UID MOVE) and way (floor, native, proxies)."""
    result: dict[str, dict[str, list[float]]] = {}
    for kind, uid in (("MOVE", False), ("UID MOVE", True)):
        movers = {
            "floor": _mover(legacy, legacy.address, uid, by_hand=True),
            "native": _mover(native, native.address, uid, by_hand=False),
        } | {name: _mover(legacy, address, uid, by_hand=False) for name, address in proxies.items()}
        try:
            take_turns(movers, repeats)
        finally:
            for mover in movers.values():
                mover.client.close()
        result[kind] = {name: mover.times for name, mover in movers.items()}
    return result


def rows_move(times: dict[str, dict[str, list[float]]], proxies: list[str]) -> list[Row]:
    rows = []
    for kind, samples in times.items():
        floor, native = median(samples["floor"]), median(samples["native"])
        for proxy in proxies:
            took = median(samples[proxy])
            main = proxy == proxies[0]
            rows.append(
                Row(
                    f"6. {kind} of 1 message vs COPY+STORE+UID EXPUNGE typed by hand"
                    + (f" (median of {len(samples[proxy])})" if main else f", {proxy}"),
                    f"floor {floor * 1e3:.2f} ms (native MOVE {native * 1e3:.2f} ms)",
                    f"{took * 1e3:.2f} ms ({took / native:.2f} x native)",
                    took / floor,
                    f"<= {TARGET}" if main else "",
                    took / floor <= TARGET if main else None,
                )
            )
    return rows
