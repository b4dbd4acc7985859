"""The client commands in flight, and credential capture (imapmoveproxy/engine/inflight.py)."""

from __future__ import annotations

from imapmoveproxy.engine.inflight import CommandsInFlight, CredentialCapture
from imapmoveproxy.wire.framing import Line
from imapmoveproxy.wire.grammar import parse_command_start


def sent(table: CommandsInFlight, data: bytes) -> None:
    line = Line(data, True)
    start = parse_command_start(data)
    assert start is not None
    assert not table.in_doubt(start)
    table.sent(line, start)


def doubt(table: CommandsInFlight, data: bytes) -> bool:
    start = parse_command_start(data)
    assert start is not None
    return table.in_doubt(start)


def test_a_login_waits_while_its_tag_is_in_flight_and_others_wait_behind_a_login():
    table = CommandsInFlight()
    sent(table, b"a NOOP\r\n")
    assert doubt(table, b"a LOGIN bob pw\r\n")  # the NOOP's reply could pass for it
    assert not doubt(table, b"a NOOP\r\n")  # nothing is learned from a NOOP's reply
    assert table.complete(b"a", ok=True).logged_in is False
    sent(table, b"a LOGIN bob pw\r\n")
    assert doubt(table, b"a NOOP\r\n") and doubt(table, b"a SELECT INBOX\r\n")
    assert not doubt(table, b"b NOOP\r\n")


def test_what_a_reply_tells_is_bound_to_its_own_command():
    table = CommandsInFlight()
    capture = CredentialCapture(None)
    sent(table, b"a SELECT Archive\r\n")
    sent(table, b"b LOGIN alice secret\r\n")
    start = parse_command_start(b"b LOGIN alice secret\r\n")
    assert start is not None
    captured = capture.command(Line(b"b LOGIN alice secret\r\n", True), start)
    assert captured is not None
    table.logs_in_with(*captured)
    assert table.complete(b"a", ok=False).mailbox is None
    completion = table.complete(b"b", ok=True)
    assert completion.logged_in and completion.credentials is not None
    assert completion.credentials.user == b"alice" and table.count == 0


def test_a_login_with_literals_and_authenticate_plain_are_captured_whole():
    capture = CredentialCapture((b"master", b"mpw"))
    first = b"a LOGIN {5}\r\n"
    start = parse_command_start(first)
    assert start is not None
    assert capture.command(Line(first, True, 5, True), start) is None
    assert capture.fragment(b"alice", None) is None
    assert capture.fragment(b" pw\r\n", Line(b" pw\r\n", False)) is not None
    plain = b"p AUTHENTICATE PLAIN\r\n"
    start = parse_command_start(plain)
    assert start is not None
    assert capture.command(Line(plain, True), start) is None
    captured = capture.data_line(b"AGFsaWNlAHB3\r\n")  # \0alice\0pw
    assert captured is not None
    tag, credentials = captured
    assert (tag, credentials.user, credentials.login) == (b"p", b"alice", b"master")
