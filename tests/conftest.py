"""pytest fixtures starting real IMAP servers (see tests/servers.py).

Session-scoped servers (one instance each per test session, stopped at session end):

* ``dovecot_legacy``: Dovecot 2.3 that does not advertise MOVE (but has UIDPLUS, CONDSTORE...).
* ``dovecot_native``: Dovecot 2.3 with its default capabilities (MOVE advertised).
* ``dovecot_no_uidplus``: Dovecot advertising neither MOVE nor UIDPLUS.
* ``dovecot_acl``: ``dovecot_legacy`` plus the ACL and quota plugins and a master user (a
  :class:`servers.DovecotAclServer`: ``set_rights()``, ``revoke_rights()``, ``reset_rights()``,
  ``set_quota()``, ``master_user``/``master_password``, ``connect_master()``).
* ``imap4d``: GNU Mailutils imap4d (neither MOVE nor UIDPLUS).
* ``uw_mbox``, ``uw_mix``: UW-IMAP imapd 2007f (UIDPLUS, no MOVE; a
  :class:`servers.UwImapServer`, built from ../shared/servers on first use) with mbox folders,
  or built with mix as its default format (every CREATE makes a mix folder, the first APPEND a
  mix INBOX).  Users are real Unix users, deleted when the server stops.
* ``cyrus_legacy``: Cyrus IMAP 3.6 with MOVE (and XMOVE) hidden by ``suppress_capabilities``;
  ``cyrus_native``: the same with MOVE advertised (tests/compat/cyrus.py; unpacked by
  tests/compat/install-extracted-servers.sh, as they conflict with Dovecot's packages).
* ``courier``: Courier-IMAP 5.0 (UIDPLUS, no MOVE; tests/compat/courier.py, unpacked likewise).
* ``redis_server`` (per test): redis-server for the MOVE lock shared by several proxies.

Each is a :class:`servers.ImapServer` with ``.host``, ``.port``, ``.password``, ``.log_path``,
``new_user()``, ``seed(user, mailbox, messages)``, ``connect(user)`` and ``received_bytes()``.
Use a fresh ``new_user()`` in every test: users are isolated from each other.

For the unit tests of the sans-IO session, ``script`` is a :class:`driver.Driver` logged in with
INBOX selected.

A missing server binary makes the fixture FAIL (never skip): the integration tests are the
point of this suite.  ``make test`` installs the servers (scripts/install-deps.sh, Debian 12).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compat.courier import CourierServer
from compat.cyrus import CyrusServer
from driver import Driver, started
from harness import ProxyProcess, running_proxy
from servers import (
    DovecotAclServer,
    DovecotServer,
    Imap4dServer,
    ImapServer,
    RedisServer,
    ServerError,
    ServerNotInstalled,
    UwImapServer,
    make_message,
)

_Server = TypeVar("_Server", bound=ImapServer)


def _serve(factory: Callable[[], _Server]) -> Iterator[_Server]:
    server: _Server | None = None
    failure: str | None = None
    try:
        server = factory()
        server.start()
    except ServerNotInstalled as exc:
        failure = (
            f"IMAP test server not installed: {exc}\nmake test installs every test server "
            "(scripts/install-deps.sh test, as root on Debian 12)."
        )
    except ServerError as exc:
        failure = f"IMAP test server failed to start: {exc}"
    if failure is not None or server is None:
        if server is not None:
            server.stop()
        pytest.fail(failure or "no server", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dovecot_legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """Dovecot 2.3 without MOVE in its CAPABILITY list (UIDPLUS present)."""
    root = tmp_path_factory.mktemp("dovecot-legacy")
    yield from _serve(lambda: DovecotServer(root, variant="legacy"))


@pytest.fixture(scope="session")
def dovecot_native(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """Dovecot 2.3 with default capabilities (MOVE advertised)."""
    root = tmp_path_factory.mktemp("dovecot-native")
    yield from _serve(lambda: DovecotServer(root, variant="native"))


@pytest.fixture(scope="session")
def dovecot_no_uidplus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """Dovecot advertising neither MOVE nor UIDPLUS: a legacy server that, unlike imap4d, keeps
    concurrent sessions' flag changes apart (the guarded policy's race test needs that)."""
    root = tmp_path_factory.mktemp("dovecot-no-uidplus")
    caps = "imap_capability = IMAP4rev1 LITERAL+ IDLE NAMESPACE UNSELECT ID\n"
    yield from _serve(
        lambda: DovecotServer(root, variant="legacy", name="dovecot-no-uidplus", extra_config=caps)
    )


@pytest.fixture(scope="session")
def dovecot_acl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotAclServer]:
    """Legacy Dovecot (no MOVE, UIDPLUS) with the ACL and quota plugins and a master user.

    ``set_rights(user, mailbox, rights)`` / ``revoke_rights(user, mailbox, letters)`` /
    ``reset_rights(user, mailbox=None)`` act at once, even on sessions that have the mailbox
    selected; ``set_quota(user, messages=, storage_kb=)`` acts on sessions logging in later.
    Rights and quotas are per user: with a fresh new_user() per test nothing needs resetting.
    """
    root = tmp_path_factory.mktemp("dovecot-acl")
    yield from _serve(lambda: DovecotAclServer(root))


@pytest.fixture(scope="session")
def imap4d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    """GNU Mailutils imap4d: neither MOVE nor UIDPLUS."""
    root = tmp_path_factory.mktemp("imap4d")
    yield from _serve(lambda: Imap4dServer(root))


@pytest.fixture(scope="session")
def uw_mbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwImapServer]:
    """UW-IMAP imapd 2007f with mbox folders (UIDPLUS, no MOVE; a second read-write SELECT
    of a mailbox ends the session that had it open)."""
    root = tmp_path_factory.mktemp("uw-mbox")
    yield from _serve(lambda: UwImapServer(root, fmt="mbox"))


@pytest.fixture(scope="session")
def uw_mix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwImapServer]:
    """UW-IMAP imapd 2007f built with mix as the format of new mailboxes: every folder (a plain
    CREATE, by ``seed()`` or any client) and INBOX (at its first APPEND) is mix; several
    sessions may have a mix folder open read-write, and APPEND to it gets APPENDUID."""
    root = tmp_path_factory.mktemp("uw-mix")
    yield from _serve(lambda: UwImapServer(root, fmt="mix"))


@pytest.fixture(scope="session")
def cyrus_legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CyrusServer]:
    """Cyrus IMAP 3.6 without MOVE or XMOVE in any CAPABILITY list (UIDPLUS present).  Only the
    list is changed: Cyrus still executes a MOVE it is sent."""
    root = tmp_path_factory.mktemp("cyrus-legacy")
    yield from _serve(lambda: CyrusServer(root, name="cyrus-legacy"))


@pytest.fixture(scope="session")
def cyrus_native(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CyrusServer]:
    """Cyrus IMAP 3.6 with its default capabilities (MOVE and XMOVE advertised)."""
    root = tmp_path_factory.mktemp("cyrus-native")
    yield from _serve(lambda: CyrusServer(root, name="cyrus-native", hide_move=False))


@pytest.fixture(scope="session")
def courier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CourierServer]:
    """Courier-IMAP 5.0: UIDPLUS, no MOVE; its folders live under ``INBOX.``."""
    root = tmp_path_factory.mktemp("courier")
    yield from _serve(lambda: CourierServer(root))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for the shared MOVE lock (``.url``; ``stop()``/``start()``
    restart it on the same port, empty). Missing redis-server makes the test FAIL."""
    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
    except ServerNotInstalled as exc:
        pytest.fail(f"{exc}: install redis-server (.ci/run does)", pytrace=False)
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(dovecot_legacy: ImapServer, tmp_path: Path) -> Iterator[ProxyProcess]:
    """The proxy, as a process, in front of ``dovecot_legacy``."""
    with running_proxy(dovecot_legacy.address, tmp_path / "proxy.log") as running:
        yield running


@pytest.fixture
def mailbox(dovecot_legacy: ImapServer, request: pytest.FixtureRequest) -> str:
    """A new user of ``dovecot_legacy`` with messages "message 1"... in INBOX (five, or the
    test module's ``MAILBOX_MESSAGES``) and an empty Trash."""
    count = getattr(request.module, "MAILBOX_MESSAGES", 5)
    user = dovecot_legacy.new_user()
    messages = [make_message(f"message {i}") for i in range(1, count + 1)]
    dovecot_legacy.seed(user, "INBOX", messages)
    dovecot_legacy.seed(user, "Trash", [])
    return user


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault matrix's table of faults and outcomes
    (tests/integration/test_fault_matrix.py)."""
    module = sys.modules.get("test_fault_matrix")
    rows = getattr(module, "FAULT_TABLE", [])
    if not rows:
        return
    terminalreporter.section("MOVE fault matrix")
    for fault, reply, result in rows:
        terminalreporter.write_line(f"{fault}\n    client: {reply}\n    messages: {result}")


@pytest.fixture
def script() -> Driver:
    """For the unit tests: a session logged in with INBOX selected (tests/driver.py)."""
    return started()


# --- Client-view oracle (tests/clientview.py) ---------------------------------------------------
# Every RawClient session (unless oracle=False) and every imaplib session to a proxy the test
# started is watched by a ClientView; a violation raises in the session, and fails the test here
# too in case the test (or a thread) swallowed the AssertionError.

import clientview  # noqa: E402
from harness import watch_imaplib  # noqa: E402


@pytest.fixture(autouse=True)
def _client_view_oracle(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    clientview.WATCHED.clear()
    watch_imaplib(monkeypatch.setattr)
    yield
    violations = [f"{view.name}: {v}" for view in clientview.WATCHED for v in view.violations]
    clientview.WATCHED.clear()
    if violations:
        pytest.fail("client-view oracle: " + "; ".join(violations), pytrace=False)
