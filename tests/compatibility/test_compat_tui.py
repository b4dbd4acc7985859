"""Compatibility matrix, terminal mail readers from Debian driven in tmux: mutt, neomutt, aerc.

Each is started on a private tmux server against the proxy, and driven with keystrokes as a
person would: the index shows the INBOX (login, LIST/SELECT, FETCH of the envelopes), the
message ``compat 2`` is opened (FETCH of the body), saved/moved to Archive, and the mailbox is
synced.  The result is checked on the server itself and the proxy's log tells whether the
client used MOVE.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import pytest
from compat.common import (
    MOVED,
    Target,
    clean_env,
    debian_version,
    record,
    require_program,
    target_fixture,
)
from compat.tmux import Tmux

target = target_fixture()

_MUTTRC = """\
set imap_user = "{user}"
set imap_pass = "{password}"
set imap_authenticators = "plain:login"
set folder = "imap://{host}:{port}/"
set spoolfile = "+INBOX"
set ssl_starttls = no
set ssl_force_tls = no
set imap_check_subscribed = no
set imap_passive = yes
set mail_check = 3600
set timeout = 3600
set header_cache = ""
set message_cachedir = ""
set sort = mailbox-order
set confirmappend = no
set confirmcreate = no
set delete = yes
set quit = yes
set move = no
set mark_old = no
set wait_key = no
set pager_stop = yes
set record = ""
set postponed = ""
set help = no
"""


# imap_authenticators: by default mutt picks the strongest SASL mechanism imap4d advertises
# (DIGEST-MD5...), which imap4d's hashed passwords cannot serve, and gives up ("SASL
# authentication failed"), with or without the proxy; PLAIN (then LOGIN) works everywhere.


def _drive_mutt(program: str, target: Target, tmp_path: Path) -> str:
    """Open INBOX, open compat 2, save it to =Archive, sync, quit.  Returns the transcript."""
    home = tmp_path / "home"
    home.mkdir()
    muttrc = home / "muttrc"
    muttrc.write_text(
        _MUTTRC.format(
            user=target.user, password=target.password, host=target.host, port=target.port
        )
    )
    muttrc.chmod(0o600)
    tmux = require_program("tmux", "tmux")
    env = clean_env(home, TERM="screen")
    with Tmux(tmux, tmp_path / "tmux.sock", [program, "-n", "-F", str(muttrc)],
              env=env, cwd=home) as term:  # fmt: skip
        try:
            term.wait_for(r"compat 3", timeout=20)  # index of INBOX: logged in, listed
            term.write("2")  # jump to message 2 (sort = mailbox-order)
            term.wait_for(r"Jump to message: 2")
            term.send("Enter")
            term.send("Enter")  # open it in the pager: FETCH of the body
            term.wait_for(r"Subject: compat 2")
            term.wait_for(r"^Hello\.")
            term.write("s")  # save-message: copy to a mailbox, mark the original deleted
            term.wait_for(r"Save to mailbox")
            term.send("C-u")
            term.write(f"={target.archive}")
            term.send("Enter")
            # Saved: the original is marked deleted and the pager goes on to message 3.
            term.wait_for(r"3/3: ", timeout=20)
            term.write("q")  # back to the index
            term.write("$")  # sync-mailbox: expunge the deleted original
            term.wait_for(r"(?i)(sync|expung|mailbox (is )?unchanged|INBOX)", timeout=20)
            term.write("q")  # quit (quit = yes)
            status = term.wait_exit(timeout=30)
            assert status == 0, f"{program} exited {status}"
        finally:
            (tmp_path / "screens.txt").write_text(term.transcript())
        return term.transcript()


@pytest.mark.slow
@pytest.mark.parametrize(("program", "package"), [("mutt", "mutt"), ("neomutt", "neomutt")])
def test_mutt(
    program: str, package: str, target: Target, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    path = require_program(program, package)
    _drive_mutt(path, target, tmp_path)
    moves = target.check_moved(moved=MOVED)
    version = debian_version(package)
    note = "'s' = UID COPY + UID STORE +FLAGS.SILENT (\\Deleted); '$' = EXPUNGE"
    record(request, target, client=program, version=version, moves=moves, note=note)


def _drive_aerc(program: str, target: Target, tmp_path: Path) -> None:
    """Open INBOX, open compat 2 in the viewer, :move Archive, :quit."""
    home = tmp_path / "home"
    config_dir = home / ".config" / "aerc"
    config_dir.mkdir(parents=True)
    accounts = config_dir / "accounts.conf"
    user = urllib.parse.quote(target.user, safe="")
    password = urllib.parse.quote(target.password, safe="")
    accounts.write_text(
        f"""[compat]
source = imap+insecure://{user}:{password}@{target.host}:{target.port}
outgoing = /bin/true
default = INBOX
from = Compat <compat@example.com>
"""
    )
    accounts.chmod(0o600)  # aerc refuses a group/world-readable accounts.conf
    tmux = require_program("tmux", "tmux")
    env = clean_env(home, TERM="screen")
    with Tmux(tmux, tmp_path / "tmux.sock", [program], env=env, cwd=home) as term:
        try:
            # The message list, newest first: compat 3 (selected), compat 2, compat 1.
            term.wait_for(r"compat 1\s*$", timeout=20)
            term.wait_for(r"Connected")
            term.write("j")
            term.send("Enter")  # the viewer: FETCH of the body
            term.wait_for(r"Subject: compat 2")
            term.wait_for(r"^Hello\.")
            term.write(f":move {target.archive}")
            term.send("Enter")
            term.wait_for(rf"Messages moved to {re.escape(target.archive)}", timeout=20)
            term.write(":quit")
            term.send("Enter")
            status = term.wait_exit(timeout=30)
            assert status == 0, f"aerc exited {status}"
        finally:
            (tmp_path / "screens.txt").write_text(term.transcript())


@pytest.mark.slow
def test_aerc(target: Target, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    path = require_program("aerc", "aerc")
    _drive_aerc(path, target, tmp_path)
    moves = target.check_moved()
    assert [m.command for m in moves] == ["UID MOVE"], moves
    version = debian_version("aerc")
    note = "message viewer, ':move Archive'"
    record(request, target, client="aerc", version=version, moves=moves, note=note)
