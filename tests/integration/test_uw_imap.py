"""UW-IMAP imapd 2007f (UIDPLUS, no MOVE) behind the proxy, in its mbox and mix formats.

UW is the legacy server most often still met, and it has habits no other server of the suite
has: a COPY that matches nothing answers ``OK [COPYUID v 0 0]``; a session learns of other
sessions' expunges only at NOOP, CHECK and IDLE, and until then may COPY those messages; new
mail is announced in the reply to whatever command comes next. Each test here failed on the
proxy before it handled them. The client's view is checked after every response by the
client-view oracle of :class:`harness.RawClient`.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import InterceptingRelay, RawClient, assert_counts_consistent, running_proxy
from servers import ImapServer, UwImapServer, make_message

FORMATS = ["uw_mbox", "uw_mix"]


def _subjects(server: ImapServer, user: str, mailbox: str) -> Counter[str]:
    """Subject -> how many times it is in ``mailbox``, read straight from the server."""
    with RawClient(server.address, oracle=False) as client:
        client.login(user, server.password)
        selected = client.command(b"s", b"EXAMINE " + mailbox.encode())
        assert selected[-1].startswith(b"s OK"), selected
        if any(re.match(rb"\* 0 EXISTS", r) for r in selected):
            return Counter()
        replies = client.command(b"f", b"FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        client.logout()
    return Counter(
        match.group(1).decode()
        for reply in replies[:-1]
        if (match := re.search(rb"Subject: (\S+)", reply, re.IGNORECASE))
    )


@contextlib.contextmanager
def two_sessions(
    server: UwImapServer, user: str, tmp_path: Path
) -> Iterator[tuple[RawClient, RawClient]]:
    """Two clients of one proxy in front of ``server``, both logged in as ``user``."""
    with (
        running_proxy(server.address, tmp_path / "proxy.log") as proxy,
        RawClient(proxy.address) as first,
        RawClient(proxy.address) as second,
    ):
        for client in (first, second):
            client.login(user, server.password)
        yield first, second


def _user(server: UwImapServer, box: str, count: int) -> str:
    user = server.new_user()
    server.seed(user, box, [make_message(f"m{i}") for i in range(1, count + 1)])
    server.seed(user, "Archive", [])
    return user


@pytest.mark.parametrize("fixture", FORMATS)
def test_a_copy_of_nothing_is_answered_as_a_native_move_answers_it(fixture, request, tmp_path):
    """UW answers a COPY that matches no message ``OK [COPYUID v 0 0]``: nothing was copied
    (RFC 4315 has no UID 0). The proxy answered ``NO [SERVERBUG] MOVE incomplete`` and sent
    ``UID FETCH 0`` upstream; a native server answers OK."""
    server: UwImapServer = request.getfixturevalue(fixture)
    user = _user(server, "Box", 2)
    with running_proxy(server.address, tmp_path / "proxy.log") as proxy:
        with RawClient(proxy.address) as client:
            client.login(user, server.password)
            client.command(b"s", b"SELECT Box")
            replies = client.command(b"m", b"UID MOVE 999 Archive")
            client.logout()
        log = proxy.log_text()
    assert replies == [b"m OK No messages found.\r\n"]
    assert "SERVERBUG" not in log and "WARNING" not in log, log
    sent = server.received_bytes(user)
    assert not re.search(rb"FETCH 0\b|STORE 0\b|EXPUNGE 0\b", sent), sent
    assert _subjects(server, user, "Box") == Counter({"m1": 1, "m2": 1})
    assert _subjects(server, user, "Archive") == Counter()


@pytest.mark.parametrize("fixture", FORMATS)
def test_new_mail_moved_along_is_announced_before_its_expunge(fixture, request, tmp_path):
    """The client has seen 2 EXISTS; new mail arrives; ``UID MOVE 1:*`` copies all three. UW
    announces ``* 3 EXISTS`` in its reply to the proxy's first command: the client must hear
    of the third message before an EXPUNGE names it (the proxy held that EXISTS back until the
    tagged reply, so the client got an EXPUNGE beyond its count)."""
    server: UwImapServer = request.getfixturevalue(fixture)
    user = _user(server, "INBOX", 2)
    with (
        running_proxy(server.address, tmp_path / "proxy.log") as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(user, server.password)
        selected = client.command(b"s", b"SELECT INBOX")
        assert b"* 2 EXISTS\r\n" in selected, selected
        server.seed(user, "INBOX", [make_message("m3")])  # another session's delivery
        replies = client.command(b"m", b"UID MOVE 1:* Archive")
        client.logout()
    assert replies[-1].startswith(b"m OK"), replies
    assert_counts_consistent(replies, 2)
    assert sum(1 for r in replies if r.endswith(b" EXPUNGE\r\n")) == 3, replies
    assert _subjects(server, user, "Archive") == Counter({"m1": 1, "m2": 1, "m3": 1})
    assert _subjects(server, user, "INBOX") == Counter()


@pytest.mark.parametrize("late", [b"UID MOVE 1:2 Archive", b"MOVE 1:2 Archive"])
def test_a_stale_session_never_copies_what_another_moved(uw_mix, tmp_path, late):
    """Two sessions have the same mix folder open read-write (mix allows it). One moves two
    messages; the other, whose view UW has not brought up to date (it would be, only at NOOP,
    CHECK or IDLE), then moves the same two, by UID or by sequence number. UW let it COPY them:
    every message ended up twice in the target, although both MOVEs ran one after the other
    under the proxy's lock. The proxy now syncs first (after listing a sequence set as UIDs):
    the stale session is shown the two expunges, and nothing is copied twice."""
    server = uw_mix
    user = _user(server, "Box", 3)
    with two_sessions(server, user, tmp_path) as (first, stale):
        for client in (first, stale):
            selected = client.command(b"s", b"SELECT Box")
            assert b"* 3 EXISTS\r\n" in selected, selected
        moved = first.command(b"m", b"UID MOVE 1:2 Archive")
        assert moved[-1].startswith(b"m OK"), moved
        replies = stale.command(b"l", late)
        for client in (first, stale):
            client.logout()
    shown = [r for r in replies if not re.fullmatch(rb"\* \d+ (EXISTS|RECENT)\r\n", r)]
    assert shown == [b"* 1 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n", b"l OK No messages found.\r\n"]
    assert _subjects(server, user, "Archive") == Counter({"m1": 1, "m2": 1})
    assert _subjects(server, user, "Box") == Counter({"m3": 1})


def test_messages_another_session_moves_during_the_sync_are_not_copied_again(uw_mix, tmp_path):
    """A relay in front of the real UW holds the proxy's NOOP while another session (straight to
    UW) copies m1 and m2 to Archive and expunges them: the NOOP then shows the client their
    expunges, and the proxy's UID COPY takes only m3. Each message ends up in Archive once."""
    server = uw_mix
    user = _user(server, "Box", 3)

    def move_two_away() -> None:
        other = server.connect(user)
        other.select("Box")
        assert other.uid("COPY", "1:2", "Archive")[0] == "OK"
        other.uid("STORE", "1:2", "+FLAGS.SILENT", "(\\Deleted)")
        other.expunge()
        other.logout()

    relay = InterceptingRelay(server.address, b" NOOP\r\n", 1, move_two_away)
    try:
        with (
            running_proxy(relay.address, tmp_path / "proxy.log") as proxy,
            RawClient(proxy.address) as client,
        ):
            client.login(user, server.password)
            assert b"* 3 EXISTS\r\n" in client.command(b"s", b"SELECT Box")
            replies = client.command(b"m", b"UID MOVE 1:3 Archive")
            client.logout()
    finally:
        relay.close()
    assert relay.hook_ran.is_set()
    assert replies[-1].startswith(b"m OK"), replies
    assert sum(1 for r in replies if r.endswith(b" EXPUNGE\r\n")) == 3, replies
    assert _subjects(server, user, "Archive") == Counter({"m1": 1, "m2": 1, "m3": 1})
    assert _subjects(server, user, "Box") == Counter()


def test_the_older_sessions_lost_mbox_lock_ends_its_client_with_a_bye(uw_mbox, tmp_path):
    """mbox gives the older session a "kiss of death" on a second read-write SELECT of the same
    mailbox. Its client gets a BYE (UW's own ``Killed (lost mailbox lock)`` when UW sends it
    before it exits, else the proxy's ``Mail server connection lost``), then the end of the
    connection: never a hang."""
    server = uw_mbox
    user = _user(server, "Box", 1)
    with two_sessions(server, user, tmp_path) as (older, newer):
        older.command(b"s", b"SELECT Box")
        newer.command(b"s", b"SELECT Box")
        older.send(b"n NOOP\r\n")
        replies = []
        with pytest.raises(EOFError):
            for _ in range(100):
                replies.append(older._read_response())
        newer.logout()
    byes = [r for r in replies if r.startswith(b"* BYE")]
    assert byes and (b"lock" in byes[0] or b"connection lost" in byes[0]), replies
