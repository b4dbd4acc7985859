"""After a MOVE failed half-way (imapmoveproxy/move/recovery.py): the flags undone, the
check of what is left, the copies handed to a second session, and the reply that names what is
where. Driven by tests/driver.py; tests/unit/test_rollback.py drives the second session itself."""

from __future__ import annotations

import pytest
from driver import Driver, copied, started

from imapmoveproxy.engine.session import SessionSettings


def test_failed_flagging_is_rolled_back_through_a_second_session(script: Driver):
    copied(script, already_deleted=b"ALL 11")
    assert script.answer(b"+FLAGS", b"NO [NOPERM] Permission denied") == (
        b"UID STORE 10 -FLAGS.SILENT (\\Deleted)\r\n"  # 11 was flagged by the user
    )
    assert script.answer(b"-FLAGS", b"OK") == b"UID FETCH 10:11 (UID FLAGS)\r\n"
    script.upstream(b"* 1 FETCH (UID 10 FLAGS ())\r\n* 2 FETCH (UID 11 FLAGS (\\Deleted))\r\n")
    assert script.answer(b"UID FETCH", b"OK") == b""
    rollback = script.take_rollback()
    assert rollback is not None and script.take_rollback() is None  # handed out once
    request, credentials = rollback
    # only the copy of 10: 11 carries \Deleted and may be expunged from the source any moment
    assert (request.mailbox, request.uidvalidity, request.uids) == (b"Trash", b"7", (20,))
    assert (credentials.user, credentials.password) == (b"user", b"pass")
    assert b"pass" not in repr(credentials).encode()
    assert script.seen() == b""  # nothing of the proxy's own commands reaches the client
    script.session.rollback_finished(None)
    script.client(b"")
    assert script.seen() == (
        b"c NO [NOPERM] MOVE incomplete: the messages were copied to the target, but removing "
        b"them from the source failed (flag: Permission denied). UIDs 11 are in both mailboxes "
        b"(copies: UIDs 21); none was lost.\r\n"
    )
    assert script.take_finished_moves()[0].rollback == "done"


def flagging_refused(script: Driver, status: bytes = b"NO [NOPERM] Permission denied") -> None:
    """After :func:`copied`: the STORE of \\Deleted refused, its undo done, the check sent."""
    script.answer(b"+FLAGS", status)
    script.answer(b"-FLAGS", b"OK")


def test_copies_gone_from_the_target_before_the_rollback_are_named(script: Driver):
    copied(script)
    flagging_refused(script)
    script.upstream(
        b"* 1 FETCH (UID 10 FLAGS ())\r\n* 2 FETCH (UID 11 FLAGS ())\r\n"
        + script.tagged(b"UID FETCH", b"OK")
    )
    request, _ = script.take_rollback() or pytest.fail("no rollback")
    assert request.uids == (20, 21)
    script.session.rollback_finished(None, frozenset({21}))  # another session took 21 away
    script.client(b"")
    assert script.seen() == (
        b"c NO [NOPERM] MOVE incomplete: the messages were copied to the target, but removing "
        b"them from the source failed (flag: Permission denied). The copies of UIDs 11 had left "
        b"the target before they could be removed (another session moved or deleted them), so "
        b"those messages may exist twice; none was lost.\r\n"
    )
    assert script.take_finished_moves()[0].duplicates == 1


def test_partial_expunge_is_rolled_back_for_the_messages_left(script: Driver):
    copied(script)
    assert script.answer(b"+FLAGS", b"OK") == b"UID EXPUNGE 10:11\r\n"
    # one EXPUNGE for two messages
    script.upstream(b"* 1 EXPUNGE\r\n" + script.tagged(b"UID EXPUNGE", b"OK"))
    assert script.answer(b"+FLAGS", b"OK") == b"UID EXPUNGE 10:11\r\n"  # once more
    sent = script.answer(b"UID EXPUNGE", b"OK")  # and still one: give up
    assert sent == b"UID STORE 10:11 -FLAGS.SILENT (\\Deleted)\r\n"
    assert script.answer(b"-FLAGS", b"OK") == b"UID FETCH 10:11 (UID FLAGS)\r\n"
    script.upstream(b"* 1 FETCH (UID 11 FLAGS (\\Seen))\r\n" + script.tagged(b"UID FETCH", b"OK"))
    request, _ = script.take_rollback() or pytest.fail("no rollback")
    assert request.uids == (21,) and request.sources == (11,)
    assert script.client(b"d NOOP\r\n") == b""  # held behind the MOVE
    script.session.rollback_finished(None)
    assert script.client(b"") == b"d NOOP\r\n"
    assert script.seen() == (
        b"* 1 EXPUNGE\r\nc NO MOVE failed (expunge: UIDs 11 were not expunged): 1 of 2 "
        b"messages were moved, the others are unaffected.\r\n"
    )


def test_expunge_responses_of_other_sessions_do_not_hide_a_message_left_behind(script: Driver):
    copied(script)
    script.answer(b"+FLAGS", b"OK")
    script.upstream(
        b"* 1 EXPUNGE\r\n* 3 EXPUNGE\r\n* 1 EXPUNGE\r\n" + script.tagged(b"UID EXPUNGE", b"OK")
    )
    script.answer(b"+FLAGS", b"OK")  # three EXPUNGEs for two messages: once more,
    sent = script.answer(b"UID EXPUNGE", b"OK")  # then check which are left
    assert b"-FLAGS" in sent
    assert script.answer(b"-FLAGS", b"OK") == b"UID FETCH 10:11 (UID FLAGS)\r\n"
    script.answer(b"UID FETCH", b"OK")  # neither is left
    assert script.seen().endswith(b"* 1 EXPUNGE\r\nc OK Move completed.\r\n")


@pytest.mark.parametrize("error", ["connection refused", None])
def test_without_a_working_second_session_the_duplicates_are_named(error: str | None):
    rollback = "client" if error else "off"
    s = started(settings=SessionSettings(rollback=rollback))
    copied(s)
    flagging_refused(s, b"NO [NOPERM] Denied")
    s.upstream(
        b"* 1 FETCH (UID 10 FLAGS ())\r\n* 2 FETCH (UID 11 FLAGS ())\r\n"
        + s.tagged(b"UID FETCH", b"OK")
    )
    if error:
        s.take_rollback()
        s.session.rollback_finished(error)
    else:
        assert s.take_rollback() is None  # no credentials kept
    s.client(b"")
    reply = s.seen()
    assert reply.startswith(b"c NO [NOPERM] MOVE incomplete:")
    assert b"UIDs 10:11 are in both mailboxes (copies: UIDs 20:21)" in reply
    assert b"none was lost" in reply
    finished = s.take_finished_moves()[0]
    assert (finished.rollback, finished.duplicates) == ("failed" if error else "impossible", 2)


def test_when_the_check_fails_nothing_is_removed_from_the_target(script: Driver):
    copied(script)
    flagging_refused(script, b"NO Denied")
    script.answer(b"UID FETCH", b"BAD Something")
    assert script.take_rollback() is None
    assert b"could not be checked" in script.seen()
