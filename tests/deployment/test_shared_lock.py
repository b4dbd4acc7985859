"""The MOVE lock shared by several proxies through a real redis-server (move_lock).

Several proxy processes in front of legacy Dovecot, several sessions of one user moving all of
INBOX to Archive and back at once while new mail arrives: with the shared lock every message
ends up exactly once; without it, the same workload leaves duplicates. Redis stopped and
started again mid-run, and a proxy SIGKILLed while it holds a lease, bound what a MOVE waits.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import (
    InterceptingRelay,
    ProxyProcess,
    RawClient,
    http_get,
    message_ids,
    metric,
    running_proxy,
)
from servers import HOST, ImapServer, RedisServer, find_free_port, make_message

from imapmoveproxy.config import ConfigError, build, from_arguments
from imapmoveproxy.shell.locks import redacted

SEEDED = 300  # messages in INBOX at the start
MOVERS = 4  # sessions moving at once, spread over the proxies
BOXES = ("INBOX", "Archive")


@contextlib.contextmanager
def proxies(
    upstream: tuple[str, int], tmp_path: Path, count: int, *extra: str, name: str = "proxy"
) -> Iterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    try:
        for n in range(count):
            started.append(ProxyProcess(upstream, tmp_path / f"{name}{n}.log", *extra))
        yield started
    finally:
        for proxy in started:
            proxy.stop()


def new_mailbox(server: ImapServer) -> tuple[str, set[str]]:
    """A new user with SEEDED messages in INBOX and an empty Archive; their Message-IDs."""
    user = server.new_user()
    messages = [make_message(f"seeded {i}") for i in range(SEEDED)]
    server.seed(user, "INBOX", messages)
    server.seed(user, "Archive", [])
    return user, {message_id(message) for message in messages}


def message_id(message: bytes) -> str:
    match = re.search(rb"Message-ID: <([^>]+)>", message)
    assert match, message
    return match.group(1).decode()


@dataclass
class Workload:
    """What the movers and the deliverer saw."""

    replies: Counter[bytes] = field(default_factory=Counter)  # "m OK", "m NO [CODE]"...
    delivered: set[str] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)


def run_workload(
    server: ImapServer,
    user: str,
    addresses: list[tuple[str, int]],
    *,
    rounds: int = 3,
    while_running: float = 0.0,
    timeout: float = 60.0,
    during: threading.Event | None = None,
    oracle: bool = True,
) -> Workload:
    """MOVERS sessions, spread over ``addresses``, all start together and move everything
    from one mailbox to the other ``rounds`` times, half of them starting from each end (or,
    with ``during``, until it is set); meanwhile new messages are delivered to INBOX. Each
    socket read is bounded by ``timeout``: a MOVE that hangs fails the test."""
    workload = Workload()
    start = threading.Barrier(MOVERS + 1)
    movers_done = threading.Event()

    def mover(n: int) -> None:
        try:
            with RawClient(addresses[n % len(addresses)], timeout, oracle=oracle) as client:
                client.login(user, server.password)
                start.wait(timeout)
                for r in range(rounds if during is None else 10_000):
                    if during is not None and during.is_set():
                        break
                    source = BOXES[(n + r) % 2]
                    client.command(b"s", f"SELECT {source}".encode())
                    target = BOXES[1 - BOXES.index(source)]
                    reply = client.command(b"m", f"UID MOVE 1:* {target}".encode())[-1]
                    outcome = re.match(rb"m (OK|NO \[[A-Z]+\])", reply)
                    workload.replies[outcome.group(0) if outcome else reply] += 1
                    if not reply.startswith(b"m OK"):
                        time.sleep(0.05)  # refused: try again a little later
                client.logout()
        except BaseException as exc:
            workload.errors.append(exc)
            start.abort()

    def deliverer() -> None:
        imap = server.connect(user)
        try:
            for i in range(10_000):
                if movers_done.is_set():
                    break
                message = make_message(f"delivered {i}")
                imap.append("INBOX", "", None, message)
                workload.delivered.add(message_id(message))
                time.sleep(0.02)
        finally:
            imap.logout()

    threads = [threading.Thread(target=mover, args=(n,)) for n in range(MOVERS)]
    delivering = threading.Thread(target=deliverer)
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a mover failed: see its error
        start.wait(timeout)
    delivering.start()
    for thread in threads:
        thread.join(timeout * 20)
    movers_done.set()
    delivering.join(timeout)
    assert not any(thread.is_alive() for thread in [*threads, delivering]), "a mover hung"
    assert not workload.errors, workload.errors
    return workload


def copies(server: ImapServer, user: str) -> Counter[str]:
    return message_ids(server, user, BOXES)


def test_concurrent_movers_through_three_proxies_never_duplicate(
    dovecot_legacy, redis_server, tmp_path
):
    user, seeded = new_mailbox(dovecot_legacy)
    lock = ("--move-lock", redis_server.url)
    with proxies(dovecot_legacy.address, tmp_path, 3, *lock) as running:
        workload = run_workload(dovecot_legacy, user, [p.address for p in running])
    # EXPUNGEISSUED: another session moved some messages away after this one's SELECT
    assert set(workload.replies) <= {b"m OK", b"m NO [EXPUNGEISSUED]"}, workload.replies
    found = copies(dovecot_legacy, user)
    assert set(found) == seeded | workload.delivered  # nothing lost
    assert set(found.values()) == {1}  # nothing twice
    assert redis_server.cli("KEYS", "imapmoveproxy:*") == ""  # every lease released


def test_the_same_movers_without_the_shared_lock_duplicate(dovecot_legacy, tmp_path):
    """The workload above can tell the difference: each proxy serialises only its own MOVEs."""
    user, seeded = new_mailbox(dovecot_legacy)
    with proxies(dovecot_legacy.address, tmp_path, 3) as running:
        # No client-view oracle: without the lock two proxies move the same messages at once,
        # and a MOVE's COPYUID names messages whose EXPUNGEs (by the other proxy's MOVE) came
        # before it, which RFC 6851 4.3 rules out; that race is what this test demonstrates.
        addresses = [p.address for p in running]
        workload = run_workload(dovecot_legacy, user, addresses, oracle=False)
    found = copies(dovecot_legacy, user)
    assert set(found) == seeded | workload.delivered
    assert max(found.values()) > 1


def test_native_moves_of_the_same_messages_are_not_atomic(dovecot_native):
    """docs/behaviour.md, "Limits worth knowing": the same workload straight to Dovecot 2.3 with its
    native MOVE leaves messages in several copies (nothing lost), while one proxy in front of
    legacy Dovecot, whose lock serialises the MOVEs, leaves each exactly once."""
    user, seeded = new_mailbox(dovecot_native)
    workload = run_workload(dovecot_native, user, [dovecot_native.address])
    found = copies(dovecot_native, user)
    assert set(found) == seeded | workload.delivered
    assert max(found.values()) > 1


def test_one_proxy_moves_the_same_messages_exactly_once(dovecot_legacy, tmp_path):
    user, seeded = new_mailbox(dovecot_legacy)
    with proxies(dovecot_legacy.address, tmp_path, 1) as running:
        workload = run_workload(dovecot_legacy, user, [running[0].address])
    found = copies(dovecot_legacy, user)
    assert set(found) == seeded | workload.delivered
    assert set(found.values()) == {1}


@pytest.mark.parametrize("policy", ["proceed", "refuse"])
def test_redis_stopped_and_started_mid_run(dovecot_legacy, redis_server, tmp_path, policy):
    """While Redis is down a MOVE waits at most one connection attempt: with "proceed" it runs
    under its own proxy's lock (docs/behaviour.md: nothing lost, duplicates possible across
    proxies), with "refuse" it gets NO [UNAVAILABLE] (nothing lost, nothing twice). Either way the
    failures are logged and every MOVE has its reply."""
    user, seeded = new_mailbox(dovecot_legacy)
    metrics_port = find_free_port()
    lock = ("--move-lock", redis_server.url, "--move-lock-unavailable", policy,
            "--move-lock-timeout", "10", "--metrics", f"{HOST}:{metrics_port}")  # fmt: skip
    stop = threading.Event()
    upstream = dovecot_legacy.address
    with (
        proxies(upstream, tmp_path, 1, *lock) as running,
        proxies(upstream, tmp_path, 1, *lock[:-2], name="other") as others,
    ):
        addresses = [p.address for p in running + others]
        outage = threading.Thread(target=outage_of, args=(redis_server, stop))
        outage.start()
        # With "proceed" the proxies move without the shared lock while Redis is down: the race
        # of the test above, which the client-view oracle would (rightly) flag; off for it.
        workload = run_workload(dovecot_legacy, user, addresses, during=stop, timeout=30,
                                oracle=policy != "proceed")  # fmt: skip
        outage.join(30)
        _, text = http_get(metrics_port, "/metrics")
        logs = "".join(p.log_text() for p in running + others)
    assert metric(text, "imapmoveproxy_move_lock_errors_total") >= 1
    # Warned once per minute, whichever command met the outage first (take, renew, release).
    assert re.search(r"cannot (take|renew|release) a MOVE lock", logs), logs[-2000:]
    found = copies(dovecot_legacy, user)
    assert set(found) == seeded | workload.delivered  # nothing lost
    if policy == "proceed":
        assert set(workload.replies) <= {b"m OK", b"m NO [EXPUNGEISSUED]"}, workload.replies
    else:
        assert b"m NO [UNAVAILABLE]" in workload.replies
        assert set(workload.replies) <= {b"m OK", b"m NO [EXPUNGEISSUED]", b"m NO [UNAVAILABLE]"}
        assert set(found.values()) == {1}


def outage_of(redis: RedisServer, stop: threading.Event) -> None:
    """Redis up for a second, down for two, up again for a second; then ``stop``."""
    try:
        time.sleep(1)
        redis.stop()
        time.sleep(2)
        redis.start()
        time.sleep(1)
    finally:
        stop.set()


def test_a_replica_killed_while_holding_the_lock(dovecot_legacy, redis_server, tmp_path):
    """Proxy A is SIGKILLed in the middle of a MOVE (held still before its STORE): its lease
    stays in Redis until it expires, then proxy B's MOVE out of the same mailbox runs."""
    user, _ = new_mailbox(dovecot_legacy)
    reached, release, once = threading.Event(), threading.Event(), threading.Lock()

    def hold_still() -> None:  # the first STORE only: proxy B's pass (the hook may run again)
        if once.acquire(blocking=False):
            reached.set()
            release.wait(60)

    # Both proxies reach Dovecot through the relay: the same upstream, so the same lock keys.
    relay = InterceptingRelay(dovecot_legacy.address, b"UID STORE", 1, hold_still)
    lock = ("--move-lock", redis_server.url, "--move-lock-lease", "2")
    try:
        with proxies(relay.address, tmp_path, 2, *lock) as (first, second):
            with RawClient(first.address) as doomed:
                doomed.login(user, dovecot_legacy.password)
                doomed.command(b"s", b"SELECT INBOX")
                doomed.send(b"m UID MOVE 1:* Archive\r\n")
                assert reached.wait(30)
                first.process.send_signal(signal.SIGKILL)
                first.process.wait(10)
            held = redis_server.cli("KEYS", "imapmoveproxy:*")
            assert held.startswith("imapmoveproxy:move:")  # the dead replica's lease
            with RawClient(second.address, timeout=30) as client:
                client.login(user, dovecot_legacy.password)
                client.command(b"s", b"SELECT INBOX")
                reply = client.command(b"m", b"UID MOVE 1:* Archive")
                assert reply[-1].startswith(b"m OK"), reply
                status = client.command(b"t", b"STATUS INBOX (MESSAGES)")
                assert b"(MESSAGES 0)" in status[0], status
            assert "cannot take a MOVE lock" not in second.log_text()  # it had the lease
    finally:
        release.set()
        relay.close()
    assert redis_server.cli("KEYS", "imapmoveproxy:*") == ""


def hold_inbox_lock(
    client: RawClient, server: ImapServer, user: str, redis: RedisServer, holder: str
) -> str:
    """Log ``client`` in as ``user`` and select INBOX; then hold INBOX's MOVE lock in Redis as
    ``holder`` (another proxy) would, under the key a proxy in front of ``server`` takes."""
    client.login(user, server.password)
    selected = b"".join(client.command(b"s", b"SELECT INBOX"))
    uidvalidity = re.search(rb"\[UIDVALIDITY (\d+)\]", selected).group(1).decode()
    key = f"imapmoveproxy:move:{HOST}:{server.port}:{uidvalidity}"
    assert redis.cli("SET", key, holder, "PX", "60000") == "OK"
    return key


@pytest.mark.parametrize("through", ["redis", "sentinel"])
def test_a_lock_held_past_the_timeout_answers_no_inuse(
    dovecot_legacy, redis_server, tmp_path, through
):
    """Another replica holds the lease on INBOX (written into Redis here): the MOVE waits
    move_lock_timeout, then gets NO [INUSE] with nothing moved, and the session goes on. The
    lock is found directly or through a Sentinel that names redis_server as its primary."""
    user, seeded = new_mailbox(dovecot_legacy)
    url = redis_server.url
    sentinel = RedisServer(tmp_path / "sentinel", monitor=redis_server)
    if through == "sentinel":
        url = sentinel.start().url
    metrics_port = find_free_port()
    lock = ("--move-lock", url, "--move-lock-timeout", "1", "--metrics", f"{HOST}:{metrics_port}")
    try:
        with proxies(dovecot_legacy.address, tmp_path, 1, *lock) as (proxy,):
            with RawClient(proxy.address) as client:
                key = hold_inbox_lock(client, dovecot_legacy, user, redis_server, "another-replica")
                reply = client.command(b"m", b"UID MOVE 1:* Archive")
                assert reply == [b"m NO [INUSE] Another MOVE out of this mailbox is in progress, "
                                 b"try again later.\r\n"]  # fmt: skip
                assert client.command(b"n", b"NOOP")[-1].startswith(b"n OK")
                redis_server.cli("DEL", key)
                assert client.command(b"o", b"UID MOVE 1:* Archive")[-1].startswith(b"o OK")
            _, text = http_get(metrics_port, "/metrics")
    finally:
        sentinel.stop()
    assert metric(text, "imapmoveproxy_move_lock_timeouts_total") == 1
    labels = {"policy": "none", "outcome": "lock-timeout"}
    assert metric(text, "imapmoveproxy_moves_total", **labels) == 1
    assert set(copies(dovecot_legacy, user)) == seeded
    assert redis_server.cli("KEYS", "imapmoveproxy:*") == ""


def test_move_lock_settings_from_file_environment_and_flags():
    base = ["--listen", "127.0.0.1:1143", "--upstream", "127.0.0.1:143"]
    config, _ = from_arguments(base, {})
    assert config.move_lock is None and config.move_lock_unavailable == "proceed"
    environment = {
        "IMAPMOVEPROXY_MOVE_LOCK": "redis+sentinel://:secret@s1:26379,s2:26379/mymaster/2",
        "IMAPMOVEPROXY_MOVE_LOCK_TIMEOUT": "5",
        "IMAPMOVEPROXY_MOVE_LOCK_UNAVAILABLE": "refuse",
    }
    config, _ = from_arguments(base, environment)
    assert config.move_lock == environment["IMAPMOVEPROXY_MOVE_LOCK"]
    assert (config.move_lock_timeout, config.move_lock_unavailable) == (5.0, "refuse")
    config, _ = from_arguments([*base, "--move-lock", "rediss://:pw@valkey:6380/1"], environment)
    assert config.move_lock == "rediss://:pw@valkey:6380/1"
    for bad in ("valkey:6379", "http://valkey/0", "redis://valkey:port/0", "redis://valkey/x",
                "redis+sentinel://s1/mymaster", "redis+sentinel://s1:26379/"):  # fmt: skip
        with pytest.raises(ConfigError, match="move_lock: expected"):
            build({"listen": "127.0.0.1:1143", "upstream": "127.0.0.1:143", "move_lock": bad})
    with pytest.raises(ConfigError, match="move_lock_unavailable"):
        from_arguments(base, {"IMAPMOVEPROXY_MOVE_LOCK_UNAVAILABLE": "wait"})
    assert redacted("rediss://:secret@valkey:6380/1") == "rediss://:***@valkey:6380/1"


def test_a_routing_proxy_shares_the_lock_of_a_proxy_in_front_of_the_same_server(
    dovecot_legacy, redis_server, tmp_path
):
    """During a migration a routing proxy and a proxy with that server as its one upstream may
    both move out of one mailbox: the routed MOVE's key is the one the other proxy takes (the
    server's address and the mailbox's UIDVALIDITY), so it waits for it."""
    user, seeded = new_mailbox(dovecot_legacy)
    config = tmp_path / "routing.toml"
    config.write_text(
        f'[backends.old]\nupstream = "{HOST}:{dovecot_legacy.port}"\n[routes]\n"*" = "old"\n'
    )
    lock = ("--move-lock", redis_server.url, "--move-lock-timeout", "1")
    with (
        running_proxy(None, tmp_path / "routing.log", "--config", str(config), *lock) as proxy,
        RawClient(proxy.address) as client,
    ):
        key = hold_inbox_lock(client, dovecot_legacy, user, redis_server, "the-other-proxy")
        reply = client.command(b"m", b"UID MOVE 1:* Archive")
        assert reply[-1].startswith(b"m NO [INUSE]"), reply
        redis_server.cli("DEL", key)
        assert client.command(b"o", b"UID MOVE 1:* Archive")[-1].startswith(b"o OK")
    assert set(copies(dovecot_legacy, user)) == seeded
    assert redis_server.cli("KEYS", "imapmoveproxy:*") == ""
