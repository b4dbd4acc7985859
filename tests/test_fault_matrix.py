"""The fault matrix of issue 5: each way a MOVE can fail, and what it leaves behind.

Faults a real server can produce come from a real Dovecot: its ACL plugin denies the rights to
flag or expunge (before the MOVE, or revoked in the middle of a session, after the proxy cached
its rights check), its quota plugin refuses the COPY. Faults no real server can be told to
produce (the connection dropped between two steps, a malformed reply) come from a relay between
the proxy and a real Dovecot, so the mail itself is still real.

For every fault, every original message must afterwards be in the source or the target; where
the rollback could run, each is moved or unaffected (never in both). The table of faults and
outcomes is printed at the end of the test run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import ProxyProcess, RawClient
from servers import DovecotAclServer, ImapServer, make_message
from test_faults import message_ids

FAULT_TABLE: list[tuple[str, str, str]] = []  # (fault, the client's reply, the messages)
COUNT = 6


@dataclass(frozen=True)
class Outcome:
    moved: int
    unaffected: int
    both: int
    lost: int
    flagged: int  # left carrying \Deleted in the source

    def __str__(self) -> str:
        return (
            f"moved {self.moved}, unaffected {self.unaffected}, in both {self.both}, "
            f"lost {self.lost}, left \\Deleted {self.flagged}"
        )


def outcome(server: ImapServer, user: str, originals: set[str]) -> Outcome:
    source = message_ids(server, user, ("INBOX",))
    target = message_ids(server, user, ("Archive",))
    imap = server.connect(user)
    imap.select("INBOX", readonly=True)
    _, data = imap.uid("SEARCH", "DELETED")
    imap.logout()
    flagged = len(data[0].split()) if data and data[0] else 0
    both = {m for m in originals if m in source and m in target}
    return Outcome(
        moved=len({m for m in originals if m in target} - both),
        unaffected=len({m for m in originals if m in source} - both),
        both=len(both),
        lost=len({m for m in originals if m not in source and m not in target}),
        flagged=flagged,
    )


def record(fault: str, reply: bytes, result: Outcome) -> None:
    shown = re.sub(rb"\r\n$", b"", reply).decode(errors="replace")
    FAULT_TABLE.append((fault, shown[:150], str(result)))
    assert result.lost == 0, f"{fault}: {result}"


def seeded(server: ImapServer) -> tuple[str, set[str]]:
    user = server.new_user()
    server.seed(user, "INBOX", [make_message(f"f{i}") for i in range(COUNT)])
    server.seed(user, "Archive", [])
    return user, set(message_ids(server, user, ("INBOX",)))


@pytest.fixture
def acl(dovecot_acl: DovecotAclServer) -> DovecotAclServer:
    return dovecot_acl


@pytest.fixture
def proxy_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Start a proxy in front of an address with extra flags (and environment)."""
    proxies: list[ProxyProcess] = []

    def start(upstream: tuple[str, int], *extra: str, **env: str) -> ProxyProcess:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        proxy = ProxyProcess(upstream, tmp_path / f"proxy{len(proxies)}.log", *extra)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


def move(proxy: ProxyProcess, user: str, password: str, first: bytes = b"") -> bytes:
    """Log in, optionally run ``first`` (a MOVE that succeeds and caches the rights), then
    move everything left from INBOX to Archive; return the MOVE's tagged reply."""
    with RawClient(proxy.address) as client:
        client.login(user, password)
        client.command(b"s", b"SELECT INBOX")
        if first:
            assert client.command(b"f", first)[-1].startswith(b"f OK"), "first MOVE failed"
        return client.command(b"m", b"UID MOVE 1:* Archive")[-1]


@pytest.mark.parametrize(
    ("fault", "letter"), [("no right to expunge", "e"), ("no right to flag \\Deleted", "t")]
)
def test_missing_rights_are_refused_before_anything_is_copied(acl, proxy_for, fault, letter):
    user, originals = seeded(acl)
    acl.revoke_rights(user, "INBOX", letter)
    reply = move(proxy_for(acl.address), user, acl.password)
    result = outcome(acl, user, originals)
    record(f"{fault} (ACL)", reply, result)
    assert reply.startswith(b"m NO [NOPERM] Permission denied")
    assert result == Outcome(0, COUNT, 0, 0, 0)
    assert b"COPY" not in acl.received_bytes(user)  # refused before touching anything


REVOKED = [
    ("expunge right revoked after the rights check", "e", "client"),
    ("flag right revoked after the rights check", "t", "client"),
    ("expunge right revoked, rollback by a master user", "e", "master"),
]


@pytest.mark.parametrize(("fault", "letter", "rollback"), REVOKED)
def test_rights_revoked_mid_session_are_rolled_back(acl, proxy_for, fault, letter, rollback):
    user, originals = seeded(acl)
    env = {}
    if rollback == "master":
        env = {"IMAPMOVEPROXY_ROLLBACK_MASTER_USER": acl.master_user,
               "IMAPMOVEPROXY_ROLLBACK_MASTER_PASSWORD": acl.master_password}  # fmt: skip
    proxy = proxy_for(acl.address, "--rollback", rollback, **env)
    with RawClient(proxy.address) as client:
        client.login(user, acl.password)
        client.command(b"s", b"SELECT INBOX")
        assert client.command(b"f", b"UID MOVE 1 Archive")[-1].startswith(b"f OK")  # rights cached
        acl.revoke_rights(user, "INBOX", letter)
        client.send(b"m UID MOVE 1:* Archive\r\nn NOOP\r\n")  # the NOOP waits for the MOVE
        reply = client.read_until(b"m")[-1]
        assert client.read_until(b"n")[-1].startswith(b"n OK")
    result = outcome(acl, user, originals)
    record(f"{fault} ({rollback} credentials)", reply, result)
    assert reply.startswith(b"m NO MOVE failed (expunge: UIDs 2:6 were not expunged): 0 of 5 ")
    assert result == Outcome(1, COUNT - 1, 0, 0, 0)  # each moved or unaffected
    if rollback == "master":
        assert f"Master user logging in as {user}" in acl.log_text()
    proxy.wait_for_log(r"rollback=done")


@pytest.mark.parametrize(
    ("fault", "extra", "env"),
    [
        ("expunge right revoked, rollback off", ("--rollback", "off"), {}),
        (
            "expunge right revoked, second login refused",
            ("--rollback", "master"),
            {"IMAPMOVEPROXY_ROLLBACK_MASTER_USER": "proxymaster",
             "IMAPMOVEPROXY_ROLLBACK_MASTER_PASSWORD": "wrong"},
        ),
    ],
)  # fmt: skip
def test_without_a_rollback_the_duplicates_are_named(acl, proxy_for, fault, extra, env):
    user, originals = seeded(acl)
    proxy = proxy_for(acl.address, *extra, **env)
    with RawClient(proxy.address) as client:
        client.login(user, acl.password)
        client.command(b"s", b"SELECT INBOX")
        client.command(b"f", b"UID MOVE 1 Archive")
        acl.revoke_rights(user, "INBOX", "e")
        reply = client.command(b"m", b"UID MOVE 1:* Archive")[-1]
    result = outcome(acl, user, originals)
    record(fault, reply, result)
    assert reply.startswith(b"m NO MOVE incomplete:")
    assert b"UIDs 2:6 are in both mailboxes (copies: UIDs 2:6)" in reply
    assert result == Outcome(1, 0, COUNT - 1, 0, 0)  # unflagged: plain duplicates
    proxy.wait_for_log(r"WARNING.*MOVE left messages in both mailboxes: m NO .*UIDs 2:6")


def test_copy_over_quota_leaves_everything_unaffected(acl, proxy_for):
    user, originals = seeded(acl)
    acl.set_quota(user, messages=COUNT + 2)
    reply = move(proxy_for(acl.address), user, acl.password)
    result = outcome(acl, user, originals)
    record("target over quota on COPY", reply, result)
    assert reply.startswith(b"m NO [OVERQUOTA]")
    assert result == Outcome(0, COUNT, 0, 0, 0)


def test_chunks_move_what_one_copy_would_not_fit_in_the_quota(acl, proxy_for):
    user, originals = seeded(acl)
    acl.set_quota(user, messages=COUNT + 2)
    reply = move(proxy_for(acl.address, "--move-chunk-size", "2"), user, acl.password)
    result = outcome(acl, user, originals)
    record("quota room for 2 copies, chunks of 2", reply, result)
    assert reply == b"m OK Move completed.\r\n"
    assert result == Outcome(COUNT, 0, 0, 0, 0)
