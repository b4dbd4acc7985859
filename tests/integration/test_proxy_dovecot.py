"""End-to-end: real clients through the proxy process in front of Dovecot with MOVE hidden."""

from __future__ import annotations

import base64
import imaplib
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import imapclient
import pytest
from harness import ROOT, InterceptingRelay, ProxyProcess, RawClient, running_proxy
from servers import HOST, ImapServer, find_free_port, make_message


def subjects(server: ImapServer, user: str, mailbox: str) -> list[str]:
    imap = server.connect(user)
    _, count = imap.select(mailbox, readonly=True)
    if count == [b"0"]:
        imap.logout()
        return []
    _typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    imap.logout()
    return sorted(
        item[1].decode().split(":", 1)[1].strip() for item in data if isinstance(item, tuple)
    )


def test_imapclient_move_works_through_the_proxy(proxy, dovecot_legacy, mailbox):
    client = imapclient.IMAPClient(HOST, port=proxy.port, ssl=False, timeout=10)
    client.login(mailbox, dovecot_legacy.password)
    assert b"MOVE" in client.capabilities()
    client.select_folder("INBOX")
    uids = client.search(["SUBJECT", "message 2"]) + client.search(["SUBJECT", "message 4"])
    client.move(uids, "Trash")  # IMAPClient refuses move() without the MOVE capability
    assert len(client.search("ALL")) == 3
    client.logout()
    assert subjects(dovecot_legacy, mailbox, "Trash") == ["message 2", "message 4"]
    assert "message 2" not in subjects(dovecot_legacy, mailbox, "INBOX")
    assert b" MOVE " not in dovecot_legacy.received_bytes(mailbox)


def test_imaplib_move_and_uid_move_through_the_proxy(proxy, dovecot_legacy, mailbox):
    imap = imaplib.IMAP4(HOST, proxy.port, timeout=10)
    imap.login(mailbox, dovecot_legacy.password)
    assert "MOVE" in imap.capabilities
    imap.select("INBOX")
    typ, _ = imap._simple_command("MOVE", "1", "Trash")
    assert typ == "OK"
    assert any(b"COPYUID" in line for line in imap.untagged_responses.get("OK", []))
    typ, _data = imap.uid("MOVE", "5", '"Trash"')
    assert typ == "OK"
    imap.logout()
    assert subjects(dovecot_legacy, mailbox, "Trash") == ["message 1", "message 5"]


def test_large_literals_stream_both_ways_without_being_held(proxy, dovecot_legacy, mailbox):
    body = b"X" * 998 + b"\r\n"
    message = make_message("big") + body * (50 * 1024 * 1024 // len(body))
    before = _peak_rss_kib(proxy)
    imap = imaplib.IMAP4(HOST, proxy.port, timeout=60)
    imap.login(mailbox, dovecot_legacy.password)
    typ, _ = imap.append("INBOX", None, None, message)
    assert typ == "OK"
    imap.select("INBOX")
    typ, data = imap.fetch("6", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == message
    imap.logout()
    growth_mib = (_peak_rss_kib(proxy) - before) / 1024
    assert growth_mib < 16, f"proxy peak memory grew by {growth_mib:.0f} MiB for a 50 MB literal"


def _peak_rss_kib(proxy: ProxyProcess) -> int:
    status = Path(f"/proc/{proxy.process.pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match
    return int(match.group(1))


def test_idle_relays_new_mail_and_done(proxy, dovecot_legacy, mailbox):
    with RawClient(proxy.address) as client:
        client.login(mailbox, dovecot_legacy.password)
        client.command(b"s", b"SELECT INBOX")
        client.send(b"i IDLE\r\n")
        assert client.continuation().startswith(b"+ ")
        dovecot_legacy.seed(mailbox, "INBOX", [make_message("while idling")])
        deadline = time.monotonic() + 10
        seen = b""
        while b"* 6 EXISTS" not in seen and time.monotonic() < deadline:
            seen += client._read_response()
        assert b"* 6 EXISTS" in seen
        client.send(b"DONE\r\n")
        assert client.read_until(b"i")[-1].startswith(b"i OK")
        assert client.command(b"m", b"MOVE 6 Trash")[-1].startswith(b"m OK")


def test_authenticate_plain_and_logout(proxy, dovecot_legacy, mailbox):
    imap = imaplib.IMAP4(HOST, proxy.port, timeout=10)
    password = dovecot_legacy.password
    typ, _ = imap.authenticate("PLAIN", lambda _: f"\0{mailbox}\0{password}".encode())
    assert typ == "OK"
    assert "MOVE" in imap.capabilities or "MOVE" in imap.capability()[1][0].decode()
    typ, _ = imap.logout()
    assert typ == "BYE"
    log = proxy.log_text()
    secret = base64.b64encode(f"\0{mailbox}\0{password}".encode()).decode()
    assert password not in log and secret not in log


def test_password_never_reaches_the_log(proxy, dovecot_legacy, mailbox):
    with RawClient(proxy.address) as client:
        client.login(mailbox, dovecot_legacy.password)
        client.command(b"s", b"SELECT INBOX")
        client.command(b"m", b"MOVE 1 Trash")
        client.command(b"z", b"LOGOUT")
    time.sleep(0.2)  # let the proxy write its connection line
    log = proxy.log_text()
    assert dovecot_legacy.password not in log
    assert re.search(r"closed client=127\.0\.0\.1:\d+ upstream=.* moves=uidplus-moved=1", log)


def test_many_moves_in_parallel_connections(proxy, dovecot_legacy):
    user = dovecot_legacy.new_user()
    dovecot_legacy.seed(user, "INBOX", [make_message(f"m{i}") for i in range(40)])
    for n in range(4):
        dovecot_legacy.seed(user, f"box{n}", [])
    errors: list[BaseException] = []

    def mover(n: int) -> None:
        try:
            imap = imaplib.IMAP4(HOST, proxy.port, timeout=20)
            imap.login(user, dovecot_legacy.password)
            imap.select("INBOX")
            for _ in range(100):  # the four race for the same messages until none is left
                typ, data = imap.uid("SEARCH", "ALL")
                uids = data[0].split()
                if not uids:
                    break
                typ, data = imap.uid("MOVE", uids[n % len(uids)].decode(), f"box{n}")
                # another mover may have taken it first, as with a native MOVE
                assert typ == "OK" or b"EXPUNGEISSUED" in data[0], data
            imap.logout()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=mover, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert subjects(dovecot_legacy, user, "INBOX") == []
    everything = sorted(s for n in range(4) for s in subjects(dovecot_legacy, user, f"box{n}"))
    assert everything == sorted(f"m{i}" for i in range(40))  # each exactly once


def test_move_of_ten_thousand_messages(proxy, dovecot_legacy):
    user = dovecot_legacy.new_user()
    dovecot_legacy.seed(user, "Trash", [])
    dovecot_legacy.seed(user, "Sparse", [])
    with RawClient(proxy.address, timeout=120) as client:
        client.login(user, dovecot_legacy.password)
        message = make_message("bulk")
        appends = b"".join(
            b"a%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(message), message) for i in range(10_000)
        )
        client.send(appends)
        assert client.read_until(b"a9999")[-1].startswith(b"a9999 OK")
        client.command(b"s", b"SELECT INBOX")
        # every other message, as a client-side set of 5,000 single UIDs (~30 KB)
        sparse = b",".join(b"%d" % uid for uid in range(1, 10_001, 2))
        for tag, command in ((b"m", b"UID MOVE " + sparse + b" Sparse"), (b"n", b"MOVE 1:* Trash")):
            replies = client.command(tag, command)
            assert replies[-1].startswith(tag + b" OK"), replies[-1]
            expunges = sum(1 for r in replies if r.endswith(b"EXPUNGE\r\n"))
            if expunges != 5_000:  # say where the others went before failing
                late = client.command(b"x", b"NOOP")
                unlike = [r[:80] for r in replies if not r.endswith(b"EXPUNGE\r\n")]
                outs = dovecot_legacy.home_dir.glob(f"{user}/rawlog/*.out")
                sent = [path.read_bytes().count(b" EXPUNGE\r\n") for path in outs]
                raise AssertionError(
                    f"{tag!r}: {expunges} EXPUNGEs before the tagged OK, {len(late) - 1} after; "
                    f"Dovecot sent {sent} in all, by session; other responses {unlike}; "
                    f"log tail {proxy.log_text()[-1500:]}"
                )
        status = client.command(b"t", b"STATUS Trash (MESSAGES)")
        assert b"MESSAGES 5000" in status[0]
        status = client.command(b"u", b"STATUS Sparse (MESSAGES)")
        assert b"MESSAGES 5000" in status[0]
    longest = max(len(line) for line in dovecot_legacy.received_bytes(user).split(b"\n"))
    assert longest < 40_000  # the proxy's STORE/EXPUNGE sets were split


def test_unreachable_upstream_gets_bye_unavailable(tmp_path):
    closed_port = find_free_port()
    with running_proxy((HOST, closed_port), tmp_path / "proxy.log") as proxy:
        with pytest.raises(EOFError), RawClient(proxy.address) as client:
            client._read_response()
        raw = __import__("socket").create_connection(proxy.address, 5)
        assert raw.recv(1000).startswith(b"* BYE [UNAVAILABLE] ")
        raw.close()
        time.sleep(0.2)
        assert "unavailable" in proxy.log_text()


def test_upstream_that_sends_no_greeting_gets_bye_unavailable(tmp_path):
    """A listener that accepts and says nothing: a real server cannot be made to do this."""
    import socket

    silent = socket.socket()
    silent.bind((HOST, 0))
    silent.listen(5)
    with running_proxy(
        silent.getsockname(), tmp_path / "proxy.log", "--connect-timeout", "0.5"
    ) as proxy:
        raw = socket.create_connection(proxy.address, 5)
        assert raw.recv(1000).startswith(b"* BYE [UNAVAILABLE] ")
        raw.close()
    silent.close()


@pytest.mark.parametrize(
    ("arguments", "config", "key"),
    [
        (["--listen", "nonsense", "--upstream", "127.0.0.1:143"], None, "listen"),
        (["--listen", "127.0.0.1:1143"], None, "upstream"),
        (
            [],
            'listen = "127.0.0.1:1"\nupstream = "127.0.0.1:2"\nmax_line_length = "big"\n',
            "max_line_length",
        ),
        ([], 'listen = "127.0.0.1:1"\nupstream = "127.0.0.1:2"\nlisten_port = 3\n', "listen_port"),
        ([], "listen = \n", "config"),
        (
            ["--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2", "--rollback", "master"],
            None,
            "rollback_master_user",
        ),
        (
            ["--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2", "--move-chunk-size", "-1"],
            None,
            "move_chunk_size",
        ),
    ],
)
def test_config_errors_are_one_line_naming_the_key(tmp_path, arguments, config, key):
    if config is not None:
        path = tmp_path / "proxy.toml"
        path.write_text(config)
        arguments = [*arguments, "--config", str(path)]
    result = subprocess.run(
        [sys.executable, "-m", "imapmoveproxy", *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"imapmoveproxy: configuration error: {key}:")


def test_flags_override_the_config_file(tmp_path, dovecot_legacy, mailbox):
    path = tmp_path / "proxy.toml"
    port = find_free_port()
    path.write_text(f'listen = "127.0.0.1:{port}"\nupstream = "127.0.0.1:1"\n')
    proxy = ProxyProcess(dovecot_legacy.address, tmp_path / "p.log", "--config", str(path))
    try:  # ProxyProcess passes --listen/--upstream flags, which win over the file
        with RawClient(proxy.address) as client:
            client.login(mailbox, dovecot_legacy.password)
    finally:
        proxy.stop()


def test_example_config_documents_every_setting_and_loads():
    from imapmoveproxy.config import Config, build, load_file

    values = load_file(ROOT / "config.example.toml")
    build(values)
    documented = set(re.findall(r"^#? ?(\w+) = ", (ROOT / "config.example.toml").read_text(), re.M))
    assert documented == set(Config.__dataclass_fields__)


def test_sigterm_lets_a_move_finish_then_says_bye_to_everyone(dovecot_legacy, mailbox, tmp_path):
    """SIGTERM mid-MOVE: the MOVE completes (held mid-way by a relay), then BYE [UNAVAILABLE]."""
    proxy_box: list[ProxyProcess] = []

    def terminate_proxy() -> None:  # runs when the proxy's STORE reaches the relay
        proxy_box[0].process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # let the proxy stop accepting and tell idle clients BYE meanwhile

    relay = InterceptingRelay(dovecot_legacy.address, b"UID STORE", 1, terminate_proxy)
    proxy = ProxyProcess(relay.address, tmp_path / "proxy.log")
    proxy_box.append(proxy)
    try:
        with RawClient(proxy.address) as idle, RawClient(proxy.address) as mover:
            idle.login(mailbox, dovecot_legacy.password)
            mover.login(mailbox, dovecot_legacy.password)
            mover.command(b"s", b"SELECT INBOX")
            replies = mover.command(b"m", b"MOVE 1:2 Trash")
            assert replies[-1].startswith(b"m OK"), replies
            assert mover._read_response().startswith(b"* BYE [UNAVAILABLE]")
            assert idle._read_response().startswith(b"* BYE [UNAVAILABLE]")
        assert proxy.process.wait(10) == 0
    finally:
        proxy.stop()
        relay.close()
    assert subjects(dovecot_legacy, mailbox, "Trash") == ["message 1", "message 2"]
    assert subjects(dovecot_legacy, mailbox, "INBOX") == ["message 3", "message 4", "message 5"]


def test_connection_limits_and_login_timeout(dovecot_legacy, tmp_path):
    config = tmp_path / "limits.toml"
    config.write_text("max_connections_per_address = 2\nlogin_timeout = 1.0\n")
    with running_proxy(
        dovecot_legacy.address, tmp_path / "p.log", "--config", str(config)
    ) as proxy:
        first, second = RawClient(proxy.address), RawClient(proxy.address)
        third = __import__("socket").create_connection(proxy.address, 10)
        assert third.recv(200).startswith(b"* BYE [UNAVAILABLE] Too many connections")
        third.close()
        user = dovecot_legacy.new_user()
        second.login(user, dovecot_legacy.password)
        # the one that never logs in is told so and closed; the logged-in one stays
        assert first._read_response() == b"* BYE Autologout: no login in time.\r\n"
        assert second.command(b"n", b"NOOP")[-1].startswith(b"n OK")
        first.close()
        second.close()


def test_client_that_disconnects_mid_move_still_gets_it_completed(
    dovecot_legacy, mailbox, tmp_path
):
    """The client hangs up while the STORE is held (by a relay) on its way to Dovecot."""
    relay = InterceptingRelay(dovecot_legacy.address, b"UID STORE", 1, lambda: time.sleep(0.5))
    try:
        with running_proxy(relay.address, tmp_path / "proxy.log") as proxy:
            with RawClient(proxy.address) as client:
                client.login(mailbox, dovecot_legacy.password)
                client.command(b"s", b"SELECT INBOX")
                client.send(b"m MOVE 1:2 Trash\r\n")
            assert relay.hook_ran.wait(10)
            for _ in range(50):  # the connection's summary line comes once the MOVE is done
                if "moves=uidplus-moved=1" in proxy.log_text():
                    break
                time.sleep(0.1)
            assert "moves=uidplus-moved=1" in proxy.log_text()
    finally:
        relay.close()
    assert subjects(dovecot_legacy, mailbox, "Trash") == ["message 1", "message 2"]
    imap = dovecot_legacy.connect(mailbox)
    imap.select("INBOX")
    _, flagged = imap.search(None, "DELETED")
    imap.logout()
    assert flagged == [b""]  # nothing left half-done
