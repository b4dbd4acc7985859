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

import contextlib
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import InterceptingRelay, ProxyProcess, RawClient, RelayAction, message_ids
from servers import DovecotAclServer, ImapServer, make_message

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
    flagged = deleted_in(server, user, "INBOX")
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


@contextlib.contextmanager
def selected(
    proxy: ProxyProcess, server: ImapServer, user: str, revoke: str = ""
) -> Iterator[RawClient]:
    """A client of ``proxy`` logged in with INBOX selected. With ``revoke`` (rights letters of
    the ACL server), a first MOVE of UID 1 succeeds, so the proxy has the rights cached, and
    then those rights are taken away."""
    with RawClient(proxy.address) as client:
        client.login(user, server.password)
        client.command(b"s", b"SELECT INBOX")
        if revoke:
            assert client.command(b"f", b"UID MOVE 1 Archive")[-1].startswith(b"f OK")
            assert isinstance(server, DovecotAclServer)
            server.revoke_rights(user, "INBOX", revoke)
        yield client


def move(proxy: ProxyProcess, server: ImapServer, user: str) -> bytes:
    """Move everything from INBOX to Archive; return the MOVE's tagged reply."""
    with selected(proxy, server, user) as client:
        return client.command(b"m", b"UID MOVE 1:* Archive")[-1]


@pytest.mark.parametrize(
    ("fault", "letter"), [("no right to expunge", "e"), ("no right to flag \\Deleted", "t")]
)
def test_missing_rights_are_refused_before_anything_is_copied(acl, proxy_for, fault, letter):
    user, originals = seeded(acl)
    acl.revoke_rights(user, "INBOX", letter)
    reply = move(proxy_for(acl.address), acl, user)
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
    with selected(proxy, acl, user, revoke=letter) as client:
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
    with selected(proxy, acl, user, revoke="e") as client:
        reply = client.command(b"m", b"UID MOVE 1:* Archive")[-1]
    result = outcome(acl, user, originals)
    record(fault, reply, result)
    assert reply.startswith(b"m NO MOVE incomplete:")
    assert b"UIDs 2:6 are in both mailboxes (copies: UIDs 2:6)" in reply
    assert result == Outcome(1, 0, COUNT - 1, 0, 0)  # unflagged: plain duplicates
    proxy.wait_for_log(r"WARNING.*MOVE left messages in both mailboxes: m NO .*UIDs 2:6")


def test_a_client_gone_mid_move_still_gets_its_move_rolled_back(acl, proxy_for):
    """The client hangs up right after sending a MOVE that will need a rollback: the proxy
    finishes it upstream, second session included, before it closes the connection."""
    user, originals = seeded(acl)
    proxy = proxy_for(acl.address)
    with selected(proxy, acl, user, revoke="e") as client:
        client.send(b"m UID MOVE 1:* Archive\r\n")
    proxy.wait_for_log(r"UID MOVE 1:\*: policy=uidplus outcome=expunge-failed rollback=done")
    result = outcome(acl, user, originals)
    record("client hung up mid-MOVE, expunge right revoked", b"(gone)", result)
    assert result == Outcome(1, COUNT - 1, 0, 0, 0)


def test_copy_over_quota_leaves_everything_unaffected(acl, proxy_for):
    user, originals = seeded(acl)
    acl.set_quota(user, messages=COUNT + 2)
    reply = move(proxy_for(acl.address), acl, user)
    result = outcome(acl, user, originals)
    record("target over quota on COPY", reply, result)
    assert reply.startswith(b"m NO [OVERQUOTA]")
    assert result == Outcome(0, COUNT, 0, 0, 0)


def test_chunks_move_what_one_copy_would_not_fit_in_the_quota(acl, proxy_for):
    user, originals = seeded(acl)
    acl.set_quota(user, messages=COUNT + 2)
    reply = move(proxy_for(acl.address, "--move-chunk-size", "2"), acl, user)
    result = outcome(acl, user, originals)
    record("quota room for 2 copies, chunks of 2", reply, result)
    assert reply == b"m OK Move completed.\r\n"
    assert result == Outcome(COUNT, 0, 0, 0, 0)


# ---------------------------------------------------------------------------------------------
# Faults no real server can be made to produce, from a relay in front of the real legacy Dovecot:
# the connection dropped between two steps of a MOVE, a line the proxy cannot place, a refusal of
# a command the server was never shown. The mail is real, so outcome() reads what is left.

COPYUID_LINE = re.compile(rb"\* OK \[COPYUID \d+ 1:6 1:6\] Moved UIDs\.\r\n")
LOST = b"* BYE Mail server connection lost.\r\n"
MISBEHAVED = b"* BYE The mail server misbehaved.\r\n"


@pytest.fixture
def relay_for() -> Iterator:
    """Start an InterceptingRelay (closed after the test)."""
    relays: list[InterceptingRelay] = []

    def start(upstream: tuple[str, int], pattern: bytes, **kwargs: object) -> InterceptingRelay:
        relay = InterceptingRelay(upstream, pattern, 1, **kwargs)
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        relay.close()


def move_until_closed(proxy: ProxyProcess, user: str, password: str) -> list[bytes]:
    """Log in, select INBOX, send the MOVE, and return every response after it up to the end
    of the connection (which the proxy must close: the socket timeout bounds the wait)."""
    with RawClient(proxy.address, timeout=10) as client:
        client.login(user, password)
        client.command(b"s", b"SELECT INBOX")
        client.send(b"m UID MOVE 1:* Archive\r\n")
        responses = []
        with pytest.raises(EOFError):
            for _ in range(100):
                responses.append(client._read_response())  # whole responses, literals too
        return responses


def move_and_go_on(proxy: ProxyProcess, user: str, password: str) -> list[bytes]:
    """Log in, select INBOX, send the MOVE and return its responses, after checking that the
    session goes on (a NOOP is answered)."""
    with RawClient(proxy.address) as client:
        client.login(user, password)
        client.command(b"s", b"SELECT INBOX")
        responses = client.command(b"m", b"UID MOVE 1:* Archive")
        assert client.command(b"n", b"NOOP")[-1].startswith(b"n OK")
    return responses


def relayed_fault(
    server: ImapServer,
    proxy_for: Callable[..., ProxyProcess],
    relay_for: Callable[..., InterceptingRelay],
    fault: str,
    pattern: bytes,
    expected: list[bytes | re.Pattern[bytes]],
    result: Outcome,
    **relay_options: object,
) -> tuple[ProxyProcess, InterceptingRelay, bytes]:
    """A MOVE through a relay that acts on ``pattern``: the responses up to the end of the
    connection must be ``expected`` and the messages ``result``. Returns the proxy, the relay and
    what the server received."""
    user, originals = seeded(server)
    relay = relay_for(server.address, pattern, **relay_options)
    proxy = proxy_for(relay.address)
    responses = move_until_closed(proxy, user, server.password)
    assert relay.hook_ran.is_set() and pattern in relay.matched
    found = outcome(server, user, originals)
    record(fault, shown(responses), found)
    assert len(responses) == len(expected), responses
    for response, wanted in zip(responses, expected, strict=True):
        assert wanted.fullmatch(response) if isinstance(wanted, re.Pattern) else response == wanted
    assert found == result
    return proxy, relay, server.received_bytes(user)


def shown(responses: list[bytes]) -> bytes:
    return b" / ".join(response.rstrip(b"\r\n") for response in responses)


def deleted_in(server: ImapServer, user: str, mailbox: str) -> int:
    """How many messages of ``mailbox`` carry \\Deleted."""
    imap = server.connect(user)
    imap.select(mailbox, readonly=True)
    _, data = imap.uid("SEARCH", "DELETED")
    imap.logout()
    return len(data[0].split()) if data and data[0] else 0


BOTH_FLAGGED = Outcome(0, 0, COUNT, 0, COUNT)  # the documented worst case of a dropped upstream

DROPS = [
    # (fault, pattern, action, what the client sees after the MOVE, the messages)
    ("upstream dropped before the COPY", b"UID COPY ", RelayAction.DROP_BEFORE,
     [LOST], Outcome(0, COUNT, 0, 0, 0)),
    ("upstream dropped before the STORE (after COPY's OK)", b"+FLAGS.SILENT (\\Deleted)",
     RelayAction.DROP_BEFORE, [COPYUID_LINE, LOST], Outcome(0, 0, COUNT, 0, 0)),
    ("upstream dropped before the UID EXPUNGE", b"UID EXPUNGE ", RelayAction.DROP_BEFORE,
     [COPYUID_LINE, LOST], BOTH_FLAGGED),
    # Dovecot runs a command it has read before the connection's end: the EXPUNGE moves them.
    ("upstream dropped right after the UID EXPUNGE was sent", b"UID EXPUNGE ",
     RelayAction.DROP_AFTER, [COPYUID_LINE, LOST], Outcome(COUNT, 0, 0, 0, 0)),
]  # fmt: skip


# The servers whose UIDPLUS policy the relayed faults run against (UW-IMAP in both formats).
UIDPLUS_SERVERS = ["dovecot_legacy", "uw_mbox", "uw_mix"]


@pytest.mark.parametrize("server_fixture", UIDPLUS_SERVERS)
@pytest.mark.parametrize(
    ("fault", "pattern", "action", "expected", "result"), DROPS, ids=[d[0] for d in DROPS]
)
def test_upstream_dropped_mid_move_ends_with_bye_and_loses_nothing(
    request, server_fixture, proxy_for, relay_for, fault, pattern, action, expected, result
):
    """A real server cannot be made to drop its connection between two steps of a MOVE: a relay
    in front of the real server closes both sides just before (or right after) it forwards the
    proxy's command, so that command never reaches the server (or runs with its reply lost).
    UW-IMAP, like Dovecot, runs the UID EXPUNGE it has read before it sees the end."""
    server: ImapServer = request.getfixturevalue(server_fixture)
    proxy, relay, received = relayed_fault(
        server, proxy_for, relay_for, f"{fault} ({server.name})", pattern, expected, result,
        action=action,
    )  # fmt: skip
    assert (relay.matched in received) is (action is RelayAction.DROP_AFTER)
    proxy.wait_for_log(r"closing connection: upstream closed the connection during a MOVE")


INJECTED = [
    # (fault, pattern after whose line the bytes are injected, bytes, what is logged, messages)
    ("malformed line from upstream after the STORE", b"+FLAGS.SILENT (\\Deleted)",
     b"\x00\xff garbage\r\n", "malformed line", [COPYUID_LINE, MISBEHAVED], BOTH_FLAGGED),
    ("reply to a tag nobody sent, after the UID EXPUNGE", b"UID EXPUNGE ",
     b"zz99 OK nobody asked\r\n", "reply to a tag nobody sent", [COPYUID_LINE, MISBEHAVED],
     Outcome(COUNT, 0, 0, 0, 0)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "pattern", "injected", "logged", "expected", "result"),
    INJECTED,
    ids=[i[0] for i in INJECTED],
)
def test_an_upstream_line_the_proxy_cannot_place_ends_with_bye_and_loses_nothing(
    dovecot_legacy, proxy_for, relay_for, fault, pattern, injected, logged, expected, result
):
    """A real server cannot be made to send a malformed line or a reply to a tag nobody sent:
    a relay in front of the real Dovecot forwards the proxy's command, then hands the proxy
    those bytes as if from Dovecot, before anything Dovecot answers. Dovecot runs the command
    it was sent (the STORE flags, the UID EXPUNGE moves), but the proxy must not build on it."""
    proxy, relay, received = relayed_fault(
        dovecot_legacy, proxy_for, relay_for, fault, pattern, expected, result,
        action=RelayAction.INJECT, reply=injected,
    )  # fmt: skip
    proxy.wait_for_log(rf"closing connection: upstream protocol error \({logged}\)")
    assert relay.matched in received  # forwarded, then the bytes


def test_nothing_after_a_line_the_proxy_cannot_place_is_acted_on(
    dovecot_legacy, proxy_for, relay_for
):
    """A relay in front of the real Dovecot answers the proxy's STORE (never forwarded) with a
    malformed line, an untagged FETCH and an OK for the STORE, all in one segment: no real
    server can be made to send that. Once the proxy has decided to end the connection, the
    client must see nothing after the BYE and the server must get no further command."""
    user, originals = seeded(dovecot_legacy)
    relay = relay_for(
        dovecot_legacy.address, b"+FLAGS.SILENT (\\Deleted)", action=RelayAction.ANSWER,
        reply=lambda tag: b"\x00\xff garbage\r\n* 9 FETCH (FLAGS (\\Seen))\r\n" + tag + b" OK\r\n",
    )  # fmt: skip
    proxy = proxy_for(relay.address)
    responses = move_until_closed(proxy, user, dovecot_legacy.password)
    found = outcome(dovecot_legacy, user, originals)
    record("malformed line, then more lines in the same read", shown(responses), found)
    assert found == Outcome(0, 0, COUNT, 0, 0)  # the STORE never reached Dovecot
    log = proxy.log_text()
    after_close = log[log.index("closing connection: upstream protocol error") :]
    assert "to upstream:" not in after_close, after_close
    assert len(responses) == 2 and responses[-1] == MISBEHAVED, responses


def refuse_store(tag: bytes) -> bytes:
    return tag + b" NO [NOPERM] injected\r\n"


@pytest.mark.parametrize("server_fixture", UIDPLUS_SERVERS)
def test_a_refused_store_is_rolled_back_through_the_second_session(
    request, server_fixture, proxy_for, relay_for
):
    """A real server that refuses to flag refuses before anyone copies (the proxy checks the
    rights first): a relay in front of the real server answers the proxy's STORE with NO itself
    instead of forwarding it, after the COPY. The rollback's second session reaches the server
    through the same relay (it connects to the proxy's upstream address). On UW-IMAP's mbox
    format the second session writes the target's file as it ends, even after LOGOUT's OK: the
    client's session, which at once APPENDs to that very target, must not be writing then (its
    tagged NO waits for the second session's connection to end), or one of the two writes is
    lost."""
    server: ImapServer = request.getfixturevalue(server_fixture)
    user, originals = seeded(server)
    relay = relay_for(
        server.address, b"+FLAGS.SILENT (\\Deleted)",
        action=RelayAction.ANSWER, reply=refuse_store,
    )  # fmt: skip
    proxy = proxy_for(relay.address)
    late = make_message("late")
    with RawClient(proxy.address) as client:
        client.login(user, server.password)
        client.command(b"s", b"SELECT INBOX")
        responses = client.command(b"m", b"UID MOVE 1:* Archive")
        client.send(b"a APPEND Archive {%d+}\r\n%s\r\n" % (len(late), late))
        assert client.read_until(b"a")[-1].startswith(b"a OK")
    assert relay.hook_ran.is_set() and relay.matched.endswith(b"+FLAGS.SILENT (\\Deleted)\r\n")
    found = outcome(server, user, originals)
    record(f"STORE refused after the COPY (relay answers NO; {server.name})", responses[-1], found)
    assert len(responses) == 2 and COPYUID_LINE.fullmatch(responses[0]), responses
    assert responses[-1] == (
        b"m NO [NOPERM] MOVE failed (flag: injected): 0 of 6 messages were moved, "
        b"the others are unaffected.\r\n"
    )
    assert found == Outcome(0, COUNT, 0, 0, 0)  # each unaffected, none in both
    assert deleted_in(server, user, "Archive") == 0
    assert len(message_ids(server, user, ("Archive",))) == 1  # the late APPEND, kept
    proxy.wait_for_log(r"rollback=done")


def test_a_rollback_whose_session_drops_names_the_duplicates(dovecot_legacy, proxy_for, relay_for):
    """As above, with a second relay in front that drops the rollback's own connection just
    before its UID EXPUNGE reaches Dovecot (the client's session sends no UID EXPUNGE: its STORE
    failed). No real server drops a connection between two given commands."""
    user, originals = seeded(dovecot_legacy)
    inner = relay_for(
        dovecot_legacy.address, b"+FLAGS.SILENT (\\Deleted)",
        action=RelayAction.ANSWER, reply=refuse_store,
    )  # fmt: skip
    outer = relay_for(inner.address, b"UID EXPUNGE ", action=RelayAction.DROP_BEFORE)
    proxy = proxy_for(outer.address)
    responses = move_and_go_on(proxy, user, dovecot_legacy.password)
    assert outer.matched.startswith(b"rb")  # the second session's command
    found = outcome(dovecot_legacy, user, originals)
    flagged_copies = deleted_in(dovecot_legacy, user, "Archive")
    record(
        f"rollback session dropped before its UID EXPUNGE ({flagged_copies} copies left "
        "\\Deleted in the target)",
        responses[-1],
        found,
    )
    assert len(responses) == 2 and COPYUID_LINE.fullmatch(responses[0]), responses
    assert responses[-1] == (
        b"m NO [NOPERM] MOVE incomplete: the messages were copied to the target, but removing "
        b"them from the source failed (flag: injected). UIDs 1:6 are in both mailboxes (copies: "
        b"UIDs 1:6) (removing the copies failed: the mail server closed the connection); none "
        b"was lost.\r\n"
    )
    assert found == Outcome(0, 0, COUNT, 0, 0)  # the originals unflagged: none can be lost
    assert flagged_copies == COUNT  # the rollback flagged them before it was cut off
    proxy.wait_for_log(r"rollback=failed")


def test_an_expunge_that_removed_nothing_is_tried_once_more(dovecot_legacy, proxy_for, relay_for):
    """Under load, with other sessions copying into the mailbox, the real Dovecot (maildir) was
    seen answering OK to a UID EXPUNGE that removed none of the messages the proxy had just
    flagged. It cannot be made to do that on demand: a relay answers the proxy's first UID
    EXPUNGE with OK itself instead of forwarding it. The proxy flags and expunges once more,
    and the MOVE completes as a native one would."""
    user, originals = seeded(dovecot_legacy)
    relay = relay_for(
        dovecot_legacy.address, b"UID EXPUNGE ",
        action=RelayAction.ANSWER, reply=lambda tag: tag + b" OK Expunge completed.\r\n",
    )  # fmt: skip
    proxy = proxy_for(relay.address)
    responses = move_and_go_on(proxy, user, dovecot_legacy.password)
    found = outcome(dovecot_legacy, user, originals)
    record("UID EXPUNGE answered OK without expunging, once", responses[-1], found)
    assert COPYUID_LINE.fullmatch(responses[0]), responses
    expunges = [response for response in responses if response.endswith(b" EXPUNGE\r\n")]
    assert expunges == [b"* %d EXPUNGE\r\n" % n for n in range(COUNT, 0, -1)], responses
    assert responses[-1] == b"m OK Move completed.\r\n"
    assert found == Outcome(COUNT, 0, 0, 0, 0)
    received = dovecot_legacy.received_bytes(user)
    assert received.count(b"UID STORE 1:6 +FLAGS.SILENT (\\Deleted)") == 2
    assert received.count(b"UID EXPUNGE 1:6") == 1  # the first never reached Dovecot
    proxy.wait_for_log(r"(?m)UID MOVE 1:\*: policy=uidplus outcome=moved expunge_retries=1$")


def test_copies_moved_away_before_the_rollback_are_named(dovecot_legacy, proxy_for, relay_for):
    """The STORE is refused (by a relay, as above); just before the rollback's second session
    selects the target, another real session moves every copy out of it to a third mailbox. The
    rollback finds nothing to remove, and the client is told the messages may exist twice
    instead of being told they are unaffected."""
    user, originals = seeded(dovecot_legacy)
    dovecot_legacy.seed(user, "Elsewhere", [])

    def move_copies_away() -> None:
        other = dovecot_legacy.connect(user)
        other.select("Archive")
        assert other.uid("COPY", "1:*", "Elsewhere")[0] == "OK"
        other.uid("STORE", "1:*", "+FLAGS.SILENT", "(\\Deleted)")
        other.expunge()
        other.logout()

    inner = relay_for(
        dovecot_legacy.address, b"+FLAGS.SILENT (\\Deleted)",
        action=RelayAction.ANSWER, reply=refuse_store,
    )  # fmt: skip
    outer = relay_for(inner.address, b"rb2 SELECT ", hook=move_copies_away)
    proxy = proxy_for(outer.address)
    responses = move_and_go_on(proxy, user, dovecot_legacy.password)
    assert outer.hook_ran.is_set()
    found = outcome(dovecot_legacy, user, originals)
    record("copies moved out of the target before the rollback", responses[-1], found)
    assert responses[-1] == (
        b"m NO [NOPERM] MOVE incomplete: the messages were copied to the target, but removing "
        b"them from the source failed (flag: injected). The copies of UIDs 1:6 had left the "
        b"target before they could be removed (another session moved or deleted them), so those "
        b"messages may exist twice; none was lost.\r\n"
    )
    assert found == Outcome(0, COUNT, 0, 0, 0)  # the originals are back as they were
    assert message_ids(dovecot_legacy, user, ("Elsewhere",)) == Counter(originals)
    proxy.wait_for_log(r"MOVE left messages in both mailboxes")
