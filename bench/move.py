"""Benchmark 3: MOVE emulated by the proxy (legacy Dovecot) versus native MOVE (native Dovecot).

Every mover owns a user whose INBOX holds ``count`` messages and an empty ``Other`` mailbox.
A timed ``UID MOVE 1:* <other>`` moves all of them; the mover then SELECTs the other mailbox
(untimed) and the next timed MOVE brings them back.  Movers take turns, so the noisy machine
slows them alike.  The ratio is median(proxy times) / median(native times). A context row sets
the proxy against the floor the legacy Dovecot itself sets: the same three commands typed by
hand straight to it, one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from client import Client
from common import BenchDovecot, Row, median, seed_maildir

MAILBOXES = (b"INBOX", b"Other")


@dataclass(slots=True)
class Mover:
    client: Client
    count: int
    current: int = 0  # index in MAILBOXES of the mailbox holding the messages
    times: list[float] = field(default_factory=list)

    by_hand: bool = False  # COPY, STORE, UID EXPUNGE typed one at a time instead of the MOVE

    def move(self, record: bool) -> None:
        source, target = MAILBOXES[self.current], MAILBOXES[1 - self.current]
        command = self.client.command
        command(b"SELECT " + source)
        if self.by_hand:
            seconds = command(b"UID COPY 1:* " + target)[2]
            seconds += command(b"UID STORE 1:* +FLAGS.SILENT (\\Deleted)")[2]
            seconds += command(b"UID EXPUNGE 1:*")[2]
        else:
            seconds = command(b"UID MOVE 1:* " + target)[2]
        self.current = 1 - self.current
        if record:
            self.times.append(seconds)


def make_mover(
    server: BenchDovecot, address: tuple[str, int], count: int, by_hand: bool = False
) -> Mover:
    user = server.new_user("move")
    seed_maildir(server, user, count, 4096)
    client = Client(address)
    client.login(user, server.password)
    client.command(b"CREATE Other")
    return Mover(client, count, by_hand=by_hand)


class Movable(Protocol):
    def move(self, record: bool) -> None: ...


def take_turns(movers: Mapping[str, Movable], repeats: int) -> None:
    """One untimed move each way per mover, then ``repeats`` timed ones, the movers taking
    turns in a rotating order."""
    for mover in movers.values():
        mover.move(False)
        mover.move(False)
    names = list(movers)
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            movers[name].move(True)


CHUNK = 1000  # the proxy's default move_chunk_size


def run(
    legacy: BenchDovecot,
    native: BenchDovecot,
    proxy_legacy: tuple[str, int],
    proxy_native: tuple[str, int],
    count: int,
    repeats: int,
) -> dict[str, list[float]]:
    noop: dict[str, list[float]] = {"native": [], "proxy+native": []}
    movers = {
        "proxy": make_mover(legacy, proxy_legacy, count),
        "native": make_mover(native, native.address, count),
        "proxy+native": make_mover(native, proxy_native, count),
        "floor": make_mover(legacy, legacy.address, count, by_hand=True),
    }
    try:
        take_turns(movers, repeats)
        # Context: the latency one proxy hop adds to any command (NOOP, native Dovecot).
        for _ in range(repeats * 5):
            for name in ("native", "proxy+native"):
                _, _, seconds = movers[name].client.command(b"NOOP")
                noop[name].append(seconds)
        for name, mover in movers.items():
            status = mover.client.text(b"STATUS " + MAILBOXES[mover.current] + b" (MESSAGES)")
            if f"MESSAGES {count})".encode() not in status:
                raise RuntimeError(f"{name}: messages lost or duplicated: {status!r}")
        times = {name: mover.times for name, mover in movers.items()}
        times["noop native"] = noop["native"]
        times["noop proxy"] = noop["proxy+native"]
        return times
    finally:
        for mover in movers.values():
            mover.client.close()


def rows(times: dict[str, list[float]], count: int, target: float | None) -> list[Row]:
    native = median(times["native"])
    proxy = median(times["proxy"])
    relay = median(times["proxy+native"])
    ratio = proxy / native
    label = "1 message" if count == 1 else f"{count} messages"
    if count > CHUNK:
        label += f" (in chunks of {CHUNK})"
    return [
        Row(
            f"3. UID MOVE {label}, emulated vs native (median of {len(times['proxy'])})",
            f"native {native * 1e3:.2f} ms",
            f"{proxy * 1e3:.2f} ms",
            ratio,
            "" if target is None else f"<= {target}",
            None if target is None else ratio <= target,
        ),
        Row(
            "context: the same COPY, STORE, UID EXPUNGE typed by hand to the legacy Dovecot",
            f"floor {median(times['floor']) * 1e3:.2f} ms",
            f"{proxy * 1e3:.2f} ms",
            proxy / median(times["floor"]),
            "",
            None,
        ),
        Row(
            "context: proxy relaying a native MOVE",
            f"native {native * 1e3:.2f} ms",
            f"{relay * 1e3:.2f} ms",
            relay / native,
            "",
            None,
        ),
        Row(
            "context: NOOP round trip, through the proxy vs direct",
            f"direct {median(times['noop native']) * 1e3:.3f} ms",
            f"{median(times['noop proxy']) * 1e3:.3f} ms",
            median(times["noop proxy"]) / median(times["noop native"]),
            "",
            None,
        ),
    ]
