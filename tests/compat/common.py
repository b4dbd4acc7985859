"""The compatibility matrix's shared part: a proxy in front of each real server, one mailbox.

Every client test gets a :class:`Target` (see :func:`target_fixture`): a fresh user on one of
the servers, whose INBOX holds three messages ``compat 1`` .. ``compat 3`` and whose ``Archive``
is empty, and a proxy process in front of that server (its own log file).  The client, pointed at
the proxy, logs in, lists, selects, fetches and moves ``compat 2`` to ``Archive``;
:meth:`Target.check_moved` then checks directly on the server (not through the client, nor the
proxy) that the message left INBOX and arrived in Archive, reads the proxy's log to tell whether
the client used MOVE, and checks what the upstream received.

The servers (session fixtures of tests/conftest.py):

* ``dovecot-legacy``: Dovecot with MOVE hidden: the proxy emulates MOVE with UIDPLUS
  (``policy=uidplus``), and no MOVE command may reach Dovecot.
* ``dovecot-native``: Dovecot with MOVE advertised: nothing is emulated (``policy=native``),
  the client's MOVE reaches Dovecot unchanged.
* ``imap4d-guarded``: GNU Mailutils imap4d (no UIDPLUS) behind ``--no-uidplus guarded``
  (``policy=guarded``).
* ``dovecot-no-uidplus-guarded``: Dovecot advertising neither MOVE nor UIDPLUS, behind
  ``--no-uidplus guarded``: only for clients that cannot use imap4d at all.
* ``cyrus-legacy``: Cyrus IMAP 3.6 with MOVE (and XMOVE) hidden (``policy=uidplus``), see
  tests/compat/cyrus.py (conftest.py's ``cyrus_legacy``).
* ``courier``: Courier-IMAP 5.0 (UIDPLUS, no MOVE; ``policy=uidplus``), whose folders live
  under ``INBOX.``: its Archive is ``INBOX.Archive`` (:attr:`Target.archive`), see
  tests/compat/courier.py (conftest.py's ``courier``).

Each test also appends its result to ``compat-results.jsonl`` in pytest's base temporary
directory (one JSON object a line), the raw material of docs/compatibility.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from harness import ProxyProcess, running_proxy
from servers import (
    DovecotServer,
    Imap4dServer,
    ImapServer,
    UwImapServer,
    make_message,
)

from compat.courier import CourierServer
from compat.cyrus import CyrusServer

SOURCE = "INBOX"
TARGET = "Archive"
SUBJECTS = ("compat 1", "compat 2", "compat 3")
MOVED = "compat 2"


@dataclasses.dataclass(frozen=True)
class ServerKind:
    fixture: str  # the conftest.py fixture that starts the server
    proxy_args: tuple[str, ...]
    policy: str  # the policy the proxy must report for each MOVE
    archive: str = TARGET  # the target folder's name on that server
    # Routing mode: the user routed to this server by a proxy with another backend beside it
    # (the fixture of that other server).
    beside: str | None = None


SERVER_KINDS: dict[str, ServerKind] = {
    "dovecot-legacy": ServerKind("dovecot_legacy", (), "uidplus"),
    "dovecot-native": ServerKind("dovecot_native", (), "native"),
    # The same through a routing proxy in front of both Dovecots.
    "routed-dovecot-legacy": ServerKind("dovecot_legacy", (), "uidplus", beside="dovecot_native"),
    "routed-dovecot-native": ServerKind("dovecot_native", (), "native", beside="dovecot_legacy"),
    "imap4d-guarded": ServerKind("imap4d", ("--no-uidplus", "guarded"), "guarded"),
    # Dovecot advertising neither MOVE nor UIDPLUS: the guarded policy for the clients that
    # cannot work with imap4d at all (not in the default parametrisation).
    "dovecot-no-uidplus-guarded": ServerKind(
        "dovecot_no_uidplus", ("--no-uidplus", "guarded"), "guarded"
    ),
    # Unpacked by tests/compat/install-extracted-servers.sh (they conflict with Dovecot).
    "cyrus-legacy": ServerKind("cyrus_legacy", (), "uidplus"),
    "courier": ServerKind("courier", (), "uidplus", archive="INBOX.Archive"),
    # Built from ../shared/servers by the tests (tests/servers.py UwImapServer).
    "uw-mbox": ServerKind("uw_mbox", (), "uidplus"),
    "uw-mix": ServerKind("uw_mix", (), "uidplus"),
}
DEFAULT_KINDS = (
    "dovecot-legacy", "dovecot-native", "imap4d-guarded", "cyrus-legacy", "courier", "uw-mbox",
    "uw-mix", "routed-dovecot-legacy", "routed-dovecot-native",
)  # fmt: skip

_MOVE_LOG_RE = re.compile(r"\b(UID MOVE|MOVE) (\S+): policy=(\w+) outcome=([\w-]+)")
_UPSTREAM_MOVE_RE = re.compile(rb"^\S+ (?:UID )?MOVE ", re.IGNORECASE)
_UPSTREAM_MOVE_LINE_RE = re.compile(rb"^(\S+) ((?:UID )?MOVE) (\S+) ", re.IGNORECASE)
_PROXY_TAG_RE = re.compile(r"^imp\d+$")
LOG_WAIT = 3.0


def require_program(name: str, package: str) -> str:
    """Path of ``name``, or fail the test naming the Debian package that provides it."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name!r} not found in $PATH: install the Debian package {package!r} "
            "(see docs/compatibility.md)",
            pytrace=False,
        )
    return found


def debian_version(package: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return done.stdout.strip()
    return "?"


def server_subjects(server: ImapServer, user: str, mailbox: str) -> list[str]:
    """Sorted subjects of ``mailbox``, read over a direct connection to the server."""
    imap = server.connect(user)
    try:
        typ, count = imap.select(f'"{mailbox}"', readonly=True)
        assert typ == "OK", (mailbox, count)
        if count == [b"0"]:
            return []
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK", data
    finally:
        with contextlib.suppress(Exception):
            imap.logout()
    found = []
    for item in data:
        if isinstance(item, tuple):
            header = item[1].decode(errors="replace")
            found.append(header.split(":", 1)[1].strip())
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class LoggedMove:
    command: str  # "MOVE" or "UID MOVE"
    sequence_set: str
    policy: str
    outcome: str


@dataclasses.dataclass
class Target:
    kind: str
    server: ImapServer
    proxy: ProxyProcess
    user: str
    expected_policy: str
    workdir: Path
    archive: str = TARGET

    @property
    def host(self) -> str:
        return self.proxy.address[0]

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def password(self) -> str:
        return self.server.password

    # -- what the server holds, read directly from it -------------------------------------------

    def subjects(self, mailbox: str) -> list[str]:
        """Sorted subjects of ``mailbox``, read over a direct connection to the server."""
        return server_subjects(self.server, self.user, mailbox)

    # -- what the proxy did ---------------------------------------------------------------------

    def logged_moves(self) -> list[LoggedMove]:
        return [LoggedMove(*m.groups()) for m in _MOVE_LOG_RE.finditer(self.proxy.log_text())]

    def upstream_move_commands(self) -> list[bytes]:
        """MOVE / UID MOVE command lines the upstream received (Dovecot's rawlog, Cyrus's
        telemetry, the recording in front of UW-IMAP)."""
        if not isinstance(self.server, (DovecotServer, CyrusServer, UwImapServer)):
            raise TypeError(f"{self.server!r} does not record what it receives per user")
        received = self.server.received_bytes(self.user)
        return [line.strip() for line in received.splitlines() if _UPSTREAM_MOVE_RE.match(line)]

    def check_moved(self, *, moved: str = MOVED) -> list[LoggedMove]:
        """Assert ``moved`` went from INBOX to Archive (on the server) and that every MOVE the
        client sent was handled with the policy this server calls for; return those MOVEs.

        Behind a MOVE-capable server the proxy forwards a MOVE without a log line once it knows
        the server's capabilities (see docs/compatibility.md), so there the MOVEs are read from
        what Dovecot received: each must be the client's own command (not one of the proxy's
        ``imp<n>`` tags), and nothing may have been emulated.
        """
        expected_source = sorted(s for s in SUBJECTS if s != moved)
        assert self.subjects(SOURCE) == expected_source, "message still in (or lost from) INBOX"
        assert self.subjects(self.archive) == [moved], "message not (exactly once) in Archive"
        logged = self.wait_for_moves()
        if self.expected_policy == "native":
            log = self.proxy.log_text()
            assert "policy=uidplus" not in log and "policy=guarded" not in log, log
            assert all((m.policy, m.outcome) == ("native", "forwarded") for m in logged), logged
            moves = []
            for line in self.upstream_move_commands():
                match = _UPSTREAM_MOVE_LINE_RE.match(line)
                assert match, line
                tag, command, sequence_set = (g.decode() for g in match.groups())
                assert not _PROXY_TAG_RE.match(tag), f"the proxy sent its own MOVE: {line!r}"
                moves.append(LoggedMove(command.upper(), sequence_set, "native", "passed-through"))
            return moves
        for move in logged:
            assert (move.policy, move.outcome) == (self.expected_policy, "moved"), move
        if not isinstance(self.server, (Imap4dServer, CourierServer)):  # they log no traffic
            upstream = self.upstream_move_commands()
            assert upstream == [], f"a MOVE reached the MOVE-less server: {upstream!r}"
        return logged

    def wait_for_moves(self) -> list[LoggedMove]:
        """The logged MOVEs, once the log has stopped growing (bounded wait)."""
        deadline = time.monotonic() + LOG_WAIT
        last = -1
        while time.monotonic() < deadline:
            size = len(self.proxy.log_text())
            if size == last:
                break
            last = size
            time.sleep(0.1)
        return self.logged_moves()


def seed_user(server: ImapServer, archive: str = TARGET) -> str:
    """A new user of ``server`` with ``compat 1..3`` in INBOX and an empty Archive."""
    user = server.new_user("c")
    server.seed(user, SOURCE, [make_message(subject) for subject in SUBJECTS])
    server.seed(user, archive, [])
    return user


def server_of(request: pytest.FixtureRequest, kind: str) -> ImapServer:
    """The running server of ``kind`` (a key of SERVER_KINDS) for this test session."""
    server: ImapServer = request.getfixturevalue(SERVER_KINDS[kind].fixture)
    return server


def prepare_target(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Iterator[Target]:
    spec = SERVER_KINDS[kind]
    server = server_of(request, kind)
    user = seed_user(server, spec.archive)
    upstream: tuple[str, int] | None = server.address
    args = spec.proxy_args
    if spec.beside is not None:  # routing mode: the user's route names this server
        other: ImapServer = request.getfixturevalue(spec.beside)
        config = tmp_path / "routing.toml"
        config.write_text(
            f'[backends.this]\nupstream = "{server.host}:{server.port}"\n'
            f'[backends.other]\nupstream = "{other.host}:{other.port}"\n'
            f'[routes]\n"{user}" = "this"\n"*" = "other"\n'
        )
        upstream, args = None, (*args, "--config", str(config))
    with running_proxy(upstream, tmp_path / "proxy.log", *args) as proxy:
        yield Target(kind, server, proxy, user, spec.policy, tmp_path, spec.archive)


def target_fixture(kinds: Sequence[str] = DEFAULT_KINDS) -> Callable[..., Iterator[Target]]:
    """A function-scoped fixture parametrised over ``kinds``; assign it to a module name."""

    @pytest.fixture(params=list(kinds))
    def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
        yield from prepare_target(request, request.param, tmp_path)

    return target


def record(
    request: pytest.FixtureRequest,
    target: Target,
    *,
    client: str,
    version: str,
    moves: Sequence[LoggedMove],
    result: str = "moved",
    note: str = "",
    expunges: int | None = None,
) -> None:
    """Append this client x server result to compat-results.jsonl (and the junit properties);
    ``expunges``: how many standard EXPUNGE responses the client itself recorded for its MOVE,
    where the test can ask it."""
    entry: dict[str, Any] = {
        "client": client,
        "version": version,
        "server": target.kind,
        "used_move": bool(moves),
        "moves": [dataclasses.asdict(m) for m in moves],
        "result": result,
        "note": note,
        "expunges_seen": expunges,
    }
    factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    path = factory.getbasetemp() / "compat-results.jsonl"
    with path.open("a") as out:
        out.write(json.dumps(entry) + "\n")
    for key, value in entry.items():
        request.node.user_properties.append((key, value))


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a client program: its own HOME, C locale, no inherited mail settings."""
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "xterm-256color",
        "TZ": "UTC",
    }
    env.update(extra)
    return env
