"""The guarded policy for an upstream without UIDPLUS (imapmoveproxy/move/guarded.py): other
messages' \\Deleted cleared around a plain EXPUNGE and restored, the flags recorded and checked
by a second session before the MOVE's tagged OK. Driven by tests/driver.py."""

from __future__ import annotations

import logging

import pytest
from driver import Driver, started

from imapmoveproxy.engine.session import SessionSettings
from imapmoveproxy.metrics import Metrics
from imapmoveproxy.move.copyflags import Copied, FlagCheckRequest, Result


def guarded_script(rollback: str = "client") -> Driver:
    settings = SessionSettings(guarded=True, rollback=rollback)
    return started(caps=b"IMAP4rev1 LITERAL+", settings=settings)


def test_guarded_move_clears_and_restores_other_deleted_flags():
    s = guarded_script()
    # no COPYUID will say what a COPY took: it only names UIDs listed in the client's set
    # and the target's UIDNEXT, then the flags of what it copies (for a check after the COPY),
    # behind a NOOP that tells the session what other sessions expunged (so it is not copied)
    assert s.client(b"c MOVE 2 Trash\r\n") == (
        b"FETCH 2 (UID)\r\nSTATUS Trash (UIDNEXT UIDVALIDITY MESSAGES)\r\n"
    )
    status = b"* STATUS Trash (UIDNEXT 40 UIDVALIDITY 9 MESSAGES 3)\r\n"
    status += s.tagged(b"STATUS", b"OK")
    assert s.upstream(b"* 2 FETCH (UID 12)\r\n" + s.tagged(b"(UID)", b"OK") + status) == (
        b"NOOP\r\nUID FETCH 12 (UID FLAGS INTERNALDATE)\r\nUID COPY 12 Trash\r\n"
    )
    flags = b'* 2 FETCH (UID 12 FLAGS (\\Seen \\Recent) INTERNALDATE "1-Jan-2026 10:00:00 +0000")'
    copy = s.tagged(b"NOOP", b"OK")
    copy += flags + b"\r\n" + s.tagged(b"INTERNALDATE", b"OK") + s.tagged(b"COPY", b"OK Copied")
    assert s.upstream(copy) == b"NOOP\r\n"
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
    assert s.seen() == b"* 2 EXPUNGE\r\n"  # nothing of STATUS, FETCH; no tagged reply yet
    # the copy's \Seen is checked (and put back) by a second session before the tagged OK
    check = s.take_flag_check()
    assert check is not None and s.take_flag_check() is None  # handed out once
    request, credentials = check
    assert request == FlagCheckRequest(
        b"Trash", b"9", 40, (Copied(b"1-Jan-2026 10:00:00 +0000", frozenset({b"\\Seen"})),), True
    )
    assert credentials.user == b"user"
    s.session.flag_check_finished(Result.RESTORED, "")
    assert s.seen() == b"c OK Move completed.\r\n"
    assert s.take_finished_moves()[0].flags == "restored"


SEEN_12 = b'* 2 FETCH (UID 12 FLAGS (\\Seen) INTERNALDATE "1-Jan-2026 10:00:00 +0000")\r\n'


def guarded_copied(s: Driver, flags: bytes = b"") -> None:
    """``c UID MOVE 12 Trash`` of a guarded script (12 carrying the ``flags`` of its FETCH
    response, if given): copied, no other \\Deleted found; the STORE of \\Deleted on 12 is
    out."""
    assert s.client(b"c UID MOVE 12 Trash\r\n").startswith(b"NOOP\r\nUID FETCH 12 (UID)\r\n")
    sent = s.upstream(
        s.tagged(b"NOOP", b"OK") + b"* 2 FETCH (UID 12)\r\n" + s.tagged(b"(UID)", b"OK")
        + b"* STATUS Trash (UIDNEXT 40 UIDVALIDITY 9 MESSAGES 3)\r\n" + s.tagged(b"STATUS", b"OK")
    )  # fmt: skip
    assert sent == b"UID FETCH 12 (UID FLAGS INTERNALDATE)\r\nUID COPY 12 Trash\r\n"  # one NOOP
    s.upstream(flags + s.tagged(b"INTERNALDATE", b"OK") + s.tagged(b"COPY", b"OK Copied"))
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


def guarded_expunged(s: Driver, flags: bytes = b"") -> None:
    """:func:`guarded_copied`, flagged, checked: the EXPUNGE is out."""
    guarded_copied(s, flags)
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


def guarded_moved(s: Driver) -> None:
    """:func:`guarded_expunged` of 12, which was \\Seen: expunged and checked; the copy's
    flags wait for a second session."""
    guarded_expunged(s, SEEN_12)
    s.upstream(b"* 2 EXPUNGE\r\n" + s.tagged(b"EXPUNGE", b"OK"))
    s.upstream(b"* 1 FETCH (UID 11)\r\n" + s.tagged(b"1:*", b"OK"))


def test_flags_a_second_session_could_not_put_back_are_named_in_the_tagged_ok(caplog):
    s = guarded_script()
    guarded_moved(s)
    assert s.client(b"d NOOP\r\n") == b""  # held behind the MOVE, which waits for the check
    assert s.seen() == b"* 2 EXPUNGE\r\n"
    assert not s.session.move_waits_for_upstream  # waits for the second session, not a reply
    assert s.take_flag_check() is not None
    with caplog.at_level(logging.INFO):
        s.session.flag_check_finished(Result.LOST, "the flags did not take on UIDs 40")
    assert s.sent() == b"d NOOP\r\n"
    assert s.seen() == (
        b"c OK Move completed, but the moved messages lost their flags (the flags did not take "
        b"on UIDs 40).\r\n"
    )
    (line,) = [record for record in caplog.records if "outcome=moved" in record.getMessage()]
    assert line.levelno == logging.WARNING
    assert line.getMessage().endswith(" flags=lost (the flags did not take on UIDs 40)")
    (finished,) = s.take_finished_moves()
    metrics = Metrics()
    metrics.move_done(finished, None)
    lost = {"result": "lost"}
    assert metrics.registry.get_sample_value("imapmoveproxy_copy_flags_total", lost) == 1


def test_flags_kept_by_the_copy_need_no_word_in_the_tagged_ok(caplog):
    s = guarded_script()
    guarded_moved(s)
    s.take_flag_check()
    with caplog.at_level(logging.INFO):
        s.session.flag_check_finished(Result.KEPT, "")
    assert s.seen() == b"* 2 EXPUNGE\r\nc OK Move completed.\r\n"
    (line,) = [record for record in caplog.records if "outcome=moved" in record.getMessage()]
    assert line.levelno == logging.INFO and line.getMessage().endswith(" flags=kept")


@pytest.mark.parametrize(
    ("rollback", "why"),
    [("off", b"second sessions are off"), ("client", b"no login to replay for a second session")],
)
def test_without_a_second_session_the_move_is_answered_at_once_flags_unknown(rollback, why):
    if rollback == "off":
        s = guarded_script(rollback)
    else:  # logged in before the proxy saw it: no password to replay
        s = Driver(SessionSettings(guarded=True))
        s.upstream(b"* PREAUTH [CAPABILITY IMAP4rev1 LITERAL+] Logged in as user\r\n")
        s.client(b"b SELECT INBOX\r\n")
        s.upstream(b"* 5 EXISTS\r\nb OK [READ-WRITE] Selected\r\n")
        s.seen()
    guarded_moved(s)
    assert s.take_flag_check() is None
    assert s.seen() == (
        b"* 2 EXPUNGE\r\nc OK Move completed, but the moved messages may have lost their flags ("
        + why
        + b").\r\n"
    )
    assert s.take_finished_moves()[0].flags == "unknown"
