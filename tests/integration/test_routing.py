"""Routing mode: one proxy in front of a legacy Dovecot (MOVE hidden), a native Dovecot and
imap4d, users routed by the static table and by an nginx ``auth_http`` lookup.

Every server is real, and so is the lookup: a stdlib HTTP server in a thread of the test, which
answers as an auth service written for nginx would. Which backend a session reached is told by
what a user would see: the messages of its INBOX (each server holds different ones) and, for
MOVE, whether the proxy emulated it (the server never received a MOVE) or passed it through.
"""

from __future__ import annotations

import base64
import http.server
import imaplib
import re
import shutil
import signal
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import imapclient
import pytest
import trustme
from harness import CompressedClient, InterceptingRelay, RawClient, RelayAction, running_proxy
from servers import DEFAULT_PASSWORD, HOST, ImapServer, find_free_port, make_message

PASSWORD = DEFAULT_PASSWORD
MOVE_COMMAND = re.compile(rb"^\S+ (UID )?MOVE ", re.IGNORECASE | re.MULTILINE)


def _toml_address(server: ImapServer) -> str:
    return f"{server.address[0]}:{server.address[1]}"


def write_config(
    path: Path,
    legacy: ImapServer,
    native: ImapServer,
    imap4d: ImapServer,
    routes: dict[str, str],
    extra: str = "",
) -> Path:
    """Three backends (imap4d with the guarded policy: it has no UIDPLUS) and ``routes``."""
    lines = [
        extra,
        "login_failure_delay = 0.0",
        "[backends.legacy]",
        f'upstream = "{_toml_address(legacy)}"',
        "[backends.native]",
        f'upstream = "{_toml_address(native)}"',
        "[backends.imap4d]",
        f'upstream = "{_toml_address(imap4d)}"',
        'no_uidplus = "guarded"',
        "[routes]",
        *(f'"{user}" = "{backend}"' for user, backend in routes.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def inbox_subjects(imap: imaplib.IMAP4) -> list[bytes]:
    typ, _ = imap.select("INBOX")
    assert typ == "OK"
    typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    # The subjects alone (imap4d spells the field name in capitals).
    return sorted(
        b"Subject: " + part[1].strip().split(b": ", 1)[1]
        for part in data
        if isinstance(part, tuple)
    )


def seeded_user(server: ImapServer, mark: str) -> str:
    user = server.new_user()
    server.seed(user, "INBOX", [make_message(f"{mark} 1"), make_message(f"{mark} 2")])
    server.seed(user, "Trash", [])
    return user


def count(server: ImapServer, user: str, mailbox: str) -> int:
    imap = server.connect(user)
    _, data = imap.status(mailbox, "(MESSAGES)")
    imap.logout()
    return int(data[0].split()[-1].rstrip(b")"))


@pytest.fixture
def users(dovecot_legacy, dovecot_native, imap4d) -> dict[str, str]:
    """A user on each server, its INBOX's messages named after the server."""
    return {
        "legacy": seeded_user(dovecot_legacy, "legacy"),
        "native": seeded_user(dovecot_native, "native"),
        "imap4d": seeded_user(imap4d, "imap4d"),
    }


@pytest.fixture
def static_proxy(dovecot_legacy, dovecot_native, imap4d, users, tmp_path):
    routes = {users["native"]: "native", "@test": "imap4d", "*": "legacy"}
    config = write_config(tmp_path / "routing.toml", dovecot_legacy, dovecot_native, imap4d, routes)
    metrics = f"{HOST}:{find_free_port()}"
    with running_proxy(
        None, tmp_path / "proxy.log", "--config", str(config), "--metrics", metrics
    ) as proxy:
        proxy.metrics_url = f"http://{metrics}/metrics"
        yield proxy


def test_static_table_routes_each_user_and_moves_as_its_backend_allows(
    static_proxy, dovecot_legacy, dovecot_native, imap4d, users
):
    servers = {"legacy": dovecot_legacy, "native": dovecot_native, "imap4d": imap4d}
    for name, server in servers.items():
        user = users[name]
        imap = imaplib.IMAP4(*static_proxy.address)
        assert "LOGINDISABLED" not in imap.capabilities  # no certificate: plaintext login
        typ, _ = imap.login(user, PASSWORD)
        assert typ == "OK"
        _, listed = imap.capability()
        assert b"MOVE" in listed[0].split(), name  # offered on every one
        assert inbox_subjects(imap) == [
            f"Subject: {name} 1".encode(),
            f"Subject: {name} 2".encode(),
        ]
        typ, data = imap.uid("MOVE", "1", "Trash")
        assert typ == "OK", (name, data)
        imap.logout()
        assert (count(server, user, "INBOX"), count(server, user, "Trash")) == (1, 1), name
    # Native MOVE passed through; the legacy Dovecot never received one (emulated).
    assert b"UID MOVE 1 Trash" in dovecot_native.received_bytes(users["native"])
    assert not MOVE_COMMAND.search(dovecot_legacy.received_bytes(users["legacy"]))
    static_proxy.wait_for_log(r"logged in to backend native")
    with urllib.request.urlopen(static_proxy.metrics_url, timeout=10) as response:
        exposition = response.read().decode()
    for backend, outcome in (("legacy", "moved"), ("native", "forwarded"), ("imap4d", "moved")):
        moves = f'imapmoveproxy_backend_moves_total{{backend="{backend}",outcome="{outcome}"}} 1.0'
        logins = f'imapmoveproxy_routed_logins_total{{backend="{backend}",result="ok"}} 1.0'
        assert moves in exposition and logins in exposition, exposition


def test_login_forms_and_pre_login_commands(static_proxy, users):
    user = users["legacy"]
    with RawClient(static_proxy.address) as client:
        assert client.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID")
        assert b"AUTH=PLAIN" in client.greeting
        assert client.command(b"c1", b"CAPABILITY")[-1].startswith(b"c1 OK")
        assert client.command(b"n1", b"NOOP")[-1].startswith(b"n1 OK")
        assert client.command(b"i1", b'ID ("name" "test")')[-1].startswith(b"i1 OK")
        assert client.command(b"s1", b"SELECT INBOX")[-1].startswith(b"s1 BAD")
        refused = client.command(b"a0", b"AUTHENTICATE CRAM-MD5")[-1]
        assert refused.startswith(b"a0 NO"), refused
        # LOGIN with a synchronizing literal for the user and a non-synchronizing one for the
        # password.
        secret = PASSWORD.encode()
        client.send(b"l1 LOGIN {%d}\r\n" % len(user))
        assert client.continuation().startswith(b"+")
        client.send(user.encode() + b" {%d+}\r\n" % len(secret) + secret + b"\r\n")
        reply = client.read_until(b"l1")[-1]
        assert reply.startswith(b"l1 OK [CAPABILITY ") and b" MOVE" in reply, reply
        assert client.command(b"x1", b"SELECT INBOX")[-1].startswith(b"x1 OK")
        client.logout()
    plain = base64.b64encode(b"\0" + user.encode() + b"\0" + PASSWORD.encode())
    with RawClient(static_proxy.address) as client:  # SASL-IR
        reply = client.command(b"a1", b"AUTHENTICATE PLAIN " + plain)[-1]
        assert reply.startswith(b"a1 OK"), reply
        client.logout()
    with RawClient(static_proxy.address) as client:  # the response after "+"
        client.send(b"a2 AUTHENTICATE PLAIN\r\n")
        assert client.continuation().startswith(b"+")
        client.send(plain + b"\r\n")
        assert client.read_until(b"a2")[-1].startswith(b"a2 OK")
        assert client.command(b"x2", b"STATUS INBOX (MESSAGES)")[0].endswith(b"(MESSAGES 2)\r\n")
        client.logout()


def test_wrong_password_then_right_one_and_the_bound_on_attempts(static_proxy, users):
    user = users["native"]
    with RawClient(static_proxy.address) as client:
        wrong = client.command(b"w1", f'LOGIN "{user}" "wrong"'.encode())[-1]
        assert wrong.startswith(b"w1 NO [AUTHENTICATIONFAILED]"), wrong
        right = client.login(user, PASSWORD)[-1]
        assert right.startswith(b"L1 OK"), right
        assert client.command(b"s1", b"SELECT INBOX")[-1].startswith(b"s1 OK")
        client.logout()
    with RawClient(static_proxy.address) as client:
        for n in range(3):
            reply = client.command(b"w%d" % n, f'LOGIN "{user}" "wrong"'.encode())
        assert reply[0].startswith(b"w2 NO") and reply[1:] == [], reply
        assert client._read_response().startswith(b"* BYE Too many failed logins")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert(HOST)
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "p.crt", "key": tmp_path / "p.key"}
    ca.cert_pem.write_to_path(files["ca"])
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    return files


def test_implicit_tls_and_starttls_before_login(
    dovecot_legacy, dovecot_native, imap4d, users, pki, tmp_path
):
    routes = {"*": "native"}
    extra = f'tls_cert = "{pki["cert"]}"\ntls_key = "{pki["key"]}"'
    config = write_config(
        tmp_path / "r.toml", dovecot_legacy, dovecot_native, imap4d, routes, extra
    )
    tls_port = find_free_port()
    listen_tls = ("--listen-tls", f"{HOST}:{tls_port}")
    with running_proxy(None, tmp_path / "proxy.log", "--config", str(config), *listen_tls) as proxy:
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        implicit = imaplib.IMAP4_SSL(HOST, tls_port, ssl_context=context)
        assert "LOGINDISABLED" not in implicit.capabilities
        implicit.login(users["native"], PASSWORD)
        assert inbox_subjects(implicit) == [b"Subject: native 1", b"Subject: native 2"]
        implicit.logout()
        imap = imaplib.IMAP4(*proxy.address)
        assert "LOGINDISABLED" in imap.capabilities and "STARTTLS" in imap.capabilities
        with pytest.raises(imaplib.IMAP4.error, match=r"PRIVACYREQUIRED|STARTTLS"):
            imap.login(users["native"], PASSWORD)
        imap.starttls(context)
        assert "STARTTLS" not in imap.capabilities and "AUTH=PLAIN" in imap.capabilities
        imap.login(users["native"], PASSWORD)
        assert "STARTTLS" not in imap.capabilities
        assert inbox_subjects(imap) == [b"Subject: native 1", b"Subject: native 2"]
        imap.logout()


# --------------------------------------------------------------------------- the HTTP lookup


@dataclass
class AuthService:
    """An nginx ``auth_http`` service: ``answer(headers)`` gives the answer's headers."""

    answer: Callable[[dict[str, str]], dict[str, str]]
    requests: list[dict[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/auth"


@pytest.fixture
def auth_service() -> Iterator[AuthService]:
    service = AuthService(lambda headers: {"Auth-Status": "Invalid login or password"})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {key: value for key, value in self.headers.items()}
            service.requests.append(headers)
            answer = service.answer(headers)
            if answer.pop("slow", None):
                service.release.wait(30)  # longer than the proxy's route_lookup_timeout
            self.send_response(int(answer.pop("status", "200")))
            for key, value in answer.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    service.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def lookup_proxy(dovecot_legacy, dovecot_native, imap4d, auth_service, tmp_path):
    extra = f'route_lookup = "{auth_service.url}"\nroute_lookup_timeout = 1.0'
    config = write_config(tmp_path / "r.toml", dovecot_legacy, dovecot_native, imap4d, {}, extra)
    with running_proxy(None, tmp_path / "proxy.log", "--config", str(config)) as proxy:
        yield proxy


def test_lookup_routes_renames_and_refuses(
    lookup_proxy, auth_service, dovecot_native, imap4d, users
):
    native, imap4d_user = users["native"], users["imap4d"]

    def answer(headers: dict[str, str]) -> dict[str, str]:
        if headers["Auth-User"] == "alias-of-imap4d-user":
            host, port = imap4d.address
            return {"Auth-Status": "OK", "Auth-Server": host, "Auth-Port": str(port),
                    "Auth-User": imap4d_user}  # fmt: skip
        if headers["Auth-User"] == native and headers["Auth-Pass"] == PASSWORD:
            host, port = dovecot_native.address
            return {"Auth-Status": "OK", "Auth-Server": host, "Auth-Port": str(port)}
        return {"Auth-Status": "Invalid login or password", "Auth-Wait": "0"}

    auth_service.answer = answer
    imap = imaplib.IMAP4(*lookup_proxy.address)
    with pytest.raises(imaplib.IMAP4.error, match="Invalid login or password"):
        imap.login("nobody-known", PASSWORD)
    imap.login(native, PASSWORD)  # the same connection, after a refusal
    assert inbox_subjects(imap) == [b"Subject: native 1", b"Subject: native 2"]
    imap.logout()
    request = auth_service.requests[-1]
    assert request["Auth-Protocol"] == "imap" and request["Auth-Method"] == "plain"
    assert request["Client-IP"] == HOST and request["Auth-Login-Attempt"] == "2"
    imap = imaplib.IMAP4(*lookup_proxy.address)
    imap.login("alias-of-imap4d-user", PASSWORD)  # Auth-User: logged in as the real name
    assert inbox_subjects(imap) == [b"Subject: imap4d 1", b"Subject: imap4d 2"]
    imap.logout()
    # A second login within route_cache_ttl: the lookup is not asked again; a wrong password
    # is never answered from the cache.
    asked = len(auth_service.requests)
    imap = imaplib.IMAP4(*lookup_proxy.address)
    imap.login(native, PASSWORD)
    imap.logout()
    assert len(auth_service.requests) == asked
    imap = imaplib.IMAP4(*lookup_proxy.address)
    with pytest.raises(imaplib.IMAP4.error, match="Invalid login or password"):
        imap.login(native, "wrong")
    assert len(auth_service.requests) == asked + 1
    lookup_proxy.wait_for_log(r"closed client=.* upstream=native@")
    assert PASSWORD not in lookup_proxy.log_text()  # at debug level too


def test_lookup_outside_the_allowed_set_down_or_slow_is_unavailable(
    lookup_proxy, auth_service, users, dovecot_native
):
    outsider = find_free_port()  # an IMAP server no backend names

    def answer(headers: dict[str, str]) -> dict[str, str]:
        if headers["Auth-User"] == "slow":
            return {"slow": "1", "Auth-Status": "OK"}
        if headers["Auth-User"] == "broken":  # the right answer, in an error page
            host, port = dovecot_native.address
            return {"status": "500", "Auth-Status": "OK", "Auth-Server": host,
                    "Auth-Port": str(port)}  # fmt: skip
        return {"Auth-Status": "OK", "Auth-Server": HOST, "Auth-Port": str(outsider)}

    auth_service.answer = answer
    with RawClient(lookup_proxy.address) as client:
        reply = client.command(b"o1", f'LOGIN "{users["native"]}" "{PASSWORD}"'.encode())[-1]
        assert reply.startswith(b"o1 NO [UNAVAILABLE]"), reply
        reply = client.command(b"o2", b'LOGIN "slow" "x"')[-1]
        assert reply.startswith(b"o2 NO [UNAVAILABLE]"), reply
    with RawClient(lookup_proxy.address) as client:
        reply = client.command(b"o3", f'LOGIN "broken" "{PASSWORD}"'.encode())[-1]
        assert reply.startswith(b"o3 NO [UNAVAILABLE]"), reply
    lookup_proxy.wait_for_log(r"not a configured backend")


def test_lookup_service_down(dovecot_legacy, dovecot_native, imap4d, users, tmp_path):
    down = f"http://{HOST}:{find_free_port()}/auth"  # nothing listens there
    extra = f'route_lookup = "{down}"'
    config = write_config(tmp_path / "r.toml", dovecot_legacy, dovecot_native, imap4d, {}, extra)
    with running_proxy(None, tmp_path / "proxy.log", "--config", str(config)) as proxy:
        with RawClient(proxy.address) as client:
            reply = client.command(b"d1", f'LOGIN "{users["native"]}" "{PASSWORD}"'.encode())[-1]
            assert reply.startswith(b"d1 NO [UNAVAILABLE]"), reply
        proxy.wait_for_log(r"route lookup failed")


# --------------------------------------------------------------------------- reload, migration


def test_sighup_moves_a_user_while_its_old_session_keeps_working(
    dovecot_legacy, dovecot_native, imap4d, tmp_path
):
    user = dovecot_legacy.new_user()  # the same name on both Dovecots, different mail
    dovecot_legacy.seed(user, "INBOX", [make_message("old 1"), make_message("old 2")])
    dovecot_legacy.seed(user, "Trash", [])
    dovecot_native.seed(user, "INBOX", [make_message("new 1")])
    path = tmp_path / "r.toml"
    write_config(path, dovecot_legacy, dovecot_native, imap4d, {"*": "legacy"})
    with running_proxy(None, tmp_path / "proxy.log", "--config", str(path)) as proxy:
        old = imaplib.IMAP4(*proxy.address)
        old.login(user, PASSWORD)
        assert inbox_subjects(old) == [b"Subject: old 1", b"Subject: old 2"]
        write_config(path, dovecot_legacy, dovecot_native, imap4d, {user: "native", "*": "legacy"})
        proxy.process.send_signal(signal.SIGHUP)
        proxy.wait_for_log(r"routes reloaded")
        new = imaplib.IMAP4(*proxy.address)
        new.login(user, PASSWORD)
        assert inbox_subjects(new) == [b"Subject: new 1"]
        new.logout()
        # The old session is still on the legacy server, and MOVE is still emulated there.
        typ, data = old.uid("MOVE", "1", "Trash")
        assert typ == "OK", data
        assert inbox_subjects(old) == [b"Subject: old 2"]
        old.logout()
    assert count(dovecot_legacy, user, "Trash") == 1


def copy_mailboxes(home: Path, user: str, old: ImapServer, new: ImapServer) -> None:
    """Every mailbox of ``user``'s, with its messages and their flags, from ``old`` to ``new``
    (mbsync, IMAP to IMAP: the kind of copy a migration makes)."""
    mbsync = shutil.which("mbsync")
    assert mbsync is not None, "mbsync not found: install the Debian package isync"
    home.mkdir()
    accounts = "".join(
        f'IMAPAccount {name}\nHost {server.host}\nPort {server.port}\nUser "{user}"\n'
        f'Pass "{PASSWORD}"\nSSLType None\nAuthMechs LOGIN\nTimeout 20\n\n'
        f"IMAPStore {name}\nAccount {name}\n\n"
        for name, server in (("old", old), ("new", new))
    )
    config = home / "mbsyncrc"
    config.write_text(
        accounts + "Channel migrate\nFar :old:\nNear :new:\nPatterns *\nCreate Near\n"
        f"Sync Pull\nSyncState {home}/state-\n"
    )
    config.chmod(0o600)
    done = subprocess.run(
        [mbsync, "-c", str(config), "migrate"],
        capture_output=True, text=True, timeout=120, check=False, env={"HOME": str(home)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_migration_copy_reroute_reconnect_native_move(
    dovecot_legacy, dovecot_native, imap4d, tmp_path
):
    """A user's mail copied from the legacy server to the new one (by mbsync), the route
    changed, and the user's clients (imaplib, IMAPClient) MOVE natively on the new
    server; the proxy's emulation is used only on the old."""
    user = dovecot_legacy.new_user()
    dovecot_native.add_user(user)
    dovecot_legacy.seed(user, "INBOX", [make_message(f"mail {i}") for i in range(1, 4)])
    dovecot_legacy.seed(user, "Archive", [])
    path = tmp_path / "r.toml"
    write_config(path, dovecot_legacy, dovecot_native, imap4d, {"*": "legacy"})
    with running_proxy(None, tmp_path / "proxy.log", "--config", str(path)) as proxy:
        before = imaplib.IMAP4(*proxy.address)
        before.login(user, PASSWORD)
        before.select("INBOX")
        assert before.uid("MOVE", "1", "Archive")[0] == "OK"  # emulated on the old server
        before.logout()
        # The copy, by a migration tool from Debian: mbsync, from the old server to the new.
        copy_mailboxes(tmp_path / "mbsync", user, dovecot_legacy, dovecot_native)
        assert count(dovecot_native, user, "INBOX") == 2
        assert count(dovecot_native, user, "Archive") == 1
        write_config(path, dovecot_legacy, dovecot_native, imap4d, {user: "native", "*": "legacy"})
        proxy.process.send_signal(signal.SIGHUP)
        proxy.wait_for_log(r"routes reloaded")
        after = imaplib.IMAP4(*proxy.address)
        after.login(user, PASSWORD)
        after.select("INBOX")
        assert after.uid("MOVE", "1", "Archive")[0] == "OK"
        after.logout()
        client = imapclient.IMAPClient(*proxy.address, ssl=False)
        client.login(user, PASSWORD)
        client.select_folder("INBOX")
        client.move(client.search("ALL")[:1], "Archive")
        client.logout()
    assert count(dovecot_native, user, "INBOX") == 0
    assert count(dovecot_native, user, "Archive") == 3
    new_traffic = dovecot_native.received_bytes(user)
    assert b"UID MOVE 1 Archive" in new_traffic and b"UID MOVE" in new_traffic.replace(
        b"UID MOVE 1 Archive", b"", 1
    )  # both clients' MOVEs reached the new server as MOVEs
    assert not MOVE_COMMAND.search(dovecot_legacy.received_bytes(user))  # emulated there


def test_sigterm_ends_clients_not_logged_in_at_once_and_tells_the_others_bye(static_proxy, users):
    with RawClient(static_proxy.address) as waiting, RawClient(static_proxy.address) as working:
        assert working.login(users["legacy"], PASSWORD)[-1].startswith(b"L1 OK")
        static_proxy.process.send_signal(signal.SIGTERM)
        assert working._read_response().startswith(b"* BYE [UNAVAILABLE]")
        assert waiting.sock.recv(100) == b""  # closed, not kept for drain_timeout (30 s)
    assert static_proxy.process.wait(10) == 0


class _Relayed:
    """The legacy Dovecot's address as a relay in front of it gives it (for write_config)."""

    def __init__(self, relay: InterceptingRelay) -> None:
        self.address = relay.address


def test_a_failed_move_is_rolled_back_with_the_routed_login(
    dovecot_legacy, dovecot_native, imap4d, tmp_path
):
    """The legacy backend behind a relay that answers the MOVE's STORE with NO itself (no real
    server fails a STORE on demand): the rollback's second session reaches the user's backend
    (through the relay, as its configured address) and logs in with what the client logged in
    with at the proxy; the copy it made is removed."""
    user = seeded_user(dovecot_legacy, "legacy")
    relay = InterceptingRelay(
        dovecot_legacy.address, b"+FLAGS.SILENT (\\Deleted)", 1,
        action=RelayAction.ANSWER, reply=lambda tag: tag + b" NO [NOPERM] injected\r\n",
    )  # fmt: skip
    try:
        path = write_config(
            tmp_path / "r.toml", _Relayed(relay), dovecot_native, imap4d, {"*": "legacy"}
        )
        with running_proxy(None, tmp_path / "proxy.log", "--config", str(path)) as proxy:
            imap = imaplib.IMAP4(*proxy.address)
            imap.login(user, PASSWORD)
            imap.select("INBOX")
            typ, data = imap.uid("MOVE", "1", "Trash")
            assert typ == "NO" and b"0 of 1 messages were moved" in data[0], data
            imap.logout()
            proxy.wait_for_log(r"rollback=done")
        assert relay.hook_ran.is_set()
    finally:
        relay.close()
    assert (count(dovecot_legacy, user, "INBOX"), count(dovecot_legacy, user, "Trash")) == (2, 0)


@pytest.mark.parametrize("upstream_id", [True, False])
def test_the_client_address_goes_to_the_backend_by_id_only_where_allowed(
    dovecot_legacy, dovecot_native, imap4d, tmp_path, upstream_id
):
    """What the proxy tells the backend before the login, seen by a relay in front of it (the
    Dovecot's rawlog records sessions from their login on)."""
    user = seeded_user(dovecot_legacy, "legacy")
    relay = InterceptingRelay(dovecot_legacy.address, b"LOGIN", 1)
    try:
        extra = "" if upstream_id else "upstream_id = false"
        path = write_config(
            tmp_path / "r.toml", _Relayed(relay), dovecot_native, imap4d, {"*": "legacy"}, extra
        )
        with running_proxy(None, tmp_path / "proxy.log", "--config", str(path)) as proxy:
            imap = imaplib.IMAP4(*proxy.address)
            imap.login(user, PASSWORD)
            imap.logout()
        sent = relay.received
    finally:
        relay.close()
    assert (b' ID ("x-originating-ip" "127.0.0.1" ' in sent) == upstream_id, sent
    # The login costs the backend no more than that: no CAPABILITY (Dovecot lists them in its
    # greeting and its login's OK), then the client's own LOGOUT.
    commands = [line.split(b" ")[1] for line in sent.splitlines()]
    assert commands == [b"ID", b"LOGIN", b"LOGOUT"][0 if upstream_id else 1 :], sent


def test_a_client_that_never_logs_in_is_told_bye(dovecot_legacy, dovecot_native, imap4d, tmp_path):
    config = write_config(
        tmp_path / "r.toml", dovecot_legacy, dovecot_native, imap4d, {"*": "legacy"},
        "login_timeout = 1.0",
    )  # fmt: skip
    with (
        running_proxy(None, tmp_path / "proxy.log", "--config", str(config)) as proxy,
        RawClient(proxy.address) as client,
    ):
        assert client.command(b"n", b"NOOP")[-1].startswith(b"n OK")
        assert client._read_response() == b"* BYE Autologout: no login in time.\r\n"
        assert client.sock.recv(100) == b""


def test_a_routed_client_compresses_after_login(static_proxy, dovecot_legacy, imap4d, users):
    """COMPRESS=DEFLATE in routing mode: offered once a routed login is in, and a MOVE through
    the compressed connection, on the legacy Dovecot and on imap4d."""
    for name, server in (("legacy", dovecot_legacy), ("imap4d", imap4d)):
        with CompressedClient(static_proxy.address) as client:
            client.login(users[name], PASSWORD)
            listed = client.command(b"c", b"CAPABILITY")
            assert b" COMPRESS=DEFLATE" in listed[0], (name, listed)
            client.compress()
            client.send(b"s SELECT INBOX\r\nm UID MOVE 1 Trash\r\n")
            assert client.read_until(b"m")[-1].startswith(b"m OK"), name
            client.logout()
        assert (count(server, users[name], "INBOX"), count(server, users[name], "Trash")) == (1, 1)
