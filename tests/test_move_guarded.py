"""The guarded policy for an upstream without UIDPLUS (imapmoveproxy/move/guarded.py): other
messages' \\Deleted cleared around a plain EXPUNGE and restored, the flags recorded for a check
after the MOVE. Driven by tests/driver.py."""

from __future__ import annotations

from driver import Driver, started

from imapmoveproxy.engine.session import SessionSettings
from imapmoveproxy.move.copyflags import Copied, FlagCheckRequest


def guarded_script() -> Driver:
    return started(caps=b"IMAP4rev1 LITERAL+", settings=SessionSettings(guarded=True))


def test_guarded_move_clears_and_restores_other_deleted_flags():
    s = guarded_script()
    # no COPYUID will say what a COPY took: it only names UIDs listed in the client's set
    # and the target's UIDNEXT, then the flags of what it copies (for a check after the MOVE)
    assert s.client(b"c MOVE 2 Trash\r\n") == (
        b"FETCH 2 (UID)\r\nSTATUS Trash (UIDNEXT UIDVALIDITY MESSAGES)\r\n"
    )
    status = b"* STATUS Trash (UIDNEXT 40 UIDVALIDITY 9 MESSAGES 3)\r\n"
    status += s.tagged(b"STATUS", b"OK")
    assert s.upstream(b"* 2 FETCH (UID 12)\r\n" + s.tagged(b"(UID)", b"OK") + status) == (
        b"UID FETCH 12 (UID FLAGS INTERNALDATE)\r\nUID COPY 12 Trash\r\n"
    )
    flags = b'* 2 FETCH (UID 12 FLAGS (\\Seen \\Recent) INTERNALDATE "1-Jan-2026 10:00:00 +0000")'
    copy = s.tagged(b"INTERNALDATE", b"OK") + s.tagged(b"COPY", b"OK Copied")
    assert s.upstream(flags + b"\r\n" + copy) == b"NOOP\r\n"
    assert s.answer(b"NOOP", b"OK") == b"UID SEARCH DELETED\r\n"
    sent = s.upstream(b"* SEARCH 11 12\r\n" + s.tagged(b"SEARCH", b"OK"))  # 11: the user's own
    assert sent == (
        b"UID STORE 11 -FLAGS.SILENT (\\Deleted)\r\nUID STORE 12 +FLAGS.SILENT (\\Deleted)\r\n"
    )
    stored = s.tagged(b"-FLAGS", b"OK") + s.tagged(b"+FLAGS", b"OK")
    assert s.upstream(b"* 1 FETCH (UID 11 FLAGS ())\r\n" + stored) == b"NOOP\r\n"
    s.answer(b"NOOP", b"OK")
    # the re-check finds 13, flagged by another session meanwhile: cleared too, checked again
    sent = s.upstream(b"* SEARCH 12 13\r\n" + s.tagged(b"SEARCH", b"OK"))
    assert sent == b"UID STORE 13 -FLAGS.SILENT (\\Deleted)\r\n"
    assert s.answer(b"-FLAGS", b"OK") == b"NOOP\r\n"
    s.answer(b"NOOP", b"OK")
    assert s.upstream(b"* SEARCH 12\r\n" + s.tagged(b"SEARCH", b"OK")) == b"EXPUNGE\r\n"
    sent = s.upstream(b"* 2 EXPUNGE\r\n" + s.tagged(b"EXPUNGE", b"OK"))
    assert sent == b"UID STORE 11,13 +FLAGS.SILENT (\\Deleted)\r\n"
    assert s.answer(b"+FLAGS", b"OK") == b"UID FETCH 1:* (UID)\r\n"
    s.upstream(b"* 1 FETCH (UID 11)\r\n* 2 FETCH (UID 13)\r\n" + s.tagged(b"1:*", b"OK"))
    assert s.seen() == b"* 2 EXPUNGE\r\nc OK Move completed.\r\n"  # nothing of STATUS, FETCH
    (check,) = s.session.take_flag_checks()  # the MOVE's log line waits for its result
    assert check.request == FlagCheckRequest(
        b"Trash", b"9", 40, (Copied(b"1-Jan-2026 10:00:00 +0000", frozenset({b"\\Seen"})),), True
    )


def guarded_copied(s: Driver) -> None:
    """``c UID MOVE 12 Trash`` of a guarded script: copied, no other \\Deleted found; the
    STORE of \\Deleted on 12 is out."""
    s.client(b"c UID MOVE 12 Trash\r\n")
    s.upstream(b"* 2 FETCH (UID 12)\r\n" + s.tagged(b"(UID)", b"OK") + s.tagged(b"STATUS", b"OK"))
    s.upstream(s.tagged(b"INTERNALDATE", b"OK") + s.tagged(b"COPY", b"OK Copied"))
    s.answer(b"NOOP", b"OK")
    assert s.upstream(b"* SEARCH\r\n" + s.tagged(b"SEARCH", b"OK")) == (
        b"UID STORE 12 +FLAGS.SILENT (\\Deleted)\r\n"
    )


def test_guarded_move_gives_up_with_nothing_lost_when_flags_keep_appearing():
    s = guarded_script()
    guarded_copied(s)
    sent = b""
    for n in range(4):  # another session flags a new message before every re-check
        s.answer(b"UID STORE", b"OK")
        s.answer(b"NOOP", b"OK")
        sent = s.upstream(b"* SEARCH 12 %d\r\n" % (20 + n) + s.tagged(b"SEARCH", b"OK"))
    assert b"EXPUNGE" not in sent
    # undo: unflag the moved message, put back \Deleted on the ones cleared on the way
    assert sent == (
        b"UID STORE 12 -FLAGS.SILENT (\\Deleted)\r\nUID STORE 20:23 +FLAGS.SILENT (\\Deleted)\r\n"
    )
    s.upstream(s.tagged(b"-FLAGS", b"OK") + s.tagged(b"+FLAGS", b"OK"))
    reply = s.seen()
    assert reply.startswith(b"c NO [INUSE] MOVE incomplete:")
    assert b"every message is in both mailboxes; none was lost" in reply


def guarded_expunged(s: Driver) -> None:
    """:func:`guarded_copied`, flagged, checked: the EXPUNGE is out."""
    guarded_copied(s)
    s.answer(b"+FLAGS", b"OK")
    s.answer(b"NOOP", b"OK")
    assert s.upstream(b"* SEARCH 12\r\n" + s.tagged(b"SEARCH", b"OK")) == b"EXPUNGE\r\n"


def test_guarded_move_reports_messages_the_expunge_did_not_remove():
    s = guarded_script()
    guarded_expunged(s)
    assert s.answer(b"EXPUNGE", b"OK") == b"UID FETCH 1:* (UID)\r\n"  # nothing expunged
    s.upstream(b"* 1 FETCH (UID 3)\r\n* 2 FETCH (UID 12)\r\n" + s.tagged(b"1:*", b"OK"))
    reply = s.seen()
    assert reply.startswith(b"c NO MOVE incomplete:") and b"UIDs 12 were not expunged" in reply


def test_guarded_move_whose_final_check_fails_reports_what_the_expunge_did():
    s = guarded_script()
    guarded_expunged(s)
    s.upstream(b"* 2 EXPUNGE\r\n" + s.tagged(b"EXPUNGE", b"OK"))
    s.upstream(b"* 2 FETCH (UID 12)\r\n" + s.tagged(b"1:*", b"NO Too busy"))  # partial, failed
    assert s.seen().endswith(b"c OK Move completed.\r\n")
