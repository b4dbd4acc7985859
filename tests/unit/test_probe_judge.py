"""The probe's judgement (imapmoveproxy/probe/judge.py): what it saw in, findings out, no server.

tests/integration/test_probe.py runs the whole probe against every server of the matrix; here
the cases no real server produces on demand (a COPYUID after the EXPUNGEs, a leaked
\\Deleted, missing EXPUNGEs, wrong messages moved).
"""

from __future__ import annotations

from imapmoveproxy.move.request import Policy
from imapmoveproxy.probe import judge
from imapmoveproxy.probe.report import CAVEATS, FAILS, WORKS, Finding, Report
from imapmoveproxy.wire.capabilities import Capabilities


def caps(text: bytes) -> Capabilities:
    return Capabilities.parse(text)


def levels(findings: list[Finding]) -> list[int]:
    return [finding.level for finding in findings]


def test_the_features_listed_and_the_policy_they_call_for():
    legacy = caps(b"IMAP4rev1 UIDPLUS LITERAL+ COMPRESS=DEFLATE ID")
    offered = judge.features(legacy, "none")
    assert list(offered) == list(judge.FEATURES)
    assert [name for name, yes in offered.items() if yes] == ["UIDPLUS", "LITERAL+", "ID",
                                                             "COMPRESS"]  # fmt: skip
    assert judge.features(legacy, "starttls")["STARTTLS"]  # negotiated before the list
    assert judge.policy(legacy, "refuse") is Policy.UIDPLUS
    assert judge.policy(caps(b"IMAP4rev1 MOVE"), "refuse") is Policy.NATIVE
    assert judge.policy(caps(b"IMAP4rev1"), "refuse") is Policy.REFUSED
    assert judge.policy(caps(b"IMAP4rev1"), "guarded") is Policy.GUARDED
    assert judge.policy_findings(Policy.UIDPLUS) == []
    assert levels(judge.policy_findings(Policy.GUARDED)) == [CAVEATS]
    [refused] = judge.policy_findings(Policy.REFUSED)
    assert refused.level == FAILS and "--no-uidplus guarded" in refused.text


def test_plaintext_to_a_server_that_offers_tls_is_a_caveat():
    assert judge.tls(caps(b"IMAP4rev1 STARTTLS"), "starttls") == []
    assert judge.tls(caps(b"IMAP4rev1"), "none") == []
    [offered] = judge.tls(caps(b"IMAP4rev1 STARTTLS"), "none")
    assert offered.level == CAVEATS and "offers STARTTLS" in offered.text
    [disabled] = judge.tls(caps(b"IMAP4rev1 STARTTLS LOGINDISABLED"), "none")
    assert "LOGINDISABLED" in disabled.text


COPYUID = b"* OK [COPYUID 7 1:2 5:6] Moved"


def test_a_move_answered_as_rfc_6851_asks():
    untagged = [COPYUID, b"* 1 EXPUNGE", b"* 1 EXPUNGE"]
    assert judge.move_replies(untagged, 2) == [Finding(WORKS, "COPYUID sent before the EXPUNGEs")]
    assert levels(judge.move_replies([COPYUID, b"* VANISHED 3:4"], 2)) == [WORKS]


def test_the_faults_of_a_move_s_replies():
    late = judge.move_replies([b"* 1 EXPUNGE", COPYUID, b"* 1 EXPUNGE"], 2)
    assert late == [Finding(FAILS, "COPYUID came after an EXPUNGE (RFC 6851 asks for it before)")]
    without = judge.move_replies([b"* 1 EXPUNGE"], 2)
    assert levels(without) == [CAVEATS, CAVEATS]
    assert without[0].text.startswith("no COPYUID") and without[1].text.startswith("1 standard")
    leaked = judge.move_replies([COPYUID, b"* 3 FETCH (FLAGS (\\Deleted))", b"* 1 EXPUNGE"], 1)
    assert leaked[1].level == FAILS and "\\Deleted flags reached the client" in leaked[1].text


def test_nonstandard_untagged_responses_are_named_once():
    seen = [b"* 2 EXPUNGED", b"* OK [UIDNEXT 4] x", b"* 2 EXPUNGED", b"* 3 FETCH (UID 1)",
            b"* XAPPLEPUSHSERVICE x", b"+ go"]  # fmt: skip
    texts = judge.nonstandard(seen)
    assert texts == ["* 2 EXPUNGED", "* XAPPLEPUSHSERVICE x"]
    assert levels(judge.nonstandard_findings(texts)) == [CAVEATS, CAVEATS]
    standard = Finding(WORKS, "every untagged response was standard")
    assert judge.nonstandard_findings([]) == [standard]


DELETED = frozenset({"\\DELETED"})
NONE: frozenset[str] = frozenset()


def test_exactly_the_moved_messages_moved_and_the_users_deleted_flag_stayed():
    left, arrived = {3: NONE, 4: DELETED}, {1: NONE, 2: NONE}
    found = judge.move_result(left, arrived, 4, (1, 2), 4)
    assert levels(found) == [WORKS, WORKS]
    wrong = judge.move_result({2: NONE, 3: NONE, 4: DELETED}, {1: NONE}, 4, (1, 2), 4)
    assert levels(wrong) == [FAILS] and wrong[0].text.startswith("wrong messages moved")
    lost = judge.move_result({3: NONE, 4: NONE}, arrived, 4, (1, 2), 4)
    assert lost[1] == Finding(FAILS, "the message the user had flagged \\Deleted lost its flag")
    extra = judge.move_result(left, {1: DELETED, 2: NONE}, 4, (1, 2), 4)
    assert extra[1] == Finding(FAILS, "\\Deleted flags the user did not set were left behind")


def test_two_sessions_on_one_mailbox():
    both = Finding(WORKS, "several sessions can have a mailbox open read-write")
    assert judge.sessions(False, False, True, True) == [both]
    assert judge.sessions(False, False, False, False) == [both]  # no UIDPLUS: no APPENDUID due
    ended = judge.sessions(True, False, True, False)
    assert levels(ended) == [CAVEATS, CAVEATS]
    assert ended[0].text.startswith("a second session that opens a mailbox read-write ends")
    assert ended[1].text.startswith("an APPEND to a mailbox another session has open")
    assert "read-only" in judge.sessions(False, True, True, True)[0].text


def test_the_report_s_verdict_is_its_worst_finding():
    report = Report("mail:143", "none")
    assert report.status == WORKS and report.as_text().endswith("verdict: works (exit status 0)\n")
    report.findings += judge.tls(caps(b"IMAP4rev1 STARTTLS"), "none")
    assert report.status == CAVEATS and '"exit_status": 1' in report.as_json()
    report.findings += judge.policy_findings(Policy.REFUSED)
    assert report.status == FAILS and "  FAIL   no UIDPLUS" in report.as_text()
