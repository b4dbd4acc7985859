"""Benchmark 3b: what the MOVE journal costs. Two proxies in front of the same legacy Dovecot,
one with ``journal = "off"``, one with its SQLite journal on a real disk (not tmpfs: each entry
is fsynced, and that is the cost); movers take turns, as in :mod:`move`. The ratio is
median(journal) / median(off), for a one-message MOVE and a 1,000-message one."""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import BenchDovecot, Row, median, start_proxy
from move import make_mover, take_turns

TARGET = 1.05  # on the 1,000-message MOVE (issue: "aim for under 5%")


def run(legacy: BenchDovecot, root: Path, engine: Path, count: int, repeats: int) -> Row:
    with (
        tempfile.TemporaryDirectory(prefix="imp-journal-", dir="/var/tmp") as disk,
        start_proxy(legacy.address, root / "proxy-journal-off.log", engine, "--journal", "off")
        as off,
        start_proxy(
            legacy.address, root / "proxy-journal-on.log", engine,
            "--journal", str(Path(disk) / "journal.sqlite"),
        ) as on,
    ):  # fmt: skip
        movers = {
            "off": make_mover(legacy, off.address, count),
            "on": make_mover(legacy, on.address, count),
        }
        try:
            take_turns(movers, repeats)
        finally:
            for mover in movers.values():
                mover.client.close()
    without, with_ = median(movers["off"].times), median(movers["on"].times)
    ratio = with_ / without
    label = "1 message" if count == 1 else f"{count} messages"
    target = TARGET if count > 1 else None
    return Row(
        f"3b. UID MOVE {label} with the SQLite journal vs without (median of {repeats})",
        f"off {without * 1e3:.2f} ms",
        f"{with_ * 1e3:.2f} ms",
        ratio,
        "" if target is None else f"<= {target}",
        None if target is None else ratio <= target,
    )
