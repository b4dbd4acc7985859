"""The client's side of the session (imapmoveproxy/engine/client.py, engine/inflight.py):
logins and the credentials kept for a rollback, commands reusing a tag in flight, the data lines of
AUTHENTICATE and IDLE, ID, COMPRESS, the login timeout. Driven by tests/driver.py."""

from __future__ import annotations

import pytest
from driver import Driver, greeted, logged_in

from imapmoveproxy.engine.session import SessionSettings


def login_script(login: bytes, settings: SessionSettings | None = None) -> Driver:
    s = greeted(settings)
    s.client(login)
    if b"AUTHENTICATE PLAIN\r\n" in login:
        s.upstream(b"+ \r\n")
        s.client(b"AHVzZXIAcGFzcw==\r\n")
    s.upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n")
    return s


@pytest.mark.parametrize(
    "login",
    [
        b"a LOGIN {4+}\r\nuser {4+}\r\npass\r\n",
        b'a LOGIN "user" pass\r\n',
        b"a AUTHENTICATE PLAIN AHVzZXIAcGFzcw==\r\n",
        b"a AUTHENTICATE PLAIN\r\n",
    ],
)
def test_credentials_of_login_and_authenticate_plain_are_kept_for_a_rollback(login: bytes):
    assert kept(login_script(login)) == (b"user", b"user", b"pass")


def test_a_master_user_logs_in_for_the_clients_user_and_the_password_is_not_kept():
    settings = SessionSettings(rollback="master", rollback_master=(b"admin", b"secret"))
    assert kept(login_script(b"a LOGIN user pass\r\n", settings)) == (b"user", b"admin", b"secret")


def kept(s: Driver) -> tuple[bytes, bytes, bytes]:
    """(user, login, password) the session keeps for a rollback's second session."""
    credentials = s.session.credentials
    assert credentials is not None
    return credentials.user, credentials.login, credentials.password


def test_refused_logins_leave_no_credentials():
    s = greeted()
    s.client(b"a LOGIN user wrong\r\n")
    s.upstream(b"a NO [AUTHENTICATIONFAILED] Nope\r\n")
    assert s.session.credentials is None


def test_a_login_reusing_a_tag_in_flight_waits_and_cannot_take_the_other_commands_ok():
    """``a NOOP`` and ``a LOGIN bob wrong`` pipelined: the NOOP's ``a OK`` must not pass for
    bob's login, and a later AUTHENTICATE the proxy cannot capture must not inherit bob."""
    s = greeted()
    # the LOGIN waits for the tag to be free
    assert s.client(b"a NOOP\r\na LOGIN bob wrong\r\n") == b"a NOOP\r\n"
    assert s.upstream(b"a OK NOOP completed\r\n") == b"a LOGIN bob wrong\r\n"
    assert not s.session.authenticated and s.session.credentials is None
    s.upstream(b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    assert not s.session.authenticated and s.session.credentials is None
    s.client(b"b AUTHENTICATE LOGIN\r\n")
    s.upstream(b"+ VXNlcm5hbWU6\r\n")
    s.client(b"YWxpY2U=\r\n")
    s.upstream(b"+ UGFzc3dvcmQ6\r\n")
    s.client(b"cGFzcw==\r\n")
    s.upstream(b"b OK Logged in\r\n")
    assert s.session.authenticated and s.session.credentials is None
    assert b"a NO" in s.seen()


def test_commands_reusing_the_tag_of_a_login_in_flight_wait_for_its_reply():
    s = greeted()
    # b waits behind a's NOOP too
    assert s.client(b"a LOGIN user pass\r\na NOOP\r\nb NOOP\r\n") == b"a LOGIN user pass\r\n"
    assert s.upstream(b"a OK Logged in\r\n") == b"a NOOP\r\nb NOOP\r\n"
    assert kept(s) == (b"user", b"user", b"pass")


def test_authenticate_and_idle_data_lines_are_passed_as_data():
    s = greeted()
    sent = s.client(b"a AUTHENTICATE PLAIN\r\n")
    sent += s.upstream(b"+ \r\n") + s.client(b"AHUAcA==\r\n")
    assert sent == b"a AUTHENTICATE PLAIN\r\nAHUAcA==\r\n"
    s.upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS IDLE] Logged in\r\n")
    assert s.client(b"b IDLE\r\nDONE\r\nc NOOP\r\n") == b"b IDLE\r\nDONE\r\nc NOOP\r\n"


def test_proxy_sends_the_clients_address_in_id_and_strips_the_clients_x_fields():
    s = Driver(
        SessionSettings(forward_id=True), addresses=(("192.0.2.7", 40001), ("10.0.0.1", 143))
    )
    # nothing before the greeting (and our ID)
    assert s.client(b'a ID ("x-originating-ip" "6.6.6.6" "name" "mutt")\r\n') == b""
    assert s.upstream(b"* OK [CAPABILITY IMAP4rev1 ID UIDPLUS] hi\r\n") == (
        b'ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "40001" '
        b'"x-connected-ip" "10.0.0.1" "x-connected-port" "143")\r\n'
        b'a ID ("name" "mutt")\r\n'
    )
    s.seen()
    s.upstream(
        b'* ID ("name" "Dovecot")\r\n' + s.tagged(b"x-originating-ip", b"OK ID done")
        + b'* ID ("name" "Dovecot")\r\na OK\r\n'
    )  # fmt: skip
    assert s.seen() == b'* ID ("name" "Dovecot")\r\na OK\r\n'


@pytest.mark.parametrize("forward_id", [True, False])
@pytest.mark.parametrize(
    "key", [b'"x-originating-ip"', b'"X\\-Originating-IP"', b'"\\x\\-\\o"', b'"x\\-"']
)
def test_the_clients_x_fields_are_removed_however_quoted_and_without_the_proxys_id(
    forward_id: bool, key: bytes
):
    """Issue 12, defect 6: a server trusting the proxy believes an x-originating-ip from the
    client too; it reads a quoted key unescaped, so the proxy must judge the key unescaped."""
    s = Driver(SessionSettings(forward_id=forward_id), addresses=(("192.0.2.7", 1), ("::1", 2)))
    s.upstream(b"* OK [CAPABILITY IMAP4rev1 ID] hi\r\n")
    sent = s.client(b"a ID (" + key + b' "6.6.6.6" "name" "x\\"y")\r\n')
    assert sent == b'a ID ("name" "x\\"y")\r\n'


def test_login_timeout_only_before_authentication():
    s = greeted()
    s.session.login_timed_out()
    assert s.session.close_reason == "no login in time"
    assert s.seen().endswith(b"* BYE Autologout: no login in time.\r\n")
    authenticated = logged_in()
    authenticated.session.login_timed_out()
    assert authenticated.session.close_reason is None
