"""The pure functions of imapmoveproxy/wire/responses.py: the relay's fast path (which lines a
run of relayed responses must stop before) and what one response line is."""

from __future__ import annotations

import pytest

from imapmoveproxy.wire import responses
from imapmoveproxy.wire.grammar import NumberSet

FETCH = b"* 1 FETCH (FLAGS (\\Seen))\r\n"
FETCHES = FETCH + b"* 2 FETCH (FLAGS ())\r\n" + b"* 3 FETCH (FLAGS (\\Answered))\r\n"


def _run_end(buf: bytes, start: int = 0) -> int:
    """Where the plain run from ``start`` ends, as the framer cuts it (Framer.plain_run): after
    the last whole line that begins before :func:`responses.first_stop`."""
    return buf.rfind(b"\n", start, responses.first_stop(buf, start)) + 1


# ---------------------------------------------------------------------- first_stop


def test_a_run_of_plain_untagged_responses_has_no_stop() -> None:
    assert responses.first_stop(FETCHES, 0) == len(FETCHES)
    assert responses.first_stop(b"xx" + FETCHES, 2) == len(FETCHES) + 2


@pytest.mark.parametrize(
    "line",
    [
        b"* 4 FETCH (UID 9 BODY[] {12}\r\n",  # a literal announcement
        b"* 4 FETCH (UID 9 BODY[] {12}\n",
        b"* 4 FETCH (UID 9 BODY[] {12+}\r\n",  # the non-synchronising form: "}" then CRLF too
        b"* OK [UIDVALIDITY 7] UIDs valid\r\n",  # a response code
        b"* OK [READ-ONLY] now\r\n",
        b"* 9 EXISTS\r\n",
        b"* 2 RECENT\r\n",
        b"* 3 EXPUNGE\r\n",
        b"* 3 EXPUNGED\r\n",  # imap4d's
        b"* BYE going away\r\n",
        b"a1 OK done\r\n",  # tagged
        b"+ go ahead\r\n",  # a continuation request
    ],
)
def test_a_run_stops_before_a_line_the_session_must_see(line: bytes) -> None:
    buf = FETCHES + line + FETCH
    stop = responses.first_stop(buf, 0)
    assert len(FETCHES) <= stop < len(FETCHES) + len(line)  # inside that line
    assert _run_end(buf) == len(FETCHES)  # the run is the lines before it
    # At the start of the buffer, such a line gives no run at all.
    assert _run_end(line + FETCH) == 0


@pytest.mark.parametrize("line", [b"* CAPABILITY IMAP4rev1 MOVE\r\n", b"* capability X\r\n"])
def test_a_run_never_includes_an_untagged_capability(line: bytes) -> None:
    """Found by its line start ("\n* C"), so the stop is the end of the line before it: the
    run then also leaves that line to the slow path (safe, one line less in the run)."""
    buf = FETCHES + line + FETCH
    before_last = FETCHES.rfind(b"\n", 0, len(FETCHES) - 1) + 1  # where FETCHES' last line begins
    assert before_last <= _run_end(buf) <= len(FETCHES)
    assert responses.first_stop(buf, 0) < len(FETCHES) + len(line)


@pytest.mark.parametrize(
    "line",
    [b"* CAPABILITY IMAP4rev1\r\n", b"a1 OK done\r\n", b"+ more\r\n", b"* c\r\n"],
)
def test_a_line_that_starts_the_buffer_and_must_be_seen_stops_at_its_start(line: bytes) -> None:
    assert responses.first_stop(line + FETCHES, 0) == 0
    assert responses.first_stop(b"zz" + line + FETCHES, 2) == 2


def test_a_run_stops_at_the_first_of_several_stops() -> None:
    buf = FETCH + b"* 9 EXISTS\r\n" + FETCH + b"* BYE bye\r\n"
    assert _run_end(buf) == len(FETCH)
    after = len(FETCH) + len(b"* 9 EXISTS\r\n")
    assert _run_end(buf, after) == after + len(FETCH)


def test_an_unfinished_line_is_not_part_of_a_run() -> None:
    buf = FETCHES + b"* 4 FETCH (FLA"
    assert _run_end(buf) == len(FETCHES)


def test_words_like_exists_inside_a_line_do_not_stop_the_run() -> None:
    """Only at a line's end: a flag or a quoted word that merely contains the word does not."""
    buf = b'* 1 FETCH (FLAGS (EXISTS) X-NOTE "RECENT EXPUNGE BYE")\r\n' + FETCH
    assert responses.first_stop(buf, 0) == len(buf)


@pytest.mark.parametrize(
    "line",
    [
        *(b"* 9 EXISTS\r\n", b"* 9 RECENT\r\n", b"* 3 EXPUNGE\r\n", b"* 3 EXPUNGED\r\n"),
        *(b"* 9 EXISTS\n", b"* 9 exists\r\n", b"* 3 EXPUNGE\n", b"* 3 expunged\r\n"),
    ],
)
def test_the_fast_path_stops_at_every_line_the_slow_path_counts(line: bytes) -> None:
    """Both paths see a count in the same form, or neither does: whether a MOVE runs (every
    line looked at) or not (runs relayed whole), the session's counts stay the same."""
    counted = (
        responses.count(line) is not None
        or responses.expunge_number(line) is not None
        or responses.expunged_number(line) is not None
    )
    assert (_run_end(FETCHES + line + FETCH) == len(FETCHES)) is counted


# ---------------------------------------------------------------------- first_non_expunge


def test_first_non_expunge_runs_over_expunges_only() -> None:
    expunges = b"* 3 EXPUNGE\r\n* 3 EXPUNGE\r\n* 10 EXPUNGE\r\n"
    assert responses.first_non_expunge(expunges, 0) == len(expunges)
    assert responses.first_non_expunge(expunges + FETCH, 0) == len(expunges)
    assert responses.first_non_expunge(expunges + b"* 9 EXISTS\r\n", 0) == len(expunges)
    assert responses.first_non_expunge(b"ab" + expunges + FETCH, 2) == 2 + len(expunges)


@pytest.mark.parametrize(
    "buf", [FETCH, b"* 3 EXPUNGED\r\n", b"* 9 EXISTS\r\n", b"a OK\r\n", b"* x EXPUNGE\r\n"]
)
def test_first_non_expunge_is_its_start_when_the_first_line_is_another(buf: bytes) -> None:
    assert responses.first_non_expunge(buf + b"* 1 EXPUNGE\r\n", 0) == 0


def test_first_non_expunge_stops_before_an_unfinished_expunge() -> None:
    buf = b"* 1 EXPUNGE\r\n* 2 EXPUNGE\r\n* 3 EXPUN"
    assert responses.first_non_expunge(buf, 0) == 26


# ---------------------------------------------------------------------- one response line


@pytest.mark.parametrize(
    ("line", "number"),
    [
        (b"* 3 EXPUNGE\r\n", 3),
        (b"* 12345 EXPUNGE\r\n", 12345),
        (b"* 12345 EXPUNGE\n", None),  # not the form the relay's fast path stops at
        (b"* 7 expunge\r\n", None),
        (b"* 3 EXPUNGED\r\n", None),
        (b"* 3 EXISTS\r\n", None),
        (b"* 3 EXPUNGE extra\r\n", None),
        (b"a * 3 EXPUNGE\r\n", None),
        (b"* VANISHED 3\r\n", None),
    ],
)
def test_expunge_number(line: bytes, number: int | None) -> None:
    assert responses.expunge_number(line) == number


def test_expunged_number_is_imap4d_s_form_only() -> None:
    assert responses.expunged_number(b"* 4 EXPUNGED\r\n") == b"4"
    assert responses.expunged_number(b"* 4 EXPUNGE\r\n") is None


@pytest.mark.parametrize(
    ("line", "result"),
    [
        (b"* 23 EXISTS\r\n", (23, True)),
        (b"* 0 EXISTS\r\n", (0, True)),
        (b"* 0 EXISTS\n", None),  # not the form the relay's fast path stops at
        (b"* 5 RECENT\r\n", (5, False)),
        (b"* 5 recent\r\n", None),
        (b"* 5 EXPUNGE\r\n", None),
        (b"* OK 5 EXISTS\r\n", None),
        (b"* 5 EXISTS now\r\n", None),
    ],
)
def test_count(line: bytes, result: tuple[int, bool] | None) -> None:
    assert responses.count(line) == result


@pytest.mark.parametrize(
    ("line", "uid"),
    [
        (b"* 1 FETCH (UID 42)\r\n", 42),
        (b"* 1 FETCH (FLAGS (\\Seen) UID 42)\r\n", 42),
        (b"* 1 FETCH (MODSEQ (9) UID 42 FLAGS ())\r\n", 42),
        (b"* 1 fetch (uid 42)\r\n", 42),
        (b"* 1 FETCH (FLAGS (\\Seen))\r\n", None),
        (b"* 1 FETCH (XUID 42)\r\n", None),
        (b"* 1 EXPUNGE\r\n", None),
        (b"a1 OK UID 42\r\n", None),
    ],
)
def test_fetch_uid(line: bytes, uid: int | None) -> None:
    assert responses.fetch_uid(line) == uid


@pytest.mark.parametrize(
    ("line", "uid"),
    [
        (b"* 1 FETCH (UID 3)\r\n", 3),
        (b"* 1 FETCH (UID 3 FLAGS () UID 9)\r\n", 9),
        (b"* 1 FETCH (FLAGS ())\r\n", None),
        (b"* OK UID 3\r\n", None),
    ],
)
def test_last_fetch_uid(line: bytes, uid: int | None) -> None:
    assert responses.last_fetch_uid(line) == uid


@pytest.mark.parametrize(
    ("line", "removed"),
    [
        (b"* 3 EXPUNGE\r\n", 1),
        (b"* VANISHED 4\r\n", 1),
        (b"* VANISHED 4:6,9\r\n", 4),
        (b"* vanished 1:3\n", 3),
        (b"* VANISHED (EARLIER) 4:6,9\r\n", 0),  # earlier removals, already known: not counted
        (b"* 3 EXISTS\r\n", 0),
        (b"* 3 EXPUNGED\r\n", 0),
        (b"* 1 FETCH (UID 3)\r\n", 0),
    ],
)
def test_expunge_count(line: bytes, removed: int) -> None:
    assert responses.expunge_count(line) == removed


@pytest.mark.parametrize(
    ("line", "uids"),
    [
        (b"* SEARCH 3 5 9\r\n", [3, 5, 9]),
        (b"* SEARCH\r\n", []),
        (b'* ESEARCH (TAG "imp4") UID ALL 3:5,9\r\n', [3, 4, 5, 9]),
        (b'* ESEARCH (TAG "imp4") UID\r\n', []),
    ],
)
def test_search_set(line: bytes, uids: list[int]) -> None:
    assert responses.is_search(line)
    assert responses.search_set(line) == NumberSet.of(uids)


def test_search_tag_is_only_an_esearch_s() -> None:
    assert responses.search_tag(b'* ESEARCH (TAG "imp4") UID ALL 1\r\n') == b"imp4"
    assert responses.search_tag(b"* SEARCH 1\r\n") is None
    assert not responses.is_search(b"* SEARCHING 1\r\n")


@pytest.mark.parametrize(
    ("line", "only"),
    [
        (b"* 1 FETCH (UID 3)\r\n", True),
        (b"* 1 FETCH (UID 3 MODSEQ (12))\r\n", True),
        (b"* 1 FETCH (UID 3 FLAGS (\\Seen))\r\n", False),
        (b"* 1 FETCH (FLAGS ())\r\n", False),
    ],
)
def test_only_uid(line: bytes, only: bool) -> None:
    assert responses.only_uid(line) is only


def test_flagged_deleted() -> None:
    assert responses.flagged_deleted(b"* 1 FETCH (UID 3 FLAGS (\\Seen \\Deleted))\r\n")
    assert not responses.flagged_deleted(b"* 1 FETCH (UID 3 FLAGS (\\Seen))\r\n")


def test_uidvalidity_capability_and_myrights() -> None:
    assert responses.uidvalidity(b"* OK [UIDVALIDITY 1234] ok\r\n") == b"1234"
    assert responses.uidvalidity(b"* OK [UIDNEXT 5] ok\r\n") is None
    assert responses.is_capability(b"* CAPABILITY IMAP4rev1\r\n")
    assert not responses.is_capability(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
    assert responses.myrights(b"* MYRIGHTS INBOX lrswipte\r\n") == b"lrswipte"
    assert responses.myrights(b"* LISTRIGHTS INBOX x\r\n") is None
