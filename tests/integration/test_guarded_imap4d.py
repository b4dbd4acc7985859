"""Servers without UIDPLUS: the refuse and guarded policies, against GNU Mailutils imap4d.

imap4d stores mail in mbox files and does not keep two sessions' flag changes apart (a flag one
session sets can overwrite another's), so the race with a concurrent session is tested against
Dovecot configured to advertise neither MOVE nor UIDPLUS.
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    InterceptingRelay,
    ProxyProcess,
    RawClient,
    RelayAction,
    assert_counts_consistent,
    message_ids,
    running_proxy,
)
from servers import HOST, ImapServer, find_free_port, make_message


def prepare(server: ImapServer) -> str:
    """Five messages "m1".."m5" in INBOX, the user's own \\Deleted on m2 and m4, empty Trash."""
    user = server.new_user()
    server.seed(user, "INBOX", [make_message(f"m{i}") for i in range(1, 6)])
    server.seed(user, "Trash", [])
    imap = server.connect(user)
    imap.select("INBOX")
    imap.store("2,4", "+FLAGS", "(\\Deleted)")
    imap.logout()
    return user


def contents(server: ImapServer, user: str, mailbox: str) -> dict[str, bool]:
    """Subject -> whether the message carries \\Deleted, read directly from the server."""
    return {
        subject: "\\Deleted" in flags for subject, flags in flags_of(server, user, mailbox).items()
    }


def flags_of(server: ImapServer, user: str, mailbox: str) -> dict[str, set[str]]:
    """Subject -> the message's flags but \\Recent, read directly from the server."""
    with RawClient(server.address) as client:
        client.login(user, server.password)
        selected = client.command(b"s", b"EXAMINE " + mailbox.encode())
        if any(re.match(rb"\* 0 EXISTS", r) for r in selected):
            return {}
        replies = client.command(b"f", b"FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    found = {}
    for reply in replies[:-1]:
        subject = re.search(rb"Subject: (\S+)", reply, re.IGNORECASE)
        flags = re.search(rb"FLAGS \(([^)]*)\)", reply)
        assert subject and flags, reply
        found[subject.group(1).decode()] = set(flags.group(1).decode().split()) - {"\\Recent"}
    return found


@pytest.fixture
def guarded_proxy(imap4d, tmp_path) -> Iterator[ProxyProcess]:
    with running_proxy(imap4d.address, tmp_path / "proxy.log", "--no-uidplus", "guarded") as proxy:
        yield proxy


def test_refuse_does_not_advertise_move_and_passes_a_forced_one_through(imap4d, tmp_path):
    user = prepare(imap4d)
    with (
        running_proxy(imap4d.address, tmp_path / "proxy.log") as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(user, imap4d.password)
        capability = client.command(b"c", b"CAPABILITY")[0]
        assert b"IMAP4rev1" in capability and b"MOVE" not in capability
        client.command(b"s", b"SELECT INBOX")
        reply = client.command(b"m", b"MOVE 1 Trash")
        assert reply[-1].startswith(b"m BAD")  # imap4d's own answer to a command it lacks
        client.command(b"z", b"LOGOUT")
        assert "moves=0" in _wait_for_log(proxy, "closed client=")
    assert contents(imap4d, user, "Trash") == {}
    assert len(contents(imap4d, user, "INBOX")) == 5


def test_guarded_move_keeps_the_users_own_deleted_messages(imap4d, guarded_proxy):
    user = prepare(imap4d)
    with RawClient(guarded_proxy.address) as client:
        client.login(user, imap4d.password)
        assert b"MOVE" in client.command(b"c", b"CAPABILITY")[0]
        client.command(b"s", b"SELECT INBOX")
        replies = client.command(b"m", b"MOVE 1,3 Trash")
        assert replies[-1].startswith(b"m OK")
        assert not any(b"COPYUID" in r for r in replies)  # imap4d gives none: none invented
        assert not any(b"FETCH" in r for r in replies), replies  # flag changes stay invisible
        assert len([r for r in replies if re.match(rb"\* \d+ EXPUNGE", r)]) == 2
        uid = client.command(b"u", b"UID FETCH 1:* (UID)")
        last_uid = re.findall(rb"UID (\d+)", b"".join(uid))[-1]
        assert client.command(b"n", b"UID MOVE " + last_uid + b" Trash")[-1].startswith(b"n OK")
        client.logout()
    assert contents(imap4d, user, "INBOX") == {"m2": True, "m4": True}
    assert contents(imap4d, user, "Trash") == {"m1": False, "m3": False, "m5": False}
    assert "policy=guarded outcome=moved" in guarded_proxy.log_text()


def _wait_for_log(proxy: ProxyProcess, text: str) -> str:
    for _ in range(50):
        log = proxy.log_text()
        if text in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged")


def test_message_flagged_by_another_session_during_a_guarded_move_is_not_expunged(
    dovecot_no_uidplus, tmp_path
):
    server = dovecot_no_uidplus
    user = prepare(server)
    other = server.connect(user)
    other.select("INBOX")

    def flag_m5_meanwhile() -> None:  # runs just before the proxy's re-check reaches imap4d
        typ, _ = other.store("5", "+FLAGS", "(\\Deleted)")
        assert typ == "OK"

    # The second NOOP starts the re-check right before EXPUNGE: the flag lands after the
    # proxy's first look at \Deleted messages and after it flagged the one it moves.
    relay = InterceptingRelay(server.address, b" NOOP\r\n", 2, flag_m5_meanwhile)
    try:
        with (
            running_proxy(
                relay.address, tmp_path / "proxy.log", "--no-uidplus", "guarded"
            ) as proxy,
            RawClient(proxy.address) as client,
        ):
            client.login(user, server.password)
            client.command(b"s", b"SELECT INBOX")
            replies = client.command(b"m", b"MOVE 1 Trash")
            assert replies[-1].startswith(b"m OK"), replies
            assert [r for r in replies if b"EXPUNGE" in r] == [b"* 1 EXPUNGE\r\n"]
        assert relay.hook_ran.is_set()
    finally:
        relay.close()
        with contextlib.suppress(Exception):
            other.logout()
    assert contents(server, user, "INBOX") == {"m2": True, "m3": False, "m4": True, "m5": True}
    assert contents(server, user, "Trash") == {"m1": False}
    assert "-FLAGS.SILENT (\\\\Deleted)" in Path(tmp_path / "proxy.log").read_text()


def test_guarded_move_in_chunks_keeps_the_users_own_deleted_messages(imap4d, tmp_path):
    """Chunks of 2 over imap4d: each chunk is copied, flagged and expunged around the user's
    own \\Deleted messages, which stay where they are, flag and all."""
    user = prepare(imap4d)
    extra = ("--no-uidplus", "guarded", "--move-chunk-size", "2")
    with (
        running_proxy(imap4d.address, tmp_path / "proxy.log", *extra) as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(user, imap4d.password)
        client.command(b"s", b"SELECT INBOX")
        replies = client.command(b"m", b"MOVE 1,3,5 Trash")  # over 2: listed, then chunks
        assert replies[-1].startswith(b"m OK"), replies
        assert len([r for r in replies if re.match(rb"\* \d+ EXPUNGE", r)]) == 3
        uids = client.command(b"u", b"UID FETCH 1:* (UID)")
        client.logout()
    assert len(uids) == 3  # two left, and the tagged reply
    assert contents(imap4d, user, "INBOX") == {"m2": True, "m4": True}
    assert contents(imap4d, user, "Trash") == {"m1": False, "m3": False, "m5": False}
    copies = re.findall(r"to upstream: b'imp\d+ (UID COPY \S+)", proxy.log_path.read_text())
    assert copies == ["UID COPY 1,3", "UID COPY 5"]


def test_expunged_reaches_clients_as_standard_expunge(imap4d, tmp_path):
    """imap4d answers EXPUNGE with the non-standard ``* n EXPUNGED``, which imaplib, go-imap and
    JavaMail do not take for an expunge. Through the proxy, the client's own EXPUNGE and a guarded
    MOVE's expunges arrive as ``* n EXPUNGE``, and every rewrite is counted."""
    user = prepare(imap4d)  # m2 and m4 carry \Deleted
    port = find_free_port()
    extra = ("--no-uidplus", "guarded", "--metrics", f"{HOST}:{port}")
    with running_proxy(imap4d.address, tmp_path / "proxy.log", *extra) as proxy:
        with RawClient(proxy.address) as client:
            client.login(user, imap4d.password)
            client.command(b"s", b"SELECT INBOX")
            own = client.command(b"x", b"EXPUNGE")  # removes m2 and m4
            moved = client.command(b"m", b"MOVE 1 Trash")  # m1
            client.logout()
        imap = imaplib.IMAP4(*proxy.address, timeout=10)
        try:
            imap.login(user, imap4d.password)
            imap.select("INBOX")  # m3, m5
            imap.store("2", "+FLAGS", "(\\Deleted)")
            typ, expunged = imap.expunge()
        finally:
            imap.logout()
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
            exposition = response.read().decode()
    assert [r for r in own if b"EXPUNGE" in r.upper()][:-1] == [
        b"* 2 EXPUNGE\r\n",
        b"* 3 EXPUNGE\r\n",
    ], own
    assert moved[-1].startswith(b"m OK"), moved
    assert [r for r in moved if b"EXPUNGE" in r.upper()] == [b"* 1 EXPUNGE\r\n"], moved
    assert (typ, expunged) == ("OK", [b"2"])  # imaplib saw the expunge
    assert 'imapmoveproxy_responses_rewritten_total{kind="expunged"} 4.0' in exposition
    assert contents(imap4d, user, "INBOX") == {"m3": False}


def test_guarded_move_into_the_selected_mailbox_counts_imap4d_expunges(imap4d, guarded_proxy):
    """The COPY's EXISTS is shown after the expunges, lowered by the expunges shown meanwhile:
    imap4d's ``* 1 EXPUNGED`` must count as one, or the client is told of 6 messages, not 5.
    The RECENT counts imap4d sends meanwhile (6 after the COPY, 5 after the EXPUNGE) never
    exceed the EXISTS the client has seen."""
    user = imap4d.new_user()
    imap4d.seed(user, "INBOX", [make_message(f"m{i}") for i in range(1, 6)])  # all \\Recent
    with RawClient(guarded_proxy.address) as client:
        client.login(user, imap4d.password)
        client.command(b"s", b"SELECT INBOX")
        replies = client.command(b"m", b"MOVE 1 INBOX")
        assert replies[-1].startswith(b"m OK"), replies
        assert [r for r in replies if b"EXPUNGE" in r.upper()] == [b"* 1 EXPUNGE\r\n"], replies
        exists = [r for r in replies if r.endswith(b" EXISTS\r\n")]
        assert exists and exists[-1] == b"* 5 EXISTS\r\n", replies
        assert_counts_consistent(replies, exists=5)
        assert len(client.command(b"f", b"FETCH 1:* (UID)")) == 5 + 1
        client.logout()


def _flag_and_move(proxy: ProxyProcess, server: ImapServer, user: str, move: bytes) -> list[bytes]:
    """m1 gets \\Seen \\Flagged, m3 \\Answered \\Seen (m2 and m4 carry \\Deleted), then ``move``
    runs through ``proxy``; the client logs out at once. Returns the MOVE's replies."""
    with RawClient(proxy.address) as client:
        client.login(user, server.password)
        client.command(b"s", b"SELECT INBOX")
        client.command(b"f", b"STORE 1 +FLAGS.SILENT (\\Seen \\Flagged)")
        client.command(b"g", b"STORE 3 +FLAGS.SILENT (\\Answered \\Seen)")
        replies = client.command(b"m", move)
        client.logout()
    return replies


@pytest.mark.parametrize("chunk", ["1000", "2"])
def test_guarded_move_restores_the_flags_imap4d_copy_drops(imap4d, tmp_path, chunk):
    """imap4d's COPY drops every flag. After the MOVE's tagged OK a second session adds back,
    on the copies it identified, the flags the messages had: \\Seen and \\Flagged stay, and
    \\Deleted is never copied. The client sees none of the proxy's STATUS or FETCHes."""
    user = prepare(imap4d)
    port = find_free_port()
    extra = ("--no-uidplus", "guarded", "--move-chunk-size", chunk, "--metrics", f"{HOST}:{port}")
    with running_proxy(imap4d.address, tmp_path / "proxy.log", *extra) as proxy:
        replies = _flag_and_move(proxy, imap4d, user, b"MOVE 1,3,5 Trash")
        assert replies[-1].startswith(b"m OK"), replies
        assert not any(b"STATUS" in r or b"INTERNALDATE" in r for r in replies), replies
        proxy.wait_for_log(r"MOVE 1,3,5: policy=guarded outcome=moved flags=restored")
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
            exposition = response.read().decode()
    assert 'imapmoveproxy_copy_flags_total{result="restored"} 1.0' in exposition
    assert flags_of(imap4d, user, "Trash") == {
        "m1": {"\\Seen", "\\Flagged"},
        "m3": {"\\Answered", "\\Seen"},
        "m5": set(),
    }
    assert contents(imap4d, user, "INBOX") == {"m2": True, "m4": True}


def test_the_flags_are_back_before_the_tagged_ok(imap4d, guarded_proxy):
    """A client that moves flagged messages and at once looks at the target sees them with
    their flags, as after a native MOVE: the second session restores them before the tagged OK
    (it used to do so after it, and the client saw them unread and unflagged)."""
    user = prepare(imap4d)
    with RawClient(guarded_proxy.address) as client:
        client.login(user, imap4d.password)
        client.command(b"s", b"SELECT INBOX")
        client.command(b"f", b"STORE 1,3 +FLAGS.SILENT (\\Seen \\Flagged)")
        moved = client.command(b"m", b"MOVE 1,3 Trash")
        assert moved[-1] == b"m OK Move completed.\r\n", moved
        client.command(b"t", b"SELECT Trash")
        fetched = client.command(b"g", b"FETCH 1:* (FLAGS)")
        client.logout()
    flags = [re.search(rb"FLAGS \(([^)]*)\)", r) for r in fetched[:-1]]
    assert [set(m.group(1).split()) - {b"\\Recent"} for m in flags if m] == [
        {b"\\Seen", b"\\Flagged"},
        {b"\\Seen", b"\\Flagged"},
    ], fetched


def test_a_flag_session_the_server_never_ends_holds_the_move_and_is_reported(
    imap4d, tmp_path, monkeypatch
):
    """No real server keeps a session open after its LOGOUT: a relay in front of the real imap4d
    answers the flag session's LOGOUT itself and never forwards it. The proxy waits for the
    server to close that session (imap4d writes a session's view of the mbox file only as it
    ends) until rollback_timeout, so the client's next command waits too; then it answers the
    MOVE and warns that the server may still write the target. Nothing is lost or doubled."""
    user = prepare(imap4d)
    relay = InterceptingRelay(
        imap4d.address, b" LOGOUT\r\n", 1,
        action=RelayAction.ANSWER, reply=lambda tag: b"* BYE bye\r\n" + tag + b" OK\r\n",
    )  # fmt: skip
    monkeypatch.setenv("IMAPMOVEPROXY_ROLLBACK_TIMEOUT", "2")
    extra = ("--no-uidplus", "guarded")
    try:
        with (
            running_proxy(relay.address, tmp_path / "proxy.log", *extra) as proxy,
            RawClient(proxy.address) as client,
        ):
            client.login(user, imap4d.password)
            client.command(b"s", b"SELECT INBOX")
            client.command(b"f", b"STORE 1 +FLAGS.SILENT (\\Seen \\Flagged)")
            client.send(b"m MOVE 1 Trash\r\nn NOOP\r\n")  # the NOOP waits behind the MOVE
            replies = client.read_until(b"n")
            log = proxy.wait_for_log(r"MOVE 1: policy=guarded outcome=moved flags=restored").string
            client.logout()
    finally:
        relay.close()
    assert relay.hook_ran.is_set() and relay.matched.startswith(b"rb")  # the flag session's
    tagged = [r for r in replies if r[:1] in (b"m", b"n")]
    assert tagged == [b"m OK Move completed.\r\n", b"n OK NOOP Completed\r\n"], replies
    warned = log.index("the server did not end it: the server may still write its view of")
    assert warned < log.index("MOVE 1: policy=guarded outcome=moved")
    assert contents(imap4d, user, "Trash") == {"m1": False}
    assert contents(imap4d, user, "INBOX") == {"m2": True, "m3": False, "m4": True, "m5": False}


def test_the_proxy_killed_while_its_flag_session_runs_loses_nothing(imap4d, tmp_path):
    """SIGKILL to the proxy just as its flag session sends the STORE that restores the flags (a
    relay in front of the real imap4d runs the kill, then forwards the STORE): the MOVE was
    done, its flags may be lost, but every message is in exactly one mailbox, and the user's
    own \\Deleted flags stay."""
    user = prepare(imap4d)
    proxies: list[ProxyProcess] = []
    relay = InterceptingRelay(imap4d.address, b" +FLAGS (", 1, lambda: proxies[0].process.kill())
    try:
        with running_proxy(
            relay.address, tmp_path / "proxy.log", "--no-uidplus", "guarded"
        ) as proxy:
            proxies.append(proxy)
            with RawClient(proxy.address) as client:
                client.login(user, imap4d.password)
                client.command(b"s", b"SELECT INBOX")
                client.command(b"f", b"STORE 1,3 +FLAGS.SILENT (\\Seen \\Flagged)")
                client.send(b"m MOVE 1,3 Trash\r\n")
                with pytest.raises((EOFError, ConnectionResetError)):
                    client.read_until(b"m")
            assert proxy.process.wait(timeout=10) != 0
    finally:
        relay.close()
    assert relay.hook_ran.is_set()
    everywhere = message_ids(imap4d, user, ("INBOX", "Trash"))
    assert len(everywhere) == 5 and set(everywhere.values()) == {1}, everywhere
    assert set(contents(imap4d, user, "Trash")) == {"m1", "m3"}
    assert contents(imap4d, user, "INBOX") == {"m2": True, "m4": True, "m5": False}


def test_guarded_move_into_the_selected_mailbox_stores_no_flags(imap4d, guarded_proxy):
    """The selected mailbox is only EXAMINEd: imap4d's two sessions would write their views of
    it over each other's (a second session that SELECTed it was seen wiping the \\Deleted that
    the MOVE had put back on m2 and m4). The loss is reported; or, when imap4d's EXPUNGE has
    given the mailbox a new UIDVALIDITY (it does when the second changes), the copy cannot be
    identified, and the log line says so."""
    user = prepare(imap4d)
    replies = _flag_and_move(guarded_proxy, imap4d, user, b"MOVE 3 INBOX")
    assert replies[-1].startswith(b"m OK"), replies
    guarded_proxy.wait_for_log(
        r"MOVE 3: policy=guarded outcome=moved flags=(lost \(not restored in the client's "
        r"selected mailbox\)|unknown \(the target's UIDVALIDITY is now)"
    )
    assert flags_of(imap4d, user, "INBOX") == {
        "m1": {"\\Seen", "\\Flagged"},
        "m2": {"\\Deleted"},
        "m4": {"\\Deleted"},
        "m5": set(),
        "m3": set(),  # the copy, at the end
    }


def test_guarded_move_reports_lost_flags_without_a_second_session(imap4d, tmp_path):
    """With second sessions off the copies cannot be checked: the log line says so."""
    user = prepare(imap4d)
    extra = ("--no-uidplus", "guarded", "--rollback", "off")
    with running_proxy(imap4d.address, tmp_path / "proxy.log", *extra) as proxy:
        replies = _flag_and_move(proxy, imap4d, user, b"MOVE 1 Trash")
        assert replies[-1].startswith(b"m OK"), replies
        proxy.wait_for_log(r"outcome=moved flags=unknown \(second sessions are off\)")


def test_guarded_move_on_dovecot_finds_the_flags_kept(dovecot_no_uidplus, tmp_path):
    """Dovecot's COPY keeps flags: the check finds them there and stores nothing."""
    server = dovecot_no_uidplus
    user = prepare(server)
    extra = ("--no-uidplus", "guarded")
    with running_proxy(server.address, tmp_path / "proxy.log", *extra) as proxy:
        replies = _flag_and_move(proxy, server, user, b"MOVE 1,3 Trash")
        assert replies[-1].startswith(b"m OK"), replies
        proxy.wait_for_log(r"MOVE 1,3: policy=guarded outcome=moved flags=kept")
    assert flags_of(server, user, "Trash") == {
        "m1": {"\\Seen", "\\Flagged"},
        "m3": {"\\Answered", "\\Seen"},
    }
    received = server.received_bytes(user)
    assert re.search(rb"rb\d+ UID FETCH \d+:\* \(UID FLAGS INTERNALDATE\)", received)  # checked
    assert not re.search(rb"rb\d+ UID STORE", received)  # and nothing stored
