"""The sans-IO session and MOVE translator, driven with scripted upstream replies.

These tests play the upstream by hand, which is the only way to produce every failure at every
step on demand; tests/test_proxy_dovecot.py checks the same behaviour against a real Dovecot.
"""

from __future__ import annotations

import pytest
from driver import CAPS, GREETING, Driver, logged_in, started
from hypothesis import given, settings
from hypothesis import strategies as st

from imapmoveproxy.engine.channel import TAG_PREFIX
from imapmoveproxy.engine.session import Session, SessionSettings
from imapmoveproxy.move.copyflags import Copied, FlagCheckRequest
from imapmoveproxy.wire.grammar import expand_uid_set


@pytest.fixture
def script() -> Driver:
    return started()


def test_login_capabilities_gain_move_and_lose_what_the_proxy_cannot_honour():
    s = logged_in()
    seen = s.seen()
    assert GREETING in seen  # no UIDPLUS before login: nothing added, like a native server
    login_ok = seen.split(b"\r\n")[1]
    assert login_ok.startswith(b"a OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS CONDSTORE")
    assert b" MOVE" in login_ok
    assert b"COMPRESS" not in login_ok and b"-PLUS" not in login_ok


def test_upstream_with_native_move_is_passed_through_untouched():
    s = started(caps=b"IMAP4rev1 UIDPLUS MOVE")
    assert s.client(b"c UID MOVE 1:3 Trash\r\n") == b"c UID MOVE 1:3 Trash\r\n"
    s.upstream(b"* OK [COPYUID 1 1:3 4:6] Moved\r\n* 1 EXPUNGE\r\nc OK Move completed\r\n")
    assert s.seen() == b"* OK [COPYUID 1 1:3 4:6] Moved\r\n* 1 EXPUNGE\r\nc OK Move completed\r\n"


def test_upstream_with_imap4rev2_needs_no_emulation():
    s = logged_in(caps=b"IMAP4rev2 IMAP4rev1")
    assert b"MOVE" not in s.seen()  # MOVE is part of IMAP4rev2 itself
    assert s.client(b"c MOVE 1 Trash\r\n") == b"c MOVE 1 Trash\r\n"


def test_successful_move_shows_only_what_a_native_server_sends(script: Driver):
    sent = script.client(b"c MOVE 1:2 Trash\r\n")
    assert sent == b"FETCH 1:2 (UID)\r\nUID SEARCH RETURN (ALL) 1:2 DELETED\r\nCOPY 1:2 Trash\r\n"
    sent = script.upstream(
        b"* 1 FETCH (UID 10)\r\n* 2 FETCH (UID 11)\r\n" + script.tagged(b"(UID)", b"OK done")
        + script.esearch(b"DELETED") + script.tagged(b"DELETED", b"OK")
        + script.tagged(b"COPY", b"OK [COPYUID 7 10:11 20:21] Copy completed")
    )  # fmt: skip
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
    assert sent == (
        b"UID SEARCH RETURN (ALL) UID 10:*\r\n"
        b"UID SEARCH RETURN (ALL) UID 10:* DELETED\r\nUID COPY 10:* Trash\r\n"
    )
    listed = script.esearch(b"UID 10:*\r\n", b"ALL 10:12") + script.tagged(b"UID 10:*\r\n", b"OK")
    assert script.upstream(listed) == b""


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
    sent = script.upstream(
        b"* 1 FETCH (UID 10)\r\n" + script.tagged(b"(UID)", b"OK")
        + script.tagged(b"DELETED", b"OK") + script.tagged(b"COPY", status)
    )  # fmt: skip
    assert sent == b""  # no STORE, no EXPUNGE
    assert script.seen() == b"c " + status + b"\r\n"


def test_only_messages_the_upstream_confirmed_copied_are_flagged(script: Driver):
    script.client(b"c UID MOVE 1:* Trash\r\n")
    # the range covers UID 12 too, delivered meanwhile, but COPYUID names only 10 and 11
    sent = script.upstream(
        script.esearch(b"UID 1:*\r\n", b"ALL 10:11") + script.tagged(b"UID 1:*\r\n", b"OK")
        + script.tagged(b"DELETED", b"OK") + b"* 3 EXISTS\r\n"
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
    sent = script.upstream(
        b"* 2 FETCH (UID 12)\r\n* 4 FETCH (UID 14)\r\n" + script.tagged(b"(UID)", b"OK")
        + script.tagged(b"DELETED", b"OK") + script.tagged(b"COPY", b"OK [UIDNOTSTICKY] Done")
    )  # fmt: skip
    assert b"UID STORE 12,14 " in sent
    assert b"COPYUID" not in script.seen()  # never invented


def copied(script: Driver, already_deleted: bytes = b"") -> None:
    """Answer the start of ``c MOVE 1:2 Trash``: UIDs 10 and 11, copied as 20 and 21."""
    script.client(b"c MOVE 1:2 Trash\r\n")
    script.upstream(
        b"* 1 FETCH (UID 10)\r\n* 2 FETCH (UID 11)\r\n" + script.tagged(b"(UID)", b"OK")
        + script.esearch(b"DELETED", already_deleted) + script.tagged(b"DELETED", b"OK")
        + script.tagged(b"COPY", b"OK [COPYUID 7 10:11 20:21] Done")
    )  # fmt: skip
    script.seen()


def test_failed_flagging_is_rolled_back_through_a_second_session(script: Driver):
    copied(script, already_deleted=b"ALL 11")
    assert script.answer(b"+FLAGS", b"NO [NOPERM] Permission denied") == (
        b"UID STORE 10 -FLAGS.SILENT (\\Deleted)\r\n"  # 11 was flagged by the user
    )
    assert script.answer(b"-FLAGS", b"OK") == b"UID FETCH 10:11 (UID FLAGS)\r\n"
    script.upstream(b"* 1 FETCH (UID 10 FLAGS ())\r\n* 2 FETCH (UID 11 FLAGS (\\Deleted))\r\n")
    assert script.answer(b"UID FETCH", b"OK") == b""
    rollback = script.session.take_rollback()
    assert rollback is not None and script.session.take_rollback() is None  # handed out once
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
    assert script.session.take_finished_moves()[0].rollback == "done"


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
    request, _ = script.session.take_rollback() or pytest.fail("no rollback")
    assert request.uids == (20, 21)
    script.session.rollback_finished(None, frozenset({21}))  # another session took 21 away
    script.client(b"")
    assert script.seen() == (
        b"c NO [NOPERM] MOVE incomplete: the messages were copied to the target, but removing "
        b"them from the source failed (flag: Permission denied). The copies of UIDs 11 had left "
        b"the target before they could be removed (another session moved or deleted them), so "
        b"those messages may exist twice; none was lost.\r\n"
    )
    assert script.session.take_finished_moves()[0].duplicates == 1


def test_a_message_an_expunge_left_behind_is_flagged_and_expunged_once_more(script: Driver):
    copied(script)
    assert script.answer(b"+FLAGS", b"OK") == b"UID EXPUNGE 10:11\r\n"
    # one EXPUNGE for two messages
    sent = script.upstream(b"* 1 EXPUNGE\r\n" + script.tagged(b"UID EXPUNGE", b"OK"))
    assert sent == b"UID STORE 10:11 +FLAGS.SILENT (\\Deleted)\r\n"
    assert script.answer(b"+FLAGS", b"OK") == b"UID EXPUNGE 10:11\r\n"
    script.upstream(b"* 1 EXPUNGE\r\n" + script.tagged(b"UID EXPUNGE", b"OK"))
    assert script.seen() == b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nc OK Move completed.\r\n"


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
    request, _ = script.session.take_rollback() or pytest.fail("no rollback")
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
        s.session.take_rollback()
        s.session.rollback_finished(error)
    else:
        assert s.session.take_rollback() is None  # no credentials kept
    s.client(b"")
    reply = s.seen()
    assert reply.startswith(b"c NO [NOPERM] MOVE incomplete:")
    assert b"UIDs 10:11 are in both mailboxes (copies: UIDs 20:21)" in reply
    assert b"none was lost" in reply
    finished = s.session.take_finished_moves()[0]
    assert (finished.rollback, finished.duplicates) == ("failed" if error else "impossible", 2)


def test_when_the_check_fails_nothing_is_removed_from_the_target(script: Driver):
    copied(script)
    flagging_refused(script, b"NO Denied")
    script.answer(b"UID FETCH", b"BAD Something")
    assert script.session.take_rollback() is None
    assert b"could not be checked" in script.seen()


def login_script(login: bytes, settings: SessionSettings | None = None) -> Session:
    s = Session(settings)
    s.receive_upstream(GREETING)
    s.receive_client(login)
    if b"AUTHENTICATE PLAIN\r\n" in login:
        s.receive_upstream(b"+ \r\n")
        s.receive_client(b"AHVzZXIAcGFzcw==\r\n")
    s.receive_upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n")
    return s


@pytest.mark.parametrize(
    "login",
    [
        b"a LOGIN {4+}\r\nuser {4+}\r\npass\r\n",
        b'a LOGIN "user" pass\r\n',
        b"a AUTHENTICATE PLAIN AHVzZXIAcGFzcw==\r\n",
        b"a AUTHENTICATE PLAIN\r\n",
    ],
)
def test_credentials_of_login_and_authenticate_plain_are_kept_for_a_rollback(login: bytes):
    assert kept(login_script(login)) == (b"user", b"user", b"pass")


def test_a_master_user_logs_in_for_the_clients_user_and_the_password_is_not_kept():
    settings = SessionSettings(rollback="master", rollback_master=(b"admin", b"secret"))
    assert kept(login_script(b"a LOGIN user pass\r\n", settings)) == (b"user", b"admin", b"secret")


def kept(session: Session) -> tuple[bytes, bytes, bytes]:
    """(user, login, password) the session keeps for a rollback's second session."""
    credentials = session.credentials
    assert credentials is not None
    return credentials.user, credentials.login, credentials.password


def test_refused_logins_leave_no_credentials():
    s = Session()
    s.receive_upstream(GREETING)
    s.receive_client(b"a LOGIN user wrong\r\n")
    s.receive_upstream(b"a NO [AUTHENTICATIONFAILED] Nope\r\n")
    assert s.credentials is None


def test_a_login_reusing_a_tag_in_flight_waits_and_cannot_take_the_other_commands_ok():
    """``a NOOP`` and ``a LOGIN bob wrong`` pipelined: the NOOP's ``a OK`` must not pass for
    bob's login, and a later AUTHENTICATE the proxy cannot capture must not inherit bob."""
    s = Session()
    s.receive_upstream(GREETING)
    s.receive_client(b"a NOOP\r\na LOGIN bob wrong\r\n")
    assert s.take_to_upstream() == b"a NOOP\r\n"  # the LOGIN waits for the tag to be free
    s.receive_upstream(b"a OK NOOP completed\r\n")
    assert s.take_to_upstream() == b"a LOGIN bob wrong\r\n"
    assert not s.authenticated and s.credentials is None
    s.receive_upstream(b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    assert not s.authenticated and s.credentials is None
    s.receive_client(b"b AUTHENTICATE LOGIN\r\n")
    s.receive_upstream(b"+ VXNlcm5hbWU6\r\n")
    s.receive_client(b"YWxpY2U=\r\n")
    s.receive_upstream(b"+ UGFzc3dvcmQ6\r\n")
    s.receive_client(b"cGFzcw==\r\n")
    s.receive_upstream(b"b OK Logged in\r\n")
    assert s.authenticated and s.credentials is None
    assert b"a NO" in s.take_to_client()


def test_commands_reusing_the_tag_of_a_login_in_flight_wait_for_its_reply():
    s = Session()
    s.receive_upstream(GREETING)
    s.receive_client(b"a LOGIN user pass\r\na NOOP\r\nb NOOP\r\n")
    assert s.take_to_upstream() == b"a LOGIN user pass\r\n"  # b waits behind a's NOOP too
    s.receive_upstream(b"a OK Logged in\r\n")
    assert s.take_to_upstream() == b"a NOOP\r\nb NOOP\r\n"
    assert kept(s) == (b"user", b"user", b"pass")


def acl_script() -> Driver:
    return started(caps=CAPS + b" ACL RIGHTS=texk")


def listed(s: Driver, copy: bytes) -> bytes:
    """The OKs to the two listing commands of a MOVE (no UID), then ``copy`` to its COPY."""
    return s.tagged(b"(UID)", b"OK") + s.tagged(b"DELETED", b"OK") + s.tagged(b"COPY", copy)


def test_rights_are_checked_before_anything_is_touched_and_cached_per_mailbox():
    s = acl_script()
    assert s.client(b"c MOVE 1 Trash\r\n") == b"MYRIGHTS INBOX\r\n"
    assert s.upstream(b"* MYRIGHTS INBOX lrswi\r\n" + s.tagged(b"MYRIGHTS", b"OK")) == b""
    assert s.seen() == (
        b"c NO [NOPERM] Permission denied: messages cannot be removed from this mailbox "
        b"(rights: lrswi).\r\n"
    )
    assert s.client(b"d MOVE 1 Trash\r\n") == b"MYRIGHTS INBOX\r\n"  # not cached
    sent = s.upstream(b'* MYRIGHTS "INBOX" lrswipkxtecda\r\n' + s.tagged(b"MYRIGHTS", b"OK"))
    assert b"\r\nCOPY 1 Trash\r\n" in sent
    s.upstream(listed(s, b"OK [COPYUID 7 1 1] Done"))
    s.answer(b"+FLAGS", b"OK")
    s.upstream(b"* 1 EXPUNGE\r\n" + s.tagged(b"UID EXPUNGE", b"OK"))
    assert s.seen().endswith(b"d OK Move completed.\r\n")
    assert b"MYRIGHTS" not in s.client(b"e MOVE 1 Trash\r\n")  # cached for this selection
    s.upstream(listed(s, b"NO No"))
    s.client(b"f SELECT Other\r\n")
    s.upstream(b"f OK [READ-WRITE] Selected\r\n")
    assert s.client(b"g MOVE 1 Trash\r\n") == b"MYRIGHTS Other\r\n"  # a new selection


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
        b"UID SEARCH RETURN (ALL) UID 1:*\r\nUID SEARCH RETURN (ALL) UID 1:* DELETED\r\n"
    )
    sent = s.upstream(
        s.esearch(b"UID 1:*\r\n", b"ALL 3:7") + s.tagged(b"UID 1:*\r\n", b"OK")
        + s.tagged(b"DELETED", b"OK")
    )  # fmt: skip
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
    s.upstream(
        s.esearch(b"UID 1:*\r\n", b"ALL 3:7") + s.tagged(b"UID 1:*\r\n", b"OK")
        + s.tagged(b"DELETED", b"OK")
    )  # fmt: skip
    s.answer(b"UID COPY", b"NO [OVERQUOTA] Quota exceeded")
    assert s.seen() == b"c NO [OVERQUOTA] Quota exceeded\r\n"


def test_a_move_of_any_size_goes_in_chunks():
    """Issue 12 defect 7: the listing of 1.5 million UIDs ended the connection ("set too
    large"). Scripted: a real server with 1.5 million messages is too slow to build."""
    s = started(settings=SessionSettings(chunk_size=1000))
    s.upstream(b"* 1500000 EXISTS\r\n")
    s.client(b"c UID MOVE 1:* Trash\r\n")
    sent = s.upstream(
        s.esearch(b"UID 1:*\r\n", b"ALL 1:1500000") + s.tagged(b"UID 1:*\r\n", b"OK")
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
        b"* 2 FETCH (UID 11)\r\n* 3 FETCH (UID 12)\r\n"
        + s.tagged(b"(UID)", b"OK") + s.tagged(b"DELETED", b"OK")
    )  # fmt: skip
    assert sent == b"UID COPY 10:11 Trash\r\n"
    assert s.seen() == b"* 4 FETCH (UID 14 MODSEQ (9) FLAGS (\\Flagged))\r\n"
    assert move_chunk(s, b"10:11", b"1:2") == b"UID COPY 12 Trash\r\n"


def test_copyuid_naming_uids_outside_the_set_ends_the_move_and_removes_the_copies(
    script: Driver,
):
    script.client(b"c UID MOVE 5 Trash\r\n")
    sent = script.upstream(
        script.esearch(b"UID 5\r\n", b"ALL 5") + script.tagged(b"UID 5\r\n", b"OK")
        + script.tagged(b"DELETED", b"OK")
        + script.tagged(b"COPY", b"OK [COPYUID 7 5:6 20:21] Done")
    )  # fmt: skip
    assert sent == b"UID FETCH 5:6 (UID FLAGS)\r\n"  # nothing flagged, only checked
    script.upstream(
        b"* 1 FETCH (UID 5 FLAGS ())\r\n* 2 FETCH (UID 6 FLAGS ())\r\n"
        + script.tagged(b"UID FETCH", b"OK")
    )
    rollback = script.session.take_rollback()
    assert rollback is not None and rollback[0].uids == (20, 21)
    script.session.rollback_finished(None)
    script.sent()
    reply = script.seen()
    assert reply.startswith(b"c NO [SERVERBUG] MOVE failed (set-check: the server named UIDs 6")
    assert reply.endswith(b"0 of 2 messages were moved, the others are unaffected.\r\n")


def test_small_moves_cost_no_extra_round_trip_with_chunks():
    s = chunk_script()
    assert b"COPY 1:2 Trash" in s.client(b"c MOVE 1:2 Trash\r\n")


def test_unsolicited_responses_from_other_sessions_are_relayed_in_order(script: Driver):
    script.client(b"c UID MOVE 10 Trash\r\n")
    script.upstream(
        script.esearch(b"UID 10\r\n", b"ALL 10") + b"* 3 FETCH (FLAGS (\\Seen) UID 13)\r\n"
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
    script.upstream(
        script.tagged(b"UID 10\r\n", b"OK") + script.tagged(b"DELETED", b"OK")
        + script.tagged(b"COPY", b"OK [COPYUID 7 10 20] Done")
    )  # fmt: skip
    script.answer(b"+FLAGS", b"OK")
    script.upstream(
        b"* VANISHED 10\r\n" + script.tagged(b"UID EXPUNGE", b"OK [HIGHESTMODSEQ 99] Expunged")
    )
    assert script.seen().endswith(b"* VANISHED 10\r\nc OK [HIGHESTMODSEQ 99] Move completed.\r\n")


def test_move_waits_for_earlier_commands_and_holds_later_ones(script: Driver):
    assert (
        script.client(b"c FETCH 1 FLAGS\r\nd MOVE 1 Trash\r\ne NOOP\r\n") == b"c FETCH 1 FLAGS\r\n"
    )
    sent = script.upstream(b"* 1 FETCH (FLAGS ())\r\nc OK Fetch\r\n")
    assert sent.startswith(b"FETCH 1 (UID)\r\n") and b"\r\nCOPY 1 Trash\r\n" in sent
    assert script.client(b"f NOOP\r\n") == b""  # still held
    sent = script.upstream(b"* 1 FETCH (UID 3)\r\n" + listed(script, b"NO [TRYCREATE] No mailbox"))
    assert sent == b"e NOOP\r\nf NOOP\r\n"
    assert script.seen() == b"* 1 FETCH (FLAGS ())\r\nc OK Fetch\r\nd NO [TRYCREATE] No mailbox\r\n"


@pytest.mark.parametrize(
    ("mailbox", "encoded"),
    [
        (b"{13}\r\nfoo\r\nbar NOOP\r\n", b"{13+}\r\nfoo\r\nbar NOOP\r\n"),
        (b'"a \\"b\\""\r\n', b'"a \\"b\\""\r\n'),
        (b"{3+}\r\nabc\r\n", b"abc\r\n"),
    ],
)
def test_mailbox_names_are_re_encoded_so_they_cannot_inject_commands(script, mailbox, encoded):
    sent = script.client(b"c MOVE 1 " + mailbox)
    assert sent.endswith(b"\r\nCOPY 1 " + encoded)


def test_synchronizing_literal_mailbox_gets_a_continuation_from_the_proxy(script: Driver):
    assert script.client(b"c MOVE 1 {5}\r\n") == b""
    assert script.seen() == b"+ Ready for literal data\r\n"
    assert script.client(b"Trash\r\n").endswith(b"\r\nCOPY 1 Trash\r\n")


def test_upstream_without_literal_plus_gets_a_synchronizing_literal():
    s = started(caps=b"IMAP4rev1 UIDPLUS")
    sent = s.client(b'c MOVE 1 "caf\xc3\xa9"\r\n')
    assert sent.endswith(b"\r\nCOPY 1 {5}\r\n")
    assert s.upstream(b"+ go ahead\r\n") == b"caf\xc3\xa9\r\n"
    assert s.seen() == b""  # the upstream's "+" was for the proxy


@pytest.mark.parametrize(
    "command",
    [
        b"c MOVE\r\n",
        b"c MOVE 1\r\n",
        b"c MOVE x Trash\r\n",
        b"c MOVE 1 Trash extra\r\n",
        b"c MOVE 0 Trash\r\n",
        b'c MOVE 1 "unterminated\r\n',
        b"c UID MOVE 1: Trash\r\n",
    ],
)
def test_bad_move_syntax_gets_bad_and_nothing_is_sent(script: Driver, command: bytes):
    assert script.client(command) == b""
    assert script.seen().startswith(b"c BAD ")


def test_move_with_unknown_capabilities_asks_the_upstream_first():
    s = Driver(lock_by_hand=True)
    s.upstream(GREETING)
    s.client(b"a LOGIN u p\r\n")
    s.upstream(b"a OK Logged in\r\n")  # no capability list after login
    s.client(b"b MOVE 1 Trash\r\n")
    assert s.session.move_ready
    s.session.start_move()
    assert s.sent() == b"CAPABILITY\r\n"
    s.seen()
    sent = s.upstream(b"* CAPABILITY IMAP4rev1 MOVE UIDPLUS\r\n" + s.tagged(b"CAPABILITY", b"OK"))
    assert sent == b"b MOVE 1 Trash\r\n"  # native: forwarded as is
    assert s.seen() == b""  # the proxy's CAPABILITY is invisible
    s.upstream(b"b OK Move completed\r\n")
    assert s.seen() == b"b OK Move completed\r\n"


def test_move_pipelined_behind_login_is_not_sent_to_a_legacy_upstream():
    s = Session()
    s.receive_upstream(GREETING)
    sent = s.take_to_upstream()
    s.receive_client(b"a LOGIN u p\r\nb MOVE 1 Trash\r\n")
    sent = bytes(s.take_to_upstream())
    assert sent == b"a LOGIN u p\r\n"
    s.receive_upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n")
    assert s.move_ready
    s.start_move()
    assert b"MOVE" not in bytes(s.take_to_upstream())


def test_upstream_without_uidplus_gets_the_clients_move_unchanged():
    s = logged_in(caps=b"IMAP4rev1 LITERAL+")
    assert b"MOVE" not in s.seen()
    assert s.client(b"c MOVE 1 Trash\r\n") == b"c MOVE 1 Trash\r\n"


def test_compress_is_refused_and_not_forwarded(script: Driver):
    assert script.client(b"c COMPRESS DEFLATE\r\n") == b""
    assert script.seen().startswith(b"c NO ")


def test_authenticate_and_idle_data_lines_are_passed_as_data():
    s = Session()
    s.receive_upstream(GREETING)
    s.receive_client(b"a AUTHENTICATE PLAIN\r\n")
    s.receive_upstream(b"+ \r\n")
    s.receive_client(b"AHUAcA==\r\n")
    assert bytes(s.take_to_upstream()) == b"a AUTHENTICATE PLAIN\r\nAHUAcA==\r\n"
    s.receive_upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS IDLE] Logged in\r\n")
    s.receive_client(b"b IDLE\r\nDONE\r\nc NOOP\r\n")
    assert bytes(s.take_to_upstream()) == b"b IDLE\r\nDONE\r\nc NOOP\r\n"


def test_proxy_replies_never_land_inside_a_relayed_literal(script: Driver):
    script.client(b"c FETCH 1 BODY[]\r\n")
    script.upstream(b"* 1 FETCH (BODY[] {10}\r\nhello")
    script.client(b"d COMPRESS DEFLATE\r\n")
    script.upstream(b"world)\r\nc OK\r\n")
    assert script.seen() == (
        b"* 1 FETCH (BODY[] {10}\r\nhelloworld)\r\nd NO COMPRESS is not available through this "
        b"proxy.\r\nc OK\r\n"
    )


def test_large_uid_sets_are_split_into_short_commands():
    s = started(settings=SessionSettings(max_set_bytes=64))
    s.client(b"c UID MOVE 1:100 Trash\r\n")
    uids = b",".join(b"%d" % n for n in range(1, 100, 2))
    sent = s.upstream(
        s.tagged(b"UID 1:100\r\n", b"OK") + s.tagged(b"DELETED", b"OK")
        + s.tagged(b"COPY", b"OK [COPYUID 7 " + uids + b" 1:50] Done")
    )  # fmt: skip
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


def test_move_out_of_a_read_only_mailbox_is_refused_before_copying(script: Driver):
    script.client(b"e EXAMINE INBOX\r\n")
    script.upstream(b"* 5 EXISTS\r\ne OK [READ-ONLY] Examined\r\n")
    script.seen()
    assert script.client(b"c MOVE 1 Trash\r\n") == b""
    assert script.seen().startswith(b"c NO [READ-ONLY] ")
    script.client(b"s SELECT INBOX\r\n")
    script.upstream(b"s OK [READ-WRITE] Selected\r\n")
    assert b"COPY 1 Trash" in script.client(b"d MOVE 1 Trash\r\n")


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


RESPONSES = [
    b"* 1 FETCH (UID 7 FLAGS (\\Seen))\r\n",
    b"* 3 EXISTS\r\n",
    b"* 2 EXPUNGE\r\n",
    b"* 1 FETCH (BODY[] {13}\r\nline\r\n* BYE\r\n UID 3)\r\n",  # "* BYE" inside a literal is data
    b"* CAPABILITY IMAP4rev1 UIDPLUS COMPRESS=DEFLATE\r\n",
    b"* OK [UIDVALIDITY 42] UIDs valid\r\n",
    b"* SEARCH 1 2 3\r\n",
    b"* 4 FETCH (BODY[HEADER] {0}\r\n)\r\n",
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(RESPONSES), min_size=1, max_size=30),
    st.lists(st.integers(min_value=1, max_value=200), max_size=15),
)
def test_relayed_stream_is_the_same_however_the_upstream_splits_it(responses, cuts):
    """Fast path (runs of plain lines) and slow path together give the one right output."""
    stream = b"".join(responses)
    expected = stream.replace(
        b"UIDPLUS COMPRESS=DEFLATE\r\n", b"UIDPLUS MOVE\r\n"
    )  # the only rewrite
    whole = started()
    whole.upstream(stream)
    assert whole.seen() == expected
    pieces, start = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(stream[start:cut])
        start = cut
    pieces.append(stream[start:])
    split = started()
    for piece in pieces:
        split.upstream(piece)
    assert split.seen() == expected


def test_proxy_sends_the_clients_address_in_id_and_strips_the_clients_x_fields():
    s = Driver(
        SessionSettings(forward_id=True), addresses=(("192.0.2.7", 40001), ("10.0.0.1", 143))
    )
    # nothing before the greeting (and our ID)
    assert s.client(b'a ID ("x-originating-ip" "6.6.6.6" "name" "mutt")\r\n') == b""
    assert s.upstream(b"* OK [CAPABILITY IMAP4rev1 ID UIDPLUS] hi\r\n") == (
        b'ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "40001" '
        b'"x-connected-ip" "10.0.0.1" "x-connected-port" "143")\r\n'
        b'a ID ("name" "mutt")\r\n'
    )
    s.seen()
    s.upstream(
        b'* ID ("name" "Dovecot")\r\n' + s.tagged(b"x-originating-ip", b"OK ID done")
        + b'* ID ("name" "Dovecot")\r\na OK\r\n'
    )  # fmt: skip
    assert s.seen() == b'* ID ("name" "Dovecot")\r\na OK\r\n'


@pytest.mark.parametrize("forward_id", [True, False])
@pytest.mark.parametrize(
    "key", [b'"x-originating-ip"', b'"X\\-Originating-IP"', b'"\\x\\-\\o"', b'"x\\-"']
)
def test_the_clients_x_fields_are_removed_however_quoted_and_without_the_proxys_id(
    forward_id: bool, key: bytes
):
    """Issue 12, defect 6: a server trusting the proxy believes an x-originating-ip from the
    client too; it reads a quoted key unescaped, so the proxy must judge the key unescaped."""
    s = Session(SessionSettings(forward_id=forward_id), addresses=(("192.0.2.7", 1), ("::1", 2)))
    s.receive_upstream(b"* OK [CAPABILITY IMAP4rev1 ID] hi\r\n")
    s.take_to_upstream()
    s.receive_client(b"a ID (" + key + b' "6.6.6.6" "name" "x\\"y")\r\n')
    assert bytes(s.take_to_upstream()) == b'a ID ("name" "x\\"y")\r\n'


@pytest.mark.parametrize(
    "reply",
    [TAG_PREFIX + b"9 OK whatever\r\n", b"zz NO what\r\n", b"garbage without status\r\n", b"\r\n"],
)
def test_upstream_reply_the_proxy_cannot_place_ends_the_connection(script: Driver, reply: bytes):
    script.client(b"c NOOP\r\n")
    script.upstream(reply)
    assert script.seen() == b"* BYE The mail server misbehaved.\r\n"
    assert script.session.close_reason is not None


def test_login_timeout_only_before_authentication():
    s = Session()
    s.receive_upstream(GREETING)
    s.login_timed_out()
    assert s.close_reason == "no login in time"
    assert bytes(s.take_to_client()).endswith(b"* BYE Autologout: no login in time.\r\n")
    authenticated = logged_in()
    authenticated.session.login_timed_out()
    assert authenticated.session.close_reason is None


def test_an_overlong_upstream_line_ends_the_connection_without_holding_it_whole():
    s = started(settings=SessionSettings(max_upstream_line=4096))
    s.client(b"c FETCH 1 (FLAGS)\r\n")
    for _ in range(3):  # never ending: the session must not wait for (and keep) all of it
        s.upstream(b"* 1 FETCH (FLAGS (" + b"\\Flag " * 500)
    assert s.session.close_reason == "upstream line too long"
    assert s.seen().endswith(b"* BYE The mail server sent an overlong line.\r\n")
