"""Before a MOVE touches anything (imapmoveproxy/move/preflight.py): the rights on the
source and a read-only selection. Driven by tests/driver.py."""

from __future__ import annotations

from driver import CAPS, Driver, listed, started, synced


def acl_script() -> Driver:
    return started(caps=CAPS + b" ACL RIGHTS=texk")


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
    assert sent.startswith(b"FETCH 1 (UID)\r\n")
    assert s.upstream(b"* 1 FETCH (UID 1)\r\n" + listed(s)) == b"NOOP\r\nUID COPY 1 Trash\r\n"
    s.upstream(synced(s, b"OK [COPYUID 7 1 1] Done"))
    s.answer(b"+FLAGS", b"OK")
    s.upstream(b"* 1 EXPUNGE\r\n" + s.tagged(b"UID EXPUNGE", b"OK"))
    assert s.seen().endswith(b"d OK Move completed.\r\n")
    assert b"MYRIGHTS" not in s.client(b"e MOVE 1 Trash\r\n")  # cached for this selection
    s.upstream(b"* 1 FETCH (UID 2)\r\n" + listed(s))
    s.upstream(synced(s, b"NO No"))
    s.client(b"f SELECT Other\r\n")
    s.upstream(b"f OK [READ-WRITE] Selected\r\n")
    assert s.client(b"g MOVE 1 Trash\r\n") == b"MYRIGHTS Other\r\n"  # a new selection


def test_move_out_of_a_read_only_mailbox_is_refused_before_copying(script: Driver):
    script.client(b"e EXAMINE INBOX\r\n")
    script.upstream(b"* 5 EXISTS\r\ne OK [READ-ONLY] Examined\r\n")
    script.seen()
    assert script.client(b"c MOVE 1 Trash\r\n") == b""
    assert script.seen().startswith(b"c NO [READ-ONLY] ")
    script.client(b"s SELECT INBOX\r\n")
    script.upstream(b"s OK [READ-WRITE] Selected\r\n")
    assert script.client(b"d MOVE 1 Trash\r\n").startswith(b"FETCH 1 (UID)\r\n")
