"""Capability rewriting, wherever a capability list appears."""

from __future__ import annotations

import pytest

from imapmoveproxy.wire.capabilities import Capabilities, rewrite_line


def uidplus_without_move(caps: Capabilities) -> list[bytes]:
    return [b"MOVE"] if caps.uidplus and not caps.native_move else []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"* OK [CAPABILITY IMAP4rev1 UIDPLUS] Ready\r\n",
         b"* OK [CAPABILITY IMAP4rev1 UIDPLUS MOVE] Ready\r\n"),
        (b"* CAPABILITY IMAP4rev1 uidplus IDLE\r\n",
         b"* CAPABILITY IMAP4rev1 uidplus IDLE MOVE\r\n"),
        (b"a1 OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n",
         b"a1 OK [CAPABILITY IMAP4rev1 UIDPLUS MOVE] Logged in\r\n"),
        (b"* PREAUTH [CAPABILITY IMAP4rev1 UidPlus] hi\r\n",
         b"* PREAUTH [CAPABILITY IMAP4rev1 UidPlus MOVE] hi\r\n"),
        # already there, in any case, or implied by IMAP4rev2: nothing added
        (b"* CAPABILITY IMAP4rev1 UIDPLUS move\r\n", b"* CAPABILITY IMAP4rev1 UIDPLUS move\r\n"),
        (b"* CAPABILITY IMAP4rev2 IMAP4rev1\r\n", b"* CAPABILITY IMAP4rev2 IMAP4rev1\r\n"),
        # no UIDPLUS: nothing to emulate with
        (b"* CAPABILITY IMAP4rev1 IDLE\r\n", b"* CAPABILITY IMAP4rev1 IDLE\r\n"),
        # what a terminating proxy cannot honour goes, whatever the case
        (b"* CAPABILITY IMAP4rev1 UIDPLUS compress=deflate AUTH=SCRAM-SHA-256-PLUS "
         b"AUTH=scram-sha-1-plus AUTH=SCRAM-SHA-256 STARTTLS LOGINDISABLED\r\n",
         b"* CAPABILITY IMAP4rev1 UIDPLUS AUTH=SCRAM-SHA-256 MOVE\r\n"),
    ],
)  # fmt: skip
def test_capability_lists_are_rewritten(line: bytes, expected: bytes):
    assert rewrite_line(line, uidplus_without_move)[0] == expected


@pytest.mark.parametrize(
    "line",
    [
        b'* 1 FETCH (ENVELOPE (NIL "[CAPABILITY x]" NIL))\r\n',  # text that only looks like one
        b"* OK [UIDVALIDITY 3] CAPABILITY\r\n",
        b"* SEARCH 1 2 3\r\n",
    ],
)
def test_other_lines_are_untouched(line: bytes):
    assert rewrite_line(line, uidplus_without_move) == (line, None)


def test_upstream_list_is_reported_upper_cased():
    _, caps = rewrite_line(b"* CAPABILITY imap4rev1 uidPlus literal+\r\n", uidplus_without_move)
    assert caps is not None and caps.uidplus and caps.literal_plus and not caps.native_move
