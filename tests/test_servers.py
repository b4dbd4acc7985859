"""Quick checks that the real-server fixtures (tests/conftest.py) work."""

from __future__ import annotations

import imaplib
import socket

import pytest
from servers import ImapServer, make_message


def _capabilities(server: ImapServer) -> tuple[set[str], set[str]]:
    pre, post = server.capabilities()
    return set(pre), set(post)


def test_dovecot_legacy_capabilities(dovecot_legacy: ImapServer) -> None:
    pre, post = _capabilities(dovecot_legacy)
    assert "UIDPLUS" in post
    assert "MOVE" not in post
    assert "MOVE" not in pre
    assert "IMAP4REV2" not in post
    assert {"IMAP4REV1", "CONDSTORE", "QRESYNC", "LITERAL+", "IDLE"} <= post


def test_dovecot_native_capabilities(dovecot_native: ImapServer) -> None:
    _pre, post = _capabilities(dovecot_native)
    assert {"MOVE", "UIDPLUS", "CONDSTORE", "QRESYNC"} <= post


def test_imap4d_capabilities(imap4d: ImapServer) -> None:
    pre, post = _capabilities(imap4d)
    assert "IMAP4REV1" in post
    assert "MOVE" not in post | pre
    assert "UIDPLUS" not in post | pre


@pytest.mark.parametrize("fixture", ["dovecot_legacy", "dovecot_native", "imap4d"])
def test_seed_and_fetch(request: pytest.FixtureRequest, fixture: str) -> None:
    server: ImapServer = request.getfixturevalue(fixture)
    assert server.host == "127.0.0.1"
    assert server.log_path.exists()
    user = server.new_user()
    assert server.seed(user, "INBOX", [make_message("one"), make_message("two")]) == 2
    assert server.seed(user, "Archive/2024", [make_message("three")]) == 1
    assert server.seed(user, "Archive/2024", [make_message("four")]) == 2
    imap = server.connect(user)
    try:
        typ, data = imap.select("INBOX")
        assert (typ, data) == ("OK", [b"2"])
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        subjects = [item[1].strip().lower() for item in data if isinstance(item, tuple)]
        assert subjects == [b"subject: one", b"subject: two"]  # imap4d upper-cases names
    finally:
        imap.logout()
    # A fresh user sees none of it.
    other = server.connect(server.new_user())
    try:
        assert other.select("INBOX") == ("OK", [b"0"])
    finally:
        other.logout()


@pytest.mark.parametrize("fixture", ["dovecot_legacy", "dovecot_native", "imap4d"])
def test_bad_password_rejected(request: pytest.FixtureRequest, fixture: str) -> None:
    server: ImapServer = request.getfixturevalue(fixture)
    imap = server.connect()
    try:
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(server.new_user(), server.password + "-wrong")
    finally:
        imap.shutdown()


def test_dovecot_rawlog_records_commands(dovecot_legacy: ImapServer) -> None:
    user = dovecot_legacy.new_user()
    dovecot_legacy.seed(user, "INBOX", [make_message("raw")])
    # Raw socket, so that we control the exact bytes (and can send MOVE although not advertised).
    with socket.create_connection((dovecot_legacy.host, dovecot_legacy.port), timeout=10) as sock:
        reader = sock.makefile("rb")

        def command(line: bytes) -> bytes:
            sock.sendall(line + b"\r\n")
            tag = line.split(b" ", 1)[0] + b" "
            response = b""
            for _ in range(100):
                got = reader.readline()
                assert got, "server closed the connection"
                response += got
                if got.startswith(tag):
                    return response
            raise AssertionError(f"no tagged response to {line!r}")

        assert reader.readline().startswith(b"* OK")
        login = f"t1 LOGIN {user} {dovecot_legacy.password}".encode()
        assert b"t1 OK" in command(login)
        assert b"t2 OK" in command(b"t2 SELECT INBOX")
        assert b"t3 OK" in command(b't3 UID COPY 1 "INBOX"')
        assert b"t4 OK" in command(b"t4 LOGOUT")
    received = dovecot_legacy.received_bytes(user)
    # Post-login traffic, byte for byte (LOGIN itself is handled by imap-login, not logged).
    assert received.endswith(b't2 SELECT INBOX\r\nt3 UID COPY 1 "INBOX"\r\nt4 LOGOUT\r\n')
    assert b"LOGIN" not in received
    assert b" MOVE " not in dovecot_legacy.received_bytes()
    # The seed session is recorded too (APPEND with its literal, timestamps stripped).
    assert b"Subject: raw\r\n" in received


def test_imap4d_transcript_records_commands(imap4d: ImapServer) -> None:
    user = imap4d.new_user()
    imap = imap4d.connect(user)
    try:
        imap.select("INBOX")
        imap.noop()
    finally:
        imap.logout()
    assert b" SELECT INBOX\r\n" in imap4d.received_bytes()
