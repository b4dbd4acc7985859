"""The client-view oracle (tests/clientview.py) on hand-written transcripts: each invariant
once kept and once broken, and the things it must tolerate without a false alarm."""

from __future__ import annotations

import pytest
from clientview import ClientView, fetch_attributes, parse_uid_set

SELECTED = [
    b"C: a SELECT INBOX",
    b"S: * 5 EXISTS",
    b"S: * 0 RECENT",
    b"S: a OK [READ-WRITE] done",
]
UIDS = [
    b"C: f UID FETCH 1:* FLAGS",
    *(b"S: * %d FETCH (UID %d FLAGS (\\Seen))" % (n, 10 + n) for n in range(1, 6)),
    b"S: f OK done",
]


def replay(lines: list[bytes], view: ClientView | None = None) -> ClientView:
    view = view or ClientView()
    for line in lines:
        side, data = line[:3], line[3:] + b"\r\n"
        if side == b"C: ":
            view.client(data)
        else:
            view.server(data)
    return view


def violates(lines: list[bytes], match: str) -> None:
    with pytest.raises(AssertionError, match=match):
        replay(lines)


def test_counts_follow_exists_and_expunge():
    view = replay([*SELECTED, b"C: b NOOP", b"S: * 7 EXISTS", b"S: * 7 EXPUNGE",
                   b"S: * 1 EXPUNGE", b"S: * 5 FETCH (FLAGS ())", b"S: b OK"])  # fmt: skip
    assert view.count == 5
    assert not view.violations


def test_expunge_past_the_count():
    violates([*SELECTED, b"C: b NOOP", b"S: * 6 EXPUNGE"], r"EXPUNGE 6 outside .*1\.\.5")
    violates([*SELECTED, b"C: b NOOP", b"S: * 0 EXPUNGE"], "EXPUNGE 0 outside")


def test_exists_does_not_shrink_without_expunges():
    violates([*SELECTED, b"C: b NOOP", b"S: * 4 EXISTS"], "EXISTS 4 below the client's count 5")


def test_a_new_select_may_shrink_the_count():
    view = replay([*SELECTED, b"C: b SELECT Trash", b"S: * 2 EXISTS", b"S: b OK",
                   b"C: c NOOP", b"S: * 3 EXISTS", b"S: c OK"])  # fmt: skip
    assert view.count == 3


def test_responses_of_the_old_mailbox_during_select_are_no_alarm():
    view = replay([*SELECTED, b"C: b NOOP", b"C: c EXAMINE Trash", b"S: * 9 EXPUNGE",
                   b"S: * 9 EXISTS", b"S: b OK", b"S: * 1 EXISTS", b"S: * 3 RECENT",
                   b"S: c OK"])  # fmt: skip
    assert view.count == 1


def test_fetch_and_recent_within_the_count():
    violates([*SELECTED, b"C: b NOOP", b"S: * 6 FETCH (FLAGS ())"], "FETCH 6 outside")
    violates([*SELECTED, b"C: b NOOP", b"S: * 6 RECENT"], "RECENT 6 above")


def test_nothing_is_known_before_a_select():
    view = replay([b"C: a NOOP", b"S: * 3 EXPUNGE", b"S: * 9 FETCH (FLAGS ())", b"S: a OK"])
    assert view.count is None


def test_close_forgets_the_mailbox():
    view = replay([*SELECTED, b"C: b CLOSE", b"S: b OK"])
    assert view.count is None


def test_expunge_during_fetch_store_search_by_sequence_number():
    violates([*SELECTED, b"C: b FETCH 1 FLAGS", b"S: * 2 EXPUNGE"], "RFC 3501 7.4.1")
    violates([*SELECTED, b"C: b STORE 1 +FLAGS (x)", b"S: * 2 EXPUNGE"], "RFC 3501 7.4.1")
    violates([*SELECTED, b"S: * 2 EXPUNGE"], "EXPUNGE while the client runs no command")
    replay([*SELECTED, b"C: b UID FETCH 1 FLAGS", b"S: * 2 EXPUNGE", b"S: b OK"])
    replay([*SELECTED, b"C: b FETCH 1 FLAGS", b"C: c NOOP", b"S: * 2 EXPUNGE"])


def test_uids_shift_on_expunge_and_stay_consistent():
    view = replay([*SELECTED, *UIDS, b"C: b NOOP", b"S: * 2 EXPUNGE", b"S: b OK",
                   b"C: c UID FETCH 14 FLAGS", b"S: * 3 FETCH (UID 14 FLAGS ())",
                   b"S: c OK"])  # fmt: skip
    assert view.seq_uid == {1: 11, 2: 13, 3: 14, 4: 15}
    assert view.flags[3] == b"()"
    violates([*SELECTED, *UIDS, b"C: c UID FETCH 14 FLAGS", b"S: * 3 FETCH (UID 14 FLAGS ())"],
             "UID 14 at 4")  # fmt: skip


def test_fetch_attributes_skip_literals_quoted_strings_and_brackets():
    data = (b'* 3 FETCH (BODY[HEADER.FIELDS (UID)] {10}\r\nUID 99 xx\r\n ENVELOPE ("a) UID 7" '
            b'NIL ((NIL NIL "b" "c"))) UID 14 FLAGS (\\Seen $X))\r\n')  # fmt: skip
    attributes = fetch_attributes(data)
    assert attributes[b"UID"] == b"14"
    assert attributes[b"FLAGS"] == b"(\\Seen $X)"


def test_uid_sets():
    assert parse_uid_set(b"3:1,7") == [(1, 3), (7, 7)]
    for bad in [b"", b"0", b"1:*", b"1,,2", b"x"]:
        assert parse_uid_set(bad) is None, bad


def test_copyuid_sets():
    replay([*SELECTED, b"C: b UID COPY 1:2 Trash", b"S: b OK [COPYUID 9 1:2 5,7] done"])
    violates([*SELECTED, b"C: b COPY 1:2 Trash", b"S: b OK [COPYUID 9 1:2 5] done"],
             "different sizes")  # fmt: skip
    violates([*SELECTED, b"C: b COPY 1 Trash", b"S: b OK [COPYUID 9 0 5] done"], "invalid")
    violates([*SELECTED, b"C: b COPY 1 Trash", b"S: b OK [COPYUID 0 1 5] done"], "invalid")


MOVE = [*SELECTED, *UIDS, b"C: m UID MOVE 12:13 Trash"]


def test_a_move_expunges_its_messages_after_its_copyuid():
    view = replay([*MOVE, b"S: * OK [COPYUID 9 12:13 1:2]", b"S: * 2 EXPUNGE",
                   b"S: * 2 EXPUNGE", b"S: m OK done"])  # fmt: skip
    assert view.count == 3
    assert view.seq_uid == {1: 11, 2: 14, 3: 15}


def test_an_unrelated_expunge_may_come_before_the_copyuid():
    replay([*MOVE, b"S: * 5 EXPUNGE", b"S: * OK [COPYUID 9 12:13 1:2]", b"S: * 2 EXPUNGE",
            b"S: * 2 EXPUNGE", b"S: m OK done"])  # fmt: skip


def test_a_moved_message_expunged_before_the_copyuid():
    violates([*MOVE, b"S: * 2 EXPUNGE", b"S: * OK [COPYUID 9 12:13 1:2]"],
             r"UIDs \[12\] were expunged before the COPYUID")  # fmt: skip


def test_a_move_that_leaves_a_moved_message():
    violates([*MOVE, b"S: * OK [COPYUID 9 12:13 1:2]", b"S: * 2 EXPUNGE", b"S: m OK done"],
             "only 1 expunges")  # fmt: skip
    # Counted right, but the other expunge was of another message: 13 is still there.
    violates([*MOVE, b"S: * OK [COPYUID 9 12:13 1:2]", b"S: * 2 EXPUNGE", b"S: * 4 EXPUNGE",
              b"S: m OK done"], r"moved UIDs \[13\] were never expunged")  # fmt: skip


def test_a_move_without_known_uids_counts_its_expunges():
    lines = [*SELECTED, b"C: m MOVE 1:2 Trash", b"S: * OK [COPYUID 9 12:13 1:2]", b"S: * 1 EXPUNGE"]
    replay([*lines, b"S: * 1 EXPUNGE", b"S: m OK"])
    violates([*lines, b"S: m OK"], "only 1 expunges")


def test_a_move_copyuid_in_the_tagged_ok():
    violates([*MOVE, b"S: * 2 EXPUNGE", b"S: * 2 EXPUNGE", b"S: m OK [COPYUID 9 12:13 1:2] x"],
             "RFC 6851 4.3")  # fmt: skip


def test_a_failed_move_or_one_without_uidplus_asserts_nothing_more():
    replay([*MOVE, b"S: m NO [CANNOT] no"])
    replay([*MOVE, b"S: * 2 EXPUNGE", b"S: * 2 EXPUNGE", b"S: m OK done"])


def test_vanished_reduces_the_count_but_not_earlier():
    view = replay([*SELECTED, *UIDS, b"C: m UID MOVE 12:13 Trash",
                   b"S: * OK [COPYUID 9 12:13 1:2]", b"S: * VANISHED (EARLIER) 1:3",
                   b"S: * VANISHED 12:13", b"S: m OK"])  # fmt: skip
    assert view.count == 3
    violates([*SELECTED, b"C: b NOOP", b"S: * VANISHED 1:6"], "VANISHED 6 UIDs")
    violates([*MOVE, b"S: * OK [COPYUID 9 12:13 1:2]", b"S: * VANISHED 12", b"S: m OK"],
             "only 1 expunges")  # fmt: skip


def test_commands_are_split_across_chunks_and_literals():
    view = ClientView()
    view.client(b"a APPEND INBOX {13}\r\n")
    view.client(b"b FETCH 1 x\r\n" b" (\\Seen)\r\nc FE")
    assert [c.name for c in view.in_flight] == [b"APPEND"]
    view.client(b"TCH 1 FLAGS\r\nd APPEND INBOX {3+}\r\nabc\r\n")
    assert [c.name for c in view.in_flight] == [b"APPEND", b"FETCH", b"APPEND"]


def test_a_refused_literal_is_no_literal():
    view = replay([*SELECTED, b"C: b APPEND INBOX {99999}", b"C: c SELECT Trash",
                   b"S: b NO too big", b"S: * 1 EXISTS", b"S: c OK"])  # fmt: skip
    assert view.count == 1


def test_garbage_commands_are_tolerated():
    view = replay([*SELECTED, b"C: \x00\xff garbage", b"C: DONE", b"C: x", b"C: b FETCH 1 F",
                   b"S: \x00\xff BAD what", b"S: * BAD junk", b"S: x BAD what",
                   b"S: * 2 EXPUNGE"])  # fmt: skip
    assert view.count == 4  # a reply to an unknown tag: in-flight checks are off, counts stay


def test_server_bytes_are_split_into_responses():
    view = ClientView()
    view.client(b"a SELECT INBOX\r\n")
    for chunk in [b"* 2 EXI", b"STS\r\n* 1 FETCH (BODY[] {5}\r\n", b"* 9 E", b")\r\na OK\r\n"]:
        view.server_bytes(chunk)
    assert view.count == 2
    assert not view.in_flight
