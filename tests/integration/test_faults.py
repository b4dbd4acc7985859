"""Never lose a message: the proxy killed mid-MOVE, and MOVEs under load with new mail arriving."""

from __future__ import annotations

import random
import signal
import threading
import time

from harness import ProxyProcess, RawClient, message_ids
from servers import make_message


def test_proxy_killed_at_random_points_of_moves_loses_nothing(dovecot_legacy, tmp_path):
    user = dovecot_legacy.new_user()
    dovecot_legacy.seed(user, "INBOX", [make_message(f"k{i}") for i in range(100)])
    dovecot_legacy.seed(user, "Archive", [])
    before = message_ids(dovecot_legacy, user, ("INBOX", "Archive"))
    rng = random.Random(7)
    kills = 0
    for round_number in range(12):
        proxy = ProxyProcess(dovecot_legacy.address, tmp_path / f"proxy{round_number}.log")
        try:
            with RawClient(proxy.address) as client:
                client.login(user, dovecot_legacy.password)
                boxes = ("INBOX", "Archive") if round_number % 2 == 0 else ("Archive", "INBOX")
                client.command(b"s", f"SELECT {boxes[0]}".encode())
                client.send(f"m UID MOVE 1:* {boxes[1]}\r\n".encode())
                time.sleep(rng.uniform(0, 0.03))  # somewhere in COPY, STORE or EXPUNGE
                proxy.process.send_signal(signal.SIGKILL)
                kills += 1
        finally:
            proxy.stop()
    after = message_ids(dovecot_legacy, user, ("INBOX", "Archive"))
    assert kills == 12
    missing = set(before) - set(after)
    assert not missing, f"lost {sorted(missing)}"  # duplicates are the worst allowed
    doubled = sum(1 for count in after.values() if count > 1)
    print(f"12 kills: {doubled} of {len(before)} messages left in both mailboxes, none lost")


def test_moves_back_and_forth_while_mail_arrives_keep_every_message_once(dovecot_legacy, tmp_path):
    user = dovecot_legacy.new_user()
    dovecot_legacy.seed(user, "INBOX", [make_message(f"start{i}") for i in range(10)])
    dovecot_legacy.seed(user, "Archive", [])
    appended: list[bytes] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    proxy = ProxyProcess(dovecot_legacy.address, tmp_path / "proxy.log")

    def mover(source: str, target: str) -> None:
        try:
            with RawClient(proxy.address) as client:
                client.login(user, dovecot_legacy.password)
                client.command(b"s", f"SELECT {source}".encode())
                for _ in range(500):
                    if stop.is_set():
                        break
                    reply = client.command(b"m", f"UID MOVE 1:* {target}".encode())
                    assert reply[-1].startswith(b"m OK") or b"EXPUNGEISSUED" in reply[-1], reply
        except BaseException as exc:
            errors.append(exc)

    def appender() -> None:
        try:
            for number in range(200):
                if stop.is_set():
                    break
                message = make_message(f"new{number}")
                dovecot_legacy.seed(user, "INBOX", [message])
                appended.append(message)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=mover, args=("INBOX", "Archive")),
        threading.Thread(target=mover, args=("INBOX", "Archive")),
        threading.Thread(target=mover, args=("Archive", "INBOX")),
        threading.Thread(target=appender),
    ]
    try:
        for thread in threads:
            thread.start()
        time.sleep(4)
        stop.set()
        for thread in threads:
            thread.join(30)
    finally:
        stop.set()
        proxy.stop()
    assert not errors, errors
    counts = message_ids(dovecot_legacy, user, ("INBOX", "Archive"))
    assert len(counts) == 10 + len(appended) and len(appended) > 5
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
