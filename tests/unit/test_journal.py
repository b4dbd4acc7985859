"""The journal's sans-IO parts: an entry's stored form, a MOVE that waits for each phase to be
recorded, a login reply held while the journal is looked at, and what recovery decides."""

from __future__ import annotations

import pytest
from driver import GREETING, Driver

from imapmoveproxy.engine.effects import ForgetMove, LookupJournal, RecordMove
from imapmoveproxy.engine.session import SessionSettings
from imapmoveproxy.journal.entry import Entry, Phase, Unreadable
from imapmoveproxy.move.resume import Outcome, Resume
from imapmoveproxy.wire.capabilities import Capabilities
from imapmoveproxy.wire.grammar import Tagged

ENTRY = Entry("e1", b"j\xf6rg", "uidplus", b"INBOX", b"17", (10, 11, 12), b"Archive", b"9", 30, 1.5)


def test_an_entry_survives_its_stored_form_and_a_strange_one_is_refused():
    copied = ENTRY.copied(frozenset({11}), {10: 30, 11: 31, 12: 32}, b"9", {})
    for entry in (ENTRY, copied):
        assert Entry.from_json(entry.to_json()) == entry
    assert b"pass" not in copied.to_json().encode()
    text = copied.to_json()
    for broken in (
        text.replace('"v":1', '"v":2'),  # written by another version
        text.replace('"phase":"copied"', '"phase":"flagged"'),
        text.replace('"uids":"10:12"', '"uids":"10:x"'),
        text.replace(',"copies"', ',"extra":1,"copies"'),
        text[:-5],
    ):
        with pytest.raises(Unreadable):
            Entry.from_json(broken)


def journaled(unavailable: bool = False) -> Driver:
    """A session with the journal on, logged in as "user" (the OK released: no entries) and
    INBOX selected with its UIDVALIDITY."""
    driver = Driver(SessionSettings(journal=True))
    driver.upstream(GREETING)
    driver.seen()
    driver.client(b"a LOGIN user pass\r\n")
    driver.upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS ESEARCH LITERAL+] Logged in\r\n")
    assert driver.seen() == b""  # held: the journal is looked at first
    assert [effect.user for effect in driver.take(LookupJournal)] == [b"user"]
    driver.session.resume_entries([])
    assert driver.seen().startswith(b"a OK")
    driver.client(b"b SELECT INBOX\r\n")
    driver.upstream(b"* 5 EXISTS\r\n* OK [UIDVALIDITY 17] x\r\nb OK [READ-WRITE] Selected\r\n")
    driver.seen()
    return driver


def test_each_phase_is_recorded_before_the_command_that_depends_on_it():
    script = journaled()
    sent = script.client(b"c UID MOVE 10:12 Archive\r\n")
    assert sent == (  # listed first, with the target's UIDNEXT; no COPY yet
        b"NOOP\r\nUID SEARCH RETURN (ALL) UID 10:12\r\nUID SEARCH RETURN (ALL) UID 10:12 DELETED"
        b"\r\nSTATUS Archive (UIDNEXT UIDVALIDITY MESSAGES)\r\n"
    )
    sent = script.upstream(
        script.tagged(b"NOOP", b"OK") + script.esearch(b"UID 10:12\r\n", b"ALL 10:12")
        + script.tagged(b"UID 10:12\r\n", b"OK") + script.esearch(b"DELETED", b"ALL 11")
        + script.tagged(b"DELETED", b"OK")
        + b"* STATUS Archive (UIDNEXT 30 UIDVALIDITY 9 MESSAGES 4)\r\n"
        + script.tagged(b"STATUS", b"OK")
    )  # fmt: skip
    assert sent == b""  # the COPY waits for its intent to be durable
    (intent,) = [effect.entry for effect in script.take(RecordMove)]
    assert (intent.user, intent.source, intent.source_validity) == (b"user", b"INBOX", b"17")
    assert (intent.uids, intent.target, intent.target_validity) == ((10, 11, 12), b"Archive", b"9")
    assert (intent.target_uidnext, intent.phase) == (30, Phase.INTENT)
    script.session.move_recorded(True)
    assert script.sent() == b"UID COPY 10:12 Archive\r\n"
    sent = script.answer(b"COPY", b"OK [COPYUID 9 10:12 30:32] Done")
    assert sent == b""  # the STORE waits for the COPIED phase
    (copied,) = [effect.entry for effect in script.take(RecordMove)]
    assert (copied.id, copied.phase, copied.copies) == (
        intent.id,
        Phase.COPIED,
        {10: 30, 11: 31, 12: 32},
    )
    assert copied.user_deleted == {11}
    script.session.move_recorded(True)
    assert script.sent() == b"UID STORE 10:12 +FLAGS.SILENT (\\Deleted)\r\n"
    assert script.answer(b"UID STORE", b"OK") == b"UID EXPUNGE 10:12\r\n"
    script.upstream(b"* 1 EXPUNGE\r\n" * 3 + script.tagged(b"EXPUNGE", b"OK"))
    assert script.seen().endswith(b"c OK Move completed.\r\n")
    assert [effect.entry_id for effect in script.take(ForgetMove)] == [intent.id]


def test_a_journal_that_cannot_be_written_under_refuse_moves_nothing():
    script = journaled()
    script.client(b"c UID MOVE 10:12 Archive\r\n")
    script.upstream(
        script.tagged(b"NOOP", b"OK") + script.esearch(b"UID 10:12\r\n", b"ALL 10:12")
        + script.tagged(b"UID 10:12\r\n", b"OK") + script.tagged(b"DELETED", b"OK")
        + b"* STATUS Archive (UIDNEXT 30 UIDVALIDITY 9 MESSAGES 4)\r\n"
        + script.tagged(b"STATUS", b"OK")
    )  # fmt: skip
    script.session.move_recorded(False)
    assert b"COPY" not in script.sent()
    assert script.seen() == b"c NO [UNAVAILABLE] " + (
        b"The MOVE journal cannot be written: nothing was moved, try again later.\r\n"
    )


def run(resume: Resume, answers: dict[bytes, tuple[list[bytes], bytes]]) -> list[bytes]:
    """Drive ``resume``: each command (by its first word(s)) answered with untagged lines and a
    status; every command sent, in order."""
    sent: list[bytes] = []
    batch = resume.start()
    while batch:
        replies: list[bytes] = []
        for (command,) in batch:
            sent.append(command)
            key = next(k for k in answers if command.startswith(k))
            lines, status = answers[key]
            for line in lines:
                resume.on_untagged(line)
            replies.append(status)
        for status in replies:
            batch = resume.on_tagged(Tagged(b"t", status, None, b""))
    return sent


def test_recovery_removes_the_copies_when_an_unanswered_copy_made_only_some():
    """Phase INTENT, no COPYUID known: two of three originals have a copy (same INTERNALDATE,
    in UID order, from the recorded UIDNEXT on): a COPY that was not atomic. The copies go."""
    date = b'INTERNALDATE "08-Dec-2026 00:00:00 +0000"'
    resume = Resume([ENTRY], Capabilities(frozenset({b"UIDPLUS", b"UNSELECT"})))
    sent = run(
        resume,
        {
            b"SELECT INBOX": ([b"* 3 EXISTS\r\n", b"* OK [UIDVALIDITY 17] x\r\n"], b"OK"),
            b"SELECT Archive": ([b"* 6 EXISTS\r\n", b"* OK [UIDVALIDITY 9] x\r\n"], b"OK"),
            b"UID FETCH 10:12": (
                [
                    b"* %d FETCH (UID %d FLAGS (\\Seen) %s)\r\n" % (n, n + 9, date)
                    for n in (1, 2, 3)
                ],
                b"OK",
            ),
            b"UID FETCH 30:*": (
                [b"* %d FETCH (UID %d FLAGS (\\Seen) %s)\r\n" % (n, n + 25, date) for n in (5, 6)],
                b"OK",
            ),
            b"UID STORE": ([], b"OK"),
            b"UID EXPUNGE": ([], b"OK"),
            b"UNSELECT": ([], b"OK"),
        },
    )
    assert sent[-3:] == [
        b"UID STORE 30:31 +FLAGS.SILENT (\\Deleted)\r\n", b"UID EXPUNGE 30:31\r\n", b"UNSELECT\r\n",
    ]  # fmt: skip
    (verdict,) = resume.verdicts
    assert verdict.outcome is Outcome.UNDONE and resume.done


def test_recovery_touches_nothing_when_the_target_was_recreated():
    copied = ENTRY.copied(frozenset(), {10: 30, 11: 31, 12: 32}, b"9", {})
    resume = Resume([copied], Capabilities(frozenset({b"UIDPLUS"})))
    sent = run(
        resume,
        {
            b"SELECT INBOX": ([b"* 3 EXISTS\r\n", b"* OK [UIDVALIDITY 17] x\r\n"], b"OK"),
            b"SELECT Archive": ([b"* 3 EXISTS\r\n", b"* OK [UIDVALIDITY 99] x\r\n"], b"OK"),
            b"UID FETCH": ([], b"OK"),
            b"EXAMINE": ([], b"OK"),
            b"CLOSE": ([], b"OK"),
        },
    )
    assert not any(b"STORE" in command or b"EXPUNGE" in command for command in sent), sent
    (verdict,) = resume.verdicts
    assert verdict.kept and "UIDVALIDITY changed (9 -> 99)" in verdict.detail
    assert sent[-2:] == [b"EXAMINE INBOX\r\n", b"CLOSE\r\n"]  # nothing left selected
