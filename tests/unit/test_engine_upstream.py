"""The upstream's side of the session (imapmoveproxy/engine/upstream.py, engine/output.py):
capabilities as the client sees them, relaying however the stream is cut, replies the proxy
cannot place, overlong lines. Driven by tests/driver.py."""

from __future__ import annotations

import pytest
from driver import CUTS, GREETING, Driver, cut, logged_in, started
from hypothesis import given, settings
from hypothesis import strategies as st

from imapmoveproxy.engine.channel import TAG_PREFIX
from imapmoveproxy.engine.session import SessionSettings


def test_login_capabilities_gain_move_and_lose_what_the_proxy_cannot_honour():
    s = logged_in()
    seen = s.seen()
    # no UIDPLUS before login: no MOVE added, like a native server; the proxy's COMPRESS is
    assert GREETING.replace(b"PLAIN]", b"PLAIN COMPRESS=DEFLATE SPECIAL-USE]") in seen
    login_ok = seen.split(b"\r\n")[1]
    assert login_ok.startswith(b"a OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS CONDSTORE")
    assert b" MOVE" in login_ok
    assert b"-PLUS" not in login_ok
    # the upstream's COMPRESS is gone; the proxy's own is offered once logged in
    assert login_ok.count(b"COMPRESS") == 1 and login_ok.endswith(
        b" COMPRESS=DEFLATE SPECIAL-USE] Logged in"
    )


def test_upstream_with_native_move_is_passed_through_untouched():
    s = started(caps=b"IMAP4rev1 UIDPLUS MOVE")
    assert s.client(b"c UID MOVE 1:3 Trash\r\n") == b"c UID MOVE 1:3 Trash\r\n"
    s.upstream(b"* OK [COPYUID 1 1:3 4:6] Moved\r\n* 1 EXPUNGE\r\nc OK Move completed\r\n")
    assert s.seen() == b"* OK [COPYUID 1 1:3 4:6] Moved\r\n* 1 EXPUNGE\r\nc OK Move completed\r\n"


def test_upstream_with_imap4rev2_needs_no_emulation():
    s = logged_in(caps=b"IMAP4rev2 IMAP4rev1")
    assert b"MOVE" not in s.seen()  # MOVE is part of IMAP4rev2 itself
    assert s.client(b"c MOVE 1 Trash\r\n") == b"c MOVE 1 Trash\r\n"


def test_upstream_without_uidplus_gets_the_clients_move_unchanged():
    s = logged_in(caps=b"IMAP4rev1 LITERAL+")
    assert b"MOVE" not in s.seen()
    assert s.client(b"c MOVE 1 Trash\r\n") == b"c MOVE 1 Trash\r\n"


def test_move_with_unknown_capabilities_asks_the_upstream_first():
    s = Driver(lock_by_hand=True)
    s.upstream(GREETING)
    s.client(b"a LOGIN u p\r\n")
    s.upstream(b"a OK Logged in\r\n")  # no capability list after login
    s.client(b"b MOVE 1 Trash\r\n")
    assert s.move_ready()
    s.session.start_move()
    assert s.sent() == b"CAPABILITY\r\n"
    s.seen()
    sent = s.upstream(b"* CAPABILITY IMAP4rev1 MOVE UIDPLUS\r\n" + s.tagged(b"CAPABILITY", b"OK"))
    assert sent == b"b MOVE 1 Trash\r\n"  # native: forwarded as is
    assert s.seen() == b""  # the proxy's CAPABILITY is invisible
    s.upstream(b"b OK Move completed\r\n")
    assert s.seen() == b"b OK Move completed\r\n"


def test_proxy_replies_never_land_inside_a_relayed_literal(script: Driver):
    script.client(b"c FETCH 1 BODY[]\r\n")
    script.upstream(b"* 1 FETCH (BODY[] {10}\r\nhello")
    script.client(b"d COMPRESS DEFLATE\r\n")
    script.upstream(b"world)\r\nc OK\r\n")
    assert script.seen() == (
        b"* 1 FETCH (BODY[] {10}\r\nhelloworld)\r\nd BAD Finish the other commands before "
        b"COMPRESS.\r\nc OK\r\n"
    )


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
    CUTS,
)
def test_relayed_stream_is_the_same_however_the_upstream_splits_it(responses, cuts):
    """Fast path (runs of plain lines) and slow path together give the one right output."""
    stream = b"".join(responses)
    expected = stream.replace(
        b"UIDPLUS COMPRESS=DEFLATE\r\n", b"UIDPLUS MOVE COMPRESS=DEFLATE SPECIAL-USE\r\n"
    )  # the only rewrite: the upstream's COMPRESS removed, the proxy's own (and SPECIAL-USE) added
    whole = started()
    whole.upstream(stream)
    assert whole.seen() == expected
    split = started()
    for piece in cut(stream, cuts):
        split.upstream(piece)
    assert split.seen() == expected


@pytest.mark.parametrize(
    "reply",
    [TAG_PREFIX + b"9 OK whatever\r\n", b"zz NO what\r\n", b"garbage without status\r\n", b"\r\n"],
)
def test_upstream_reply_the_proxy_cannot_place_ends_the_connection(script: Driver, reply: bytes):
    script.client(b"c NOOP\r\n")
    script.upstream(reply)
    assert script.seen() == b"* BYE The mail server misbehaved.\r\n"
    assert script.session.close_reason is not None


def test_an_overlong_upstream_line_ends_the_connection_without_holding_it_whole():
    s = started(settings=SessionSettings(max_upstream_line=4096))
    s.client(b"c FETCH 1 (FLAGS)\r\n")
    for _ in range(3):  # never ending: the session must not wait for (and keep) all of it
        s.upstream(b"* 1 FETCH (FLAGS (" + b"\\Flag " * 500)
    assert s.session.close_reason == "upstream line too long"
    assert s.seen().endswith(b"* BYE The mail server sent an overlong line.\r\n")
