"""``imapmoveproxy probe`` against every server of the compatibility matrix.

Each test gives a fresh user mail of its own (INBOX and Archive, one message flagged
``\\Deleted``), runs the probe as a process with that user's credentials, and checks the verdict,
the exit status and the MOVE policy it reports, and that afterwards every mailbox of the user
holds exactly the messages, with exactly the flags, it held before (the scratch mailboxes gone).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from typing import Any

import pytest
from compat.common import SERVER_KINDS, seed_user, server_of
from compat.cyrus import CyrusServer
from harness import run_probe
from servers import DovecotServer, ImapServer, UwImapServer, find_free_port, make_message

# kind -> (exit status, policy, whether the MOVE's replies carry COPYUID)
EXPECTED = {
    "dovecot-legacy": (0, "uidplus", True),
    "dovecot-native": (0, "native", True),
    "imap4d-guarded": (1, "guarded", False),
    "cyrus-legacy": (0, "uidplus", True),
    "courier": (0, "uidplus", True),
    # Caveats: UW-IMAP's mbox locking (_SESSION_CAVEATS).  The uw-mix server (built with mix as
    # the format of new mailboxes, so the probe's scratch mailboxes are mix too) has neither:
    # several sessions share a mix mailbox read-write and an APPEND to it gets APPENDUID.
    "uw-mbox": (1, "uidplus", True),
    "uw-mix": (0, "uidplus", True),
}
_SEVERAL_SESSIONS = "several sessions can have a mailbox open read-write"
_SESSION_CAVEATS = (
    "a second session that opens a mailbox read-write ends the session that had it open",
    "an APPEND to a mailbox another session has open gets no APPENDUID",
)
_LIST_RE = re.compile(rb'^\([^)]*\) (?:"[^"]*"|NIL) (?:"((?:[^"\\]|\\.)*)"|(\S+))$')
_FLAGS_RE = re.compile(rb"FLAGS \(([^)]*)\)")
_SUBJECT_RE = re.compile(rb"Subject: ([^\r\n]*)", re.IGNORECASE)

Snapshot = dict[str, list[tuple[str, frozenset[str]]]]


def mail_state(server: ImapServer, user: str) -> Snapshot:
    """Every mailbox of ``user`` with each message's subject and flags (but \\Recent, which
    belongs to sessions), read directly from the server in read-only sessions."""
    imap = server.connect(user)
    state: Snapshot = {}
    try:
        typ, listing = imap.list()
        assert typ == "OK", listing
        for line in listing:
            assert isinstance(line, bytes), listing
            match = _LIST_RE.match(line)
            assert match, line
            name = (match.group(1) or match.group(2)).decode()
            typ, count = imap.select(f'"{name}"', readonly=True)
            assert typ == "OK", (name, count)
            messages = []
            if count != [b"0"]:
                typ, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                assert typ == "OK", data
                for item in data:
                    if isinstance(item, tuple):
                        flags = _FLAGS_RE.search(item[0])
                        subject = _SUBJECT_RE.search(item[1])
                        assert flags and subject, item
                        names = set(flags.group(1).decode().split()) - {"\\Recent"}
                        messages.append((subject.group(1).decode(), frozenset(names)))
            state[name] = sorted(messages, key=lambda m: (m[0], sorted(m[1])))
            imap.close()
    finally:
        with contextlib.suppress(Exception):
            imap.logout()
    return state


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["exit_status"] == result.returncode, (report, result.stderr)
    return report


def user_with_mail(server: ImapServer, archive: str) -> str:
    """A new user with compat 1..3 and a message flagged \\Deleted in INBOX, and an Archive."""
    user = seed_user(server, archive)
    server.seed(user, "INBOX", [make_message("flagged")], flags=("\\Deleted", "\\Seen"))
    return user


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_probe_self_test_on_every_server(kind, request, tmp_path):
    status, policy, copyuid = EXPECTED[kind]
    spec = SERVER_KINDS[kind]
    server = server_of(request, kind)
    user = user_with_mail(server, spec.archive)
    before = mail_state(server, user)
    password_file = tmp_path / "password"
    password_file.write_text(server.password + "\n")
    result = run_probe(
        server.address, "--json", "--user", user, "--password-file", str(password_file),
        *spec.proxy_args,
    )  # fmt: skip
    report = report_of(result)
    assert result.returncode == status, json.dumps(report["findings"], indent=1)
    assert report["policy"] == policy
    assert report["self_test"] and len(report["mailboxes"]) == 2
    ok = [finding["text"] for finding in report["findings"] if finding["level"] == 0]
    assert any(text.startswith("exactly the moved messages") for text in ok), report
    assert any(text.startswith("the message flagged \\Deleted stayed") for text in ok), report
    assert "scratch mailboxes deleted" in ok, report
    assert report["nonstandard"] == [], report  # imap4d's "* n EXPUNGED" arrives as EXPUNGE
    assert ("COPYUID sent before the EXPUNGEs" in ok) is copyuid, report
    assert mail_state(server, user) == before, "the probe changed mail outside its scratch boxes"
    caveats = [finding["text"] for finding in report["findings"] if finding["level"] == 1]
    if kind == "uw-mbox":
        for caveat in _SESSION_CAVEATS:
            assert any(text.startswith(caveat) for text in caveats), report
    else:
        assert _SEVERAL_SESSIONS in ok, report
        assert not any(text.startswith(_SESSION_CAVEATS) for text in caveats), report
    # they record what they receive
    if isinstance(server, DovecotServer | CyrusServer | UwImapServer):
        received = server.received_bytes(user)
        for mailbox in report["mailboxes"]:
            assert f'CREATE "{mailbox}"'.encode() in received
            assert f'DELETE "{mailbox}"'.encode() in received


def test_probe_without_uidplus_and_refuse_policy_will_not_work(imap4d):
    result = run_probe(imap4d.address, "--json", "--user", imap4d.new_user(),
                       env={"IMAP_PROBE_PASSWORD": imap4d.password})  # fmt: skip
    report = report_of(result)
    assert result.returncode == 2 and report["policy"] == "refused", report
    assert not report["capabilities"]["UIDPLUS"] and not report["capabilities"]["MOVE"]
    assert any("--no-uidplus guarded" in f["text"] for f in report["findings"]), report


def test_probe_capabilities_only_without_a_user(dovecot_legacy):
    result = run_probe(dovecot_legacy.address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "capabilities (before login)" in result.stdout
    assert re.search(r"^  UIDPLUS +yes$", result.stdout, re.M), result.stdout
    assert re.search(r"^  MOVE +no$", result.stdout, re.M), result.stdout
    assert "MOVE policy  uidplus" in result.stdout
    assert result.stdout.rstrip().endswith("verdict: works (exit status 0)")


def test_probe_reports_a_wrong_password_and_an_unreachable_server(dovecot_legacy, tmp_path):
    result = run_probe(dovecot_legacy.address, "--json", "--user", dovecot_legacy.new_user(),
                       env={"IMAP_PROBE_PASSWORD": "wrong"})  # fmt: skip
    report = report_of(result)
    assert result.returncode == 2
    assert any(f["level"] == 2 and "login as" in f["text"] for f in report["findings"]), report
    assert not report["self_test"]
    result = run_probe(("127.0.0.1", find_free_port()), "--json", "--connect-timeout", "5")
    report = report_of(result)
    assert result.returncode == 2
    assert any("cannot connect" in f["text"] for f in report["findings"]), report


def test_probe_needs_a_password_but_never_takes_it_as_a_flag(dovecot_legacy):
    result = run_probe(dovecot_legacy.address, "--user", "someone")
    assert result.returncode == 2 and "IMAP_PROBE_PASSWORD" in result.stderr
    result = run_probe(dovecot_legacy.address, "--user", "someone", "--password", "x")
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr


def test_probe_help_lists_the_proxy_upstream_options():
    result = run_probe(("127.0.0.1", 1), "--help")
    for flag in ("--upstream-tls", "--upstream-ca", "--upstream-proxy-protocol", "--no-uidplus",
                 "--password-file", "--json", "--config"):  # fmt: skip
        assert flag in result.stdout, result.stdout


def test_probe_reads_the_proxy_config_file_and_environment(imap4d, tmp_path):
    """The upstream from the proxy's own config file, no_uidplus from IMAPMOVEPROXY_NO_UIDPLUS;
    the file's client-side settings (a PROXY protocol listener, the metrics port) are not used
    by the proxy engine inside the probe, or its self-test could not connect to it."""
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'upstream = "{imap4d.host}:{imap4d.port}"\nlisten = "0.0.0.0:143"\n'
        f'metrics = "127.0.0.1:{find_free_port()}"\n'
        'proxy_protocol = true\nproxy_protocol_trusted = ["10.0.0.0/8"]\n'
    )
    env = {"IMAPMOVEPROXY_NO_UIDPLUS": "guarded", "IMAP_PROBE_PASSWORD": imap4d.password}
    result = run_probe(None, "--config", str(config), "--json", "--user", imap4d.new_user(),
                       env=env)  # fmt: skip
    report = report_of(result)
    assert result.returncode == 1 and report["policy"] == "guarded", report["findings"]
    assert report["server"] == f"{imap4d.host}:{imap4d.port}"
    assert "scratch mailboxes deleted" in [f["text"] for f in report["findings"]], report


def test_a_self_test_that_cannot_start_removes_its_scratch_mailboxes(dovecot_acl):
    """Over quota after two of the four APPENDs: the probe says so, exit 2, and deletes the two
    scratch mailboxes it had created."""
    user = user_with_mail(dovecot_acl, "Archive")  # 4 messages
    dovecot_acl.set_quota(user, messages=6)
    before = mail_state(dovecot_acl, user)
    result = run_probe(dovecot_acl.address, "--json", "--user", user,
                       env={"IMAP_PROBE_PASSWORD": dovecot_acl.password})  # fmt: skip
    report = report_of(result)
    assert result.returncode == 2, report["findings"]
    assert "APPEND" in report["findings"][-1]["text"], report["findings"]
    assert "QUOTA" in report["findings"][-1]["text"].upper(), report["findings"]
    assert mail_state(dovecot_acl, user) == before
    received = dovecot_acl.received_bytes(user)
    appends = received.count(b'APPEND "imapmoveproxy-probe-')
    assert appends == 3 and received.count(b'DELETE "imapmoveproxy-probe-') == 2, received


def test_probe_in_routing_mode_probes_each_backend(
    dovecot_legacy, dovecot_native, imap4d, tmp_path
):
    config = tmp_path / "routing.toml"
    config.write_text(
        f'[backends.old]\nupstream = "{dovecot_legacy.host}:{dovecot_legacy.port}"\n'
        f'[backends.new]\nupstream = "{dovecot_native.host}:{dovecot_native.port}"\n'
        f'[backends.mailutils]\nupstream = "{imap4d.host}:{imap4d.port}"\n'
        '[routes]\n"*" = "old"\n'
    )
    result = run_probe(None, "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr  # imap4d: refuse, no UIDPLUS
    reports = re.split(r"^backend (\w+):$", result.stdout, flags=re.M)[1:]
    found = dict(zip(reports[::2], reports[1::2], strict=True))
    assert list(found) == ["old", "new", "mailutils"]
    assert "MOVE policy  uidplus" in found["old"] and "verdict: works" in found["old"]
    # (before login a native Dovecot lists neither MOVE nor UIDPLUS: judged as any server is)
    assert f"server       {dovecot_native.host}:{dovecot_native.port}" in found["new"]
    assert "verdict: will not work" in found["mailutils"], found["mailutils"]
    one = run_probe(None, "--config", str(config), "--backend", "new", "--json")
    assert json.loads(one.stdout)["backend"] == "new", one.stdout
    assert json.loads(one.stdout)["server"].endswith(f":{dovecot_native.port}"), one.stdout
