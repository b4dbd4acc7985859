"""The engine under the traffic that broke its first shape: pipelining as mbsync does it, clients
that read slowly or write without reading, reused tags, and an upstream that stalls or drops.

Each test runs the proxy as a process in front of the real legacy Dovecot. Where a server must
misbehave (stall, drop mid-command), a relay in front of that Dovecot makes it do so, since no
real server can be told to. What is asserted is what a user or an operator would notice:
completion, the replies, the proxy's memory (RSS), and that other clients are not held up.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from harness import InterceptingRelay, ProxyProcess, RawClient, RelayAction, message_ids
from servers import HOST, ImapServer, find_free_port, make_message
from test_hostile import assert_still_serving, logged_in, proxy_with, responses_until

MIB = 1024 * 1024


def big_message(subject: str, size: int) -> bytes:
    """A message of about ``size`` bytes (76-character lines)."""
    line = b"x" * 74 + b"\r\n"
    return make_message(subject) + line * (size // len(line))


class Sender(threading.Thread):
    """Writes ``data`` to the socket while the test reads (a client that pipelines everything
    in one write and reads at the same time, as mbsync does)."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        super().__init__(daemon=True)
        self.sock, self.data = sock, data
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.sock.sendall(self.data)
        except OSError as exc:
            self.error = exc


def tagged_counts(
    sock: socket.socket, tags: dict[bytes, int], limit: int, buffered: bytes = b""
) -> dict[bytes, int]:
    """Read until every tag prefix in ``tags`` has had that many tagged OKs (no literals in
    the replies), or the connection ends; at most ``limit`` bytes, after ``buffered`` (read
    already). Also counts, under ``b"c NO"``, the lines that start with it."""
    seen = dict.fromkeys(tags, 0)
    seen[b"c NO"] = 0  # the proxy's own refusals, counted on the way
    total = 0
    while any(seen[tag] < count for tag, count in tags.items()) and total < limit:
        chunk = sock.recv(MIB)
        if not chunk:
            break
        total += len(chunk)
        lines = (buffered + chunk).split(b"\r\n")
        buffered = lines.pop()
        for line in lines:
            if line.startswith(b"c NO "):
                seen[b"c NO"] += 1
            for tag in tags:
                if line.startswith(tag) and b" OK " in line:
                    seen[tag] += 1
    return seen


# ------------------------------------------------------------------ pipelining


def test_a_big_fetch_and_a_big_append_pipelined_in_one_write_both_complete(
    dovecot_legacy: ImapServer, proxy: ProxyProcess
):
    """40 messages of 256 KB fetched, and a 1 MB APPEND, sent in one write while reading: the
    first engine deadlocked (each direction's pump waited on the other's upstream write)."""
    user = dovecot_legacy.new_user()
    dovecot_legacy.seed(user, "INBOX", [big_message(f"big {i}", 256 * 1024) for i in range(40)])
    dovecot_legacy.seed(user, "Bulk", [])
    literal = big_message("appended", MIB)
    with logged_in(proxy, dovecot_legacy, user) as client:
        client.command(b"s", b"SELECT INBOX")
        sender = Sender(
            client.sock,
            b"f FETCH 1:* BODY[]\r\na APPEND Bulk {%d+}\r\n" % len(literal) + literal + b"\r\n",
        )
        sender.start()
        responses = client.read_until(b"f") + client.read_until(b"a")
        sender.join(30)
    assert sum(1 for r in responses if b" FETCH (" in r[:30]) == 40
    assert responses[-1].startswith(b"a OK"), responses[-1]
    assert sender.error is None


def test_fifty_thousand_pipelined_fetches_all_answered_with_bounded_memory(
    dovecot_legacy: ImapServer, mailbox: str, proxy: ProxyProcess
):
    before = proxy.memory_kib("VmHWM")
    with logged_in(proxy, dovecot_legacy, mailbox) as client:
        client.command(b"s", b"SELECT INBOX")
        commands = b"".join(b"t%d FETCH 1:4 (FLAGS)\r\n" % i for i in range(50_000))
        sender = Sender(client.sock, commands)
        sender.start()
        client.sock.settimeout(60)
        seen = tagged_counts(client.sock, {b"t": 50_000}, 200 * MIB)
        sender.join(30)
    assert seen[b"t"] == 50_000
    growth = (proxy.memory_kib("VmHWM") - before) / 1024
    assert growth < 32, f"proxy peak memory grew by {growth:.0f} MiB"


def test_a_slow_reader_pipelining_big_fetches_and_appends_completes_in_bounded_memory(
    dovecot_legacy: ImapServer, proxy: ProxyProcess
):
    """mbsync-style: a 10 MB FETCH and a 4 MB APPEND in one write, read 64 KB at a time with
    pauses. Everything completes, and the proxy holds no more than its buffers meanwhile."""
    user = dovecot_legacy.new_user()
    dovecot_legacy.seed(user, "INBOX", [big_message("ten", 10 * MIB)])
    dovecot_legacy.seed(user, "Bulk", [])
    literal = big_message("appended", 4 * MIB)
    before = proxy.memory_kib("VmHWM")
    with logged_in(proxy, dovecot_legacy, user) as client:
        client.command(b"s", b"SELECT INBOX")
        request = b"f FETCH 1 BODY[]\r\na APPEND Bulk {%d+}\r\n" % len(literal) + literal
        sender = Sender(client.sock, request + b"\r\n")
        sender.start()
        received = bytearray()
        deadline = time.monotonic() + 120
        while not re.search(rb"\r\na OK[^\r]*\r\n$", received) and time.monotonic() < deadline:
            chunk = client.sock.recv(64 * 1024)
            if not chunk:
                break
            received += chunk
            time.sleep(0.002)
        sender.join(30)
    assert re.search(rb"\r\nf OK", received) and received.endswith(b"\r\n"), received[-300:]
    assert re.search(rb"\r\na OK", received), received[-300:]
    growth = (proxy.memory_kib("VmHWM") - before) / 1024
    assert growth < 32, f"proxy peak memory grew by {growth:.0f} MiB"


@pytest.mark.parametrize("next_tag", [b"b", b"a"], ids=["new tag", "reused tag"])
def test_a_big_literal_the_server_refuses_does_not_leave_the_client_waiting(
    dovecot_legacy: ImapServer, mailbox: str, proxy: ProxyProcess, next_tag: bytes
):
    """APPEND of a 1 MB synchronizing literal to a mailbox that does not exist: Dovecot answers
    NO instead of "+", so the literal never comes. The proxy reads a big literal in big pieces
    (its socket wakes it only once 256 KiB of it are there); the refusal must undo that, or the
    client's next, short command would never wake it. The next command may reuse the tag."""
    with logged_in(proxy, dovecot_legacy, mailbox) as client:
        client.send(b"a APPEND Nowhere {1000000}\r\n")
        refused, _ = responses_until(client, b"a")
        client.send(next_tag + b" NOOP\r\n")
        answered, closed = responses_until(client, next_tag)
    assert refused[-1].startswith(b"a NO"), refused
    assert not closed and answered[-1].startswith(next_tag + b" OK"), answered


def test_a_client_gone_in_the_middle_of_a_big_literal_is_noticed(
    dovecot_legacy: ImapServer, mailbox: str, proxy: ProxyProcess
):
    """300 KB of a 1 MB APPEND literal, then the client hangs up: its reader, waiting for
    256 KiB more of the literal, is woken by the end of the connection, which closes."""
    with logged_in(proxy, dovecot_legacy, mailbox) as client:
        client.send(b"z NOOP\r\n")  # the connection's client port, in the proxy's log
        responses_until(client, b"z")
        port = client.sock.getsockname()[1]
        client.send(b"a APPEND INBOX {1000000+}\r\n" + b"x" * 300_000)
    proxy.wait_for_log(rf"closed client=[^ ]*:{port}\b")


def test_an_upstream_gone_in_the_middle_of_a_big_literal_ends_the_connection(tmp_path: Path):
    """The server sends 600 KB of a 1 MB literal and drops the connection: the client gets every
    byte the server sent, then the end of the connection (no BYE can be put inside a literal),
    although the proxy waits for big pieces of a literal. A scripted upstream: no real server
    can be made to drop in the middle of a response."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(10)
    sent = b"y" * 600_000

    def serve(conn: socket.socket) -> None:
        # A probe of the proxy's may close its connection with unread bytes (a reset).
        with conn, contextlib.suppress(ConnectionError):
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 UIDPLUS] ready\r\n")
            conn.settimeout(10)
            for line in conn.makefile("rb"):
                tag, _, command = line.partition(b" ")
                if command.startswith(b"LOGIN"):
                    conn.sendall(tag + b" OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n")
                elif command.startswith(b"FETCH"):
                    conn.sendall(b"* 1 FETCH (BODY[] {1000000}\r\n" + sent)
                    return

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            for _ in range(10):  # the harness's start-up probe, then the test's client
                threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    proxy = ProxyProcess(listener.getsockname()[:2], tmp_path / "proxy.log")
    try:
        with RawClient(proxy.address) as client:
            client.login("user", "secret")
            client.send(b"f FETCH 1 BODY[]\r\n")
            client.sock.settimeout(10)  # a proxy that missed the drop would leave us here
            received = bytearray()
            while chunk := client.sock.recv(MIB):
                received += chunk
    finally:
        proxy.stop()
        listener.close()
    assert received.startswith(b"* 1 FETCH (BODY[] {1000000}\r\n"), received[:100]
    assert received.endswith(sent), len(received)


def test_a_big_append_sent_slowly_arrives_whole(
    dovecot_legacy: ImapServer, mailbox: str, proxy: ProxyProcess
):
    """A 600 KB literal sent in pieces with pauses, its last piece smaller than the proxy's
    bulk read (256 KiB): the proxy waits for big pieces only as far as the literal owes them."""
    literal = big_message("slow", 600 * 1024)
    with logged_in(proxy, dovecot_legacy, mailbox) as client:
        client.send(b"a APPEND INBOX {%d}\r\n" % len(literal))
        go, _ = responses_until(client, b"+")
        for start in range(0, len(literal), 100_000):
            client.send(literal[start : start + 100_000])
            time.sleep(0.05)
        client.send(b"\r\n")
        appended, _ = responses_until(client, b"a")
        client.send(b"s EXAMINE INBOX\r\nf UID FETCH *:* RFC822.SIZE\r\n")
        fetched, _ = responses_until(client, b"f")
    assert go[-1].startswith(b"+"), go
    assert appended[-1].startswith(b"a OK"), appended
    assert b"RFC822.SIZE %d" % len(literal) in b"".join(fetched), fetched


# ------------------------------------------------------------------ clients that do not read


def test_a_slow_reader_writing_a_flood_of_commands_cannot_grow_the_proxy(
    dovecot_legacy: ImapServer, proxy: ProxyProcess
):
    """While a 20 MB message is on its way to a client that reads it slowly, the client writes
    24 MB of COMPRESS commands of an unknown mechanism (each answered NO by the proxy itself).
    The first engine read them all and held the NOs back behind the message: memory grew with
    the flood. Now the proxy stops reading the client; every command still gets its NO, in
    order."""
    user = dovecot_legacy.new_user()
    dovecot_legacy.seed(user, "INBOX", [big_message("twenty", 20 * MIB)])
    lines = 24 * MIB // len(b"c COMPRESS GZIP\r\n")
    with logged_in(proxy, dovecot_legacy, user) as client:
        client.command(b"s", b"SELECT INBOX")
        before = proxy.memory_kib("VmHWM")
        client.sock.settimeout(120)  # the flood's sendall blocks while the proxy does not read
        client.send(b"f FETCH 1 BODY[]\r\n")
        sender = Sender(client.sock, b"c COMPRESS GZIP\r\n" * lines + b"z NOOP\r\n")
        sender.start()
        received = bytearray(client._buf)
        searched = 0  # (the NOs held back behind the FETCH may follow its OK in the same read)
        while received.find(b"\r\nf OK", searched) < 0:  # slowly: 16 KB every 5 ms
            searched = max(0, len(received) - 8)
            chunk = client.sock.recv(16 * 1024)
            assert chunk, "connection closed"
            received += chunk
            time.sleep(0.005)
        peak = proxy.memory_kib("VmHWM")
        while not re.search(rb"\r\nz OK[^\r]*\r\n$", received[-200:]):
            chunk = client.sock.recv(MIB)
            assert chunk, "connection closed"
            received += chunk
        sender.join(30)
    assert sender.error is None
    assert re.search(rb"\* 1 FETCH \([^\r]*BODY\[\] \{\d+\}\r\n", received)
    assert received.count(b"\r\nc NO Unknown compression") == lines
    growth = (peak - before) / 1024
    assert growth < 16, f"proxy peak memory grew by {growth:.0f} MiB during the flood"


def test_a_silent_reader_of_a_big_fetch_holds_no_memory_and_its_reset_is_noticed(
    dovecot_legacy: ImapServer, proxy: ProxyProcess
):
    """A client asks for a 20 MB message and reads none of it: the proxy's writer waits for the
    client's socket (past what the kernel buffers), its memory stays bounded, and another client
    is served meanwhile. Then the silent client resets the connection while the writer waits:
    the proxy notices, closes it and goes on serving."""
    user = dovecot_legacy.new_user()
    dovecot_legacy.seed(user, "INBOX", [big_message("twenty", 20 * MIB)])
    before = proxy.memory_kib("VmHWM")
    silent = logged_in(proxy, dovecot_legacy, user)
    silent.command(b"z", b"SELECT INBOX")
    port = silent.sock.getsockname()[1]
    silent.send(b"f FETCH 1 BODY[]\r\n")
    queued = -1  # bytes waiting unread in the silent client's socket: growing until it is full
    for _ in range(200):  # at most 10 s
        time.sleep(0.05)
        now = len(silent.sock.recv(64 * MIB, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        if now == queued:
            break
        queued = now
    assert 0 < queued < 20 * MIB, queued  # the rest is held back, not sent
    with logged_in(proxy, dovecot_legacy, user) as other:
        assert other.command(b"n", b"NOOP")[-1].startswith(b"n OK")
    growth = (proxy.memory_kib("VmHWM") - before) / 1024
    assert growth < 16, f"proxy peak memory grew by {growth:.0f} MiB (the client reads nothing)"
    silent.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    silent.close()  # a reset, with 20 MB still to send it
    proxy.wait_for_log(rf"closed client=[^ ]*:{port}\b")
    assert_still_serving(proxy, dovecot_legacy)


# ------------------------------------------------------------------ tags


def test_a_noop_sharing_the_tag_of_a_failed_login_does_not_log_the_client_in(
    dovecot_legacy: ImapServer, tmp_path: Path
):
    """``a NOOP`` and ``a LOGIN bob wrong`` pipelined: the first engine took the NOOP's OK for
    the login, so the login timeout stopped applying (and bob became the rollback identity)."""
    with proxy_with(dovecot_legacy, tmp_path, login_timeout=2.0) as proxy:
        user = dovecot_legacy.new_user()
        with RawClient(proxy.address) as client:
            client.send(f'a NOOP\r\na LOGIN "{user}" "wrong-password"\r\n'.encode())
            first = client.read_until(b"a")
            second = client.read_until(b"a")
            assert first[-1].startswith(b"a OK") and second[-1].startswith(b"a NO"), second
            client.sock.settimeout(20)
            responses, closed = responses_until(client, b"never")
        assert closed and responses == [b"* BYE Autologout: no login in time.\r\n"]


# ------------------------------------------------------------------ a server that stalls


@pytest.fixture
def stalling_store(dovecot_legacy: ImapServer):
    """The legacy Dovecot behind a relay that swallows the first flagging STORE: the server
    never answers it (what a hung server does, which no real server does on demand)."""
    relay = InterceptingRelay(
        dovecot_legacy.address, b"+FLAGS.SILENT (\\Deleted)", 1, action=RelayAction.SWALLOW
    )
    yield relay
    relay.close()


def seeded(server: ImapServer, count: int) -> str:
    user = server.new_user()
    server.seed(user, "INBOX", [make_message(f"m{i}") for i in range(count)])
    server.seed(user, "Trash", [])
    return user


def assert_another_move_runs(proxy: ProxyProcess, server: ImapServer, user: str) -> None:
    """The mailbox's MOVE lock was released: another session's MOVE of it runs (of a new
    message: at this login the journal may have finished the MOVE that was cut)."""
    server.seed(user, "INBOX", [make_message("another")])
    with logged_in(proxy, server, user) as other:
        other.command(b"s", b"SELECT INBOX")
        assert other.command(b"m", b"MOVE 1:* Trash")[-1].startswith(b"m OK")


def test_a_move_whose_upstream_stalls_is_abandoned_and_frees_the_mailbox(
    dovecot_legacy: ImapServer, stalling_store: InterceptingRelay, tmp_path: Path
):
    user = seeded(dovecot_legacy, 3)
    before = message_ids(dovecot_legacy, user, ("INBOX", "Trash"))
    with proxy_with(stalling_store, tmp_path, move_step_timeout=2.0) as proxy:
        with logged_in(proxy, dovecot_legacy, user) as stuck:
            stuck.command(b"s", b"SELECT INBOX")
            stuck.sock.settimeout(30)
            stuck.send(b"m MOVE 1:* Trash\r\n")
            responses, closed = responses_until(stuck, b"m")
        assert closed, responses
        assert responses[-1] == b"* BYE [UNAVAILABLE] The mail server stopped answering.\r\n"
        proxy.wait_for_log(r"closing connection: the mail server stopped answering during a MOVE")
        assert_another_move_runs(proxy, dovecot_legacy, user)
    after = message_ids(dovecot_legacy, user, ("INBOX", "Trash"))
    # None lost, and none duplicated: the next login finished the abandoned MOVE (journal).
    assert len(set(after) - set(before)) == 1  # the other session's message
    assert all(after[message] == 1 for message in before), after


def test_a_client_gone_during_a_stalled_move_frees_both_sockets_within_the_drain_timeout(
    dovecot_legacy: ImapServer, stalling_store: InterceptingRelay, tmp_path: Path
):
    user = seeded(dovecot_legacy, 3)
    with proxy_with(stalling_store, tmp_path, drain_timeout=3.0) as proxy:
        with logged_in(proxy, dovecot_legacy, user) as client:
            client.command(b"s", b"SELECT INBOX")
            client.send(b"m MOVE 1:* Trash\r\n")
            proxy.wait_for_log(r"UID STORE \S+ \+FLAGS.SILENT")
        closed = proxy.wait_for_log(r"c2 imapmoveproxy\.shell\.server: closed .*", timeout=20)
        assert "moves=0" in closed.group(0)
        proxy.wait_for_log(r"MOVE not finished within drain_timeout")
        assert_another_move_runs(proxy, dovecot_legacy, user)


# ------------------------------------------------------------------ a server that drops


def test_an_upstream_dropping_in_the_middle_of_an_append_literal_says_bye(
    dovecot_legacy: ImapServer, mailbox: str, tmp_path: Path
):
    """The client gets ``* BYE`` (not a bare end of connection) every time."""
    literal = big_message("dropped", 4 * MIB).replace(b"x" * 74, b"MID-LITERAL" + b"x" * 63, 1)
    for attempt in range(5):
        relay = InterceptingRelay(
            dovecot_legacy.address, b"MID-LITERAL", 1, action=RelayAction.DROP_BEFORE
        )
        proxy = ProxyProcess(relay.address, tmp_path / f"proxy{attempt}.log")
        try:
            with logged_in(proxy, dovecot_legacy, mailbox) as client:
                sender = Sender(client.sock, b"a APPEND INBOX {%d+}\r\n" % len(literal) + literal)
                sender.start()
                client.sock.settimeout(30)
                responses, closed = responses_until(client, b"a")
                sender.join(30)
            assert closed and responses[-1] == b"* BYE Mail server connection lost.\r\n", responses
        finally:
            proxy.stop()
            relay.close()


# ------------------------------------------------------------------ operators


def test_readyz_opens_at_most_one_upstream_connection_per_two_seconds(
    dovecot_legacy: ImapServer, tmp_path: Path
):
    relay = InterceptingRelay(dovecot_legacy.address, b"never sent", 1)
    metrics = find_free_port()
    proxy = ProxyProcess(relay.address, tmp_path / "proxy.log", "--metrics", f"{HOST}:{metrics}")
    try:
        started = time.monotonic()
        for _ in range(50):
            with urllib.request.urlopen(f"http://{HOST}:{metrics}/readyz", timeout=10) as page:
                assert page.status == 200
        elapsed = time.monotonic() - started
        time.sleep(0.3)  # let the relay count the last connection it accepted
    finally:
        proxy.stop()
        relay.close()
    # One for the harness's check that the proxy listens, and one per two seconds for /readyz.
    assert 2 <= relay.connections <= 3 + int(elapsed / 2.0), (relay.connections, elapsed)
