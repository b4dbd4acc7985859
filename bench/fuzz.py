"""Fuzz the client side of the session: a million inputs, no exception allowed.

    python bench/fuzz.py [COUNT] [SEED]

Each input is a random mix of valid command fragments (MOVE with literals, AUTHENTICATE, IDLE,
APPEND with literals...), random bytes and cut points, fed to a logged-in session in random
chunks; the upstream side answers every forwarded tag. Reports inputs per second and any
exception with the input that caused it. Not a test: it runs far longer than the suite may.
"""

from __future__ import annotations

import logging
import random
import sys
import time
import traceback

from imapmoveproxy.engine.effects import MoveReady
from imapmoveproxy.engine.session import Session, SessionSettings

PIECES = [
    b"a MOVE 1:3 Trash\r\n", b"b UID MOVE 1,2 {5}\r\nTrash\r\n", b"c MOVE 1 {3+}\r\nabc\r\n",
    b"d MOVE\r\n", b"e MOVE 1 \"a\\\"b\"\r\n", b"f APPEND INBOX {10}\r\n0123456789\r\n",
    b"g AUTHENTICATE PLAIN\r\n", b"AHUAcA==\r\n", b"h IDLE\r\n", b"DONE\r\n", b"i NOOP\r\n",
    b"j COMPRESS DEFLATE\r\n", b"k STARTTLS\r\n", b"l ID (\"x-a\" \"b\")\r\n", b"{99999}\r\n",
    b"* BAD\r\n", b"\r\n", b"m MOVE 1 {999999}\r\n", b"n UID MOVE 1 {2}\r\n\r\n", b"\x00\xff\n",
]  # fmt: skip
GREETING = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS ID] ready\r\n"


def one_input(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(1, 8)):
        if rng.random() < 0.7:
            piece = rng.choice(PIECES)
            if rng.random() < 0.2:  # damage it
                cut = rng.randrange(len(piece) + 1)
                piece = piece[:cut] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 5)))
            parts.append(piece)
        else:
            parts.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))))
    return b"".join(parts)


def run(data: bytes, rng: random.Random) -> None:
    session = Session(SessionSettings(max_line=4096, max_mailbox_literal=64))
    session.receive_upstream(GREETING)
    position = 0
    while position < len(data):
        step = rng.randint(1, 64)
        session.receive_client(data[position : position + step])
        position += step
        if any(type(effect) is MoveReady for effect in session.take_effects()):
            session.start_move()
        sent = bytes(session.take_to_upstream())
        tags = {line.split(b" ", 1)[0] for line in sent.split(b"\r\n") if b" " in line}
        answer = b"".join(tag + b" OK done\r\n" for tag in sorted(tags) if tag[:1].isalnum())
        if answer:
            session.receive_upstream(answer)
        session.take_to_client()
        if session.close_reason:
            break


def main() -> int:
    logging.disable(logging.CRITICAL)  # refusals are expected and logged by the session
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    started = time.monotonic()
    for number in range(count):
        data = one_input(rng)
        try:
            run(data, random.Random(number))
        except Exception:
            traceback.print_exc()
            print(f"input {number} crashed the session: {data!r}")
            return 1
    elapsed = time.monotonic() - started
    print(f"{count} inputs, no exception, {elapsed:.0f} s ({count / elapsed:.0f} inputs/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
