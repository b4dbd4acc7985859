"""scripts/install-deps.sh, which `make demo` and `make test` run first.

The script is run for real (as root, on this Debian machine), on a copy beside a package list of
the test's own; ``apt-get`` is a stand-in that records its arguments and what policy-rc.d says
while it runs, so no package is installed and nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from harness import ROOT
from servers import make_traversable

SCRIPT = ROOT / "scripts" / "install-deps.sh"
FAKE_APT = """#!/bin/sh
echo "apt-get $*" >> "{log}"
/usr/sbin/policy-rc.d dovecot start >/dev/null 2>&1
echo "policy-rc.d: $?" >> "{log}"
"""


def copy_with_list(root: Path, packages: list[str]) -> Path:
    """A copy of the script (and the apt_install it sources) in ``root``/scripts, with the list
    ``packages-x.txt``."""
    (root / "scripts").mkdir(parents=True)
    script = root / "scripts" / "install-deps.sh"
    shutil.copy(SCRIPT, script)
    shutil.copy(SCRIPT.with_name("apt-install.sh"), script.with_name("apt-install.sh"))
    lines = ["# a comment", *packages, ""]
    (root / "scripts" / "packages-x.txt").write_text("\n".join(lines))
    return script


def fake_apt(root: Path) -> tuple[Path, Path]:
    """A directory holding the stand-in apt-get, and the file it records into."""
    bin_dir, log = root / "bin", root / "apt.log"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(FAKE_APT.format(log=log))
    (bin_dir / "apt-get").chmod(0o755)
    return bin_dir, log


def run(script: Path, target: str, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PATH": path, **env}
    return subprocess.run(
        ["/bin/bash", str(script), target], capture_output=True, text=True, env=environ, timeout=60
    )


def test_nothing_is_installed_when_every_package_is_there(tmp_path):
    script = copy_with_list(tmp_path / "repo", ["dovecot-imapd", "python3"])
    bin_dir, log = fake_apt(tmp_path)
    result = run(script, "x", f"{bin_dir}:{os.environ['PATH']}")
    assert result.returncode == 0, result.stderr
    assert not log.exists(), log.read_text()


def test_missing_packages_are_installed_with_daemons_forbidden_to_start(tmp_path):
    script = copy_with_list(tmp_path / "repo", ["dovecot-imapd", "imapmoveproxy-no-such-package"])
    bin_dir, log = fake_apt(tmp_path)
    policy = Path("/usr/sbin/policy-rc.d")
    existed = policy.exists()
    result = run(script, "x", f"{bin_dir}:{os.environ['PATH']}")
    assert result.returncode == 0, result.stderr
    assert "installing Debian packages: imapmoveproxy-no-such-package" in result.stdout
    calls = log.read_text().splitlines()
    assert calls[0] == "apt-get update -qq" and calls[1] == "policy-rc.d: 101", calls
    assert calls[2].startswith("apt-get install -y --no-install-recommends"), calls
    assert calls[2].endswith("dovecot-imapd imapmoveproxy-no-such-package"), calls
    assert calls[3] == "policy-rc.d: 101", calls
    assert policy.exists() == existed  # removed again only if the script created it


def test_skip_deps_installs_nothing(tmp_path):
    script = copy_with_list(tmp_path / "repo", ["imapmoveproxy-no-such-package"])
    bin_dir, log = fake_apt(tmp_path)
    result = run(script, "x", f"{bin_dir}:{os.environ['PATH']}", SKIP_DEPS="1")
    assert result.returncode == 0 and not log.exists(), result.stderr


def test_not_debian_says_what_to_install(tmp_path):
    """No apt-get or dpkg-query on the PATH: the script names the packages and SKIP_DEPS=1."""
    script = copy_with_list(tmp_path / "repo", ["dovecot-imapd", "python3-venv"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "readlink", "sed", "grep", "cat", "id"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    result = run(script, "x", str(bin_dir))
    assert result.returncode == 1
    assert "this is not Debian" in result.stderr
    assert "dovecot-imapd python3-venv" in result.stderr
    assert "make x SKIP_DEPS=1" in result.stderr


def test_not_root_says_to_use_sudo(tmp_path):
    script = copy_with_list(tmp_path / "repo", ["dovecot-imapd"])
    make_traversable(script)
    command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
               "/bin/bash", str(script), "x"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "must run as root" in result.stderr and "sudo make x" in result.stderr


def test_unknown_target_shows_usage(tmp_path):
    result = run(SCRIPT, "nonsense", os.environ["PATH"])
    assert result.returncode == 2 and "usage: scripts/install-deps.sh demo|test" in result.stderr


def test_the_test_list_holds_what_the_suite_needs():
    listed = (ROOT / "scripts" / "packages-test.txt").read_text().split()
    for package in ("dovecot-imapd", "mailutils-imap4d", "haproxy", "redis-server", "prometheus",
                    "python3-venv", "make"):  # fmt: skip
        assert package in listed, package
    demo = (ROOT / "scripts" / "packages-demo.txt").read_text().split()
    assert {"dovecot-imapd", "python3-venv", "make"} <= set(demo)
