"""The flag check after a guarded MOVE, driven with scripted server replies.

tests/integration/test_guarded_imap4d.py runs it against real imap4d (flags restored) and
Dovecot (flags kept); here the cases a real server cannot be made to produce on demand:
copies that do not match, flags the target does not keep, a STORE that does not take.
"""

from __future__ import annotations

from imapmoveproxy.move.copyflags import Copied, FlagCheckRequest, FlagRecorder, FlagRestore, Result
from imapmoveproxy.move.rollback import Credentials
from imapmoveproxy.wire.capabilities import Capabilities

USER = Credentials(b"user", b"user", b"pass")
USER_CAPS = Capabilities(frozenset())
DATE = b"1-Jan-2026 10:00:00 +0000"
OTHER_DATE = b"2-Jan-2026 10:00:00 +0000"
SEEN = frozenset({b"\\Seen", b"\\Flagged"})
REQUEST = FlagCheckRequest(
    b"Trash", b"7", 20, (Copied(DATE, SEEN), Copied(DATE, frozenset())), True
)
SELECTED = b"* OK [UIDVALIDITY 7] x\r\n* OK [PERMANENTFLAGS (\\Seen \\Flagged \\Deleted)] x\r\n"


def selected(request: FlagCheckRequest = REQUEST) -> FlagRestore:
    """Logged in, the target selected: the fetch of the new messages is out."""
    restore = FlagRestore(request, USER)
    restore.receive(b"* OK hi\r\nrb1 OK\r\n")
    restore.receive(SELECTED + b"rb2 OK [READ-WRITE] x\r\n")
    assert restore.take_outgoing().endswith(b"rb3 UID FETCH 20:* (UID FLAGS INTERNALDATE)\r\n")
    return restore


def found(*lines: tuple[int, bytes, bytes]) -> bytes:
    fetches = b"".join(
        b'* %d FETCH (UID %d FLAGS (%s) INTERNALDATE "%s")\r\n' % (uid, uid, flags, date)
        for uid, flags, date in lines
    )
    return fetches + b"rb3 OK\r\n"


def test_missing_flags_are_added_to_the_matching_copies_only_and_never_deleted():
    request = FlagCheckRequest(
        b"Trash", b"7", 20, (Copied(DATE, SEEN | {b"\\Deleted"}), Copied(DATE, frozenset())), True
    )
    restore = selected(request)
    restore.receive(found((20, b"\\Recent", DATE), (21, b"", DATE), (22, b"", OTHER_DATE)))
    assert restore.take_outgoing() == b"rb4 UID STORE 20 +FLAGS (\\Flagged \\Seen)\r\n"
    restore.receive(b"* 1 FETCH (UID 20 FLAGS (\\Seen \\Flagged \\Recent))\r\nrb4 OK\r\n")
    assert restore.take_outgoing() == b"rb5 LOGOUT\r\n"
    assert not restore.done  # imap4d writes the flags when the session ends
    restore.receive(b"* BYE bye\r\nrb5 OK\r\n")
    assert restore.ending and not restore.done  # it may still be writing them after its OK
    restore.connection_lost()
    assert restore.done and restore.outcome() == (Result.RESTORED, "")


def test_copies_that_do_not_match_are_left_alone():
    restore = selected()
    restore.receive(found((20, b"", OTHER_DATE), (21, b"", DATE)))  # another message came first
    assert restore.take_outgoing() == b"rb4 LOGOUT\r\n"
    result, detail = restore.outcome()
    assert result is Result.UNKNOWN and "do not match" in detail
    restore = selected()
    restore.receive(found((19, b"", DATE)))  # "20:*" answered with the last message, below 20
    assert restore.take_outgoing() == b"rb4 LOGOUT\r\n"
    assert restore.outcome()[0] is Result.UNKNOWN


def test_in_the_selected_mailbox_and_for_flags_the_target_does_not_keep_nothing_is_stored():
    check_only = FlagCheckRequest(b"INBOX", b"7", 20, REQUEST.copied, False)
    restore = FlagRestore(check_only, USER)
    restore.receive(b"* OK hi\r\nrb1 OK\r\n")
    assert restore.take_outgoing().endswith(b"rb2 EXAMINE INBOX\r\n")  # never written to
    restore.receive(b"* OK [UIDVALIDITY 7] x\r\nrb2 OK [READ-ONLY] x\r\n")
    assert restore.take_outgoing() == b"rb3 UID FETCH 20:* (UID FLAGS INTERNALDATE)\r\n"
    restore.receive(found((20, b"", DATE), (21, b"", DATE)))
    assert restore.take_outgoing() == b"rb4 LOGOUT\r\n"
    assert restore.outcome() == (Result.LOST, "not restored in the client's selected mailbox")
    keyword = FlagCheckRequest(b"Trash", b"7", 20, (Copied(DATE, frozenset({b"$Label1"})),), True)
    restore = selected(keyword)  # PERMANENTFLAGS without \*
    restore.receive(found((20, b"", DATE)))
    assert restore.take_outgoing() == b"rb4 LOGOUT\r\n"
    assert restore.outcome() == (Result.LOST, "the target does not keep these flags")


def test_flags_already_there_are_reported_kept_and_a_store_that_does_not_take_lost():
    restore = selected()
    restore.receive(found((20, b"\\Flagged \\Seen", DATE), (21, b"", DATE)))
    assert restore.take_outgoing() == b"rb4 LOGOUT\r\n"
    assert restore.outcome() == (Result.KEPT, "")
    restore = selected()
    restore.receive(found((20, b"", DATE), (21, b"", DATE)))
    restore.take_outgoing()
    restore.receive(b"* 1 FETCH (UID 20 FLAGS (\\Seen))\r\nrb4 OK\r\n")
    assert restore.outcome() == (Result.LOST, "the flags did not take on UIDs 20")
    restore = selected()
    restore.receive(found((20, b"", DATE), (21, b"", DATE)))
    restore.receive(b"rb4 NO [CANNOT] no\r\n")
    assert restore.outcome() == (Result.LOST, "flag refused: no")


def test_a_connection_closed_before_the_verdict_is_reported_as_such():
    restore = selected()
    restore.connection_lost()
    assert restore.done
    assert restore.outcome() == (Result.UNKNOWN, "the mail server closed the connection")
    restore = selected()
    restore.receive(found((20, b"", DATE), (21, b"", DATE)))
    assert b"UID STORE 20" in restore.take_outgoing()
    restore.connection_lost()  # the STORE unanswered
    assert restore.outcome() == (Result.LOST, "the mail server closed the connection")


def test_a_changed_uidvalidity_stops_the_check_unless_the_target_was_empty():
    restore = FlagRestore(REQUEST, USER)
    restore.receive(b"* OK hi\r\nrb1 OK\r\n* OK [UIDVALIDITY 8] x\r\nrb2 OK\r\n")
    assert restore.take_outgoing().endswith(b"rb3 LOGOUT\r\n")
    restore.connection_lost()
    assert restore.done and restore.outcome() == (
        Result.UNKNOWN, "the target's UIDVALIDITY is now 8"
    )  # fmt: skip
    was_empty = FlagCheckRequest(b"Trash", None, 1, REQUEST.copied, True)
    restore = FlagRestore(was_empty, USER)
    restore.receive(b"* OK hi\r\nrb1 OK\r\n* OK [UIDVALIDITY 8] x\r\nrb2 OK\r\n")
    assert restore.take_outgoing().endswith(b"rb3 UID FETCH 1:* (UID FLAGS INTERNALDATE)\r\n")


def test_the_recorder_takes_only_its_own_answers_and_asks_for_nothing_without_flags():
    recorder = FlagRecorder()
    assert not recorder.on_untagged(b"* STATUS Trash (UIDNEXT 5)\r\n")  # not asked for
    recorder.status_command(b"Trash", USER_CAPS)
    recorder.fetch_command([3, 4])
    assert recorder.on_untagged(b"* STATUS Trash (UIDNEXT 5 UIDVALIDITY 9 MESSAGES 0)\r\n")
    assert not recorder.on_untagged(b"* 1 FETCH (UID 3 FLAGS (\\Seen))\r\n")  # others' news
    assert not recorder.on_untagged(b'* 9 FETCH (UID 9 FLAGS () INTERNALDATE "%s")\r\n' % DATE)
    assert recorder.on_untagged(b'* 1 FETCH (UID 3 FLAGS (\\Recent) INTERNALDATE "%s")\r\n' % DATE)
    assert recorder.request(b"Trash", b"INBOX") is None  # \Recent only: nothing to lose
    assert recorder.on_untagged(b'* 2 FETCH (UID 4 FLAGS (\\Seen) INTERNALDATE "%s")\r\n' % DATE)
    seen = frozenset({b"\\Seen"})
    copied = (Copied(DATE, frozenset()), Copied(DATE, seen))
    assert recorder.request(b"Trash", b"INBOX") == FlagCheckRequest(b"Trash", None, 5, copied, True)
    assert not recorder.request(b"inbox", b"INBOX").restore  # type: ignore[union-attr]
    assert not recorder.request(b"Trash", None).restore  # type: ignore[union-attr]
