"""Build and run the project's Dockerfile without a Docker engine, with Debian's buildah.

* The base image (BASE_IMAGE) is Debian of the host's release (bookworm on Debian 12) with
  ``python3`` and ``python3-venv``, made with ``debootstrap`` from the Debian mirror apt is
  configured with, and imported into buildah. Both the rootfs tarball and the image are cached
  under :data:`CACHE_DIR`, in a buildah storage of their own, so only the first run pays for
  debootstrap.
* The image is built with ``buildah bud --isolation=chroot --format=docker`` (docker format
  keeps HEALTHCHECK). pip inside the build gets this machine's pip index settings as build
  arguments and the host's CA bundle as the build secret ``pip_cert``.
* Containers run with ``buildah run --isolation=chroot``, which shares the network namespace of
  the caller: the host's, or a private one made with ``unshare --net``.

Every external command has a timeout; every wait loop is bounded in time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE_DIR = Path("/var/cache/imapmoveproxy-test")
RUN_ROOT = Path("/run/imapmoveproxy-test/storage")
BASE_REPOSITORY = "localhost/imapmoveproxy-test-base"
IMAGE_TAG = "localhost/imapmoveproxy:container-test"
BASE_PACKAGES = ("python3", "python3-venv")
# Bump to force a new base image (it is part of the cache key).
BASE_RECIPE_VERSION = "1"

DEBOOTSTRAP_TIMEOUT = 1800.0
IMPORT_TIMEOUT = 600.0
BUILD_TIMEOUT = 900.0
COMMAND_TIMEOUT = 120.0
LOCK_TIMEOUT = 3600.0

# apt packages that provide the commands used here (reported when one is missing).
TOOLS = {
    "buildah": "buildah",
    "debootstrap": "debootstrap",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "tar": "tar",
}
DEFAULT_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
FALLBACK_MIRROR = "http://deb.debian.org/debian"


class ContainerTestError(RuntimeError):
    """A step of building or running the image failed (the message carries its output)."""


def _which(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)


def missing_tools() -> list[str]:
    """The commands of :data:`TOOLS` that are not installed, as 'command (apt package)'."""
    return [f"{name} ({package})" for name, package in TOOLS.items() if _which(name) is None]


def tool(name: str) -> str:
    found = _which(name)
    if found is None:
        raise ContainerTestError(f"{name} not installed (apt package {TOOLS.get(name, name)})")
    return found


def run(
    command: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; on failure raise with the output in the message."""
    try:
        result = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ContainerTestError(f"timed out after {timeout:.0f} s: {command}") from exc
    if check and result.returncode != 0:
        raise ContainerTestError(
            f"exit status {result.returncode}: {' '.join(command)}\n"
            f"--- stdout ---\n{result.stdout[-8000:]}\n--- stderr ---\n{result.stderr[-8000:]}"
        )
    return result


# -- host facts ---------------------------------------------------------------------------------


def host_codename() -> str:
    """The Debian release of the host (VERSION_CODENAME of /etc/os-release), e.g. bookworm."""
    text = Path("/etc/os-release").read_text()
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?$", text, re.MULTILINE)
    if match is None:
        raise ContainerTestError("cannot tell the Debian release from /etc/os-release")
    return match.group(1)


def _apt_entries() -> Iterator[tuple[list[str], list[str], list[str]]]:
    """(types, uris, suites) of every apt source, one-line and deb822 formats."""
    listed = sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in [Path("/etc/apt/sources.list"), *listed]:
        with contextlib.suppress(OSError):
            for raw in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", " ", raw.split("#", 1)[0]).split()
                if len(words) >= 3:
                    yield [words[0]], [words[1]], [words[2]]
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields: dict[str, list[str]] = {}
                for raw in stanza.splitlines():
                    if raw.startswith("#") or ":" not in raw or raw[0].isspace():
                        continue
                    key, _, value = raw.partition(":")
                    fields[key.strip().lower()] = value.split()
                if fields.get("enabled", ["yes"])[0].lower() == "no":
                    continue
                yield fields.get("types", []), fields.get("uris", []), fields.get("suites", [])


def debian_mirror(suite: str) -> str:
    """The URI of the apt source that serves ``suite`` itself (not -updates or -security)."""
    for types, uris, suites in _apt_entries():
        if "deb" in types and suite in suites and uris:
            return uris[0].rstrip("/")
    return FALLBACK_MIRROR


def _pip_config() -> dict[str, str]:
    """``pip config list`` as {option: value}, highest precedence winning (env > site > ...)."""
    result = run([sys.executable, "-m", "pip", "config", "list"], check=False)
    rank = {"global": 0, "user": 1, "site": 2, ":env:": 3}
    found: dict[str, tuple[int, str]] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^([^.=]+|:env:)\.([a-z-]+)='(.*)'$", line.strip())
        if match is None:
            continue
        scope, option, value = match.groups()
        level = rank.get(scope, 0)
        if option not in found or level >= found[option][0]:
            found[option] = (level, value)
    return {option: value for option, (_level, value) in found.items()}


def pip_build_args() -> dict[str, str]:
    """This machine's pip index settings, as the image's build arguments.

    Only http(s) indexes are passed: a file:// index on the host is not visible in the build.
    With none set, pip in the build uses its default index, as pip here does.
    """
    config = _pip_config()
    env = os.environ
    args: dict[str, str] = {}
    index = env.get("PIP_INDEX_URL") or config.get("index-url", "")
    if index.startswith(("http://", "https://")):
        args["PIP_INDEX_URL"] = index
    extra = env.get("PIP_EXTRA_INDEX_URL") or config.get("extra-index-url", "")
    extras = [url for url in extra.split() if url.startswith(("http://", "https://"))]
    if extras:
        args["PIP_EXTRA_INDEX_URL"] = " ".join(extras)
    trusted = env.get("PIP_TRUSTED_HOST") or config.get("trusted-host", "")
    if trusted.split():
        args["PIP_TRUSTED_HOST"] = " ".join(trusted.split())
    return args


def ca_bundle() -> Path:
    """The CA bundle pip on this machine trusts (a mirror or TLS proxy may need it)."""
    candidates = [
        os.environ.get("PIP_CERT", ""),
        _pip_config().get("cert", ""),
        os.environ.get("SSL_CERT_FILE", ""),
        str(DEFAULT_CA_BUNDLE),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ContainerTestError(f"no CA bundle found (tried {candidates}); install ca-certificates")


# -- buildah ------------------------------------------------------------------------------------


@dataclass
class Buildah:
    """buildah on a storage of its own under the cache directory."""

    root: Path = CACHE_DIR / "storage"
    runroot: Path = RUN_ROOT
    timings: dict[str, float] = field(default_factory=dict)

    def argv(self, *args: str) -> list[str]:
        return [tool("buildah"), "--root", str(self.root), "--runroot", str(self.runroot), *args]

    def __call__(
        self, *args: str, timeout: float = COMMAND_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*args), timeout=timeout, check=check)

    def image_exists(self, name: str) -> bool:
        return self("inspect", "--type", "image", name, check=False).returncode == 0

    def inspect_image(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self("inspect", "--type", "image", name).stdout)
        return data

    def new_container(self, image: str, name: str) -> str:
        self("rm", name, check=False)
        return self("from", "--pull=never", "--name", name, image).stdout.strip().splitlines()[-1]

    def remove_all_containers(self) -> None:
        self("rm", "--all", check=False)

    def run_argv(
        self,
        container: str,
        command: Sequence[str],
        volumes: Sequence[str] = (),
    ) -> list[str]:
        """``buildah run`` of ``command`` in ``container``, the caller's network namespace."""
        args = ["run", "--isolation=chroot", "--network=host"]
        for volume in volumes:
            args += ["--volume", volume]
        return self.argv(*args, container, "--", *command)


@contextlib.contextmanager
def cache_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Exclusive use of the cache (and its buildah storage) across test sessions."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "lock").open("a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ContainerTestError(f"{CACHE_DIR}/lock held > {timeout:.0f} s") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _debootstrap_tarball(suite: str, mirror: str, tarball: Path) -> None:
    """debootstrap a minimal ``suite`` with Python into ``tarball`` (atomically)."""
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
    try:
        rootfs = work / "rootfs"
        run(
            [
                tool("debootstrap"),
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                suite,
                str(rootfs),
                mirror,
            ],
            timeout=DEBOOTSTRAP_TIMEOUT,
        )
        # Leave out apt's caches and the host's resolver file (container runtimes provide one).
        for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
            for path in rootfs.glob(pattern):
                if path.is_file():
                    path.unlink()
        (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
        partial = work / "rootfs.tar"
        run(
            [tool("tar"), "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."],
            timeout=IMPORT_TIMEOUT,
        )
        partial.replace(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_base_image(buildah: Buildah) -> str:
    """The cached Debian + Python base image, made on first use. Call with :func:`cache_lock`."""
    suite = host_codename()
    mirror = debian_mirror(suite)
    key_text = f"{BASE_RECIPE_VERSION} {suite} {mirror} {' '.join(BASE_PACKAGES)}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:12]
    image = f"{BASE_REPOSITORY}:{suite}-{key}"
    if buildah.image_exists(image):
        return image
    tarball = CACHE_DIR / f"rootfs-{suite}-{key}.tar"
    if not tarball.is_file():
        started = time.monotonic()
        _debootstrap_tarball(suite, mirror, tarball)
        buildah.timings["debootstrap"] = time.monotonic() - started
    started = time.monotonic()
    container = buildah("from", "scratch").stdout.strip().splitlines()[-1]
    try:
        buildah("add", container, str(tarball), "/", timeout=IMPORT_TIMEOUT)
        buildah(
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            '["python3"]',
            container,
        )
        buildah("commit", "--rm", container, image, timeout=IMPORT_TIMEOUT)
    except BaseException:
        buildah("rm", container, check=False)
        raise
    buildah.timings["import"] = time.monotonic() - started
    return image


def build_image(buildah: Buildah, context: Path, base_image: str, tag: str = IMAGE_TAG) -> str:
    """Build ``context``/Dockerfile on ``base_image`` as ``tag``, passing the pip settings."""
    secret_path = "/run/secrets/pip_cert"
    args = [
        "bud",
        "--isolation=chroot",
        "--format=docker",
        "--pull=never",
        "--layers=false",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "--build-arg",
        f"PIP_CERT={secret_path}",
        "--secret",
        f"id=pip_cert,src={ca_bundle()}",
    ]
    for name, value in pip_build_args().items():
        args += ["--build-arg", f"{name}={value}"]
    args += ["--tag", tag, "--file", str(context / "Dockerfile"), str(context)]
    started = time.monotonic()
    buildah(*args, timeout=BUILD_TIMEOUT)
    buildah.timings["build"] = time.monotonic() - started
    # The previous build's image, now untagged, and the build stage are not needed any more.
    buildah("rmi", "--prune", check=False, timeout=IMPORT_TIMEOUT)
    return tag


def docker_config(buildah: Buildah, image: str) -> dict[str, Any]:
    """The image's Docker config (Entrypoint, Cmd, User, Healthcheck, ExposedPorts...)."""
    config: dict[str, Any] = buildah.inspect_image(image)["Docker"]["config"]
    return config


# -- processes ----------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    return []


def process_uid(pid: int) -> int:
    """The real uid of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise ContainerTestError(f"no Uid in /proc/{pid}/status")


def find_entrypoint_process(
    root: subprocess.Popen[bytes], entrypoint: str, timeout: float = 30.0
) -> int:
    """The descendant of ``root`` running ``entrypoint`` (as argv 0 or, for a script, argv 1
    of its interpreter): the process a container runtime would signal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if root.poll() is not None:
            raise ContainerTestError(f"exited with status {root.returncode} before {entrypoint}")
        children = _children()
        matches: list[tuple[int, int]] = []
        stack = [(root.pid, 0)]
        for _ in range(10_000):
            if not stack:
                break
            pid, depth = stack.pop()
            argv = cmdline(pid)
            # buildah's own helpers (buildah-chroot-exec ENTRYPOINT ...) do not count
            if entrypoint in argv[:2] and not Path(argv[0]).name.startswith("buildah"):
                matches.append((depth, pid))
            stack.extend((child, depth + 1) for child in children.get(pid, []))
        if matches:
            return max(matches)[1]
        time.sleep(0.1)
    raise ContainerTestError(f"no process running {entrypoint} under pid {root.pid}")


@dataclass
class Running:
    """A container process started with :func:`start`."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def entrypoint_pid(self, entrypoint: str) -> int:
        """The pid of the container's main process (see :func:`find_entrypoint_process`)."""
        try:
            return find_entrypoint_process(self.process, entrypoint)
        except ContainerTestError as exc:
            raise ContainerTestError(f"{exc}\n--- container output ---\n{self.log()}") from exc

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise ContainerTestError(f"container still running after {timeout} s") from exc

    def stop(self) -> None:
        """Kill the whole ``buildah run`` process group (if it still runs)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)


def start(argv: Sequence[str], log_path: Path) -> Running:
    """Start ``argv`` in a process group of its own, output to ``log_path``."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    return Running(process, log_path)


def in_private_network(argv: Sequence[str], unprivileged_port_start: int = 0) -> list[str]:
    """``argv`` in a new network namespace with only ``lo`` (up), set up as Docker sets up a
    container's: ports from ``unprivileged_port_start`` on may be bound without privileges."""
    script = (
        'ip link set lo up && echo "$1" > /proc/sys/net/ipv4/ip_unprivileged_port_start'
        ' && shift && exec "$@"'
    )
    return [tool("unshare"), "--net", "--", "sh", "-c", script, "sh",
            str(unprivileged_port_start), *argv]  # fmt: skip


def in_network_of(pid: int, argv: Sequence[str]) -> list[str]:
    """``argv`` in the network namespace of process ``pid``."""
    return [tool("nsenter"), f"--net=/proc/{pid}/ns/net", "--", *argv]
