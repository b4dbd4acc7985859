"""The proxy killed (SIGKILL) in the middle of a MOVE: the journal finishes it at the user's next
login, on a proxy started again on the same journal (or another replica sharing it).

Each test moves messages through a real server, kills the proxy at one step of the MOVE (with
:class:`killswitch.KillSwitch`, a relay between the proxy and the real server), checks on the
server that the MOVE really was cut there (the messages in both mailboxes), starts a proxy again,
logs the same user in, and checks on the server: every message exactly once, in the target,
flags kept, none left ``\\Deleted``. Then the client retries its MOVE, as a client whose
connection dropped does: nothing is copied a second time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import ROOT, ProxyProcess, RawClient, http_get, metric, subjects_and_flags
from killswitch import KillSwitch
from servers import (
    HOST,
    DovecotAclServer,
    ImapServer,
    RedisServer,
    find_free_port,
    make_message,
)


@dataclasses.dataclass(frozen=True)
class Server:
    fixture: str
    proxy_args: tuple[str, ...] = ()
    # where a 5,000-message MOVE may be cut: among its first 16 commands (uidplus: 3 or 4 a
    # chunk), or (guarded, about 10 a chunk) in a later chunk, after earlier ones lost flags
    moments: range = range(3, 16)


SERVERS = {
    "dovecot-uidplus": Server("dovecot_legacy"),
    "imap4d-guarded": Server("imap4d", ("--no-uidplus", "guarded"), range(20, 45)),
    "uw-mbox": Server("uw_mbox"),
    "uw-mix": Server("uw_mix"),
}
BIG = 120.0  # seconds a client waits for thousands of messages, on a busy machine
FLAGGED = 3  # of the messages moved, the first ones carry \Flagged as well as \Seen


def _state(server: ImapServer, user: str, mailbox: str) -> list[tuple[str, frozenset[str]]]:
    return subjects_and_flags(server, user, mailbox, BIG)


def _seed(server: ImapServer, user: str, count: int) -> set[str]:
    subjects = [f"j{i}" for i in range(count)]
    server.seed(user, "Archive", [])
    server.seed(
        user, "INBOX", [make_message(s) for s in subjects[:FLAGGED]], flags=["\\Seen", "\\Flagged"]
    )
    server.seed(user, "INBOX", [make_message(s) for s in subjects[FLAGGED:]], flags=["\\Seen"])
    return set(subjects)


def _expected_flags(subject: str) -> frozenset[str]:
    index = int(subject[1:])
    return frozenset({"\\Seen", "\\Flagged"} if index < FLAGGED else {"\\Seen"})


def _move_until_killed(proxy: ProxyProcess, user: str, password: str, source: bytes) -> None:
    """Log in, SELECT ``source``, send ``UID MOVE 1:* Archive``; the proxy dies before its
    tagged reply."""
    with RawClient(proxy.address, BIG, oracle=False) as client:  # its view ends with it
        client.login(user, password)
        selected = client.command(b"s", b"SELECT " + source)
        assert selected[-1].startswith(b"s OK"), selected
        client.send(b"m UID MOVE 1:* Archive\r\n")
        with pytest.raises((ConnectionError, EOFError, OSError)):
            client.read_until(b"m")
    proxy.process.wait(10)


def _starting(
    log: Path, *args: str, env: dict[str, str] | None = None
) -> Callable[[KillSwitch], ProxyProcess]:
    """Start a proxy in front of the server through the switch (for :func:`_cut`)."""
    return lambda switch: ProxyProcess(switch.address, log, *args, env=env)


@contextlib.contextmanager
def _cut(
    server: ImapServer,
    user: str,
    point: str,
    start: Callable[[KillSwitch], ProxyProcess],
    source: bytes = b"INBOX",
) -> Iterator[KillSwitch]:
    """Through a :class:`KillSwitch` in front of ``server``: the proxy ``start`` makes is killed
    at ``point`` of the user's ``UID MOVE 1:* Archive`` out of ``source``. The switch, still
    relaying, is for the proxies started after it (the journal is the upstream address's)."""
    proxies: list[ProxyProcess] = []
    with KillSwitch(server.address, lambda: proxies[0].process.kill()) as switch:
        proxies.append(start(switch))
        switch.arm(point)
        try:
            _move_until_killed(proxies[0], user, server.password, source)
        finally:
            proxies[0].stop()
        assert switch.fired.is_set(), proxies[0].log_text()
        yield switch


def _log_in_once(proxy: ProxyProcess, server: ImapServer, user: str) -> str:
    """Log ``user`` in through ``proxy`` (the OK held until the recovery is over) and out, stop
    the proxy; its log."""
    try:
        with RawClient(proxy.address, BIG) as client:
            client.login(user, server.password)
            client.logout()
        return proxy.log_text()
    finally:
        proxy.stop()


def _assert_moved_once(server: ImapServer, user: str, subjects: set[str]) -> None:
    archive = _state(server, user, "Archive")
    inbox = _state(server, user, "INBOX")
    counts = Counter(subject for subject, _ in archive)
    assert {s for s, n in counts.items() if n > 1} == set(), f"duplicated: {archive}"
    assert subjects - set(counts) == set(), f"not in Archive: {archive} / INBOX {inbox}"
    assert [s for s, _ in inbox if s in subjects] == [], f"still in INBOX: {inbox}"
    wrong = {s: flags for s, flags in archive if flags != _expected_flags(s)}
    assert wrong == {}, "flags not kept (or \\Deleted left)"


@pytest.mark.parametrize("point", ["copy", "store", "expunge"])
@pytest.mark.parametrize("kind", list(SERVERS))
def test_a_move_cut_by_the_proxys_death_is_finished_at_the_next_login(
    kind: str, point: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Killed after the COPY's OK, after the STORE's OK, or with the EXPUNGE sent: the next
    login through a proxy on the same journal finds the 6 messages once each, in Archive, with
    their flags; the client's retried MOVE copies nothing again."""
    spec = SERVERS[kind]
    server: ImapServer = request.getfixturevalue(spec.fixture)
    user = server.new_user()
    subjects = _seed(server, user, 6)
    journal = tmp_path / "journal.sqlite"
    args = (*spec.proxy_args, "--journal", str(journal))
    # Both proxies reach the server through the switch: the journal is the upstream's.
    first = _starting(tmp_path / "first.log", *args)
    with _cut(server, user, point, first) as switch:
        archive = _state(server, user, "Archive")
        inbox = _state(server, user, "INBOX")
        if point != "expunge":  # cut there: every message in both mailboxes
            assert len(archive) == 6 and len(inbox) == 6, (archive, inbox)
        assert json.loads(_journal_bodies(journal)[0])["user"] == user
        second = ProxyProcess(switch.address, tmp_path / "second.log", *args)
        try:
            with RawClient(second.address) as client:
                client.login(user, server.password)  # held until the recovery is over
                selected = client.command(b"s", b"SELECT INBOX")
                assert selected[-1].startswith(b"s OK"), selected
                # The client's retry: the originals are gone; the server's own answer to a COPY
                # of nothing (imap4d: "NO Mailbox is empty"), and nothing copied again.
                retried = client.command(b"r", b"UID MOVE 1:6 Archive")
                assert not re.search(rb"COPYUID|EXPUNGE", b"".join(retried)), retried
                client.logout()
            log = second.log_text()
        finally:
            second.stop()
    # With the EXPUNGE sent, the server may have run it before the proxy died.
    done = "finished" + ("" if point == "expunge" else ", 6 moved")
    assert re.search(r"journal recovery of MOVE \w+ .*: " + done, log), log
    _assert_moved_once(server, user, subjects)
    assert _journal_bodies(journal) == []


def _journal_bodies(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [body for (body,) in db.execute("SELECT body FROM moves")]


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imapmoveproxy", "journal", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_a_changed_uidvalidity_leaves_both_mailboxes_alone_and_the_entry_for_an_operator(
    dovecot_legacy: ImapServer, tmp_path: Path
) -> None:
    """The source is deleted and created again between the proxy's death and the next login:
    its UIDs name other messages now. Nothing is touched, the entry stays, the metric and a
    WARNING say so, ``imapmoveproxy journal list`` shows it and ``drop`` removes it."""
    server = dovecot_legacy
    user = server.new_user()
    server.seed(user, "Archive", [])
    server.seed(user, "Work", [make_message(f"w{i}") for i in range(4)], flags=["\\Seen"])
    journal = tmp_path / "journal.sqlite"
    metrics_port = find_free_port()
    first = _starting(tmp_path / "first.log", "--journal", str(journal))
    with _cut(server, user, "copy", first, b"Work") as switch:
        upstream = f"{switch.address[0]}:{switch.address[1]}"
        settings = ("--upstream", upstream, "--journal", str(journal))
        with RawClient(server.address, oracle=False) as client:  # the user, on another device
            client.login(user, server.password)
            assert client.command(b"d", b"DELETE Work")[-1].startswith(b"d OK")
            assert client.command(b"c", b"CREATE Work")[-1].startswith(b"c OK")
            client.logout()
        server.seed(user, "Work", [make_message(f"new{i}") for i in range(4)])
        second = ProxyProcess(
            switch.address, tmp_path / "second.log", *settings[2:],
            "--metrics", f"{HOST}:{metrics_port}",
        )  # fmt: skip
        try:
            with RawClient(second.address) as client:
                client.login(user, server.password)
                client.logout()
            _, text = http_get(metrics_port, "/metrics")
            log = second.log_text()
        finally:
            second.stop()
    assert metric(text, "imapmoveproxy_journal_recoveries_total", outcome="kept") == 1
    assert re.search(r"WARNING .*journal recovery of MOVE .*: kept \(source UIDVALIDITY", log)
    assert sorted(s for s, _ in _state(server, user, "Work")) == [f"new{i}" for i in range(4)]
    assert sorted(s for s, _ in _state(server, user, "Archive")) == [f"w{i}" for i in range(4)]
    listed = _run_cli(*settings, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert (entry["user"], entry["source"], entry["uids"]) == (user, "Work", "1:4")
    assert _run_cli(*settings, "drop", entry["id"]).returncode == 0
    assert _run_cli(*settings, "list").stdout.strip() == "no unfinished MOVEs"


def test_the_journal_holds_no_credential(dovecot_legacy: ImapServer, tmp_path: Path) -> None:
    """The user's password appears nowhere in the SQLite file (nor its WAL), whatever the
    phase: a MOVE is cut after its COPY, and the file read as bytes."""
    server = dovecot_legacy
    user = server.new_user()
    _seed(server, user, 3)
    journal = tmp_path / "journal.sqlite"
    with _cut(server, user, "store", _starting(tmp_path / "p.log", "--journal", str(journal))):
        pass
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("journal.sqlite*"))
    assert user.encode() in stored  # the entry is there...
    assert server.password.encode() not in stored  # ...and no password with it


def test_replicas_sharing_redis_finish_a_move_one_of_them_died_in(
    dovecot_legacy: ImapServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two replicas with the shared MOVE lock in Redis (the journal lives there too, by
    default): one is killed after the STORE's OK, the user logs in on the other, which finishes
    the MOVE. Redis holds no password meanwhile, and no journal key afterwards."""
    server = dovecot_legacy
    user = server.new_user()
    subjects = _seed(server, user, 5)
    # auto: the journal in Redis, with the lock. The dead replica's lease on the mailbox
    # outlives it by up to move_lock_lease: the login on the other waits for it.
    shared = ("--move-lock", redis_server.url, "--journal", "auto", "--move-lock-lease", "2")
    with _cut(server, user, "store", _starting(tmp_path / "a.log", *shared)) as switch:
        other = ProxyProcess(switch.address, tmp_path / "b.log", *shared)
        try:
            keys = redis_server.cli("KEYS", "imapmoveproxy:journal:*").split()
            assert len(keys) == 3, keys  # the entry, the user's index, the upstream's index
            (entry_key,) = [key for key in keys if ":e:" in key]
            body = redis_server.cli("GET", entry_key)
            assert user in body and server.password not in body, body
            assert json.loads(body)["phase"] == "copied"
        finally:
            log = _log_in_once(other, server, user)
    assert re.search(r"journal recovery of MOVE \w+ .*: finished, 5 moved", log), log
    _assert_moved_once(server, user, subjects)
    assert redis_server.cli("KEYS", "imapmoveproxy:journal:*") == ""


def _seed_many(server: ImapServer, user: str, count: int) -> set[str]:
    """:func:`_seed`'s messages and flags, ``count`` of them, APPENDed in one pipelined write
    (LITERAL+): one at a time, imap4d would take minutes."""
    server.seed(user, "Archive", [])
    subjects = [f"j{i}" for i in range(count)]
    batch = bytearray()
    for index, subject in enumerate(subjects):
        message = make_message(subject)
        flags = " ".join(sorted(_expected_flags(subject))).encode()
        batch += b"a%d APPEND INBOX (%s) {%d+}\r\n%s\r\n" % (index, flags, len(message), message)
    with RawClient(server.address, BIG, oracle=False) as client:
        client.login(user, server.password)
        client.send(bytes(batch))
        replies = client.read_until(b"a%d" % (count - 1))
        client.logout()
    assert sum(reply.startswith(b"a") and b" OK" in reply for reply in replies) == count
    return set(subjects)


@pytest.mark.parametrize("kind", list(SERVERS))
def test_a_5000_message_move_in_chunks_killed_at_random_moments_loses_and_duplicates_nothing(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """5,000 messages moved INBOX -> Archive and back in chunks of 1,000, the proxy killed at
    a random command of each MOVE (seeded: the same moments every run); each time the next
    login finishes the chunk that was cut (and, guarded, puts back the flags imap4d's COPY
    dropped on the earlier chunks' copies) and the client's retry moves the rest. Every
    message ends up once, in INBOX, with its flags."""
    spec = SERVERS[kind]
    server: ImapServer = request.getfixturevalue(spec.fixture)
    user = server.new_user()
    subjects = _seed_many(server, user, 5000)
    journal = tmp_path / "journal.sqlite"
    moments = random.Random(23).sample(spec.moments, 2)
    args = (*spec.proxy_args, "--journal", str(journal))
    proxies: list[ProxyProcess] = []
    with KillSwitch(server.address, lambda: proxies[-1].process.kill()) as switch:
        for leg, (source, target) in enumerate([(b"INBOX", b"Archive"), (b"Archive", b"INBOX")]):
            proxies.append(ProxyProcess(switch.address, tmp_path / f"{leg}.log", *args))
            switch.arm("nth", moments[leg])
            with RawClient(proxies[-1].address, BIG, oracle=False) as client:
                client.login(user, server.password)
                assert client.command(b"s", b"SELECT " + source)[-1].startswith(b"s OK")
                client.send(b"m UID MOVE 1:* " + target + b"\r\n")
                with pytest.raises((ConnectionError, EOFError, OSError)):
                    client.read_until(b"m")
            proxies[-1].process.wait(10)
            proxies[-1].stop()
            assert switch.fired.is_set()
            again = ProxyProcess(switch.address, tmp_path / f"{leg}-again.log", *args)
            try:
                with RawClient(again.address, BIG) as client:
                    client.login(user, server.password)
                    assert client.command(b"s", b"SELECT " + source)[-1].startswith(b"s OK")
                    retried = client.command(b"r", b"UID MOVE 1:* " + target)
                    done = retried[-1].startswith(b"r OK") or b"Mailbox is empty" in retried[-1]
                    assert done, retried[-1]  # (imap4d's answer when nothing is left)
                    client.logout()
            finally:
                again.stop()
    inbox = _state(server, user, "INBOX")
    counts = Counter(subject for subject, _ in inbox)
    assert {s for s, n in counts.items() if n > 1} == set(), "duplicated"
    assert subjects - set(counts) == set(), "lost"
    assert _state(server, user, "Archive") == []
    assert {s: f for s, f in inbox if f != _expected_flags(s)} == {}


def test_with_master_credentials_a_proxy_finishes_a_move_at_start_up_without_a_login(
    dovecot_acl: DovecotAclServer, tmp_path: Path
) -> None:
    """rollback = "master": the proxy started again on the journal finishes the MOVE its
    predecessor died in right away, logged in as the user through the master login; the user
    never logs in."""
    server = dovecot_acl
    user = server.new_user()
    subjects = _seed(server, user, 4)
    journal = tmp_path / "journal.sqlite"
    master = ("--rollback", "master", "--journal", str(journal))
    env = {
        "IMAPMOVEPROXY_ROLLBACK_MASTER_USER": server.master_user,
        "IMAPMOVEPROXY_ROLLBACK_MASTER_PASSWORD": server.master_password,
    }
    first = _starting(tmp_path / "first.log", *master, env=env)
    with _cut(server, user, "copy", first) as switch:
        second = ProxyProcess(switch.address, tmp_path / "second.log", *master, env=env)
        try:
            second.wait_for_log(r"journal recovery of MOVE \w+ .*: finished, 4 moved", timeout=30)
        finally:
            second.stop()
    assert f"Master user logging in as {user}" in server.log_text()
    _assert_moved_once(server, user, subjects)
    assert _journal_bodies(journal) == []


def test_two_retries_racing_the_recovery_duplicate_nothing(
    dovecot_legacy: ImapServer, tmp_path: Path
) -> None:
    """After the proxy's death, the client reconnects twice at once (two devices, or a client
    that retries on a second connection) and each retries the MOVE: one login recovers, the
    other waits for the mailbox's lock, finds the entry gone, and both MOVEs then find the
    originals gone. Every message once."""
    server = dovecot_legacy
    user = server.new_user()
    subjects = _seed(server, user, 8)
    journal = tmp_path / "journal.sqlite"
    first = _starting(tmp_path / "first.log", "--journal", str(journal))
    with _cut(server, user, "store", first) as switch:
        second = ProxyProcess(switch.address, tmp_path / "second.log", "--journal", str(journal))
        replies: list[bytes] = []
        errors: list[BaseException] = []

        def retry() -> None:
            try:
                with RawClient(second.address, BIG) as client:
                    client.login(user, server.password)
                    assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
                    replies.append(client.command(b"r", b"UID MOVE 1:8 Archive")[-1])
                    client.logout()
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        try:
            threads = [threading.Thread(target=retry) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            log = second.log_text()
        finally:
            second.stop()
    assert errors == [] and len(replies) == 2, (errors, replies)
    assert len(re.findall(r"journal recovery of MOVE", log)) == 1, log
    _assert_moved_once(server, user, subjects)


@pytest.mark.parametrize("policy", ["proceed", "refuse"])
def test_a_journal_that_cannot_be_written_moves_anyway_or_refuses_by_policy(
    dovecot_legacy: ImapServer, tmp_path: Path, policy: str
) -> None:
    """The journal's directory cannot be created: under "proceed" the MOVE runs unrecorded and
    the error is counted and logged; under "refuse" it gets NO [UNAVAILABLE], nothing moved."""
    server = dovecot_legacy
    user = server.new_user()
    subjects = _seed(server, user, 3)
    metrics_port = find_free_port()
    args = ("--journal", "/proc/imapmoveproxy/journal.sqlite", "--journal-unavailable", policy)
    proxy = ProxyProcess(
        server.address, tmp_path / "p.log", *args, "--metrics", f"{HOST}:{metrics_port}"
    )
    try:
        with RawClient(proxy.address) as client:
            client.login(user, server.password)
            assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
            reply = client.command(b"m", b"UID MOVE 1:* Archive")[-1]
            client.logout()
        _, text = http_get(metrics_port, "/metrics")
        proxy.wait_for_log(
            r"WARNING - imapmoveproxy.shell.journal: cannot use the journal: .*\(MOVEs"
        )
    finally:
        proxy.stop()
    assert metric(text, "imapmoveproxy_journal_errors_total") >= 1
    if policy == "proceed":
        assert reply.startswith(b"m OK"), reply
        _assert_moved_once(server, user, subjects)
    else:
        assert reply.startswith(b"m NO [UNAVAILABLE]"), reply
        assert sorted(s for s, _ in _state(server, user, "INBOX")) == sorted(subjects)
        assert _state(server, user, "Archive") == []


def test_an_operator_finishes_an_entry_by_hand_with_master_credentials(
    dovecot_acl: DovecotAclServer, tmp_path: Path
) -> None:
    """The proxy is down; ``imapmoveproxy journal ... finish ID`` recovers the entry now, as
    the user's next login would."""
    server = dovecot_acl
    user = server.new_user()
    subjects = _seed(server, user, 3)
    journal = tmp_path / "journal.sqlite"
    first = _starting(tmp_path / "p.log", "--journal", str(journal))
    with _cut(server, user, "store", first) as switch:
        upstream = f"{switch.address[0]}:{switch.address[1]}"
        settings = ("--upstream", upstream, "--journal", str(journal), "--rollback", "master")
        env = {
            "IMAPMOVEPROXY_ROLLBACK_MASTER_USER": server.master_user,
            "IMAPMOVEPROXY_ROLLBACK_MASTER_PASSWORD": server.master_password,
        }
        (entry,) = json.loads(_run_cli(*settings, "list", "--json", env=env).stdout)
        finished = _run_cli(*settings, "finish", entry["id"], env=env)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith(f"{entry['id']}: finished"), finished.stdout
    _assert_moved_once(server, user, subjects)
    assert _journal_bodies(journal) == []


def test_a_routing_proxy_finishes_a_move_on_the_backend_the_login_is_routed_to(
    dovecot_legacy: ImapServer, imap4d: ImapServer, tmp_path: Path
) -> None:
    """Routing mode: one journal, each entry under its backend's address. The proxy dies in a
    MOVE on the user's backend (legacy Dovecot, reached through the kill switch); the routed
    login through a proxy started again finishes it there."""
    server = dovecot_legacy
    user = server.new_user()
    subjects = _seed(server, user, 5)
    journal = tmp_path / "journal.sqlite"
    config = tmp_path / "routing.toml"
    routed = ("--config", str(config), "--journal", str(journal))

    def first(switch: KillSwitch) -> ProxyProcess:
        config.write_text(
            f'journal = "{journal}"\n'
            f'[backends.legacy]\nupstream = "{switch.address[0]}:{switch.address[1]}"\n'
            f'[backends.imap4d]\nupstream = "{imap4d.address[0]}:{imap4d.address[1]}"\n'
            'no_uidplus = "guarded"\n'
            f'[routes]\n"{user}" = "legacy"\n"*" = "imap4d"\n'
        )
        return ProxyProcess(None, tmp_path / "first.log", *routed)

    with _cut(server, user, "store", first):
        stored = json.loads(_journal_bodies(journal)[0])
        assert stored["user"] == user
        log = _log_in_once(ProxyProcess(None, tmp_path / "second.log", *routed), server, user)
    assert re.search(r"journal recovery of MOVE \w+ .*: finished, 5 moved", log), log
    _assert_moved_once(server, user, subjects)
    assert _journal_bodies(journal) == []


@pytest.mark.parametrize("kind", ["dovecot-uidplus", "imap4d-guarded", "uw-mbox"])
def test_a_proxy_killed_during_the_recovery_and_a_pipelining_client_after_it(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The proxy dies after the STORE; the proxy started next dies too, in the middle of the
    recovery at the user's login (its third command); the third one recovers what is left
    (recovery is idempotent). Its client, like mbsync, pipelines LOGIN, SELECT, a FETCH and the
    retried MOVE in one write: each waits for the login's OK, the client's view stays
    consistent (the oracle), and every message is once in Archive with its flags."""
    spec = SERVERS[kind]
    server: ImapServer = request.getfixturevalue(spec.fixture)
    user = server.new_user()
    subjects = _seed(server, user, 6)
    journal = tmp_path / "journal.sqlite"
    args = (*spec.proxy_args, "--journal", str(journal))
    with _cut(server, user, "store", _starting(tmp_path / "first.log", *args)) as switch:
        second = ProxyProcess(switch.address, tmp_path / "second.log", *args)
        switch.rearm_kill(lambda: second.process.kill())
        switch.arm("nth", 3)  # the recovery's third command (SELECT, FETCH, SELECT...)
        try:
            with (
                RawClient(second.address, BIG, oracle=False) as client,  # cut off mid-login
                pytest.raises((ConnectionError, EOFError, OSError)),
            ):
                client.login(user, server.password)
        finally:
            second.stop()
        assert switch.fired.is_set(), second.log_text()
        assert len(_journal_bodies(journal)) == 1  # still there: the recovery was cut
        third = ProxyProcess(switch.address, tmp_path / "third.log", *args)
        try:
            with RawClient(third.address, BIG) as client:
                client.send(
                    f'L1 LOGIN "{user}" "{server.password}"\r\n'.encode()
                    + b"s SELECT INBOX\r\nf UID FETCH 1:* (FLAGS)\r\nr UID MOVE 1:6 Archive\r\n"
                )
                for tag in (b"L1", b"s", b"f"):
                    assert client.read_until(tag)[-1].startswith(tag + b" OK")
                retried = client.read_until(b"r")[-1]
                assert retried.startswith(b"r OK") or b"Mailbox is empty" in retried, retried
                client.logout()
            log = third.log_text()
        finally:
            third.stop()
    assert re.search(r"journal recovery of MOVE \w+ .*: finished", log), log
    _assert_moved_once(server, user, subjects)
    assert _journal_bodies(journal) == []


def _delete_by_subject(server: ImapServer, user: str, mailbox: bytes, subject: str) -> None:
    """Another session of the user's (on another device) deletes one message by its subject."""
    # Straight to the server, unwatched: imap4d answers EXPUNGE with its own "* n EXPUNGED",
    # which only the proxy rewrites.
    with RawClient(server.address, BIG, oracle=False) as client:
        client.login(user, server.password)
        assert client.command(b"s", b"SELECT " + mailbox)[-1].startswith(b"s OK")
        found = client.command(b"f", b"SEARCH SUBJECT " + subject.encode())
        (numbers,) = [reply.split()[2:] for reply in found if reply.startswith(b"* SEARCH")]
        assert len(numbers) == 1, found
        stored = client.command(b"d", b"STORE " + numbers[0] + b" +FLAGS.SILENT (\\Deleted)")
        assert stored[-1].startswith(b"d OK"), stored
        assert client.command(b"e", b"EXPUNGE")[-1].startswith(b"e OK")
        client.logout()


@pytest.mark.parametrize("kind", ["dovecot-uidplus", "imap4d-guarded"])
def test_a_copy_another_session_deleted_before_the_recovery_keeps_its_original(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Between the proxy's death (after the STORE) and the next login, another session deletes
    one copy from Archive. Its original must stay in INBOX, without the proxy's \\Deleted:
    with COPYUID (Dovecot) the other five are moved; without (imap4d: copies told by their
    INTERNALDATE, which repeat) nothing is expunged, every original gets its flags back, and
    the entry waits for an operator. Never a message lost."""
    spec = SERVERS[kind]
    server: ImapServer = request.getfixturevalue(spec.fixture)
    user = server.new_user()
    subjects = _seed(server, user, 6)
    journal = tmp_path / "journal.sqlite"
    args = (*spec.proxy_args, "--journal", str(journal))
    with _cut(server, user, "store", _starting(tmp_path / "first.log", *args)) as switch:
        _delete_by_subject(server, user, b"Archive", "j2")
        log = _log_in_once(
            ProxyProcess(switch.address, tmp_path / "second.log", *args), server, user
        )
    inbox, archive = _state(server, user, "INBOX"), _state(server, user, "Archive")
    assert {s for s, _ in archive} | {s for s, _ in inbox} == subjects  # none lost
    assert all("\\Deleted" not in flags for _, flags in inbox + archive)
    assert ("j2", _expected_flags("j2")) in inbox
    if kind == "dovecot-uidplus":
        assert re.search(r"journal recovery of MOVE .*: finished, 5 moved", log), log
        assert sorted(s for s, _ in inbox) == ["j2"]
        assert _journal_bodies(journal) == []
    else:
        assert re.search(r"WARNING .*journal recovery of MOVE .*: kept \(1 copies gone", log), log
        assert sorted(s for s, _ in inbox) == sorted(subjects)  # nothing expunged
        assert len(_journal_bodies(journal)) == 1
