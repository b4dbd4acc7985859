"""The session's own Python for a one-message UID MOVE (policy uidplus), step by step, sans-IO.

    python bench/move_steps.py [--repeats 5000] [--compare ../other-checkout]

No server and no sockets: a :class:`Session` is fed the client's ``UID MOVE`` and the upstream's
answers as bytes, in the four steps a real MOVE takes (the client's command; the answers to the
NOOP, the listing and the COPY; to the STORE; to the EXPUNGE), and the time each call into the
session takes (with taking its output) is measured. Logging is at WARNING, as in ``run.py``.
Prints the median per step and in all; ``--compare`` measures another checkout's code the same
way, in turns with this one, in separate processes (the machine is noisy: compare ratios).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CAPS = b"IMAP4rev1 LITERAL+ UIDPLUS ESEARCH"
STEPS = (
    ("client", b"m UID MOVE 42 Other\r\n"),
    (
        "upstream",
        b"imp1 OK NOOP done\r\n"
        b'* ESEARCH (TAG "imp2") UID ALL 42\r\nimp2 OK Search done\r\n'
        b'* ESEARCH (TAG "imp3") UID\r\nimp3 OK Search done\r\n'
        b"imp4 OK [COPYUID 7 42 100] Copy completed\r\n",
    ),
    ("upstream", b"imp5 OK Store completed\r\n"),
    ("upstream", b"* 5 EXPUNGE\r\nimp6 OK Expunge completed\r\n"),
)
EXPECTED_UPSTREAM = (
    b"imp1 NOOP\r\nimp2 UID SEARCH RETURN (ALL) UID 42\r\n"
    b"imp3 UID SEARCH RETURN (ALL) UID 42 DELETED\r\nimp4 UID COPY 42 Other\r\n",
    b"imp5 UID STORE 42 +FLAGS.SILENT (\\Deleted)\r\n",
    b"imp6 UID EXPUNGE 42\r\n",
    b"",
)


def _session(session_class: type) -> object:
    """A session logged in with INBOX selected (5 messages), its output so far taken."""
    session = session_class()
    session.receive_upstream(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\n")
    session.receive_client(b"a LOGIN user pass\r\n")
    session.receive_upstream(b"a OK [CAPABILITY " + CAPS + b"] Logged in\r\n")
    session.receive_client(b"b SELECT INBOX\r\n")
    session.receive_upstream(b"* 5 EXISTS\r\nb OK [READ-WRITE] Selected\r\n")
    session.take_to_client()
    session.take_to_upstream()
    return session


def measure(repeats: int) -> list[list[float]]:
    """Seconds per step, ``repeats`` times, of the code this interpreter imports."""
    from imapmoveproxy.engine.session import Session

    try:
        from imapmoveproxy.engine.effects import MoveReady
    except ImportError:  # a checkout from before the session's effects: it is polled
        ready = _polled_ready
    else:

        def ready(session: Any) -> bool:
            return any(type(effect) is MoveReady for effect in session.take_effects())

    times: list[list[float]] = [[] for _ in STEPS]
    for round_ in range(repeats):
        session = _session(Session)
        sent, shown = [], b""
        gc.disable()
        for index, (peer, data) in enumerate(STEPS):
            start = time.perf_counter()
            if peer == "client":
                session.receive_client(data)
            else:
                session.receive_upstream(data)
            if ready(session):  # the shell takes the lock at once and starts it
                session.start_move()
            shown += bytes(session.take_to_client())
            sent.append(bytes(session.take_to_upstream()))
            times[index].append(time.perf_counter() - start)
        gc.enable()
        if round_ == 0:
            assert tuple(sent) == EXPECTED_UPSTREAM, sent
            assert shown.endswith(b"* 5 EXPUNGE\r\nm OK Move completed.\r\n"), shown
    return times


def _polled_ready(session: Any) -> bool:
    """A MOVE ready, in a checkout whose session is polled (and keeps its answered MOVEs)."""
    session.take_finished_moves()
    return bool(session.move_ready)


def _run_in(checkout: Path, repeats: int) -> list[list[float]]:
    code = f"import sys, json; sys.path[:0] = [{str(checkout)!r}, {str(ROOT / 'bench')!r}]; "
    code += f"import move_steps; print(json.dumps(move_steps.measure({repeats})))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=checkout
    )
    return json.loads(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5000)
    parser.add_argument("--turns", type=int, default=3, help="turns each checkout takes")
    parser.add_argument("--compare", type=Path, action="append", default=[], metavar="CHECKOUT")
    args = parser.parse_args()
    checkouts = [ROOT, *(path.resolve() for path in args.compare)]
    results: dict[Path, list[list[float]]] = {path: [[] for _ in STEPS] for path in checkouts}
    for _ in range(args.turns):
        for checkout in checkouts:
            for index, times in enumerate(_run_in(checkout, args.repeats // args.turns)):
                results[checkout][index] += times
    names = ["client MOVE", "listing + COPY", "STORE", "EXPUNGE"]
    print("| checkout | " + " | ".join(names) + " | all (µs) |")
    print("|---" * (len(names) + 2) + "|")
    for checkout, steps in results.items():
        medians = [statistics.median(times) * 1e6 for times in steps]
        totals = [sum(step[i] for step in steps) for i in range(len(steps[0]))]
        cells = [f"{median:.1f}" for median in medians] + [f"{statistics.median(totals) * 1e6:.1f}"]
        print(f"| {checkout} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
