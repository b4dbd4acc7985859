"""Client addresses and scale-out: ID and PROXY protocol to Dovecot, real HAProxy in front.

Every client here connects from its own loopback address (127.0.0.x) so that the address
Dovecot logs can only be right if the proxy passed the real one on.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ProxyProcess, RawClient, dovecot_with, running_proxy
from servers import HOST, DovecotServer, find_binary, find_free_port, make_message

from imapmoveproxy.wire.proxyproto import ProxyHeader, ProxyHeaderError, build_v2, parse


class SourcedClient(RawClient):
    """A RawClient whose connection comes from a chosen loopback address."""

    def __init__(self, address: tuple[str, int], source: str, timeout: float = 20.0) -> None:
        sock = socket.create_connection(address, timeout, source_address=(source, 0))
        self.sock = sock
        self._buf = b""
        self.greeting = self._read_response()


@pytest.fixture(scope="module")
def trusting_dovecot(tmp_path_factory) -> Iterator[DovecotServer]:
    """Dovecot with MOVE hidden that believes the proxy (on 127.0.0.1) about client addresses,
    through ID or through a PROXY header on a second listener (``haproxy_port``)."""
    haproxy_port = find_free_port()
    extra = f"""
login_trusted_networks = 127.0.0.1/32
haproxy_trusted_networks = 127.0.0.1/32
imap_id_log = *
service imap-login {{
  inet_listener imap_haproxy {{
    address = {HOST}
    port = {haproxy_port}
    haproxy = yes
  }}
}}
"""
    root = tmp_path_factory.mktemp("dovecot-trusting")
    with dovecot_with(root, "dovecot-trusting", extra) as server:
        server.haproxy_port = haproxy_port  # type: ignore[attr-defined]
        yield server


def wait_for_log(server: DovecotServer, pattern: str) -> str:
    for _ in range(100):
        found = re.search(pattern, server.log_text())
        if found:
            return found.group(0)
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in Dovecot's log")


def login_from(
    address: tuple[str, int],
    source: str,
    server: DovecotServer,
    spoof: bytes = b'"x-originating-ip" "6.6.6.6"',
) -> str:
    """Log in a new user from ``source``, after an ID that tries to say it comes from elsewhere."""
    user = server.new_user()
    with SourcedClient(address, source) as client:
        reply = client.command(b"i", b'ID ("name" "test" ' + spoof + b")")
        assert reply[0].startswith(b"* ID (") and reply[-1].startswith(b"i OK")
        client.login(user, server.password)
        client.command(b"z", b"LOGOUT")
    return user


def test_id_tells_dovecot_the_real_client_address(trusting_dovecot, tmp_path):
    with running_proxy(trusting_dovecot.address, tmp_path / "p.log") as proxy:
        user = login_from(proxy.address, "127.0.0.3", trusting_dovecot)
    login = wait_for_log(trusting_dovecot, rf"Login: user=<{user}>[^\n]*")
    assert "rip=127.0.0.3" in login
    assert "6.6.6.6" not in trusting_dovecot.log_text()  # the client's x- field was removed


@pytest.mark.parametrize(
    ("options", "spoof", "rip"),
    [
        (["--no-upstream-id"], b'"x-originating-ip" "6.6.6.11"', "127.0.0.1"),  # the proxy's
        # Dovecot unescapes "\c" to "c". (After the proxy's own ID, Dovecot ignores a second
        # x-originating-ip: without --no-upstream-id the escape does no harm to see here.)
        (["--no-upstream-id"], rb'"X\-Originating-I\P" "6.6.6.13"', "127.0.0.1"),
        (["--upstream-proxy-protocol"], b'"x-originating-ip" "6.6.6.14"', "127.0.0.5"),
    ],
    ids=["no-upstream-id", "escaped-key", "proxy-protocol"],
)
def test_a_client_cannot_give_dovecot_its_own_address_through_id(
    trusting_dovecot, tmp_path, options, spoof, rip
):
    """Dovecot believes x-originating-ip from the proxy's address, whoever wrote the ID: the
    client's x- fields are removed whether the proxy sends its own ID or not, and however the
    key is quoted (issue 12, defect 6: with --no-upstream-id, or with "x\\-originating-ip",
    Dovecot logged the client's rip=6.6.6.x)."""
    upstream = trusting_dovecot.address
    if "--upstream-proxy-protocol" in options:
        upstream = (HOST, trusting_dovecot.haproxy_port)
    with running_proxy(upstream, tmp_path / "p.log", *options) as proxy:
        user = login_from(proxy.address, "127.0.0.5", trusting_dovecot, spoof)
    login = wait_for_log(trusting_dovecot, rf"Login: user=<{user}>[^\n]*")
    assert f"rip={rip}," in login
    assert spoof.split()[-1].strip(b'"').decode() not in trusting_dovecot.log_text()


def test_proxy_v2_header_to_the_upstream_instead_of_id(trusting_dovecot, tmp_path):
    upstream = (HOST, trusting_dovecot.haproxy_port)
    with running_proxy(upstream, tmp_path / "p.log", "--upstream-proxy-protocol") as proxy:
        user = login_from(proxy.address, "127.0.0.7", trusting_dovecot)
    assert "rip=127.0.0.7" in wait_for_log(trusting_dovecot, rf"Login: user=<{user}>[^\n]*")


def haproxy_config(path: Path, port: int, backends: list[tuple[int, int]], send: str) -> Path:
    servers = "\n".join(
        f"  server p{n} {HOST}:{imap} {send} check port {metrics} inter 200ms fall 1 rise 2"
        for n, (imap, metrics) in enumerate(backends)
    )
    path.write_text(f"""global
  maxconn 2000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch
frontend imap
  bind {HOST}:{port}
  default_backend proxies
backend proxies
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
{servers}
""")
    return path


class HAProxy:
    def __init__(self, config: Path, port: int) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [find_binary("haproxy"), "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(100):
            try:
                socket.create_connection((HOST, port), 1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("haproxy did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def proxies_behind_haproxy(upstream, tmp_path, count, send, *extra):
    instances = []
    for n in range(count):
        metrics = find_free_port()
        instances.append((
            ProxyProcess(upstream, tmp_path / f"proxy{n}.log", "--proxy-protocol",
                         "--proxy-protocol-trusted", "127.0.0.1/32", "--metrics",
                         f"{HOST}:{metrics}", *extra),
            metrics,
        ))  # fmt: skip
    port = find_free_port()
    config = haproxy_config(tmp_path / "haproxy.cfg", port,
                            [(p.port, m) for p, m in instances], send)  # fmt: skip
    time.sleep(0.5)  # two health checks to rise
    return [p for p, _ in instances], HAProxy(config, port)


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_haproxy_proxy_protocol_carries_the_client_address(trusting_dovecot, tmp_path, send):
    proxies, haproxy = proxies_behind_haproxy(trusting_dovecot.address, tmp_path, 1, send)
    try:
        time.sleep(0.5)
        user = login_from((HOST, haproxy.port), "127.0.0.4", trusting_dovecot)
    finally:
        haproxy.stop()
        for proxy in proxies:
            proxy.stop()
    assert "rip=127.0.0.4" in wait_for_log(trusting_dovecot, rf"Login: user=<{user}>[^\n]*")


def test_proxy_header_from_an_untrusted_address_is_refused(dovecot_legacy, tmp_path):
    args = ["--proxy-protocol", "--proxy-protocol-trusted", "10.0.0.0/8"]
    with running_proxy(dovecot_legacy.address, tmp_path / "p.log", *args) as proxy:
        raw = socket.create_connection(proxy.address, 10)
        raw.sendall(build_v2(("192.0.2.1", 1234), (HOST, proxy.port)))
        # closed (reset, since the header was never read): no greeting, nothing proxied
        with contextlib.suppress(ConnectionResetError):
            assert raw.recv(100) == b""
        raw.close()
        time.sleep(0.2)
        assert "PROXY protocol from untrusted 127.0.0.1" in proxy.log_text()


def test_scale_out_drains_one_instance_without_breaking_a_move(
    trusting_dovecot, redis_server, tmp_path
):
    """Two proxies behind HAProxy sharing their MOVE lock in Redis; clients keep moving mail;
    one proxy gets SIGTERM mid-run."""
    lock = ("--move-lock", redis_server.url)
    proxies, haproxy = proxies_behind_haproxy(
        trusting_dovecot.address, tmp_path, 2, "send-proxy-v2", *lock
    )
    users = []
    for _ in range(6):
        user = trusting_dovecot.new_user()
        trusting_dovecot.seed(user, "INBOX", [make_message(f"{user} m{i}") for i in range(5)])
        trusting_dovecot.seed(user, "Archive", [])
        users.append(user)
    errors: list[BaseException] = []
    stop = threading.Event()
    moves_done = [0] * len(users)
    reconnects = [0] * len(users)

    def client(n: int) -> None:
        source, user = f"127.0.1.{n + 1}", users[n]
        boxes = ("INBOX", "Archive")
        deadline = time.monotonic() + 30
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    with SourcedClient((HOST, haproxy.port), source) as conn:
                        conn.login(user, trusting_dovecot.password)
                        while not stop.is_set() and time.monotonic() < deadline:
                            box = boxes[moves_done[n] % 2]
                            conn.command(b"s", f"SELECT {box}".encode())
                            target = boxes[1 - boxes.index(box)]
                            conn.send(f"m UID MOVE 1:* {target}\r\n".encode())
                            replies: list[bytes] = []
                            try:
                                while not replies or not replies[-1].startswith(b"m "):
                                    replies.append(conn._read_response())
                            except (EOFError, ConnectionError):
                                # The drain may say BYE before a MOVE that just arrived: then it
                                # must not have been started at all. (Rarely the connection ends
                                # with no reply at all; the mailbox check below proves that no
                                # message was lost or doubled by it.)
                                assert not replies or replies[-1].startswith(b"* BYE"), replies
                                assert not any(b"COPYUID" in r or b"EXPUNGE" in r for r in replies)
                                raise
                            assert replies[-1].startswith(b"m OK"), replies[-1]
                            moves_done[n] += 1
                except (EOFError, ConnectionError):
                    reconnects[n] += 1  # drained: BYE, then this client reconnects
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(len(users))]
    try:
        for thread in threads:
            thread.start()
        time.sleep(2)
        proxies[0].process.send_signal(signal.SIGTERM)
        assert proxies[0].process.wait(40) == 0  # drained and exited cleanly
        time.sleep(2)
        stop.set()
        for thread in threads:
            thread.join(40)
    finally:
        stop.set()
        haproxy.stop()
        for proxy in proxies:
            proxy.stop()
    assert not errors, errors
    assert sum(reconnects) >= 1 and min(moves_done) >= 2
    for user in users:
        subjects = []
        for box in ("INBOX", "Archive"):
            imap = trusting_dovecot.connect(user)
            _, count = imap.select(box)
            if count != [b"0"]:
                _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                subjects += [
                    item[1].split(b":", 1)[1].strip() for item in data if isinstance(item, tuple)
                ]
            imap.logout()
        assert sorted(subjects) == sorted(f"{user} m{i}".encode() for i in range(5))
    log = trusting_dovecot.log_text()
    assert all(f"rip=127.0.1.{n + 1}" in log for n in range(len(users)))
    assert redis_server.cli("KEYS", "imapmoveproxy:*") == ""  # every lease given back
    assert not any("cannot take a MOVE lock" in p.log_path.read_text() for p in proxies)


def test_proxy_protocol_parser():
    v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 143\r\nrest"
    assert parse(v1) == (ProxyHeader(("192.0.2.1", 51234), ("198.51.100.2", 143)), 45)
    assert parse(b"PROXY UNKNOWN\r\n") == (ProxyHeader(None, None), 15)
    assert parse(b"PROXY TCP4 192.0.2.1") is None  # more bytes needed
    header = build_v2(("2001:db8::1", 40000), ("2001:db8::2", 993))
    assert parse(header + b"x") == (
        ProxyHeader(("2001:db8::1", 40000), ("2001:db8::2", 993)),
        len(header),
    )
    assert parse(header[:10]) is None
    for bad in (b"GET / HTTP/1.0\r\n", b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n",
                b"PROXY TCP4 1.1.1.1 1.1.1.1 1 70000\r\n", b"\r\n\r\n\x00\r\nQUIX\n" + b"\0" * 4,
                b"PROXY " + b"A" * 200):  # fmt: skip
        with pytest.raises(ProxyHeaderError):
            parse(bad)


@pytest.mark.parametrize("header", [False, True], ids=["id", "proxy-protocol"])
def test_routing_tells_each_backend_the_client_address_its_own_way(
    trusting_dovecot, tmp_path, header
):
    """Routing mode: the backend's own settings say how it learns the client's address (ID
    before the login, or a PROXY v2 header); the client's own ID before login is answered by
    the proxy and reaches no backend."""
    port = trusting_dovecot.haproxy_port if header else trusting_dovecot.port
    config = tmp_path / "routing.toml"
    config.write_text(
        f'[backends.b]\nupstream = "{HOST}:{port}"\n'
        f"upstream_proxy_protocol = {'true' if header else 'false'}\n"
        '[routes]\n"*" = "b"\n'
    )
    with running_proxy(None, tmp_path / "p.log", "--config", str(config)) as proxy:
        user = login_from(proxy.address, "127.0.0.9", trusting_dovecot)
    assert "rip=127.0.0.9," in wait_for_log(trusting_dovecot, rf"Login: user=<{user}>[^\n]*")
    assert "6.6.6.6" not in trusting_dovecot.log_text()
