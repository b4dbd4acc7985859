"""Property-based tests of the MOVE translator: arbitrary upstream replies, one MOVE.

Whatever the upstream answers (OK, NO or BAD to each command, with or without COPYUID, with
unrelated untagged responses in between), the session must not fail, must answer the client's
MOVE exactly once, and must never flag or expunge a message the upstream did not confirm it
copied.
"""

from __future__ import annotations

import re

from driver import Driver
from hypothesis import given, settings
from hypothesis import strategies as st

from imapmoveproxy.engine.channel import TAG_PREFIX
from imapmoveproxy.engine.session import SessionSettings
from imapmoveproxy.wire.grammar import expand_uid_set

GREETING = b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n"

statuses = st.sampled_from([b"OK", b"NO", b"BAD"])
codes = st.sampled_from([b"", b"[TRYCREATE] ", b"[OVERQUOTA] ", b"[NOPERM] ", b"[UIDNOTSTICKY] "])
uid_sets = st.lists(st.integers(1, 60), min_size=1, max_size=6, unique=True).map(
    lambda uids: b",".join(b"%d" % u for u in sorted(uids))
)
untagged = st.sampled_from([
    b"* 7 EXISTS\r\n", b"* 2 EXPUNGE\r\n", b"* 3 FETCH (FLAGS (\\Seen))\r\n",
    b"* 1 FETCH (UID 9 MODSEQ (12))\r\n", b"* SEARCH 4 5\r\n", b"* 1 RECENT\r\n",
    b"* VANISHED 8\r\n", b"* OK [HIGHESTMODSEQ 99] x\r\n",
])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    caps=st.sampled_from([b"UIDPLUS", b"UIDPLUS ESEARCH", b"LITERAL+"]),
    guarded=st.booleans(),
    command=st.sampled_from([b"MOVE 1:3 Trash", b"UID MOVE 2,5:* {5+}\r\nTrash", b"MOVE $ X"]),
    replies=st.lists(st.tuples(statuses, codes, uid_sets, st.lists(untagged, max_size=2)),
                     min_size=40, max_size=40),
)  # fmt: skip
def test_any_upstream_replies_give_one_answer_and_no_unconfirmed_removal(
    caps, guarded, command, replies
):
    s = Driver(SessionSettings(guarded=guarded))
    s.upstream(GREETING)
    s.client(b"a LOGIN u p\r\n")
    s.upstream(b"a OK [CAPABILITY IMAP4rev1 " + caps + b"] in\r\n")
    s.client(b"s SELECT INBOX\r\n")
    s.upstream(b"s OK [READ-WRITE] sel\r\n")
    s.seen()
    sent = s.client(b"m " + command + b"\r\n")
    to_client = s.seen()
    confirmed: set[int] = set()
    copy_ok = False
    for status, code, uid_set, extra in replies:
        rollback = s.take_rollback()
        if rollback is not None:  # the second session: removes only copies of confirmed ones
            request, _ = rollback
            assert set(request.sources) <= confirmed
            s.session.rollback_finished(None if status == b"OK" else "failed")
            sent += s.sent()
            to_client += s.seen()
        for line in sent.split(b"\r\n"):  # the proxy's commands come without their tags
            words = line.split(b" ")
            if b"STORE" in words and b"+FLAGS.SILENT" in words and not guarded:
                assert copy_ok and set(expand_uid_set(words[2])) <= confirmed, line
            if words[:2] == [b"UID", b"EXPUNGE"]:
                assert copy_ok and set(expand_uid_set(words[2])) <= confirmed, line
        # the proxy's commands, or the client's MOVE passed on unchanged (no UIDPLUS)
        commands = s.unanswered()
        commands += [(b"m", line[2:]) for line in sent.split(b"\r\n") if line[:2] == b"m "]
        if not commands and b"m " in to_client:
            break
        reply = b"".join(extra)
        for tag, text in commands:
            this_code = code
            if text.startswith((b"COPY ", b"UID COPY ")) and status == b"OK":
                count = len(expand_uid_set(uid_set))
                this_code = b"[COPYUID 1 %s 1000:%d] " % (uid_set, 999 + count)
                copy_ok = True
                confirmed = set(expand_uid_set(uid_set))
            reply += tag + b" " + status + b" " + this_code + b"done\r\n"
        sent = s.upstream(reply)
        to_client += s.seen()
    answers = [line for line in to_client.split(b"\r\n") if line.startswith(b"m ")]
    assert len(answers) == 1, to_client
    assert re.match(rb"m (OK|NO|BAD) ", answers[0])
    assert TAG_PREFIX not in to_client  # the proxy's own tags never reach the client
