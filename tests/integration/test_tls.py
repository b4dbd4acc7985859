"""TLS on both sides: implicit TLS and STARTTLS to clients, verified TLS to the upstream.

Certificates are made by the tests (trustme). The upstream is a real Dovecot with TLS, once in
each mode; the one refusal a real server cannot be made to produce (a greeting without
STARTTLS from a server that should offer it) comes from a scripted fake upstream.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest
import trustme
from harness import ROOT, CompressedClient, RawClient, dovecot_with, run_probe, running_proxy
from servers import HOST, DovecotServer, ImapServer, find_free_port, make_message

UPSTREAM_NAME = "mail.test"  # the name in the upstream Dovecot's certificate


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: the CA, the proxy's certificate (127.0.0.1), the upstream's (mail.test)."""
    root = tmp_path_factory.mktemp("pki")
    files = {"ca": root / "ca.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    for name, identity in (("proxy", HOST), ("upstream", UPSTREAM_NAME)):
        cert = ca.issue_cert(identity, "localhost")
        files[f"{name}_cert"] = root / f"{name}.crt"
        files[f"{name}_key"] = root / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(files[f"{name}_cert"])
        cert.private_key_pem.write_to_path(files[f"{name}_key"])
        files[f"{name}_cert"].chmod(0o644)
        files[f"{name}_key"].chmod(0o644)
    return files


@pytest.fixture(scope="module")
def tls_dovecot(pki, tmp_path_factory) -> Iterator[DovecotServer]:
    """Dovecot with MOVE hidden, STARTTLS on its plain port and implicit TLS on ``imaps_port``."""
    imaps_port = find_free_port()
    extra = f"""
ssl = yes
ssl_cert = <{pki["upstream_cert"]}
ssl_key = <{pki["upstream_key"]}
service imap-login {{
  inet_listener imaps {{
    address = {HOST}
    port = {imaps_port}
  }}
}}
"""
    with dovecot_with(tmp_path_factory.mktemp("dovecot-tls"), "dovecot-tls", extra) as server:
        server.imaps_port = imaps_port  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def client_context(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki["ca"]))


def proxy_tls_args(pki) -> list[str]:
    tls_port = find_free_port()
    args = ["--listen-tls", f"{HOST}:{tls_port}", "--tls-cert", str(pki["proxy_cert"]),
            "--tls-key", str(pki["proxy_key"])]  # fmt: skip
    return args


def tls_port_of(args: list[str]) -> int:
    return int(args[args.index("--listen-tls") + 1].rsplit(":", 1)[1])


def seeded(server: ImapServer) -> str:
    user = server.new_user()
    server.seed(user, "INBOX", [make_message(f"message {i}") for i in range(1, 4)])
    server.seed(user, "Trash", [])
    return user


def trash_count(server: ImapServer, user: str) -> int:
    imap = server.connect(user)
    _, data = imap.status("Trash", "(MESSAGES)")
    imap.logout()
    return int(data[0].split()[-1].rstrip(b")"))


def move_one(imap: imaplib.IMAP4) -> None:
    imap.select("INBOX")
    typ, data = imap.uid("MOVE", "1", "Trash")
    assert typ == "OK", data


def test_implicit_tls_listener_with_imaplib(dovecot_legacy, pki, client_context, tmp_path):
    user = seeded(dovecot_legacy)
    args = proxy_tls_args(pki)
    with running_proxy(dovecot_legacy.address, tmp_path / "p.log", *args):
        imap = imaplib.IMAP4_SSL(HOST, tls_port_of(args), ssl_context=client_context, timeout=10)
        assert imap.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert "STARTTLS" not in imap.capabilities and "LOGINDISABLED" not in imap.capabilities
        imap.login(user, dovecot_legacy.password)
        move_one(imap)
        imap.logout()
    assert trash_count(dovecot_legacy, user) == 1


def test_implicit_tls_with_imapclient(dovecot_legacy, pki, client_context, tmp_path):
    user = seeded(dovecot_legacy)
    args = proxy_tls_args(pki)
    with running_proxy(dovecot_legacy.address, tmp_path / "p.log", *args):
        client = imapclient.IMAPClient(
            HOST, port=tls_port_of(args), ssl=True, ssl_context=client_context, timeout=10
        )
        client.login(user, dovecot_legacy.password)
        client.select_folder("INBOX")
        client.move(client.search("ALL")[:2], "Trash")
        client.logout()
    assert trash_count(dovecot_legacy, user) == 2


def test_starttls_with_imaplib(dovecot_legacy, pki, client_context, tmp_path):
    user = seeded(dovecot_legacy)
    args = proxy_tls_args(pki)
    with running_proxy(dovecot_legacy.address, tmp_path / "p.log", *args) as proxy:
        imap = imaplib.IMAP4(HOST, proxy.port, timeout=10)
        assert "STARTTLS" in imap.capabilities and "LOGINDISABLED" in imap.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            imap.login(user, dovecot_legacy.password)
        imap.starttls(ssl_context=client_context)  # re-reads the capabilities over TLS
        assert "STARTTLS" not in imap.capabilities and "LOGINDISABLED" not in imap.capabilities
        imap.login(user, dovecot_legacy.password)
        assert "MOVE" in imap.capabilities or "MOVE" in imap.capability()[1][0].decode()
        move_one(imap)
        imap.logout()
    assert trash_count(dovecot_legacy, user) == 1


def test_compress_over_starttls_and_no_starttls_after_compress(
    dovecot_legacy, pki, client_context, tmp_path, monkeypatch
):
    """COMPRESS over TLS: compressed, then encrypted (RFC 4978 §3), with a MOVE through it. On
    a connection compressed before any TLS, STARTTLS gets BAD (TLS cannot go under the
    compression) and the connection goes on compressed."""
    user = seeded(dovecot_legacy)
    monkeypatch.setenv("IMAPMOVEPROXY_REQUIRE_TLS", "false")  # LOGIN in plaintext, below
    args = proxy_tls_args(pki)
    with running_proxy(dovecot_legacy.address, tmp_path / "p.log", *args) as proxy:
        with CompressedClient(proxy.address) as client:
            assert client.command(b"t", b"STARTTLS")[-1].startswith(b"t OK")
            client.sock = client_context.wrap_socket(client.sock, server_hostname=HOST)
            client.login(user, dovecot_legacy.password)
            client.compress()
            client.send(b"s SELECT INBOX\r\nm UID MOVE 1 Trash\r\n")
            assert client.read_until(b"m")[-1].startswith(b"m OK"), "MOVE failed"
            client.logout()
        with CompressedClient(proxy.address) as plain:
            plain.login(user, dovecot_legacy.password)
            plain.compress()
            refused = plain.command(b"t", b"STARTTLS")
            assert refused[-1].startswith(b"t BAD STARTTLS is not allowed after COMPRESS")
            assert plain.command(b"n", b"NOOP")[-1].startswith(b"n OK")
    assert trash_count(dovecot_legacy, user) == 1


def test_plaintext_pipelined_after_starttls_is_thrown_away(dovecot_legacy, pki, client_context,
                                                           tmp_path):  # fmt: skip
    user = seeded(dovecot_legacy)
    args = proxy_tls_args(pki)
    with running_proxy(dovecot_legacy.address, tmp_path / "p.log", *args) as proxy:
        raw = socket.create_connection(proxy.address, 10)
        raw.recv(4096)  # greeting
        # An attacker in the middle appends a command to the client's STARTTLS.
        raw.sendall(b"a STARTTLS\r\nb LOGOUT\r\n")
        assert raw.recv(4096).startswith(b"a OK")
        tls = client_context.wrap_socket(raw, server_hostname=HOST)
        tls.sendall(b"c NOOP\r\n")
        reply = b""
        while b"c OK" not in reply:
            chunk = tls.recv(4096)
            assert chunk, reply
            reply += chunk
        assert b"b " not in reply and b"BYE" not in reply  # the injected LOGOUT never ran
        tls.sendall(f"d LOGIN {user} {dovecot_legacy.password}\r\n".encode())
        assert tls.recv(4096).startswith(b"d OK")
        tls.close()


def test_tls_handshake_that_never_finishes_is_closed(dovecot_legacy, pki, tmp_path):
    args = proxy_tls_args(pki)
    config = tmp_path / "proxy.toml"
    config.write_text("tls_handshake_timeout = 0.5\n")
    with running_proxy(dovecot_legacy.address, tmp_path / "p.log", *args, "--config",
                       str(config)):  # fmt: skip
        raw = socket.create_connection((HOST, tls_port_of(args)), 10)
        started = time.monotonic()
        assert raw.recv(100) == b""  # closed by the proxy, no bytes sent
        assert time.monotonic() - started < 8
        raw.close()


def test_certificate_is_reloaded_on_sighup(dovecot_legacy, pki, ca, tmp_path):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    cert.write_bytes(pki["proxy_cert"].read_bytes())
    key.write_bytes(pki["proxy_key"].read_bytes())
    tls_port = find_free_port()
    args = ["--listen-tls", f"{HOST}:{tls_port}", "--tls-cert", str(cert), "--tls-key", str(key)]

    def served_certificate() -> bytes:
        with socket.create_connection((HOST, tls_port), 10) as raw:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with context.wrap_socket(raw) as tls:
                return tls.getpeercert(binary_form=True) or b""

    with running_proxy(dovecot_legacy.address, tmp_path / "p.log", *args) as proxy:
        before = served_certificate()
        renewed = ca.issue_cert(HOST)
        renewed.cert_chain_pems[0].write_to_path(cert)
        renewed.private_key_pem.write_to_path(key)
        proxy.process.send_signal(signal.SIGHUP)
        for _ in range(50):
            if served_certificate() != before:
                break
            time.sleep(0.1)
        assert served_certificate() != before
        assert "certificate reloaded" in proxy.log_text()


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_verified_tls_to_the_upstream(tls_dovecot, pki, tmp_path, mode):
    user = seeded(tls_dovecot)
    port = tls_dovecot.port if mode == "starttls" else tls_dovecot.imaps_port
    args = ["--upstream-tls", mode, "--upstream-ca", str(pki["ca"]),
            "--upstream-server-name", UPSTREAM_NAME]  # fmt: skip
    with (
        running_proxy((HOST, port), tmp_path / "p.log", *args) as proxy,
        RawClient(proxy.address) as client,
    ):
        assert b"STARTTLS" not in client.greeting and b"MOVE" in client.greeting
        client.login(user, tls_dovecot.password)
        client.command(b"s", b"SELECT INBOX")
        assert client.command(b"m", b"MOVE 1:2 Trash")[-1].startswith(b"m OK")
    assert trash_count(tls_dovecot, user) == 2
    assert b" MOVE " not in tls_dovecot.received_bytes(user)
    assert "secured=yes" in tls_dovecot.log_text() or "TLS" in tls_dovecot.log_text()


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--upstream-server-name", "wrong.test"], "wrong name"),
        ([], "CA not trusted (system store)"),
    ],
)
def test_upstream_certificate_that_does_not_verify_is_refused(tls_dovecot, pki, tmp_path, args,
                                                              why):  # fmt: skip
    base = ["--upstream-tls", "implicit"]
    if "--upstream-server-name" in args:
        base += ["--upstream-ca", str(pki["ca"])]
    else:
        base += ["--upstream-server-name", UPSTREAM_NAME]
    upstream = (HOST, tls_dovecot.imaps_port)
    with running_proxy(upstream, tmp_path / "p.log", *base, *args) as proxy:
        raw = socket.create_connection(proxy.address, 10)
        assert raw.recv(1000).startswith(b"* BYE [UNAVAILABLE]"), why
        raw.close()
        time.sleep(0.2)
        assert "CERTIFICATE_VERIFY_FAILED" in proxy.log_text() or "certificate" in proxy.log_text()


def test_disabling_verification_is_explicit_and_loud(tls_dovecot, tmp_path):
    user = seeded(tls_dovecot)
    args = ["--upstream-tls", "implicit", "--upstream-tls-no-verify"]
    with running_proxy((HOST, tls_dovecot.imaps_port), tmp_path / "p.log", *args) as proxy:
        with RawClient(proxy.address) as client:
            client.login(user, tls_dovecot.password)
        assert "INSECURE" in proxy.log_text()


def test_upstream_without_starttls_is_refused_not_used_in_plaintext(tmp_path):
    """A fake upstream whose greeting lacks STARTTLS: a real server offering TLS cannot be made
    to strip it (a man in the middle could)."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(10)
    seen: list[bytes] = []

    def fake_upstream() -> None:
        for _ in range(2):  # the harness's start-up probe, then the test's client
            with listener.accept()[0] as conn:
                conn.sendall(b"* OK [CAPABILITY IMAP4rev1 UIDPLUS AUTH=PLAIN] no TLS here\r\n")
                conn.settimeout(2)
                with contextlib.suppress(TimeoutError, OSError):
                    seen.append(conn.recv(1000))

    thread = threading.Thread(target=fake_upstream, daemon=True)
    thread.start()
    args = ["--upstream-tls", "starttls"]
    with running_proxy(listener.getsockname()[:2], tmp_path / "p.log", *args) as proxy:
        raw = socket.create_connection(proxy.address, 10)
        assert raw.recv(1000).startswith(b"* BYE [UNAVAILABLE]")
        raw.close()
        thread.join(10)
        assert "does not offer STARTTLS" in proxy.log_text()
    assert seen == [b"", b""]  # nothing (no LOGIN, no password) was sent in plaintext
    listener.close()


def test_login_before_starttls_is_refused_when_tls_is_required(dovecot_legacy, pki, tmp_path):
    args = proxy_tls_args(pki)
    with running_proxy(dovecot_legacy.address, tmp_path / "p.log", *args) as proxy:
        with RawClient(proxy.address) as client:
            assert b"LOGINDISABLED" in client.greeting and b"STARTTLS" in client.greeting
            reply = client.command(b"a", f"LOGIN x {dovecot_legacy.password}".encode())
            assert reply[-1].startswith(b"a NO [PRIVACYREQUIRED]")
            reply = client.command(b"b", b"AUTHENTICATE PLAIN AHgAeA==")
            assert reply[-1].startswith(b"b NO [PRIVACYREQUIRED]")
        assert dovecot_legacy.password not in proxy.log_text()


def test_bad_certificate_is_a_one_line_config_error(tmp_path):
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    result = subprocess.run(
        [sys.executable, "-m", "imapmoveproxy", "--listen-tls", "127.0.0.1:1",
         "--upstream", "127.0.0.1:2", "--tls-cert", str(bogus), "--tls-key", str(bogus)],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("imapmoveproxy: configuration error: tls_cert:")


def test_client_certificate_to_an_upstream_that_requires_one(pki, ca, tmp_path):
    client_cert = ca.issue_cert("imapmoveproxy-client")
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    client_cert.cert_chain_pems[0].write_to_path(cert)
    client_cert.private_key_pem.write_to_path(key)
    extra = f"""
ssl = required
ssl_cert = <{pki["upstream_cert"]}
ssl_key = <{pki["upstream_key"]}
ssl_ca = <{pki["ca"]}
ssl_verify_client_cert = yes
ssl_require_crl = no
auth_ssl_require_client_cert = yes
"""
    with dovecot_with(tmp_path / "dovecot", "dovecot-client-cert", extra) as server:
        user = server.new_user()
        tls = ["--upstream-tls", "starttls", "--upstream-ca", str(pki["ca"]),
               "--upstream-server-name", UPSTREAM_NAME]  # fmt: skip
        with_cert = [*tls, "--upstream-client-cert", str(cert), "--upstream-client-key", str(key)]
        with (
            running_proxy(server.address, tmp_path / "a.log", *with_cert) as proxy,
            RawClient(proxy.address) as client,
        ):
            client.login(user, server.password)
        with (
            running_proxy(server.address, tmp_path / "b.log", *tls) as proxy,
            RawClient(proxy.address) as client,
        ):
            reply = client.command(b"L", f'LOGIN "{user}" "{server.password}"'.encode())
            assert reply[-1].startswith(b"L NO"), reply  # the same proxy without a certificate


def test_probe_speaks_tls_to_the_upstream_as_the_proxy_does(tls_dovecot, pki):
    """The probe takes the proxy's upstream TLS flags: verified STARTTLS works; plaintext to a
    server offering STARTTLS is a caveat; a certificate that does not verify will not work."""
    user = tls_dovecot.new_user()
    secret = {"IMAP_PROBE_PASSWORD": tls_dovecot.password}
    verified = ["--upstream-tls", "starttls", "--upstream-ca", str(pki["ca"]),
                "--upstream-server-name", UPSTREAM_NAME]  # fmt: skip
    result = run_probe(tls_dovecot.address, "--json", "--user", user, *verified, env=secret)
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["findings"]
    assert report["capabilities"]["STARTTLS"] and report["upstream_tls"] == "starttls"
    assert b"imapmoveproxy-probe-" in tls_dovecot.received_bytes(user)  # the self-test ran
    result = run_probe(tls_dovecot.address, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1, report["findings"]
    assert any('upstream_tls = "starttls"' in f["text"] for f in report["findings"]), report
    result = run_probe((HOST, tls_dovecot.imaps_port), "--json", "--upstream-tls", "implicit",
                       "--upstream-server-name", UPSTREAM_NAME)  # fmt: skip
    report = json.loads(result.stdout)
    assert result.returncode == 2, report["findings"]
    assert "CERTIFICATE_VERIFY_FAILED" in report["findings"][-1]["text"], report["findings"]


def test_routing_each_backend_with_its_own_tls(tls_dovecot, dovecot_legacy, pki, tmp_path):
    """Routing mode: one backend reached with verified implicit TLS, one whose certificate is
    not trusted (no CA given: the system store), one plain; each login reaches its backend
    only as that backend's settings allow."""
    user = seeded(tls_dovecot)
    config = tmp_path / "routing.toml"
    config.write_text(
        f'[backends.tls]\nupstream = "{HOST}:{tls_dovecot.imaps_port}"\n'
        f'upstream_tls = "implicit"\nupstream_ca = "{pki["ca"]}"\n'
        f'upstream_server_name = "{UPSTREAM_NAME}"\n'
        f'[backends.untrusted]\nupstream = "{HOST}:{tls_dovecot.imaps_port}"\n'
        f'upstream_tls = "implicit"\nupstream_server_name = "{UPSTREAM_NAME}"\n'
        f'[backends.plain]\nupstream = "{HOST}:{dovecot_legacy.port}"\n'
        f'[routes]\n"{user}" = "tls"\n"@untrusted" = "untrusted"\n"*" = "plain"\n'
    )
    with (
        running_proxy(None, tmp_path / "p.log", "--config", str(config)) as proxy,
        RawClient(proxy.address) as client,
    ):
        refused = client.command(b"u", f'LOGIN "x@untrusted" "{tls_dovecot.password}"'.encode())
        assert refused[-1].startswith(b"u NO [UNAVAILABLE]"), refused
        assert client.login(user, tls_dovecot.password)[-1].startswith(b"L1 OK")
        client.command(b"s", b"SELECT INBOX")
        assert client.command(b"m", b"MOVE 1:2 Trash")[-1].startswith(b"m OK")
        assert "CERTIFICATE_VERIFY_FAILED" in proxy.log_text()
    assert trash_count(tls_dovecot, user) == 2
    assert b" MOVE " not in tls_dovecot.received_bytes(user)
