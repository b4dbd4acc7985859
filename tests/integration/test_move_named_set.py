"""The proxy never copies, flags or expunges a message the client did not name (issues 12, 13).

Against real servers: Dovecot, whose QRESYNC session reports another session's flag change as a
FETCH carrying a UID in the middle of the MOVE's own steps, and GNU Mailutils imap4d, which
answers a UID FETCH of a UID it does not hold with its last message.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from harness import RawClient, message_ids, running_proxy
from servers import ImapServer, make_message
from test_guarded_imap4d import contents, prepare


def _seeded(server: ImapServer, count: int) -> tuple[str, list[str]]:
    """A new user with ``count`` messages in INBOX and an empty Trash, and their Message-IDs."""
    user = server.new_user()
    server.seed(user, "INBOX", [make_message(f"message {i}") for i in range(1, count + 1)])
    server.seed(user, "Trash", [])
    imap = server.connect(user)
    imap.select("INBOX", readonly=True)
    _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    imap.logout()
    ids = []
    for item in data:
        if isinstance(item, tuple):
            match = re.search(rb"<([^>]+)>", item[1])
            assert match, item
            ids.append(match.group(1).decode())
    assert len(ids) == count
    return user, ids


@pytest.mark.parametrize(
    ("count", "first", "last", "flagged", "options"),
    [
        (1100, 1, 1001, 1050, ()),  # more than one chunk of the default 1,000: listed first
        (60, 1, 10, 50, ("--move-chunk-size", "4")),
    ],
)
def test_another_sessions_flag_change_never_joins_a_move(
    dovecot_legacy: ImapServer,
    tmp_path: Path,
    count: int,
    first: int,
    last: int,
    flagged: int,
    options: tuple[str, ...],
) -> None:
    """Issue 12, defect 4: with QRESYNC, the flag change another session made to a message
    outside the set reaches the client's session as ``* n FETCH (UID u MODSEQ (m) FLAGS ...)``
    during the listing of the set. It is relayed, and the message stays where it is."""
    user, ids = _seeded(dovecot_legacy, count)
    with (
        running_proxy(dovecot_legacy.address, tmp_path / "proxy.log", *options) as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(user, dovecot_legacy.password)
        assert client.command(b"e", b"ENABLE QRESYNC")[-1].startswith(b"e OK")
        assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        # Flagged now, Dovecot hands the change to the client's session with the reply to the
        # next command it runs: the proxy's first step of the MOVE.
        other = dovecot_legacy.connect(user)
        other.select("INBOX")
        other.store(str(flagged), "+FLAGS", "(\\Flagged)")
        other.logout()
        replies = client.command(b"m", b"MOVE %d:%d Trash" % (first, last))
        assert replies[-1].startswith(b"m OK"), replies[-1]
        news = [r for r in replies if re.match(rb"\* \d+ FETCH \(.*\\Flagged", r)]
        assert len(news) == 1, news  # the other session's change, relayed as it came
        client.logout()
    named = set(ids[first - 1 : last])
    assert message_ids(dovecot_legacy, user, ("Trash",)) == dict.fromkeys(named, 1)
    left = message_ids(dovecot_legacy, user, ("INBOX",))
    assert left == dict.fromkeys(set(ids) - named, 1)
    assert ids[flagged - 1] in left


@pytest.fixture
def imap4d_guarded(imap4d: ImapServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    with running_proxy(imap4d.address, tmp_path / "proxy.log", "--no-uidplus", "guarded") as proxy:
        yield proxy


def test_a_uid_the_server_answers_with_another_message_is_not_moved(
    imap4d: ImapServer, imap4d_guarded
) -> None:
    """Issue 13, item 3: imap4d answers ``UID FETCH 4000000000`` with its last message; the
    MOVE is refused with a NO and a log line before anything is copied, flagged or expunged."""
    user = prepare(imap4d)
    before = contents(imap4d, user, "INBOX")
    with RawClient(imap4d_guarded.address) as client:
        client.login(user, imap4d.password)
        client.command(b"s", b"SELECT INBOX")
        replies = client.command(b"m", b"UID MOVE 4000000000 Trash")
        assert replies[-1].startswith(b"m NO [SERVERBUG] "), replies
        assert b"nothing was copied, flagged or expunged" in replies[-1]
        assert not any(b"EXPUNGE" in r for r in replies)
        # "n:*" does name the highest UID (RFC 3501 §6.4.8): that MOVE goes ahead
        replies = client.command(b"n", b"UID MOVE 4000000000:* Trash")
        assert replies[-1].startswith(b"n OK"), replies
        client.logout()
    imap4d_guarded.wait_for_log("outside the set")
    assert contents(imap4d, user, "Trash") == {"m5": False}
    assert contents(imap4d, user, "INBOX") == {k: v for k, v in before.items() if k != "m5"}


def test_uid_sets_beyond_the_highest_uid_on_dovecot(dovecot_legacy: ImapServer, proxy) -> None:
    """The same sets against Dovecot, which reads them right: the first names no message, the
    second the last one."""
    user, ids = _seeded(dovecot_legacy, 5)
    with RawClient(proxy.address) as client:
        client.login(user, dovecot_legacy.password)
        client.command(b"s", b"SELECT INBOX")
        replies = client.command(b"m", b"UID MOVE 4000000000 Trash")
        assert replies[-1].startswith(b"m OK"), replies
        replies = client.command(b"n", b"UID MOVE 4000000000:* Trash")
        assert replies[-1].startswith(b"n OK"), replies
        assert b"* 5 EXPUNGE\r\n" in replies
        client.logout()
    assert message_ids(dovecot_legacy, user, ("Trash",)) == {ids[4]: 1}
