"""The client's MOVE as the proxy reads it and the mailbox name as it passes it on
(imapmoveproxy/move/emulation.py, move/request.py): bad syntax, literals, re-encoding. Driven by
tests/driver.py."""

from __future__ import annotations

import pytest
from driver import Driver, listed, started


@pytest.mark.parametrize(
    ("mailbox", "encoded"),
    [
        (b"{13}\r\nfoo\r\nbar NOOP\r\n", b"{13+}\r\nfoo\r\nbar NOOP\r\n"),
        (b'"a \\"b\\""\r\n', b'"a \\"b\\""\r\n'),
        (b"{3+}\r\nabc\r\n", b"abc\r\n"),
    ],
)
def test_mailbox_names_are_re_encoded_so_they_cannot_inject_commands(script, mailbox, encoded):
    sent = script.client(b"c UID MOVE 1 " + mailbox)
    assert sent.endswith(b"\r\nUID COPY 1 " + encoded)


def test_synchronizing_literal_mailbox_gets_a_continuation_from_the_proxy(script: Driver):
    assert script.client(b"c UID MOVE 1 {5}\r\n") == b""
    assert script.seen() == b"+ Ready for literal data\r\n"
    assert script.client(b"Trash\r\n").endswith(b"\r\nUID COPY 1 Trash\r\n")


def test_upstream_without_literal_plus_gets_a_synchronizing_literal():
    s = started(caps=b"IMAP4rev1 UIDPLUS")
    sent = s.client(b'c MOVE 1 "caf\xc3\xa9"\r\n')
    assert sent == b"FETCH 1 (UID)\r\nUID SEARCH 1 DELETED\r\n"
    sent = s.upstream(b"* 1 FETCH (UID 4)\r\n" + listed(s))
    assert sent == b"NOOP\r\nUID COPY 4 {5}\r\n"
    # the server answers the NOOP before it reads the COPY and asks for its literal
    assert s.upstream(s.tagged(b"NOOP", b"OK") + b"+ go ahead\r\n") == b"caf\xc3\xa9\r\n"
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
