"""CPU time of the framer on long lines fed in small pieces: linear, or quadratic?

    python bench/framing.py

For each case, the time for a line of n bytes and for one of 4n bytes, fed in the same pieces,
and their ratio: about 4 when the framer is linear, about 16 when it is quadratic. The cases are
those of issue 12: a long upstream line (a SEARCH listing many UIDs) read 16 KiB at a time, and a
long client line dribbled a byte at a time. Not part of ``run.py``; no server is started.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imapmoveproxy.wire.framing import Framer
from imapmoveproxy.wire.responses import first_stop


def feed_line(size: int, piece: int, upstream: bool) -> float:
    """CPU seconds to frame one line of ``size`` bytes fed ``piece`` bytes at a time, driven
    the way the session drives each direction (upstream: ``plain_run`` first)."""
    line = b"* SEARCH" + b" 1" * ((size - 10) // 2) + b"\r\n"
    framer = Framer(max_line=len(line))
    started = time.process_time()
    for offset in range(0, len(line), piece):
        framer.feed(line[offset : offset + piece])
        if upstream:
            framer.plain_run(first_stop)
        while framer.next_event() is not None:
            pass
    return time.process_time() - started


CASES = [
    ("upstream line, 16 KiB pieces", 1024 * 1024, 16 * 1024, True),
    ("client line, 1-byte pieces", 16 * 1024, 1, False),
]


def main() -> None:
    print(f"{'case':32} {'n':>10} {'t(n) s':>9} {'t(4n) s':>9} {'ratio':>6}")
    for name, size, piece, upstream in CASES:
        small = feed_line(size, piece, upstream)
        large = feed_line(4 * size, piece, upstream)
        print(f"{name:32} {size:>10} {small:>9.4f} {large:>9.4f} {large / small:>6.1f}")


if __name__ == "__main__":
    main()
