"""What operators touch: metrics and probes, environment configuration, JSON logs, config checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from harness import ROOT, RawClient, http_get, metric, running_proxy
from servers import HOST, find_free_port, make_message


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imapmoveproxy", *args], capture_output=True, text=True,
        cwd=ROOT, timeout=30, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_metrics_count_moves_by_policy_and_outcome(dovecot_legacy, tmp_path):
    metrics_port = find_free_port()
    user = dovecot_legacy.new_user()
    dovecot_legacy.seed(user, "INBOX", [make_message(f"m{i}") for i in range(3)])
    with running_proxy(dovecot_legacy.address, tmp_path / "p.log", "--metrics",
                       f"{HOST}:{metrics_port}") as proxy:  # fmt: skip
        assert http_get(metrics_port, "/healthz") == (200, "ok\n")
        assert http_get(metrics_port, "/readyz") == (200, "ok\n")
        with RawClient(proxy.address) as client:
            client.login(user, dovecot_legacy.password)
            client.command(b"s", b"SELECT INBOX")
            client.command(b"m", b"MOVE 1 Nowhere")  # TRYCREATE: fails at the COPY
            client.command(b"n", b"MOVE 1:2 INBOX")
            client.command(b"z", b"LOGOUT")
        status, text = http_get(metrics_port, "/metrics")
    assert status == 200
    assert metric(text, "imapmoveproxy_moves_total", policy="uidplus", outcome="moved") == 1
    assert metric(text, "imapmoveproxy_moves_total", policy="uidplus", outcome="copy-failed") == 1
    assert metric(text, "imapmoveproxy_move_duration_seconds_count") == 2
    assert metric(text, "imapmoveproxy_connections_total") >= 1
    assert metric(text, "imapmoveproxy_bytes_total", direction="upstream_to_client") > 500
    assert metric(text, "imapmoveproxy_commands_total") >= 4
    assert metric(text, "imapmoveproxy_upstream_connect_seconds_count") >= 1


def test_guarded_policy_shows_in_metrics(imap4d, tmp_path):
    metrics_port = find_free_port()
    user = imap4d.new_user()
    imap4d.seed(user, "INBOX", [make_message("m1")])
    imap4d.seed(user, "Trash", [])
    with running_proxy(imap4d.address, tmp_path / "p.log", "--no-uidplus", "guarded",
                       "--metrics", f"{HOST}:{metrics_port}") as proxy:  # fmt: skip
        with RawClient(proxy.address) as client:
            client.login(user, imap4d.password)
            client.command(b"s", b"SELECT INBOX")
            assert client.command(b"m", b"MOVE 1 Trash")[-1].startswith(b"m OK")
        _, text = http_get(metrics_port, "/metrics")
    assert metric(text, "imapmoveproxy_moves_total", policy="guarded", outcome="moved") == 1


def test_readyz_fails_when_the_upstream_is_down(tmp_path):
    metrics_port = find_free_port()
    with running_proxy((HOST, find_free_port()), tmp_path / "p.log", "--metrics",
                       f"{HOST}:{metrics_port}"):  # fmt: skip
        assert http_get(metrics_port, "/healthz")[0] == 200
        assert http_get(metrics_port, "/readyz")[0] == 503
        assert http_get(metrics_port, "/nothing")[0] == 404


def test_configuration_from_environment_variables(tmp_path):
    env = {
        "IMAPMOVEPROXY_LISTEN": "127.0.0.1:1143",
        "IMAPMOVEPROXY_UPSTREAM": "127.0.0.1:143",
        "IMAPMOVEPROXY_CONNECT_TIMEOUT": "2.5",
        "IMAPMOVEPROXY_UPSTREAM_TLS_VERIFY": "true",
    }
    result = run_cli("--check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imapmoveproxy: configuration OK"
    result = run_cli("--check-config", env={**env, "IMAPMOVEPROXY_CONNECT_TIMEOUT": "soon"})
    assert result.returncode == 2
    assert result.stderr.startswith("imapmoveproxy: configuration error: connect_timeout:")
    result = run_cli("--check-config", env={**env, "IMAPMOVEPROXY_LISTEN_PORT": "1"})
    assert result.returncode == 2 and "listen_port: unknown setting" in result.stderr
    # precedence: file < environment < flags
    config = tmp_path / "p.toml"
    config.write_text('listen = "bad"\nupstream = "127.0.0.1:1"\n')
    assert run_cli("--config", str(config), "--check-config", env=env).returncode == 0
    bad_env = {**env, "IMAPMOVEPROXY_LISTEN": "also bad"}
    assert run_cli("--config", str(config), "--check-config", env=bad_env).returncode == 2
    fixed = run_cli("--config", str(config), "--check-config", "--listen", "127.0.0.1:9",
                    env=bad_env)  # fmt: skip
    assert fixed.returncode == 0


def test_json_logs_carry_a_connection_id_and_no_password(dovecot_legacy, tmp_path):
    user = dovecot_legacy.new_user()
    log = tmp_path / "p.log"
    with running_proxy(dovecot_legacy.address, log, "--log-format", "json") as proxy:
        with RawClient(proxy.address) as client:
            client.login(user, dovecot_legacy.password)
            client.command(b"z", b"LOGOUT")
        for _ in range(50):
            if "closed client" in proxy.log_text():
                break
            __import__("time").sleep(0.1)
        lines = [json.loads(line) for line in proxy.log_text().splitlines() if line]
    closed = [entry for entry in lines if entry["message"].startswith("closed client=")]
    assert closed and re.fullmatch(r"c\d+", closed[0]["conn"])
    assert all({"time", "level", "conn", "logger", "message"} <= set(entry) for entry in lines)
    assert dovecot_legacy.password not in log.read_text()


async def test_a_bug_costs_one_connection_never_the_proxy(monkeypatch):
    """A fault that no server can cause: the session itself raises. The client gets BYE
    [SERVERBUG] and the proxy goes on serving (the upstream here is a scripted greeting)."""
    import functools

    import trio

    from imapmoveproxy.config import Address, Config
    from imapmoveproxy.engine.session import Session
    from imapmoveproxy.shell.server import Proxy

    async def fake_upstream(stream: trio.SocketStream) -> None:
        await stream.send_all(b"* OK [CAPABILITY IMAP4rev1 UIDPLUS] fake\r\n")
        await stream.receive_some(100)

    def broken(self: Session, data: bytes) -> None:
        raise RuntimeError("a bug")

    async with trio.open_nursery() as nursery:
        (upstream,) = await nursery.start(
            functools.partial(trio.serve_tcp, host=HOST), fake_upstream, 0
        )
        port = upstream.socket.getsockname()[1]
        proxy = Proxy(Config(upstream=Address(HOST, port), listen=Address(HOST, 0)))
        listeners = await nursery.start(proxy.serve)
        address = listeners[0].socket.getsockname()[:2]
        monkeypatch.setattr(Session, "receive_client", broken)
        client = await trio.open_tcp_stream(*address)
        assert (await client.receive_some(1000)).startswith(b"* OK")
        await client.send_all(b"a NOOP\r\n")
        with trio.fail_after(10):
            assert await client.receive_some(1000) == b"* BYE [SERVERBUG] Internal proxy error.\r\n"
        second = await trio.open_tcp_stream(*address)
        with trio.fail_after(10):
            assert (await second.receive_some(1000)).startswith(b"* OK")
        nursery.cancel_scope.cancel()


def test_rollbacks_and_duplicates_are_counted(dovecot_acl, tmp_path):
    """A MOVE rolled back, and one whose messages the user had flagged \\Deleted (their copies
    are kept: another session may expunge the originals), behind revoked expunge rights."""
    metrics_port = find_free_port()
    users = [dovecot_acl.new_user() for _ in range(2)]
    for user, flags in zip(users, [(), ("\\Deleted",)], strict=True):
        dovecot_acl.seed(user, "INBOX", [make_message(f"r{i}") for i in range(3)], flags=flags)
        dovecot_acl.seed(user, "Archive", [])
    with running_proxy(dovecot_acl.address, tmp_path / "p.log", "--metrics",
                       f"{HOST}:{metrics_port}") as proxy:  # fmt: skip
        for user in users:
            with RawClient(proxy.address) as client:
                client.login(user, dovecot_acl.password)
                client.command(b"s", b"SELECT INBOX")
                assert client.command(b"f", b"UID MOVE 1 Archive")[-1].startswith(b"f OK")
                dovecot_acl.revoke_rights(user, "INBOX", "e")
                assert client.command(b"m", b"UID MOVE 2:3 Archive")[-1].startswith(b"m NO ")
        _, text = http_get(metrics_port, "/metrics")
    assert metric(text, "imapmoveproxy_rollbacks_total", result="done") == 1
    assert metric(text, "imapmoveproxy_rollbacks_total", result="impossible") == 1
    assert metric(text, "imapmoveproxy_duplicates_total") == 2
    # without the expunge right Dovecot answers "OK Expunge ignored": tried once more, each time
    assert metric(text, "imapmoveproxy_expunge_retries_total") == 2
    assert (
        metric(text, "imapmoveproxy_moves_total", policy="uidplus", outcome="expunge-failed") == 2
    )
    assert metric(text, "imapmoveproxy_move_failures_total", step="expunge") == 2


def test_version_is_the_package_version():
    from importlib import metadata

    import imapmoveproxy

    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"imapmoveproxy {imapmoveproxy.__version__}\n"
    assert metadata.version("imapmoveproxy") == imapmoveproxy.__version__  # pyproject reads it
