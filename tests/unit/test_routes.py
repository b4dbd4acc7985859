"""Which backend a login goes to (engine/routes.py), and routing mode's configuration."""

from __future__ import annotations

import pytest

from imapmoveproxy.config import DEFAULT_JOURNAL, ConfigError, build
from imapmoveproxy.engine.routes import (
    MAX_WAIT,
    BadAnswer,
    Refused,
    Routed,
    lookup_answer,
    lookup_headers,
    static_route,
)

TABLE = {"bob@example.org": "new", "@example.org": "old", "@other.net": "new", "*": "old"}
BACKENDS = {"old": ("10.0.0.1", 143), "new": ("10.0.0.2", 993)}


@pytest.mark.parametrize(
    ("user", "backend"),
    [
        ("bob@example.org", "new"),  # exactly
        ("alice@EXAMPLE.org", "old"),  # by domain, whatever its case
        ("carol@other.net", "new"),
        ("dave", "old"),  # the default
        ("a@b@other.net", "new"),  # the domain after the last @
    ],
)
def test_static_route(user, backend):
    assert static_route(TABLE, user) == backend


def test_no_default_no_route():
    assert static_route({"@example.org": "old"}, "bob@example.net") is None


def test_lookup_headers_as_nginx_sends_them():
    headers = lookup_headers(b"bob@example.org", b"p%ss w\xc3\xb6rd", 2, "192.0.2.7")
    assert headers == {
        "Auth-Method": "plain",
        "Auth-User": "bob@example.org",
        "Auth-Pass": "p%25ss%20w%C3%B6rd",  # "%", space and 8-bit escaped, as nginx does
        "Auth-Protocol": "imap",
        "Auth-Login-Attempt": "2",
        "Client-IP": "192.0.2.7",
    }


def test_lookup_answers():
    ok = {"auth-status": "OK", "auth-server": "10.0.0.2", "auth-port": "993"}
    assert lookup_answer(ok, BACKENDS) == Routed("new")
    renamed = {**ok, "auth-user": "bob%40example.org"}
    assert lookup_answer(renamed, BACKENDS) == Routed("new", b"bob@example.org")
    refused = {"auth-status": "Invalid login or password", "auth-wait": "3"}
    assert lookup_answer(refused, BACKENDS) == Refused(
        b"NO [AUTHENTICATIONFAILED] Invalid login or password", 3.0
    )
    no_wait = lookup_answer({"auth-status": "Go away"}, BACKENDS)
    assert isinstance(no_wait, Refused) and no_wait.final
    long_wait = lookup_answer({"auth-status": "x", "auth-wait": "1e9"}, BACKENDS)
    assert isinstance(long_wait, Refused) and long_wait.wait == MAX_WAIT


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no Auth-Status
        {"auth-status": "OK"},  # no server
        {"auth-status": "OK", "auth-server": "10.0.0.2", "auth-port": "143"},  # not allowed
        {"auth-status": "OK", "auth-server": "203.0.113.9", "auth-port": "143"},  # open relay
        {"auth-status": "OK", "auth-server": "10.0.0.1", "auth-port": "x"},
        {"auth-status": "no", "auth-wait": "soon"},
    ],
)
def test_answers_that_cannot_be_used(headers):
    with pytest.raises(BadAnswer):
        lookup_answer(headers, BACKENDS)


ROUTED = {
    "listen": "127.0.0.1:1143",
    "backends": {
        "old": {"upstream": "10.0.0.1:143", "no_uidplus": "guarded"},
        "new": {"upstream": "10.0.0.2:993", "upstream_tls": "implicit"},
    },
    "routes": {"@Example.org": "new", "*": "old"},
}


def test_routing_configuration():
    config = build(ROUTED)
    assert config.upstream is None
    assert config.routes == {"@example.org": "new", "*": "old"}
    old, new = config.backends["old"], config.backends["new"]
    assert (old.no_uidplus, old.upstream_tls, new.upstream_tls) == ("guarded", "none", "implicit")
    assert new.login_timeout == config.login_timeout  # the top level's settings, inherited
    # one journal for every backend (each its own namespace: the backend's address)
    assert {c.journal_location for c in (config, old, new)} == {DEFAULT_JOURNAL}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"routes": {"*": "gone"}}, "names 'gone', which is not in backends"),
        ({"upstream": "10.0.0.3:143"}, "upstream: not used with backends"),
        ({"routes": {}}, "routes: required with backends, or route_lookup"),
        ({"backends": {"x": {"listen": "0.0.0.0:1"}}}, "backends.x.listen: not a backend"),
        ({"backends": {"x": {}}}, "backends.x.upstream: required"),
        ({"backends": {"x": {"upstream": "nowhere"}}, "routes": {"*": "x"}}, "backends.x.upst"),
        ({"route_lookup": "ftp://x/"}, 'route_lookup: expected an "http://..." URL'),
    ],
)
def test_routing_configuration_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        build({**ROUTED, **change})


def test_routes_need_backends():
    with pytest.raises(ConfigError, match="routes: needs backends"):
        build({"listen": "127.0.0.1:1", "upstream": "10.0.0.1:143", "routes": {"*": "x"}})


def test_failed_logins_slow_their_own_address_only_up_to_a_bound():
    from imapmoveproxy.shell.routing import Router

    router = Router(build({**ROUTED, "login_failure_delay": 0.5}), tls_offered=False)
    delays = [router.failure_delay("192.0.2.1") for _ in range(10)]
    assert delays == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.0, 4.0]
    assert router.failure_delay("192.0.2.2") == 0.5
