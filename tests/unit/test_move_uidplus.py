"""The UIDPLUS policy (imapmoveproxy/move/uidplus.py): flag exactly what COPYUID names,
expunge it by UID after the STORE, once more if too few went, and show the client only what a
native MOVE would. Driven by tests/driver.py."""

from __future__ import annotations

import pytest
from driver import Driver, copied, listed, started, synced

from imapmoveproxy.engine.session import SessionSettings
from imapmoveproxy.wire.grammar import expand_uid_set


def test_successful_move_shows_only_what_a_native_server_sends(script: Driver):
    sent = script.client(b"c MOVE 1:2 Trash\r\n")
    assert sent == b"FETCH 1:2 (UID)\r\nUID SEARCH RETURN (ALL) 1:2 DELETED\r\n"
    sent = script.upstream(
        b"* 1 FETCH (UID 10)\r\n* 2 FETCH (UID 11)\r\n" + script.tagged(b"(UID)", b"OK done")
        + script.esearch(b"DELETED") + script.tagged(b"DELETED", b"OK")
    )  # fmt: skip
    # the numbers are UIDs now: the NOOP that brings the session up to date cannot shift them
    assert sent == b"NOOP\r\nUID COPY 10:11 Trash\r\n"
    assert script.seen() == b""
    sent = script.upstream(
        script.tagged(b"NOOP", b"OK") + script.tagged(b"COPY", b"OK [COPYUID 7 10:11 20:21] Copy")
    )
    assert sent == b"UID STORE 10:11 +FLAGS.SILENT (\\Deleted)\r\n"
    assert script.seen() == b"* OK [COPYUID 7 10:11 20:21] Moved UIDs.\r\n"
    sent = script.upstream(
        b"* 1 FETCH (UID 10 MODSEQ (41))\r\n* 2 FETCH (UID 11 MODSEQ (42))\r\n"
        + script.tagged(b"UID STORE", b"OK Store")
    )
    # only now, never pipelined behind the STORE: a server may run pipelined commands at once
    assert sent == b"UID EXPUNGE 10:11\r\n"
    script.upstream(
        b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n" + script.tagged(b"UID EXPUNGE", b"OK Expunge completed")
    )
    assert script.seen() == b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nc OK Move completed.\r\n"


def test_store_is_never_sent_before_copy_succeeds(script: Driver):
    sent = script.client(b"c UID MOVE 10:* Trash\r\n")
    assert b"STORE" not in sent and b"EXPUNGE" not in sent
    assert sent == (  # the NOOP first: what other sessions expunged is not copied
        b"NOOP\r\nUID SEARCH RETURN (ALL) UID 10:*\r\n"
        b"UID SEARCH RETURN (ALL) UID 10:* DELETED\r\nUID COPY 10:* Trash\r\n"
    )
    listed = script.tagged(b"NOOP", b"OK") + script.esearch(b"UID 10:*\r\n", b"ALL 10:12")
    assert script.upstream(listed + script.tagged(b"UID 10:*\r\n", b"OK")) == b""


@pytest.mark.parametrize(
    "status",
    [
        b"NO [TRYCREATE] Mailbox doesn't exist",
        b"NO [OVERQUOTA] Full",
        b"BAD Error in IMAP command",
        b"NO [NOPERM] Denied",
    ],
)
def test_failed_copy_is_reported_like_a_native_move_and_nothing_else_happens(script, status):
    script.client(b"c MOVE 1:2 Trash\r\n")
    script.upstream(b"* 1 FETCH (UID 10)\r\n" + listed(script))
    sent = script.upstream(synced(script, status))
    assert sent == b""  # no STORE, no EXPUNGE
    assert script.seen() == b"c " + status + b"\r\n"


def test_only_messages_the_upstream_confirmed_copied_are_flagged(script: Driver):
    script.client(b"c UID MOVE 1:* Trash\r\n")
    # the range covers UID 12 too, delivered meanwhile, but COPYUID names only 10 and 11
    sent = script.upstream(
        script.tagged(b"NOOP", b"OK") + script.esearch(b"UID 1:*\r\n", b"ALL 10:11")
        + script.tagged(b"UID 1:*\r\n", b"OK") + script.tagged(b"DELETED", b"OK")
        + b"* 3 EXISTS\r\n"
        + script.tagged(b"COPY", b"OK [COPYUID 7 10:11 1:2] Done")
    )  # fmt: skip
    assert sent == b"UID STORE 10:11 +FLAGS.SILENT (\\Deleted)\r\n"
    assert script.seen() == b"* OK [COPYUID 7 10:11 1:2] Moved UIDs.\r\n"
    assert script.answer(b"UID STORE", b"OK") == b"UID EXPUNGE 10:11\r\n"
    # the EXISTS is shown after the expunges, with the count that follows them (as natively)
    script.upstream(b"* 1 EXPUNGE\r\n* VANISHED 11\r\n" + script.tagged(b"UID EXPUNGE", b"OK"))
    assert (
        script.seen() == b"* 1 EXPUNGE\r\n* VANISHED 11\r\n* 1 EXISTS\r\nc OK Move completed.\r\n"
    )


def test_without_copyuid_the_uids_found_before_copying_are_used(script: Driver):
    script.client(b"c MOVE 2,4 Trash\r\n")
    sent = script.upstream(b"* 2 FETCH (UID 12)\r\n* 4 FETCH (UID 14)\r\n" + listed(script))
    assert sent == b"NOOP\r\nUID COPY 12,14 Trash\r\n"
    sent = script.upstream(synced(script, b"OK [UIDNOTSTICKY] Done"))
    assert b"UID STORE 12,14 " in sent
    assert b"COPYUID" not in script.seen()  # never invented


def test_a_message_an_expunge_left_behind_is_flagged_and_expunged_once_more(script: Driver):
    copied(script)
    assert script.answer(b"+FLAGS", b"OK") == b"UID EXPUNGE 10:11\r\n"
    # one EXPUNGE for two messages
    sent = script.upstream(b"* 1 EXPUNGE\r\n" + script.tagged(b"UID EXPUNGE", b"OK"))
    assert sent == b"UID STORE 10:11 +FLAGS.SILENT (\\Deleted)\r\n"
    assert script.answer(b"+FLAGS", b"OK") == b"UID EXPUNGE 10:11\r\n"
    script.upstream(b"* 1 EXPUNGE\r\n" + script.tagged(b"UID EXPUNGE", b"OK"))
    assert script.seen() == b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nc OK Move completed.\r\n"


def test_unsolicited_responses_from_other_sessions_are_relayed_in_order(script: Driver):
    script.client(b"c UID MOVE 10 Trash\r\n")
    script.upstream(
        script.tagged(b"NOOP", b"OK")
        + script.esearch(b"UID 10\r\n", b"ALL 10") + b"* 3 FETCH (FLAGS (\\Seen) UID 13)\r\n"
        + script.tagged(b"UID 10\r\n", b"OK") + script.tagged(b"DELETED", b"OK")
        + b"* 6 EXISTS\r\n" + script.tagged(b"COPY", b"OK [COPYUID 7 10 20] Done")
    )  # fmt: skip
    script.upstream(
        b"* 1 FETCH (UID 10 FLAGS (\\Deleted))\r\n* 4 FETCH (UID 14 FLAGS (\\Flagged))\r\n"
        + script.tagged(b"+FLAGS", b"OK")
    )
    script.upstream(b"* 1 EXPUNGE\r\n* 2 EXPUNGE\r\n" + script.tagged(b"UID EXPUNGE", b"OK"))
    # 2 EXPUNGEs for 1 message: it flagged and expunged once more, then checked
    for command in (b"+FLAGS", b"UID EXPUNGE", b"-FLAGS", b"UID FETCH"):
        script.answer(command, b"OK")
    assert script.seen() == (
        b"* 3 FETCH (FLAGS (\\Seen) UID 13)\r\n* OK [COPYUID 7 10 20] Moved UIDs.\r\n"
        b"* 4 FETCH (UID 14 FLAGS (\\Flagged))\r\n* 1 EXPUNGE\r\n* 2 EXPUNGE\r\n* 4 EXISTS\r\n"
        b"c OK Move completed.\r\n"
    )


def test_qresync_vanished_and_highestmodseq_are_shown_as_native(script: Driver):
    script.client(b"c UID MOVE 10 Trash\r\n")
    script.upstream(listed(script, b"OK [COPYUID 7 10 20] Done", uid_set=b"10"))
    script.answer(b"+FLAGS", b"OK")
    script.upstream(
        b"* VANISHED 10\r\n" + script.tagged(b"UID EXPUNGE", b"OK [HIGHESTMODSEQ 99] Expunged")
    )
    assert script.seen().endswith(b"* VANISHED 10\r\nc OK [HIGHESTMODSEQ 99] Move completed.\r\n")


def test_large_uid_sets_are_split_into_short_commands():
    s = started(settings=SessionSettings(max_set_bytes=64))
    s.client(b"c UID MOVE 1:100 Trash\r\n")
    uids = b",".join(b"%d" % n for n in range(1, 100, 2))
    sent = s.upstream(listed(s, b"OK [COPYUID 7 " + uids + b" 1:50] Done", uid_set=b"1:100"))
    lines = sent.split(b"\r\n")[:-1]
    assert all(len(s.tag(line + b"\r\n") + b" " + line) < 64 + 40 for line in lines)
    stored = b",".join(line.split()[2] for line in lines if line.startswith(b"UID STORE "))
    assert stored == uids and b"EXPUNGE" not in sent
    sent = s.upstream(b"".join(s.tagged(line + b"\r\n", b"OK") for line in lines))
    expunged = []
    for _ in range(len(lines)):  # the UID EXPUNGEs go one at a time, each after the last's OK
        assert sent.count(b"\r\n") == 1 and sent.startswith(b"UID EXPUNGE ")
        expunged.append(sent.split()[2])
        count = len(expand_uid_set(sent.split()[2]))
        sent = s.upstream(b"* 1 EXPUNGE\r\n" * count + s.tagged(b"UID EXPUNGE", b"OK"))
    assert b",".join(expunged) == uids
    assert s.seen().endswith(b"c OK Move completed.\r\n")


def test_a_copy_that_matched_nothing_moves_nothing(script: Driver):
    """UW-IMAP answers a COPY whose messages another session expunged meanwhile with
    ``COPYUID v 0 0``: nothing was copied, so nothing is flagged or expunged."""
    script.client(b"c UID MOVE 5 Trash\r\n")
    copy = b"OK [COPYUID 1234 0 0] COPY completed"
    sent = script.upstream(listed(script, copy, uid_set=b"5", found=b"ALL 5"))
    assert sent == b""  # no STORE, no EXPUNGE, no FETCH of a UID 0
    assert script.seen() == b"c OK No messages found.\r\n"
    assert script.take_finished_moves()[0].outcome == "moved"


def test_a_sequence_number_move_copies_the_uids_it_listed_whatever_the_noop_expunges(
    script: Driver,
):
    """The NOOP before the COPY tells the session of another session's expunge, which shifts
    the numbers: the COPY names the UIDs listed before it."""
    script.client(b"c MOVE 1:3 Trash\r\n")
    fetched = b"* 1 FETCH (UID 10)\r\n* 2 FETCH (UID 11)\r\n* 3 FETCH (UID 12)\r\n"
    assert script.upstream(fetched + listed(script)) == b"NOOP\r\nUID COPY 10:12 Trash\r\n"
    # UID 11 was moved away by another session: the NOOP says so, the COPY skips it
    sent = script.upstream(b"* 2 EXPUNGE\r\n" + synced(script, b"OK [COPYUID 7 10,12 20:21] Done"))
    assert sent == b"UID STORE 10,12 +FLAGS.SILENT (\\Deleted)\r\n"
    assert script.answer(b"UID STORE", b"OK") == b"UID EXPUNGE 10,12\r\n"
    script.upstream(b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n" + script.tagged(b"UID EXPUNGE", b"OK"))
    assert script.seen() == (
        b"* 2 EXPUNGE\r\n* OK [COPYUID 7 10,12 20:21] Moved UIDs.\r\n"
        b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nc OK Move completed.\r\n"
    )


def assert_numbers_known(seen: bytes, told: int) -> None:
    """The client, told of ``told`` messages, never sees an EXPUNGE of a number above the
    count it has been told (RFC 3501 §7.4.1: the message must exist)."""
    for line in seen.split(b"\r\n"):
        words = line.split(b" ")
        if words[2:] == [b"EXISTS"]:
            told = int(words[1])
        elif words[2:] == [b"EXPUNGE"]:
            assert 1 <= int(words[1]) <= told, (line, told, seen)
            told -= 1


@pytest.mark.parametrize(
    ("expunges", "shown"),
    [
        (
            b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n* 1 EXPUNGE\r\n",
            b"* 3 EXISTS\r\n* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n* 1 EXPUNGE\r\n",
        ),
        (
            b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n",
            b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 EXISTS\r\n* 1 EXPUNGE\r\n",
        ),
    ],
)
def test_new_mail_a_move_takes_along_is_announced_before_its_expunge(expunges, shown):
    s = started()
    s.client(b"s SELECT Work\r\n")
    s.upstream(b"* 2 EXISTS\r\ns OK [READ-WRITE] Selected\r\n")
    s.seen()
    s.client(b"c UID MOVE 1:* Trash\r\n")
    # new mail, announced at the NOOP: "1:*" takes it along
    s.upstream(
        b"* 3 EXISTS\r\n"
        + listed(s, b"OK [COPYUID 7 1:3 11:13] Done", uid_set=b"1:*", found=b"ALL 1:3")
    )
    assert s.answer(b"UID STORE", b"OK") == b"UID EXPUNGE 1:3\r\n"
    s.upstream(expunges + s.tagged(b"UID EXPUNGE", b"OK"))
    seen = s.seen()
    copyuid = b"* OK [COPYUID 7 1:3 11:13] Moved UIDs.\r\n"
    assert seen == copyuid + shown + b"c OK Move completed.\r\n"
    assert_numbers_known(seen, 2)


def test_a_move_into_the_selected_mailbox_shows_its_exists_after_the_expunges(script: Driver):
    script.client(b"c UID MOVE 1:2 INBOX\r\n")
    listing = listed(script, uid_set=b"1:2", found=b"ALL 1:2")
    script.upstream(
        listing + b"* 7 EXISTS\r\n* 2 RECENT\r\n"
        + script.tagged(b"COPY", b"OK [COPYUID 7 1:2 6:7] Done")
    )  # fmt: skip
    script.answer(b"UID STORE", b"OK")
    script.upstream(b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n" + script.tagged(b"UID EXPUNGE", b"OK"))
    # as Dovecot's MOVE shows it: the count that follows the expunges
    assert script.seen() == (
        b"* OK [COPYUID 7 1:2 6:7] Moved UIDs.\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n"
        b"* 5 EXISTS\r\n* 2 RECENT\r\nc OK Move completed.\r\n"
    )
    assert script.session.mailbox.exists == 5


def test_expunges_relayed_between_moves_lower_the_count_the_next_move_starts_from(
    script: Driver,
):
    script.upstream(b"* 5 EXPUNGE\r\n* 4 EXPUNGE\r\n")  # another session's, relayed as they come
    assert script.seen() == b"* 5 EXPUNGE\r\n* 4 EXPUNGE\r\n"
    assert script.session.mailbox.exists == 3
    script.client(b"c UID MOVE 1:* Trash\r\n")
    copy = b"OK [COPYUID 7 1:3,6 11:14] Done"
    script.upstream(b"* 4 EXISTS\r\n" + listed(script, copy, uid_set=b"1:*", found=b"ALL 1:3,6"))
    script.answer(b"UID STORE", b"OK")
    expunges = b"* 4 EXPUNGE\r\n* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n* 1 EXPUNGE\r\n"
    script.upstream(expunges + script.tagged(b"UID EXPUNGE", b"OK"))
    seen = script.seen()  # the client knows of 3: message 4 is announced before its EXPUNGE
    assert seen == (
        b"* OK [COPYUID 7 1:3,6 11:14] Moved UIDs.\r\n* 4 EXISTS\r\n" + expunges
        + b"c OK Move completed.\r\n"
    )  # fmt: skip
    assert_numbers_known(seen, 3)
    assert script.session.mailbox.exists == 0
