"""Step 1 of a MOVE (imapmoveproxy/move/listing.py, move/bookkeeping.py): the UIDs the set
names, COPYs in chunks, and the check that a COPYUID names only those. Driven by
tests/driver.py."""

from __future__ import annotations

import logging

import pytest
from driver import CAPS, Driver, listed, started, synced

from imapmoveproxy.engine.session import SessionSettings
from imapmoveproxy.wire.grammar import expand_uid_set


def chunk_script(caps: bytes = CAPS) -> Driver:
    return started(caps=caps, settings=SessionSettings(chunk_size=2))


def move_chunk(s: Driver, uids: bytes, copies: bytes) -> bytes:
    """Answer the COPY of chunk ``uids`` and what follows; return what was sent next."""
    count = len(expand_uid_set(uids))
    sent = s.answer(b"UID COPY " + uids + b" ", b"OK [COPYUID 7 %s %s] Done" % (uids, copies))
    assert sent == b"UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n" % uids
    assert s.answer(b"UID STORE", b"OK") == b"UID EXPUNGE %s\r\n" % uids
    return s.upstream(b"* 1 EXPUNGE\r\n" * count + s.tagged(b"UID EXPUNGE", b"OK"))


def test_a_big_move_is_done_in_chunks_each_moved_or_untouched():
    s = chunk_script()
    assert s.client(b"c UID MOVE 1:* Trash\r\n") == (  # 5 messages may exist: more than 2
        b"NOOP\r\nUID SEARCH RETURN (ALL) UID 1:*\r\nUID SEARCH RETURN (ALL) UID 1:* DELETED\r\n"
    )
    sent = s.upstream(listed(s, uid_set=b"1:*", found=b"ALL 3:7"))
    assert sent == b"UID COPY 3:4 Trash\r\n"
    assert move_chunk(s, b"3:4", b"1:2") == b"UID COPY 5:6 Trash\r\n"
    assert move_chunk(s, b"5:6", b"3:4") == b"UID COPY 7 Trash\r\n"
    s.answer(b"UID COPY 7 ", b"NO [OVERQUOTA] Quota exceeded")
    assert s.seen() == (
        b"* OK [COPYUID 7 3:4 1:2] Moved UIDs.\r\n" + b"* 1 EXPUNGE\r\n" * 2
        + b"* OK [COPYUID 7 5:6 3:4] Moved UIDs.\r\n" + b"* 1 EXPUNGE\r\n" * 2
        + b"c NO [OVERQUOTA] MOVE failed (copy: Quota exceeded): 4 of 5 messages were moved, "
        b"the others are unaffected.\r\n"
    )  # fmt: skip


def test_a_failed_first_chunk_answers_like_a_native_move():
    s = chunk_script()
    s.client(b"c UID MOVE 1:* Trash\r\n")
    s.upstream(listed(s, uid_set=b"1:*", found=b"ALL 3:7"))
    s.answer(b"UID COPY", b"NO [OVERQUOTA] Quota exceeded")
    assert s.seen() == b"c NO [OVERQUOTA] Quota exceeded\r\n"


def test_a_move_of_any_size_goes_in_chunks():
    """Issue 12 defect 7: the listing of 1.5 million UIDs ended the connection ("set too
    large"). Scripted: a real server with 1.5 million messages is too slow to build."""
    s = started(settings=SessionSettings(chunk_size=1000))
    s.upstream(b"* 1500000 EXISTS\r\n")
    s.client(b"c UID MOVE 1:* Trash\r\n")
    sent = s.upstream(
        s.tagged(b"NOOP", b"OK")
        + s.esearch(b"UID 1:*\r\n", b"ALL 1:1500000") + s.tagged(b"UID 1:*\r\n", b"OK")
        + s.esearch(b"DELETED", b"ALL 1:1500000") + s.tagged(b"DELETED", b"OK")
    )  # fmt: skip
    assert sent == b"UID COPY 1:1000 Trash\r\n"
    assert s.session.close_reason is None
    s.answer(b"UID COPY", b"OK [COPYUID 7 1:1000 1:1000] Done")
    assert s.answer(b"UID STORE", b"OK") == b"UID EXPUNGE 1:1000\r\n"
    sent = s.upstream(b"* VANISHED 1:1000\r\n" + s.tagged(b"UID EXPUNGE", b"OK"))
    assert sent == b"UID COPY 1001:2000 Trash\r\n"


def test_a_fetch_about_a_message_outside_the_set_is_relayed_and_not_moved():
    """Issue 12 defect 4 at unit level: under QRESYNC another session's flag change carries a
    UID; message 4 is not in the set 1:2, so it is not copied."""
    s = chunk_script()
    assert s.client(b"c MOVE 1:3 Trash\r\n").startswith(b"FETCH 1:3 (UID)\r\n")
    sent = s.upstream(
        b"* 1 FETCH (UID 10)\r\n* 4 FETCH (UID 14 MODSEQ (9) FLAGS (\\Flagged))\r\n"
        b"* 2 FETCH (UID 11)\r\n* 3 FETCH (UID 12)\r\n" + listed(s)
    )
    assert sent == b"NOOP\r\nUID COPY 10:11 Trash\r\n"
    assert s.seen() == b"* 4 FETCH (UID 14 MODSEQ (9) FLAGS (\\Flagged))\r\n"
    s.answer(b"NOOP", b"OK")
    assert move_chunk(s, b"10:11", b"1:2") == b"UID COPY 12 Trash\r\n"  # no second NOOP


def test_copyuid_naming_uids_outside_the_set_ends_the_move_and_removes_the_copies(
    script: Driver, caplog: pytest.LogCaptureFixture
):
    script.client(b"c UID MOVE 5 Trash\r\n")
    with caplog.at_level(logging.WARNING):
        sent = script.upstream(
            listed(script, b"OK [COPYUID 7 5:6 20:21] Done", uid_set=b"5", found=b"ALL 5")
        )
    (warning,) = [record for record in caplog.records if "outside the set" in record.getMessage()]
    # in the connection's log, under its id
    assert warning.name == "imapmoveproxy.engine.session"
    assert warning.__dict__["conn"] == script.session.conn_id
    assert sent == b"UID FETCH 5:6 (UID FLAGS)\r\n"  # nothing flagged, only checked
    script.upstream(
        b"* 1 FETCH (UID 5 FLAGS ())\r\n* 2 FETCH (UID 6 FLAGS ())\r\n"
        + script.tagged(b"UID FETCH", b"OK")
    )
    rollback = script.take_rollback()
    assert rollback is not None and rollback[0].uids == (20, 21)
    script.session.rollback_finished(None)
    script.sent()
    reply = script.seen()
    assert reply.startswith(b"c NO [SERVERBUG] MOVE failed (set-check: the server named UIDs 6")
    assert reply.endswith(b"0 of 2 messages were moved, the others are unaffected.\r\n")


def test_small_moves_cost_no_extra_round_trip_with_chunks():
    s = chunk_script()
    sent = s.client(b"c UID MOVE 1:2 Trash\r\n")
    assert sent.startswith(b"NOOP\r\n") and sent.endswith(b"\r\nUID COPY 1:2 Trash\r\n")


def test_a_sequence_number_move_costs_one_round_trip_more_to_list_its_uids():
    """Numbers would shift under the NOOP that comes before the COPY: listed as UIDs first,
    then copied by UID, however small the set."""
    s = chunk_script()
    assert s.client(b"c MOVE 1:2 Trash\r\n") == (
        b"FETCH 1:2 (UID)\r\nUID SEARCH RETURN (ALL) 1:2 DELETED\r\n"
    )  # one round trip more than for UID MOVE
    sent = s.upstream(b"* 1 FETCH (UID 10)\r\n* 2 FETCH (UID 11)\r\n" + listed(s))
    assert sent == b"NOOP\r\nUID COPY 10:11 Trash\r\n"
    assert s.upstream(synced(s, b"OK [COPYUID 7 10:11 1:2] Done")) == (
        b"UID STORE 10:11 +FLAGS.SILENT (\\Deleted)\r\n"
    )


def test_a_chunk_whose_copy_matched_nothing_is_skipped():
    """UW-IMAP's ``COPYUID v 0 0``: the chunk's messages were expunged by another session
    meanwhile; the next chunk is moved as usual."""
    s = chunk_script()
    s.client(b"c UID MOVE 1:* Trash\r\n")
    assert s.upstream(listed(s, uid_set=b"1:*", found=b"ALL 3:6")) == b"UID COPY 3:4 Trash\r\n"
    sent = s.answer(b"UID COPY 3:4 ", b"OK [COPYUID 7 0 0] COPY completed")
    assert sent == b"UID COPY 5:6 Trash\r\n"  # nothing of 3:4 flagged or expunged
    assert move_chunk(s, b"5:6", b"1:2") == b""
    assert s.seen() == (
        b"* OK [COPYUID 7 5:6 1:2] Moved UIDs.\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n"
        b"c OK Move completed.\r\n"
    )
