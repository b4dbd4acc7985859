"""The sans-IO session and MOVE translator, driven with scripted upstream replies.

These tests play the upstream by hand, which is the only way to produce every failure at every
step on demand; tests/test_proxy_dovecot.py checks the same behaviour against a real Dovecot.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imapmoveproxy.session import Session, SessionSettings

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] ready\r\n"
CAPS = (
    b"IMAP4rev1 LITERAL+ UIDPLUS CONDSTORE QRESYNC ESEARCH COMPRESS=DEFLATE AUTH=SCRAM-SHA-1-PLUS"
)


class Script:
    """A session with helpers to talk to it as the client and as the upstream."""

    def __init__(self, caps: bytes = CAPS, settings: SessionSettings | None = None) -> None:
        self.session = Session(settings)
        self.session.receive_upstream(GREETING)
        self.client_saw = bytes(self.session.take_to_client())
        self.client(b"a LOGIN user pass\r\n")
        self.upstream(b"a OK [CAPABILITY " + caps + b"] Logged in\r\n")
        self.client(b"b SELECT INBOX\r\n")
        self.upstream(b"* 5 EXISTS\r\nb OK [READ-WRITE] Selected\r\n")

    def client(self, data: bytes) -> bytes:
        """Send client bytes; return what the proxy sent upstream as a result."""
        self.session.receive_client(data)
        return self._collect()

    def upstream(self, data: bytes) -> bytes:
        """Send upstream bytes; return what the proxy sent upstream as a result."""
        self.session.receive_upstream(data)
        return self._collect()

    def _collect(self) -> bytes:
        if self.session.move_ready:  # as the trio layer does once it holds the mailbox's lock
            self.session.start_move()
        self.client_saw += bytes(self.session.take_to_client())
        return bytes(self.session.take_to_upstream())

    def seen(self) -> bytes:
        """What the client received since the last call."""
        seen, self.client_saw = self.client_saw, b""
        return seen


@pytest.fixture
def script() -> Script:
    s = Script()
    s.seen()
    return s


def test_login_capabilities_gain_move_and_lose_what_the_proxy_cannot_honour():
    s = Script()
    seen = s.seen()
    assert GREETING in seen  # no UIDPLUS before login: nothing added, like a native server
    login_ok = seen.split(b"\r\n")[1]
    assert login_ok.startswith(b"a OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS CONDSTORE")
    assert b" MOVE" in login_ok
    assert b"COMPRESS" not in login_ok and b"-PLUS" not in login_ok


def test_upstream_with_native_move_is_passed_through_untouched():
    s = Script(caps=b"IMAP4rev1 UIDPLUS MOVE")
    s.seen()
    assert s.client(b"c UID MOVE 1:3 Trash\r\n") == b"c UID MOVE 1:3 Trash\r\n"
    s.upstream(b"* OK [COPYUID 1 1:3 4:6] Moved\r\n* 1 EXPUNGE\r\nc OK Move completed\r\n")
    assert s.seen() == b"* OK [COPYUID 1 1:3 4:6] Moved\r\n* 1 EXPUNGE\r\nc OK Move completed\r\n"


def test_upstream_with_imap4rev2_needs_no_emulation():
    s = Script(caps=b"IMAP4rev2 IMAP4rev1")
    assert b"MOVE" not in s.seen()  # MOVE is part of IMAP4rev2 itself
    assert s.client(b"c MOVE 1 Trash\r\n") == b"c MOVE 1 Trash\r\n"


def test_successful_move_shows_only_what_a_native_server_sends(script: Script):
    sent = script.client(b"c MOVE 1:2 Trash\r\n")
    assert sent == b"imp1 FETCH 1:2 (UID)\r\nimp2 COPY 1:2 Trash\r\n"
    sent = script.upstream(
        b"* 1 FETCH (UID 10)\r\n* 2 FETCH (UID 11)\r\nimp1 OK done\r\n"
        b"imp2 OK [COPYUID 7 10:11 20:21] Copy completed\r\n"
    )
    assert sent == b"imp3 UID STORE 10:11 +FLAGS.SILENT (\\Deleted)\r\n"
    assert script.seen() == b"* OK [COPYUID 7 10:11 20:21] Moved UIDs.\r\n"
    sent = script.upstream(
        b"* 1 FETCH (UID 10 MODSEQ (41))\r\n* 2 FETCH (UID 11 MODSEQ (42))\r\nimp3 OK Store\r\n"
    )
    # only now, never pipelined behind the STORE: a server may run pipelined commands at once
    assert sent == b"imp4 UID EXPUNGE 10:11\r\n"
    script.upstream(b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nimp4 OK Expunge completed\r\n")
    assert script.seen() == b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nc OK Move completed.\r\n"


def test_store_is_never_sent_before_copy_succeeds(script: Script):
    sent = script.client(b"c UID MOVE 10:* Trash\r\n")
    assert b"STORE" not in sent and b"EXPUNGE" not in sent
    assert sent == b"imp1 UID SEARCH RETURN (ALL) UID 10:*\r\nimp2 UID COPY 10:* Trash\r\n"
    assert script.upstream(b'* ESEARCH (TAG "imp1") UID ALL 10:12\r\nimp1 OK\r\n') == b""


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
    sent = script.upstream(b"* 1 FETCH (UID 10)\r\nimp1 OK\r\nimp2 " + status + b"\r\n")
    assert sent == b""  # no STORE, no EXPUNGE
    assert script.seen() == b"c " + status + b"\r\n"


def test_only_messages_the_upstream_confirmed_copied_are_flagged(script: Script):
    script.client(b"c UID MOVE 1:* Trash\r\n")
    # the range covers UID 12 too, delivered meanwhile, but COPYUID names only 10 and 11
    sent = script.upstream(
        b'* ESEARCH (TAG "imp1") UID ALL 10:11\r\nimp1 OK\r\n* 3 EXISTS\r\n'
        b"imp2 OK [COPYUID 7 10:11 1:2] Done\r\n"
    )
    assert sent == b"imp3 UID STORE 10:11 +FLAGS.SILENT (\\Deleted)\r\n"
    assert script.seen() == b"* OK [COPYUID 7 10:11 1:2] Moved UIDs.\r\n"
    assert script.upstream(b"imp3 OK\r\n") == b"imp4 UID EXPUNGE 10:11\r\n"
    # the EXISTS is shown after the expunges, with the count that follows them (as natively)
    script.upstream(b"* 1 EXPUNGE\r\n* VANISHED 11\r\nimp4 OK\r\n")
    assert (
        script.seen() == b"* 1 EXPUNGE\r\n* VANISHED 11\r\n* 1 EXISTS\r\nc OK Move completed.\r\n"
    )


def test_without_copyuid_the_uids_found_before_copying_are_used(script: Script):
    script.client(b"c MOVE 2,4 Trash\r\n")
    sent = script.upstream(
        b"* 2 FETCH (UID 12)\r\n* 4 FETCH (UID 14)\r\nimp1 OK\r\nimp2 OK [UIDNOTSTICKY] Done\r\n"
    )
    assert b"UID STORE 12,14 " in sent
    assert b"COPYUID" not in script.seen()  # never invented


@pytest.mark.parametrize("failing", ["imp3", "imp4"])
def test_failure_after_copy_says_what_state_the_messages_are_in(script: Script, failing: str):
    script.client(b"c MOVE 1 Trash\r\n")
    script.upstream(b"* 1 FETCH (UID 10)\r\nimp1 OK\r\nimp2 OK [COPYUID 7 10 20] Done\r\n")
    script.seen()
    replies = {b"imp3": b"imp3 OK Store\r\n", b"imp4": b"imp4 OK Expunge\r\n"}
    replies[failing.encode()] = failing.encode() + b" NO [NOPERM] Permission denied\r\n"
    script.upstream(replies[b"imp3"] + replies[b"imp4"])
    reply = script.seen()
    assert reply.startswith(b"c NO [NOPERM] MOVE incomplete:")
    assert b"both mailboxes" in reply and b"none was lost" in reply


def test_unsolicited_responses_from_other_sessions_are_relayed_in_order(script: Script):
    script.client(b"c UID MOVE 10 Trash\r\n")
    script.upstream(
        b'* ESEARCH (TAG "imp1") UID ALL 10\r\n* 3 FETCH (FLAGS (\\Seen) UID 13)\r\nimp1 OK\r\n'
        b"* 6 EXISTS\r\nimp2 OK [COPYUID 7 10 20] Done\r\n"
    )
    script.upstream(
        b"* 1 FETCH (UID 10 FLAGS (\\Deleted))\r\n* 4 FETCH (UID 14 FLAGS (\\Flagged))\r\n"
        b"imp3 OK\r\n* 1 EXPUNGE\r\n* 2 EXPUNGE\r\nimp4 OK\r\n"
    )
    assert script.seen() == (
        b"* 3 FETCH (FLAGS (\\Seen) UID 13)\r\n* OK [COPYUID 7 10 20] Moved UIDs.\r\n"
        b"* 4 FETCH (UID 14 FLAGS (\\Flagged))\r\n* 1 EXPUNGE\r\n* 2 EXPUNGE\r\n* 4 EXISTS\r\n"
        b"c OK Move completed.\r\n"
    )


def test_qresync_vanished_and_highestmodseq_are_shown_as_native(script: Script):
    script.client(b"c UID MOVE 10 Trash\r\n")
    script.upstream(b"imp1 OK\r\nimp2 OK [COPYUID 7 10 20] Done\r\n")
    script.upstream(b"imp3 OK\r\n* VANISHED 10\r\nimp4 OK [HIGHESTMODSEQ 99] Expunged\r\n")
    assert script.seen().endswith(b"* VANISHED 10\r\nc OK [HIGHESTMODSEQ 99] Move completed.\r\n")


def test_move_waits_for_earlier_commands_and_holds_later_ones(script: Script):
    assert (
        script.client(b"c FETCH 1 FLAGS\r\nd MOVE 1 Trash\r\ne NOOP\r\n") == b"c FETCH 1 FLAGS\r\n"
    )
    sent = script.upstream(b"* 1 FETCH (FLAGS ())\r\nc OK Fetch\r\n")
    assert sent.startswith(b"imp1 FETCH 1 (UID)\r\nimp2 COPY")
    assert script.client(b"f NOOP\r\n") == b""  # still held
    sent = script.upstream(b"* 1 FETCH (UID 3)\r\nimp1 OK\r\nimp2 NO [TRYCREATE] No mailbox\r\n")
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
    assert sent == b"imp1 FETCH 1 (UID)\r\nimp2 COPY 1 " + encoded


def test_synchronizing_literal_mailbox_gets_a_continuation_from_the_proxy(script: Script):
    assert script.client(b"c MOVE 1 {5}\r\n") == b""
    assert script.seen() == b"+ Ready for literal data\r\n"
    assert script.client(b"Trash\r\n").endswith(b"imp2 COPY 1 Trash\r\n")


def test_upstream_without_literal_plus_gets_a_synchronizing_literal():
    s = Script(caps=b"IMAP4rev1 UIDPLUS")
    s.seen()
    sent = s.client(b'c MOVE 1 "caf\xc3\xa9"\r\n')
    assert sent.endswith(b"imp2 COPY 1 {5}\r\n")
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
def test_bad_move_syntax_gets_bad_and_nothing_is_sent(script: Script, command: bytes):
    assert script.client(command) == b""
    assert script.seen().startswith(b"c BAD ")


def test_move_with_unknown_capabilities_asks_the_upstream_first():
    s = Session()
    s.receive_upstream(GREETING)
    s.receive_client(b"a LOGIN u p\r\n")
    s.receive_upstream(b"a OK Logged in\r\n")  # no capability list after login
    s.receive_client(b"b MOVE 1 Trash\r\n")
    assert s.move_ready
    s.start_move()
    assert bytes(s.take_to_upstream()).endswith(b"imp1 CAPABILITY\r\n")
    s.take_to_client()
    s.receive_upstream(b"* CAPABILITY IMAP4rev1 MOVE UIDPLUS\r\nimp1 OK\r\n")
    assert bytes(s.take_to_upstream()) == b"b MOVE 1 Trash\r\n"  # native: forwarded as is
    assert bytes(s.take_to_client()) == b""  # the proxy's CAPABILITY is invisible
    s.receive_upstream(b"b OK Move completed\r\n")
    assert bytes(s.take_to_client()) == b"b OK Move completed\r\n"


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
    s = Script(caps=b"IMAP4rev1 LITERAL+")
    assert b"MOVE" not in s.seen()
    assert s.client(b"c MOVE 1 Trash\r\n") == b"c MOVE 1 Trash\r\n"


def test_compress_is_refused_and_not_forwarded(script: Script):
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


def test_proxy_replies_never_land_inside_a_relayed_literal(script: Script):
    script.client(b"c FETCH 1 BODY[]\r\n")
    script.upstream(b"* 1 FETCH (BODY[] {10}\r\nhello")
    script.client(b"d COMPRESS DEFLATE\r\n")
    script.upstream(b"world)\r\nc OK\r\n")
    assert script.seen() == (
        b"* 1 FETCH (BODY[] {10}\r\nhelloworld)\r\nd NO COMPRESS is not available through this "
        b"proxy.\r\nc OK\r\n"
    )


def test_large_uid_sets_are_split_into_short_commands():
    s = Script(settings=SessionSettings(max_set_bytes=64))
    s.seen()
    s.client(b"c UID MOVE 1:100 Trash\r\n")
    uids = b",".join(b"%d" % n for n in range(1, 100, 2))
    sent = s.upstream(b"imp1 OK\r\nimp2 OK [COPYUID 7 " + uids + b" 1:50] Done\r\n")
    lines = sent.split(b"\r\n")[:-1]
    assert all(len(line) < 64 + 40 for line in lines)
    stored = b",".join(line.split()[3] for line in lines if b"STORE" in line)
    assert stored == uids and b"EXPUNGE" not in sent
    tags = [line.split()[0] for line in lines]
    sent = s.upstream(b"".join(tag + b" OK\r\n" for tag in tags))
    expunged = []
    for _ in range(len(tags)):  # the UID EXPUNGEs go one at a time, each after the last's OK
        assert sent.count(b"\r\n") == 1 and b" UID EXPUNGE " in sent
        expunged.append(sent.split()[3])
        sent = s.upstream(sent.split()[0] + b" OK\r\n")
    assert b",".join(expunged) == uids
    assert s.seen().endswith(b"c OK Move completed.\r\n")


def test_move_out_of_a_read_only_mailbox_is_refused_before_copying(script: Script):
    script.client(b"e EXAMINE INBOX\r\n")
    script.upstream(b"* 5 EXISTS\r\ne OK [READ-ONLY] Examined\r\n")
    script.seen()
    assert script.client(b"c MOVE 1 Trash\r\n") == b""
    assert script.seen().startswith(b"c NO [READ-ONLY] ")
    script.client(b"s SELECT INBOX\r\n")
    script.upstream(b"s OK [READ-WRITE] Selected\r\n")
    assert b"COPY 1 Trash" in script.client(b"d MOVE 1 Trash\r\n")


def guarded_script() -> Script:
    s = Script(caps=b"IMAP4rev1 LITERAL+", settings=SessionSettings(guarded=True))
    s.seen()
    return s


def test_guarded_move_clears_and_restores_other_deleted_flags():
    s = guarded_script()
    assert s.client(b"c MOVE 2 Trash\r\n") == b"imp1 FETCH 2 (UID)\r\nimp2 COPY 2 Trash\r\n"
    assert s.upstream(b"* 2 FETCH (UID 12)\r\nimp1 OK\r\nimp2 OK Copied\r\n") == b"imp3 NOOP\r\n"
    assert s.upstream(b"imp3 OK\r\n") == b"imp4 UID SEARCH DELETED\r\n"
    sent = s.upstream(b"* SEARCH 11 12\r\nimp4 OK\r\n")  # 11 is the user's own \Deleted
    assert sent == (
        b"imp5 UID STORE 11 -FLAGS.SILENT (\\Deleted)\r\n"
        b"imp6 UID STORE 12 +FLAGS.SILENT (\\Deleted)\r\n"
    )
    assert s.upstream(b"* 1 FETCH (UID 11 FLAGS ())\r\nimp5 OK\r\nimp6 OK\r\n") == b"imp7 NOOP\r\n"
    s.upstream(b"imp7 OK\r\n")
    # the re-check finds 13, flagged by another session meanwhile: cleared too, checked again
    sent = s.upstream(b"* SEARCH 12 13\r\nimp8 OK\r\n")
    assert sent == b"imp9 UID STORE 13 -FLAGS.SILENT (\\Deleted)\r\n"
    assert s.upstream(b"imp9 OK\r\n") == b"imp10 NOOP\r\n"
    s.upstream(b"imp10 OK\r\n")
    assert s.upstream(b"* SEARCH 12\r\nimp11 OK\r\n") == b"imp12 EXPUNGE\r\n"
    sent = s.upstream(b"* 2 EXPUNGE\r\nimp12 OK\r\n")
    assert sent == b"imp13 UID STORE 11,13 +FLAGS.SILENT (\\Deleted)\r\n"
    assert s.upstream(b"imp13 OK\r\n") == b"imp14 UID FETCH 1:* (UID)\r\n"
    s.upstream(b"* 1 FETCH (UID 11)\r\n* 2 FETCH (UID 13)\r\nimp14 OK\r\n")
    assert s.seen() == b"* 2 EXPUNGE\r\nc OK Move completed.\r\n"


def test_guarded_move_gives_up_with_nothing_lost_when_flags_keep_appearing():
    s = guarded_script()
    s.client(b"c UID MOVE 12 Trash\r\n")
    s.upstream(b"* 2 FETCH (UID 12)\r\nimp1 OK\r\nimp2 OK Copied\r\n")
    s.upstream(b"imp3 OK\r\n")
    s.upstream(b"* SEARCH\r\nimp4 OK\r\n")
    tag = 6
    for n in range(4):  # another session flags a new message before every re-check
        s.upstream(b"imp%d OK\r\n" % (tag - 1))
        s.upstream(b"imp%d OK\r\n" % tag)
        sent = s.upstream(b"* SEARCH 12 %d\r\nimp%d OK\r\n" % (20 + n, tag + 1))
        tag += 3
    assert b"EXPUNGE" not in sent
    # undo: unflag the moved message, put back \Deleted on the ones cleared on the way
    assert sent == (
        b"imp%d UID STORE 12 -FLAGS.SILENT (\\Deleted)\r\n" % (tag - 1)
        + b"imp%d UID STORE 20:23 +FLAGS.SILENT (\\Deleted)\r\n" % tag
    )
    s.upstream(b"imp%d OK\r\nimp%d OK\r\n" % (tag - 1, tag))
    reply = s.seen()
    assert reply.startswith(b"c NO [INUSE] MOVE incomplete:")
    assert b"every message is in both mailboxes; none was lost" in reply


def test_guarded_move_reports_messages_the_expunge_did_not_remove():
    s = guarded_script()
    s.client(b"c UID MOVE 12 Trash\r\n")
    s.upstream(b"* 2 FETCH (UID 12)\r\nimp1 OK\r\nimp2 OK Copied\r\nimp3 OK\r\n")
    s.upstream(b"* SEARCH\r\nimp4 OK\r\nimp5 OK\r\nimp6 OK\r\n")
    assert s.upstream(b"* SEARCH 12\r\nimp7 OK\r\n") == b"imp8 EXPUNGE\r\n"
    assert s.upstream(b"imp8 OK\r\n") == b"imp9 UID FETCH 1:* (UID)\r\n"  # nothing expunged
    s.upstream(b"* 1 FETCH (UID 3)\r\n* 2 FETCH (UID 12)\r\nimp9 OK\r\n")
    reply = s.seen()
    assert reply.startswith(b"c NO MOVE incomplete:") and b"UIDs 12 were not expunged" in reply


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
    whole = Script()
    whole.seen()
    whole.upstream(stream)
    assert whole.seen() == expected
    pieces, start = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(stream[start:cut])
        start = cut
    pieces.append(stream[start:])
    split = Script()
    split.seen()
    for piece in pieces:
        split.upstream(piece)
    assert split.seen() == expected


def test_proxy_sends_the_clients_address_in_id_and_strips_the_clients_x_fields():
    s = Session(
        SessionSettings(forward_id=True), addresses=(("192.0.2.7", 40001), ("10.0.0.1", 143))
    )
    s.receive_client(b'a ID ("x-originating-ip" "6.6.6.6" "name" "mutt")\r\n')
    assert bytes(s.take_to_upstream()) == b""  # nothing before the greeting (and our ID)
    s.receive_upstream(b"* OK [CAPABILITY IMAP4rev1 ID UIDPLUS] hi\r\n")
    assert bytes(s.take_to_upstream()) == (
        b'imp1 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "40001" '
        b'"x-connected-ip" "10.0.0.1" "x-connected-port" "143")\r\n'
        b'a ID ("name" "mutt")\r\n'
    )
    s.take_to_client()
    s.receive_upstream(
        b'* ID ("name" "Dovecot")\r\nimp1 OK ID done\r\n* ID ("name" "Dovecot")\r\na OK\r\n'
    )
    assert bytes(s.take_to_client()) == b'* ID ("name" "Dovecot")\r\na OK\r\n'


@pytest.mark.parametrize(
    "reply",
    [b"imp9 OK whatever\r\n", b"zz NO what\r\n", b"garbage without status\r\n", b"\r\n"],
)
def test_upstream_reply_the_proxy_cannot_place_ends_the_connection(script: Script, reply: bytes):
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
    logged_in = Script()
    logged_in.session.login_timed_out()
    assert logged_in.session.close_reason is None
