"""Compatibility matrix, synchronising clients from Debian: isync (mbsync) and offlineimap3.

Both keep a local Maildir copy of the account.  The test lets the client download the account
through the proxy (LOGIN, LIST, SELECT, FETCH), moves the local copy of ``compat 2`` from the
local INBOX to the local Archive as a mail reader would, and syncs again: the client has to
upload it to Archive and delete and expunge it from INBOX on the server.  Neither program sends
MOVE (they propagate a local move as a new message plus a deletion), which the proxy's log
confirms; the result is checked on the server itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from compat.common import (
    DEFAULT_KINDS,
    MOVED,
    SERVER_KINDS,
    SOURCE,
    SUBJECTS,
    TARGET,
    Target,
    clean_env,
    debian_version,
    record,
    require_program,
    seed_user,
    server_of,
    server_subjects,
    target_fixture,
)
from harness import running_proxy
from servers import HOST, make_message

target = target_fixture()

RUN_TIMEOUT = 60
# After APPENDing to imap4d (no APPENDUID; an empty mbox gets a new UIDVALIDITY at each SELECT),
# mbsync 1.4.4 looks the new message up ("UID FETCH * (UID)", then its X-TUID header) and
# rejects imap4d's answer with this error, exit 1 (later runs may recover, or fail with "Unable
# to recover from UIDVALIDITY change").  UW-IMAP's mbox format does the same (its APPEND to a
# folder that is open answers OK without APPENDUID). Exactly the same happens directly against
# these servers, without the proxy (checked below).
MBSYNC_NO_UIDPLUS_ERROR = "IMAP error: received extraneous data in FETCH response"
MBSYNC_FAILS_ALONE = ("imap4d-guarded", "uw-mbox")


def _run(command: list[str], home: Path, log: Path, *, expect_rc: int | None = 0) -> str:
    """Run a client program (bounded in time); its output, ending in ``exit <code>`` if
    ``expect_rc`` is None (any exit code accepted)."""
    try:
        done = subprocess.run(
            command, env=clean_env(home), cwd=home, capture_output=True, text=True,
            timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{command[0]} did not finish in {RUN_TIMEOUT} s: {exc}") from None
    output = done.stdout + done.stderr
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n{output}\nexit {done.returncode}\n")
    if expect_rc is None:
        return f"{output}\nexit {done.returncode}"
    assert done.returncode == expect_rc, (
        f"{' '.join(command)} exited {done.returncode}, expected {expect_rc}:\n{output[-4000:]}"
    )
    return output


def _maildir_subjects(folder: Path) -> dict[str, Path]:
    """Subject -> file, for the messages of one local Maildir folder."""
    found = {}
    for sub in ("new", "cur"):
        for path in sorted((folder / sub).glob("*")):
            match = re.search(rb"^Subject: (.*?)\r?$", path.read_bytes(), re.MULTILINE)
            assert match, path
            found[match.group(1).decode()] = path
    return found


def _move_locally(mail: Path, strip: str, archive: str = TARGET) -> None:
    """What a mail reader does with a Maildir: rename ``compat 2``'s file into the other folder,
    with the sync program's per-folder part of the name (``strip``) removed, as its docs ask."""
    path = _maildir_subjects(mail / SOURCE)[MOVED]
    path.rename(mail / archive / "cur" / re.sub(strip, "", path.name))


# ----------------------------------------------------------------------------------- mbsync


def _mbsync_config(home: Path, host: str, port: int, user: str, password: str) -> Path:
    mail = home / "Mail"
    mail.mkdir(parents=True)
    config = home / ".mbsyncrc"
    config.write_text(
        f"""IMAPAccount compat
Host {host}
Port {port}
User "{user}"
Pass "{password}"
SSLType None
AuthMechs LOGIN
Timeout 20

IMAPStore far
Account compat

MaildirStore near
Path {mail}/
Inbox {mail}/INBOX
SubFolders Verbatim

Channel compat
Far :far:
Near :near:
Patterns *
Create Both
Expunge Both
SyncState *
"""
    )
    config.chmod(0o600)
    return config


def _mbsync_move(mbsync: str, home: Path, config: Path, log: Path, *, expect_rc: int) -> str:
    """Sync, move compat 2 locally, sync again; the second run's output."""
    command = [mbsync, "-V", "-c", str(config), "compat"]
    _run(command, home, log)
    mail = home / "Mail"
    # mbsync strips the personal NAMESPACE prefix: Courier's INBOX.Archive is "Archive" too.
    assert sorted(_maildir_subjects(mail / SOURCE)) == list(SUBJECTS)
    assert _maildir_subjects(mail / TARGET) == {}
    _move_locally(mail, r",U=\d+")
    return _run(command, home, log, expect_rc=expect_rc)


@pytest.mark.slow
def test_mbsync(target: Target, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    mbsync = require_program("mbsync", "isync")
    version = debian_version("isync")
    home = tmp_path / "home"
    config = _mbsync_config(home, target.host, target.port, target.user, target.password)
    log = tmp_path / "mbsync.log"
    fails_alone = target.kind in MBSYNC_FAILS_ALONE
    output = _mbsync_move(mbsync, home, config, log, expect_rc=1 if fails_alone else 0)
    moves = target.check_moved()
    assert moves == [], "mbsync sent MOVE"
    note = "APPEND to Archive; UID STORE +FLAGS.SILENT (\\Deleted) + CLOSE in INBOX"
    result = "moved"
    if fails_alone:
        # The server holds the moved state, but mbsync exits 1 (MBSYNC_NO_UIDPLUS_ERROR); it
        # does exactly the same directly against the server, without the proxy.
        assert MBSYNC_NO_UIDPLUS_ERROR in output
        server = target.server
        direct_user = seed_user(server)
        direct_home = tmp_path / "direct-home"
        direct_config = _mbsync_config(
            direct_home, server.host, server.port, direct_user, server.password
        )
        direct = _mbsync_move(mbsync, direct_home, direct_config, log, expect_rc=1)
        assert MBSYNC_NO_UIDPLUS_ERROR in direct
        assert server_subjects(server, direct_user, SOURCE) == ["compat 1", "compat 3"]
        assert server_subjects(server, direct_user, TARGET) == [MOVED]
        result = "moved on the server, but mbsync exits 1 (same without proxy)"
        note = f"after the APPEND: {MBSYNC_NO_UIDPLUS_ERROR!r}"
    record(
        request, target, client="mbsync (isync)", version=version, moves=moves,
        result=result, note=note,
    )  # fmt: skip


# ------------------------------------------------------------------------------ offlineimap


offlineimap_target = target_fixture((*DEFAULT_KINDS, "dovecot-no-uidplus-guarded"))
# imap4d advertises ID but answers it with BAD before login ("ID Wrong state"); offlineimap3
# sends ID before LOGIN whenever it is advertised, and gives up.
OFFLINEIMAP_IMAP4D_ERROR = "ID command error: BAD [b'ID Wrong state']"


def _offlineimap_config(home: Path, host: str, port: int, user: str, password: str) -> Path:
    mail = home / "Mail"
    mail.mkdir(parents=True)
    config = home / ".offlineimaprc"
    config.write_text(
        f"""[general]
accounts = compat
metadata = {home}/.offlineimap
ui = basic
maxsyncaccounts = 1

[Account compat]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {mail}

[Repository remote]
type = IMAP
remotehost = {host}
remoteport = {port}
remoteuser = {user}
remotepass = {password}
ssl = no
starttls = no
expunge = yes
maxconnections = 1
holdconnectionopen = no
"""
    )
    config.chmod(0o600)
    return config


@pytest.mark.slow
def test_offlineimap(
    offlineimap_target: Target, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    target = offlineimap_target
    offlineimap = require_program("offlineimap", "offlineimap3")
    version = debian_version("offlineimap3")
    home = tmp_path / "home"
    config = _offlineimap_config(home, target.host, target.port, target.user, target.password)
    log = tmp_path / "offlineimap.log"
    command = [offlineimap, "-c", str(config), "-o", "-u", "basic"]
    if target.kind == "imap4d-guarded":
        output = _run(command, home, log, expect_rc=1)
        assert OFFLINEIMAP_IMAP4D_ERROR in output
        server = target.server
        direct_home = tmp_path / "direct-home"
        direct_config = _offlineimap_config(
            direct_home, server.host, server.port, seed_user(server), server.password
        )
        direct = _run([offlineimap, "-c", str(direct_config), "-o", "-u", "basic"],
                      direct_home, log, expect_rc=1)  # fmt: skip
        assert OFFLINEIMAP_IMAP4D_ERROR in direct
        assert target.wait_for_moves() == []
        record(
            request, target, client="offlineimap3", version=version, moves=[],
            result="cannot log in (same without proxy)",
            note=f"imap4d answers the pre-login ID with BAD: {OFFLINEIMAP_IMAP4D_ERROR}",
        )  # fmt: skip
        return
    _run(command, home, log)
    mail = home / "Mail"
    assert sorted(_maildir_subjects(mail / SOURCE)) == list(SUBJECTS)
    assert _maildir_subjects(mail / target.archive) == {}  # Courier's: INBOX.Archive
    _move_locally(mail, r",U=\d+|,FMD5=[0-9a-f]+", target.archive)
    _run(command, home, log)
    moves = target.check_moved()
    assert moves == [], "offlineimap sent MOVE"
    note = "APPEND to Archive; UID STORE +FLAGS (\\Deleted) + EXPUNGE in INBOX"
    record(request, target, client="offlineimap3", version=version, moves=moves, note=note)


# ------------------------------------------------------------------------- mbsync, compressed

COMPRESSED_MESSAGES = 2000
_BOOKKEEPING = re.compile(rb"(?mi)^(?:X-TUID|Status|X-Status|X-UID|X-IMAPbase): [^\n]*\n")


def _maildir_contents(mail: Path) -> list[tuple[str, str, bytes]]:
    """(folder, Maildir flags, message) of every message under ``mail``, sorted: what a user
    has, whatever the file names (mbsync puts times and UIDs in them) and the headers of
    mbsync's and imap4d's bookkeeping (imap4d's Status: changes once a session has seen the
    message)."""
    found = []
    for path in mail.rglob("*"):
        if path.is_file() and path.parent.name in ("cur", "new"):
            flags = path.name.rpartition(":2,")[2] if ":2," in path.name else ""
            message = _BOOKKEEPING.sub(b"", path.read_bytes())
            found.append((str(path.parent.parent.relative_to(mail)), flags, message))
    return sorted(found)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dovecot-legacy", "imap4d-guarded"])
def test_mbsync_syncs_the_same_with_compress(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """mbsync uses COMPRESS=DEFLATE wherever it is offered (Debian's isync is built with zlib,
    and flushes with Z_PARTIAL_FLUSH): a mailbox of 2000 messages, some flagged, synced through
    the proxy with COMPRESS and with it turned off gives the same Maildir."""
    mbsync = require_program("mbsync", "isync")
    spec = SERVER_KINDS[kind]
    server = server_of(request, kind)
    user = server.new_user("z")
    bodies = [
        f"Line {n} of a message, with text that repeats as mail does.\r\n" for n in range(40)
    ]
    messages = [
        make_message(f"sync {i}", "".join(bodies[: 1 + i % 40])) for i in range(COMPRESSED_MESSAGES)
    ]
    server.seed(user, SOURCE, messages[: COMPRESSED_MESSAGES // 2])
    server.seed(user, SOURCE, messages[COMPRESSED_MESSAGES // 2 :], flags=("\\Flagged",))
    log = tmp_path / "mbsync.log"
    synced = {}
    for compress in (True, False):
        home = tmp_path / f"home-{'compressed' if compress else 'plain'}"
        args = (*spec.proxy_args, *(() if compress else ("--no-compress",)))
        with running_proxy(server.address, tmp_path / f"proxy-{compress}.log", *args) as proxy:
            config = _mbsync_config(home, HOST, proxy.port, user, server.password)
            _run([mbsync, "-V", "-c", str(config), "compat"], home, log)
            assert ("compression started" in proxy.log_text()) is compress
        synced[compress] = _maildir_contents(home / "Mail")
    assert len(synced[True]) == COMPRESSED_MESSAGES
    assert sum(1 for _, flags, _ in synced[True] if "F" in flags) == COMPRESSED_MESSAGES // 2
    assert synced[True] == synced[False]
