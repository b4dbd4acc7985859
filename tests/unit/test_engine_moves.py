"""When a MOVE runs among the client's other commands (imapmoveproxy/engine/moves.py): after
the earlier ones have completed, before the later ones. Driven by tests/driver.py."""

from __future__ import annotations

from driver import Driver, greeted, listed, synced


def test_move_waits_for_earlier_commands_and_holds_later_ones(script: Driver):
    assert (
        script.client(b"c FETCH 1 FLAGS\r\nd MOVE 1 Trash\r\ne NOOP\r\n") == b"c FETCH 1 FLAGS\r\n"
    )
    sent = script.upstream(b"* 1 FETCH (FLAGS ())\r\nc OK Fetch\r\n")
    assert sent.startswith(b"FETCH 1 (UID)\r\n") and b"e NOOP" not in sent
    assert script.client(b"f NOOP\r\n") == b""  # still held
    assert script.upstream(b"* 1 FETCH (UID 3)\r\n" + listed(script)) == (
        b"NOOP\r\nUID COPY 3 Trash\r\n"  # the proxy's own NOOP, not the client's
    )
    sent = script.upstream(synced(script, b"NO [TRYCREATE] No mailbox"))
    assert sent == b"e NOOP\r\nf NOOP\r\n"
    assert script.seen() == b"* 1 FETCH (FLAGS ())\r\nc OK Fetch\r\nd NO [TRYCREATE] No mailbox\r\n"


def test_move_pipelined_behind_login_is_not_sent_to_a_legacy_upstream():
    s = greeted(lock_by_hand=True)
    assert s.client(b"a LOGIN u p\r\nb MOVE 1 Trash\r\n") == b"a LOGIN u p\r\n"
    s.upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n")
    assert s.move_ready()
    s.session.start_move()
    assert b"MOVE" not in s.sent()
