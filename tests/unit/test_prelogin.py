"""Routing mode's not-authenticated state (engine/prelogin.py), sans-IO: every input fed whole,
then one byte at a time, and the same replies and logins expected."""

from __future__ import annotations

import base64
import logging
import re

import pytest

from imapmoveproxy.engine.effects import Close, StartTls
from imapmoveproxy.engine.prelogin import PreLogin, RouteLogin
from imapmoveproxy.engine.settings import SessionSettings

LOG = logging.LoggerAdapter(logging.getLogger("test"), {"conn": "t"})


def prelogin(*, tls_offered: bool = False, require_tls: bool = False, tls: bool = False):
    settings = SessionSettings(tls_offered=tls_offered, require_tls=require_tls)
    pre = PreLogin(settings, LOG, tls=tls, attempts=3)
    greeting = pre.take_output()
    return pre, greeting


def run(data: bytes, *, whole: bool = True, **kwargs):
    pre, _ = prelogin(**kwargs)
    if whole:
        pre.receive(data)
    else:
        for byte in data:
            pre.receive(bytes([byte]))
    return pre, pre.take_output(), pre.take_effects()


@pytest.mark.parametrize("whole", [True, False])
@pytest.mark.parametrize(
    ("command", "user", "password"),
    [
        (b'a LOGIN "bob@example.org" "se cret"\r\n', b"bob@example.org", b"se cret"),
        (b"a LOGIN bob secret\r\n", b"bob", b"secret"),
        (b"a LOGIN {3}\r\nbob {6+}\r\nsecret\r\n", b"bob", b"secret"),
        (b'a login "bob" {2}\r\n\xc3\xa9\r\n', b"bob", "é".encode()),
    ],
)
def test_login_forms_become_one_route_login(command, user, password, whole):
    _, out, effects = run(command, whole=whole)
    assert len(effects) == 1 and isinstance(effects[0], RouteLogin)
    login = effects[0]
    assert (login.tag, login.credentials.login, login.credentials.password) == (
        b"a",
        user,
        password,
    )
    syncs = len(re.findall(rb"\{\d+\}\r\n", command))  # each gets its "+", {n+} none
    assert out == b"+ Ready for literal data.\r\n" * syncs
    assert not login.credentials.plain


def test_a_synchronizing_literal_gets_its_continuation_a_non_synchronizing_one_none():
    _, out, _ = run(b"a LOGIN {3}\r\nbob {6+}\r\nsecret\r\n")
    assert out == b"+ Ready for literal data.\r\n"


@pytest.mark.parametrize("whole", [True, False])
def test_authenticate_plain_with_and_without_initial_response(whole):
    response = base64.b64encode(b"\0bob\0secret")
    _, out, effects = run(b"a AUTHENTICATE PLAIN " + response + b"\r\n", whole=whole)
    assert out == b"" and effects[0].credentials.password == b"secret"
    _, out, effects = run(b"a AUTHENTICATE PLAIN\r\n" + response + b"\r\n", whole=whole)
    assert out == b"+ \r\n" and effects[0].credentials.login == b"bob"
    assert effects[0].credentials.plain


def test_authenticate_cancelled_other_mechanisms_and_bad_arguments():
    _, out, effects = run(b"a AUTHENTICATE PLAIN\r\n*\r\n")
    assert out == b"+ \r\na BAD Authentication cancelled.\r\n" and effects == []
    _, out, effects = run(b"b AUTHENTICATE CRAM-MD5\r\n")
    assert out == b"b NO [CANNOT] Unsupported authentication mechanism.\r\n" and effects == []
    _, out, effects = run(b"c LOGIN onlyuser\r\nd AUTHENTICATE PLAIN !!!\r\n")
    assert out == b"c BAD Invalid LOGIN arguments.\r\nd BAD Invalid PLAIN arguments.\r\n"
    assert effects == []


def test_commands_the_proxy_answers_itself():
    pre, out, effects = run(b"1 CAPABILITY\r\n2 NOOP\r\n3 ID NIL\r\n4 SELECT INBOX\r\n5 LOGOUT\r\n")
    assert out == (
        b"* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN\r\n1 OK Capability completed.\r\n"
        b"2 OK NOOP completed.\r\n"
        b'* ID ("name" "imapmoveproxy")\r\n3 OK ID completed.\r\n'
        b"4 BAD Log in first (LOGIN or AUTHENTICATE PLAIN).\r\n"
        b"* BYE Logging out.\r\n5 OK Logout completed.\r\n"
    )
    assert effects == [Close("client logged out")] and pre.closed


def test_tls_required_login_disabled_until_starttls_and_plaintext_after_it_dropped():
    pre, greeting = prelogin(tls_offered=True, require_tls=True)
    assert greeting == (
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS LOGINDISABLED] "
        b"imapmoveproxy ready.\r\n"
    )
    pre.receive(b"a LOGIN bob secret\r\nb STARTTLS\r\nc LOGIN injected x\r\n")
    assert pre.take_output() == (
        b"a NO [PRIVACYREQUIRED] Use STARTTLS first.\r\nb OK Begin TLS negotiation now.\r\n"
    )
    assert pre.take_effects() == [StartTls()]
    pre.tls_established()
    assert pre.take_effects() == []  # the plaintext LOGIN after STARTTLS was thrown away
    pre.receive(b"d CAPABILITY\r\ne LOGIN bob secret\r\n")
    assert pre.take_output().startswith(
        b"* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN\r\n"
    )
    assert [effect.tag for effect in pre.take_effects()] == [b"e"]


def test_refused_logins_may_be_retried_up_to_the_bound_and_what_follows_waits():
    pre, _ = prelogin()
    pre.receive(b"a LOGIN bob wrong\r\nb LOGIN bob wrong\r\nc LOGIN bob wrong\r\n")
    assert [effect.tag for effect in pre.take_effects()] == [b"a"]  # one at a time
    pre.refused(b"NO [AUTHENTICATIONFAILED] Authentication failed.")
    assert [effect.tag for effect in pre.take_effects()] == [b"b"]
    pre.refused(b"NO [AUTHENTICATIONFAILED] Authentication failed.")
    assert [effect.tag for effect in pre.take_effects()] == [b"c"]
    pre.refused(b"NO [AUTHENTICATIONFAILED] Authentication failed.")
    assert pre.take_output().endswith(b"c NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
                                      b"* BYE Too many failed logins.\r\n")  # fmt: skip
    assert pre.take_effects() == [Close("too many failed logins")]


def test_a_final_refusal_ends_the_connection_at_once():
    pre, _ = prelogin()
    pre.receive(b"a LOGIN bob wrong\r\n")
    pre.take_effects()
    pre.refused(b"NO [AUTHENTICATIONFAILED] Go away", final=True)
    assert (
        pre.take_output()
        == b"a NO [AUTHENTICATIONFAILED] Go away\r\n* BYE Too many failed logins.\r\n"
    )
    assert pre.closed


def test_what_the_client_pipelined_after_its_login_is_handed_on_as_it_came():
    pre, _ = prelogin()
    pre.receive(b"a LOGIN bob secret\r\nb SELECT INBOX\r\nc FETCH 1 (BODY[]")
    assert pre.rest() == b"b SELECT INBOX\r\nc FETCH 1 (BODY[]"


def test_overlong_login_refused_and_its_literal_skipped():
    _, out, effects = run(b"a LOGIN {9000}\r\nb NOOP\r\n")
    assert out == b"a BAD LOGIN too long.\r\nb OK NOOP completed.\r\n" and effects == []
    data = b"a LOGIN {9000+}\r\n" + b"x" * 9000 + b" y\r\nb NOOP\r\n"
    _, out, effects = run(data)
    assert out == b"a BAD LOGIN too long.\r\nb OK NOOP completed.\r\n" and effects == []


def test_garbage_is_answered_bad_and_too_much_of_it_ends_the_connection():
    pre, out, effects = run(b"\r\n" * 9)
    assert out == b"* BAD Invalid command.\r\n" * 9 and effects == []
    pre.receive(b"\r\n")
    assert pre.take_output().endswith(b"* BYE Too many invalid IMAP commands.\r\n")
    assert pre.closed


def test_a_line_too_long_ends_the_connection():
    pre, _ = prelogin()
    pre.receive(b"a " + b"x" * 70000)
    assert pre.take_output() == b"* BYE Line too long.\r\n"
    assert pre.take_effects() == [Close("client line too long")]


def test_timed_out():
    pre, _ = prelogin()
    pre.timed_out()
    assert pre.take_output() == b"* BYE Autologout: no login in time.\r\n" and pre.closed
