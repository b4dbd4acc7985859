"""Hostile and broken clients against the proxy in front of the real legacy Dovecot.

What a user or an operator would notice: the reply the misbehaving client gets (BAD or BYE), the
log line, that other clients are served meanwhile, that the proxy process neither crashes nor
grows, and that a slow but correct client still gets its MOVE done.

"""

from __future__ import annotations

import contextlib
import imaplib
import random
import re
import select
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import InterceptingRelay, ProxyProcess, RawClient, running_proxy
from servers import ImapServer, make_message

LINE_TOO_LONG = b"* BYE Line too long.\r\n"
AUTOLOGOUT = b"* BYE Autologout: no login in time.\r\n"


@contextlib.contextmanager
def proxy_with(
    server: ImapServer | InterceptingRelay, tmp_path: Path, **settings: float
) -> Iterator[ProxyProcess]:
    """The proxy in front of ``server`` (or a relay) with these configuration keys set."""
    config = tmp_path / "limits.toml"
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
    with running_proxy(server.address, tmp_path / "proxy.log", "--config", str(config)) as proxy:
        yield proxy


MAILBOX_MESSAGES = 3  # in the ``mailbox`` fixture's INBOX (tests/conftest.py)


def subjects(server: ImapServer, user: str, box: str) -> list[str]:
    """The subjects in ``box``, read from the server directly (not through the proxy)."""
    imap = server.connect(user)
    try:
        typ, _ = imap.select(box, readonly=True)
        assert typ == "OK"
        _, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return sorted(
            item[1].decode().split(":", 1)[1].strip() for item in data if isinstance(item, tuple)
        )
    except imaplib.IMAP4.error:  # FETCH 1:* in an empty mailbox
        return []
    finally:
        imap.logout()


def logged_in(proxy: ProxyProcess, server: ImapServer, user: str) -> RawClient:
    client = RawClient(proxy.address)
    client.login(user, server.password)
    return client


def responses_until(client: RawClient, tag: bytes) -> tuple[list[bytes], bool]:
    """Responses up to the tagged one for ``tag``, or up to the end of the connection:
    (responses, whether the proxy closed the connection)."""
    responses: list[bytes] = []
    while True:
        try:
            response = client._read_response()
        except (EOFError, ConnectionResetError):
            return responses, True
        responses.append(response)
        if response.startswith(tag + b" "):
            return responses, False


def assert_still_serving(proxy: ProxyProcess, server: ImapServer) -> None:
    """The proxy process is alive, logged no traceback, and serves a fresh connection."""
    assert proxy.process.poll() is None, proxy.log_text()[-2000:]
    with logged_in(proxy, server, server.new_user()) as fresh:
        assert fresh.command(b"f", b"SELECT INBOX")[-1].startswith(b"f OK")
    assert "Traceback" not in proxy.log_text(), proxy.log_text()[-3000:]


def assert_cut_off(client: RawClient, bye: bytes) -> None:
    """The proxy said ``bye`` and closed the connection."""
    assert client._read_response() == bye
    with pytest.raises((EOFError, ConnectionResetError)):
        client._read_response()


# ------------------------------------------------------------------ slow clients


def test_byte_by_byte_login_select_and_uid_move_still_work(proxy, dovecot_legacy, mailbox):
    """Every byte in its own TCP segment, CR and LF apart, a literal mailbox name too."""
    password = dovecot_legacy.password
    with RawClient(proxy.address) as client:
        client.dribble(f'L LOGIN {mailbox} "{password}"\r\n'.encode())
        assert client.read_until(b"L")[-1].startswith(b"L OK")
        client.dribble(b"s SELECT INBOX\r\n")
        assert client.read_until(b"s")[-1].startswith(b"s OK")
        client.dribble(b"m UID MOVE 2 Trash\r\n")
        replies = client.read_until(b"m")
        assert replies[-1].startswith(b"m OK"), replies
        assert any(b"[COPYUID " in reply for reply in replies), replies
        assert b"* 2 EXPUNGE\r\n" in replies
        client.dribble(b"n UID MOVE 3 {5}\r\n")
        assert client.continuation().startswith(b"+")
        client.dribble(b"Trash\r\n")
        replies = client.read_until(b"n")
        assert replies[-1].startswith(b"n OK"), replies
    assert subjects(dovecot_legacy, mailbox, "Trash") == ["message 2", "message 3"]
    assert subjects(dovecot_legacy, mailbox, "INBOX") == ["message 1"]
    assert b" MOVE " not in dovecot_legacy.received_bytes(mailbox)  # emulated, not passed on
    assert_still_serving(proxy, dovecot_legacy)


def _endless_login_line() -> Iterator[int]:
    yield from b'a LOGIN "someone" "'
    while True:
        yield ord("x")  # a password that never ends


def _endless_noops() -> Iterator[int]:
    for number in range(1_000_000):
        yield from b"n%d NOOP\r\n" % number


@pytest.mark.parametrize(
    "stream", [_endless_login_line, _endless_noops], ids=["login-line", "valid-noops"]
)
def test_login_timeout_cuts_off_a_dribbler_while_another_client_is_served(
    dovecot_legacy, mailbox, tmp_path, stream
):
    """A client that keeps sending (an endless LOGIN line, or pre-login NOOPs that are
    answered) but never logs in gets BYE at login_timeout; a logged-in one is served all along."""
    with proxy_with(dovecot_legacy, tmp_path, login_timeout=2.0) as proxy:
        other = logged_in(proxy, dovecot_legacy, mailbox)
        slow = RawClient(proxy.address)
        received = b""
        for sent, byte in enumerate(stream(), 1):  # a byte every 20 ms, until the BYE
            readable, _, _ = select.select([slow.sock], [], [], 0.02)
            if readable:
                chunk = slow.sock.recv(65536)
                received += chunk
                if not chunk or AUTOLOGOUT in received:
                    break
            assert sent < 1000, f"no BYE after {sent} bytes; received {received!r}"
            slow.sock.sendall(bytes([byte]))
            if sent % 50 == 0:  # meanwhile the other client is served
                tag = b"o%d" % sent
                assert other.command(tag, b"NOOP")[-1].startswith(tag + b" OK")
        assert received.endswith(AUTOLOGOUT), received
        if stream is _endless_noops:  # it was served until then
            assert b"n0 OK " in received
        slow._buf = b""
        with pytest.raises((EOFError, ConnectionResetError)):
            slow._read_response()
        slow.close()
        proxy.wait_for_log(r"closing connection: no login in time")
        assert other.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        assert other.command(b"m", b"UID MOVE 1 Trash")[-1].startswith(b"m OK")
        other.close()
        assert_still_serving(proxy, dovecot_legacy)
    assert subjects(dovecot_legacy, mailbox, "Trash") == ["message 1"]


def test_a_command_line_left_unfinished_after_login_is_cut_off_at_line_timeout(
    dovecot_legacy, mailbox, tmp_path
):
    """Issue 12, defect 7: after login nothing bounded how long a client could keep a command
    line unfinished (before login, login_timeout does). Now line_timeout does, however steadily
    the line grows; a slow literal is not a line, and a client that ends its lines is served."""
    with proxy_with(dovecot_legacy, tmp_path, line_timeout=2.0) as proxy:
        slow = logged_in(proxy, dovecot_legacy, mailbox)
        appender = logged_in(proxy, dovecot_legacy, mailbox)
        message = make_message("slowly appended")[:40]
        appender.send(b"a APPEND INBOX {%d+}\r\n" % len(message))
        slow.send(b"s SEARCH TEXT ")
        received = b""
        for sent in range(len(message)):  # a byte every 0.1 s from each: 4 s in all
            readable, _, _ = select.select([slow.sock], [], [], 0.1)
            if readable:
                chunk = slow.sock.recv(65536)
                received += chunk
            elif not received:
                slow.send(b"x")
            appender.send(message[sent : sent + 1])
        appender.send(b"\r\n")
        assert appender.read_until(b"a")[-1].startswith(b"a OK")
        assert received == b"* BYE Line not finished in time.\r\n"
        slow._buf = b""
        with pytest.raises((EOFError, ConnectionResetError)):
            slow._read_response()
        slow.close()
        proxy.wait_for_log(
            r"WARNING c\d+ \S+: closing connection: client line not finished in time"
        )
        assert appender.command(b"n", b"NOOP")[-1].startswith(b"n OK")
        appender.close()
        assert_still_serving(proxy, dovecot_legacy)


def test_a_line_begun_and_never_continued_is_cut_off_at_line_timeout(
    dovecot_legacy, mailbox, tmp_path
):
    """Half a command line in one write, then nothing: the line's time ran from its first
    byte only once a second read came, so a client that never sent one kept its buffered
    half line forever."""
    with proxy_with(dovecot_legacy, tmp_path, line_timeout=1.0) as proxy:
        client = logged_in(proxy, dovecot_legacy, mailbox)
        client.send(b"s SEARCH TEXT half")
        responses, closed = responses_until(client, b"never")  # up to the socket timeout
        assert closed and responses == [b"* BYE Line not finished in time.\r\n"], responses
        assert_still_serving(proxy, dovecot_legacy)


def test_login_timeout_cannot_be_dodged_by_a_move_stuck_behind_an_unanswered_command(
    dovecot_legacy, tmp_path
):
    with proxy_with(dovecot_legacy, tmp_path, login_timeout=2.0, drain_timeout=1.0) as proxy:
        client = RawClient(proxy.address, timeout=5)
        client.send(b"T" * 200 + b" NOOP\r\n")
        assert client._read_response().startswith(b"* BAD ")  # Dovecot's, untagged
        client.send(b"m MOVE 1 Trash\r\n")
        responses, closed = responses_until(client, b"never")  # up to the socket timeout
        assert closed and responses[-1].startswith(b"* BYE "), responses


# ------------------------------------------------------------------ overlong tags and lines


@pytest.mark.parametrize(
    ("before_login", "line"),
    [
        (True, b"T" * 70_000 + b" NOOP\r\n"),
        (False, b"T" * 70_000 + b" NOOP\r\n"),
        (False, b"a SEARCH TEXT " + b"x" * 70_000 + b"\r\n"),
        (False, b"a SEARCH TEXT " + b"x" * 70_000),  # and no line end at all
    ],
    ids=["tag-before-login", "tag-after-login", "arguments", "unterminated"],
)
def test_line_over_max_line_length_gets_bye_and_a_log_line(
    proxy, dovecot_legacy, mailbox, before_login, line
):
    """The documented behaviour of max_line_length (65536 by default): BYE, connection closed,
    a warning in the log; a client busy in another connection is not disturbed."""
    other = logged_in(proxy, dovecot_legacy, mailbox)
    assert other.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    with RawClient(proxy.address) as client:
        if not before_login:
            client.login(mailbox, dovecot_legacy.password)
        client.send(line)
        assert_cut_off(client, LINE_TOO_LONG)
    proxy.wait_for_log(r"WARNING c\d+ \S+: closing connection: client line too long")
    assert proxy.wait_for_log(r"closed client=.* reason=client line too long")
    assert other.command(b"m", b"UID MOVE 1 Trash")[-1].startswith(b"m OK")
    other.close()
    assert_still_serving(proxy, dovecot_legacy)
    assert subjects(dovecot_legacy, mailbox, "Trash") == ["message 1"]


def test_max_line_length_boundary(dovecot_legacy, mailbox, tmp_path):
    """A line of exactly max_line_length bytes (CRLF included) passes; one more byte is BYE."""
    with proxy_with(dovecot_legacy, tmp_path, max_line_length=1024) as proxy:
        with logged_in(proxy, dovecot_legacy, mailbox) as client:
            client.command(b"s", b"SELECT INBOX")
            padding = b"x" * (1024 - len(b't UID SEARCH SUBJECT ""\r\n'))
            search = b'UID SEARCH SUBJECT "' + padding + b'"'
            assert client.command(b"t", search)[-1].startswith(b"t OK")
            client.send(b"t " + search[:-1] + b'x"\r\n')
            assert_cut_off(client, LINE_TOO_LONG)
        assert_still_serving(proxy, dovecot_legacy)


@pytest.mark.parametrize(
    ("before_login", "tag"),
    [(True, b"T" * 200), (False, b"a]b")],
    ids=["200-byte-tag-before-login", "tag-with-bracket"],
)
def test_command_with_a_tag_dovecot_refuses_does_not_block_later_moves(
    dovecot_legacy, mailbox, tmp_path, before_login, tag
):
    with (
        proxy_with(dovecot_legacy, tmp_path, drain_timeout=1.0) as proxy,
        RawClient(proxy.address, timeout=3) as client,
    ):
        if not before_login:
            client.login(mailbox, dovecot_legacy.password)
        client.send(tag + b" NOOP\r\n")
        assert client._read_response().startswith(b"* BAD ")
        if before_login:
            client.login(mailbox, dovecot_legacy.password)
        assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        assert client.command(b"m", b"UID MOVE 1 Trash")[-1].startswith(b"m OK")


# ------------------------------------------------------------------ literals


def test_move_with_a_huge_synchronizing_literal_gets_bad_and_the_connection_goes_on(
    proxy, dovecot_legacy, mailbox
):
    other = logged_in(proxy, dovecot_legacy, mailbox)
    with logged_in(proxy, dovecot_legacy, mailbox) as client:
        assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        client.send(b"m UID MOVE 1 {100000000}\r\n")
        # no "+": the client must not send its literal, and the refusal comes at once
        assert client._read_response() == b"m BAD Mailbox name too long or malformed.\r\n"
        assert client.command(b"n", b"NOOP")[-1].startswith(b"n OK")
        assert client.command(b"o", b"UID MOVE 1 Trash")[-1].startswith(b"o OK")
    proxy.wait_for_log(r"MOVE from client with an oversized or extra literal refused")
    assert other.command(b"p", b"NOOP")[-1].startswith(b"p OK")
    other.close()
    assert subjects(dovecot_legacy, mailbox, "Trash") == ["message 1"]
    assert_still_serving(proxy, dovecot_legacy)


def test_move_mailbox_literal_limit_boundary(dovecot_legacy, mailbox, tmp_path):
    """max_mailbox_literal bytes are accepted as a literal name; one more gets BAD, no "+"."""
    at_limit, over_limit = "Sixteen-byte-box", "Seventeen-byte-bx"
    assert (len(at_limit), len(over_limit)) == (16, 17)
    dovecot_legacy.seed(mailbox, at_limit, [])
    dovecot_legacy.seed(mailbox, over_limit, [])
    with (
        proxy_with(dovecot_legacy, tmp_path, max_mailbox_literal=16) as proxy,
        logged_in(proxy, dovecot_legacy, mailbox) as client,
    ):
        assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        client.send(b"m UID MOVE 1 {16}\r\n")
        assert client.continuation().startswith(b"+")
        client.send(at_limit.encode() + b"\r\n")
        assert client.read_until(b"m")[-1].startswith(b"m OK")
        client.send(b"n UID MOVE 2 {17}\r\n")
        assert client._read_response() == b"n BAD Mailbox name too long or malformed.\r\n"
        assert client.command(b"o", b"NOOP")[-1].startswith(b"o OK")
    assert subjects(dovecot_legacy, mailbox, at_limit) == ["message 1"]
    assert subjects(dovecot_legacy, mailbox, over_limit) == []


def test_move_with_an_oversized_non_synchronizing_literal_is_refused_and_its_bytes_dropped(
    proxy, dovecot_legacy, mailbox
):
    """{N+} over max_mailbox_literal: the literal comes anyway; 32 MiB of it, full of commands,
    are dropped without being held in memory and none of it reaches the server."""
    injected = b"x DELETE Trash\r\ny UID MOVE 1:* Trash\r\nz RENAME INBOX Stolen\r\n"
    literal = injected * (32 * 1024 * 1024 // len(injected))
    before = proxy.memory_kib("VmHWM")
    with logged_in(proxy, dovecot_legacy, mailbox) as client:
        assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
        client.send(b"m UID MOVE 1 {%d+}\r\n%s\r\n" % (len(literal), literal))
        replies = client.command(b"n", b"NOOP")
        assert replies[0] == b"m BAD Mailbox name too long or malformed.\r\n"
        assert replies[-1].startswith(b"n OK"), replies
        assert client.command(b"o", b"UID MOVE 2 Trash")[-1].startswith(b"o OK")
    growth_mib = (proxy.memory_kib("VmHWM") - before) / 1024
    assert growth_mib < 16, f"proxy peak memory grew by {growth_mib:.0f} MiB"
    received = dovecot_legacy.received_bytes(mailbox)
    assert b"DELETE Trash" not in received and b"RENAME INBOX" not in received
    assert subjects(dovecot_legacy, mailbox, "INBOX") == ["message 1", "message 3"]
    assert subjects(dovecot_legacy, mailbox, "Trash") == ["message 2"]
    assert_still_serving(proxy, dovecot_legacy)


@pytest.mark.parametrize("marker", [b"{100000000}", b"{100000000+}"], ids=["sync", "non-sync"])
def test_append_abandoned_midway_through_a_huge_literal(proxy, dovecot_legacy, mailbox, marker):
    """The client announces 100 MB, sends 4 MiB and hangs up: the proxy closes that upstream
    connection (no partial message is stored) and goes on serving everyone else."""
    other = logged_in(proxy, dovecot_legacy, mailbox)
    assert other.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    client = logged_in(proxy, dovecot_legacy, mailbox)
    client.send(b"a APPEND INBOX " + marker + b"\r\n")
    if not marker.endswith(b"+}"):
        assert client.continuation().startswith(b"+")
    client.send(b"From: x\r\n\r\n" + b"y" * (4 * 1024 * 1024))
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    proxy.wait_for_log(r"closed client=.* bytes_in=[0-9]{7,} ")
    assert other.command(b"n", b"NOOP")[-1].startswith(b"n OK")
    assert other.command(b"m", b"UID MOVE 1 Trash")[-1].startswith(b"m OK")
    other.close()
    assert subjects(dovecot_legacy, mailbox, "INBOX") == ["message 2", "message 3"]
    assert_still_serving(proxy, dovecot_legacy)


def test_append_refused_before_its_literal_keeps_the_connection_usable(
    proxy, dovecot_legacy, mailbox
):
    """What every client does for a missing folder: APPEND, NO [TRYCREATE], CREATE, APPEND."""
    message = make_message("created on demand")
    with logged_in(proxy, dovecot_legacy, mailbox) as client:
        client.send(b"a APPEND Missing {%d}\r\n" % len(message))
        assert client._read_response().startswith(b"a NO [TRYCREATE] ")
        assert client.command(b"b", b"CREATE Missing")[-1].startswith(b"b OK")
        client.send(b"c APPEND Missing {%d}\r\n" % len(message))
        assert client.continuation().startswith(b"+")
        client.send(message + b"\r\n")
        assert client.read_until(b"c")[-1].startswith(b"c OK")
    assert subjects(dovecot_legacy, mailbox, "Missing") == ["created on demand"]


# ------------------------------------------------------------------ binary garbage


def _garbage(seed: int, size: int = 2000) -> bytes:
    """Random bytes, NUL, 0xFF, bare CR and bare LF much more often than the rest."""
    rng = random.Random(seed)
    favourites = [0x00, 0xFF, 0x0D, 0x0A, 0x20]
    return bytes(
        rng.choice(favourites) if rng.random() < 0.3 else rng.randrange(256) for _ in range(size)
    )


GARBAGE = {
    "random-1": _garbage(1),
    "random-2": _garbage(2),
    "random-3": _garbage(3),
    "nul-bytes": b"\x00" * 300,
    "0xff-bytes": b"\xff" * 300,
    "bare-cr": b"\r\r\rx\rNOOP\r\r",
    "bare-lf": b"\n\n\n\x00\n\xff\n",
    "nul-in-tag": b"a\x00b NOOP",
    "tls-client-hello": bytes.fromhex("160301020001000200030398") + bytes(range(256)),
    "http-request": b"GET / HTTP/1.1\r\nHost: imap.example.com\r\nUser-Agent: x\r\n",
    "proxy-header": b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 143",
}


def _is_bad_or_bye(response: bytes) -> bool:
    words = response.split(b" ", 2)
    return len(words) > 1 and words[1] in (b"BAD", b"BYE")


@pytest.mark.parametrize("before_login", [True, False], ids=["before-login", "after-login"])
@pytest.mark.parametrize("name", list(GARBAGE))
def test_binary_garbage_gets_bad_or_bye_and_never_a_crash(
    proxy, dovecot_legacy, mailbox, name, before_login
):
    other = logged_in(proxy, dovecot_legacy, mailbox)
    with RawClient(proxy.address) as client:
        if not before_login:
            client.login(mailbox, dovecot_legacy.password)
        client.send(GARBAGE[name] + b"\r\nzz NOOP\r\n")
        responses, closed = responses_until(client, b"zz")
        if closed:  # by a BYE: Dovecot's "Too many invalid IMAP commands", say
            assert responses and responses[-1].startswith(b"* BYE "), responses
        else:
            assert responses[-1].startswith(b"zz OK"), responses
            responses.pop()
        assert responses, "garbage got no reply at all"
        assert all(_is_bad_or_bye(r) for r in responses), responses
    assert other.command(b"n", b"NOOP")[-1].startswith(b"n OK")
    other.close()
    assert_still_serving(proxy, dovecot_legacy)


def test_a_flood_of_invalid_lines_neither_stalls_others_nor_floods_the_log(
    proxy, dovecot_legacy, mailbox
):
    """128 KiB of empty lines from one client, which reads what it gets: the others are
    served meanwhile (each NOOP within 5 s) and the log does not get a line per empty line."""
    other = logged_in(proxy, dovecot_legacy, mailbox)
    other.sock.settimeout(5)
    flooder = RawClient(proxy.address)  # greeted: the proxy reads from it
    answered = threading.Event()
    done = threading.Event()

    def read_replies() -> None:
        with contextlib.suppress(OSError):
            while not done.is_set() and flooder.sock.recv(1 << 20):
                answered.set()

    def flood() -> None:
        with contextlib.suppress(OSError):
            flooder.sock.sendall(b"\n" * (128 * 1024))

    threads = [threading.Thread(target=f, daemon=True) for f in (read_replies, flood)]
    for thread in threads:
        thread.start()
    try:
        assert answered.wait(60), "the flood got no reply at all"
        for number in range(20):  # the flood goes on meanwhile
            tag = b"n%d" % number
            assert other.command(tag, b"NOOP")[-1].startswith(tag + b" OK")
        bad_lines = proxy.log_text().count("bad command line from client")
        assert bad_lines < 100, f"{bad_lines} log lines for one client's empty lines"
    finally:
        done.set()
        flooder.close()
        other.close()


# ------------------------------------------------------------------ memory


def _send_until_cut_off(address: tuple[str, int], prefix: bytes, total: int) -> bytes:
    """Send ``prefix`` and then up to ``total`` bytes without a line end, reading meanwhile;
    return what the proxy said before the connection ended."""
    sock = socket.create_connection(address, 10)
    received: list[bytes] = []

    def read() -> None:
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        sock.sendall(prefix)
        chunk = b"x" * (1024 * 1024)
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
        reader.join(10)
    finally:
        sock.close()
    return b"".join(received)


def test_200_mb_lines_without_crlf_are_cut_off_and_memory_stays_bounded(
    proxy, dovecot_legacy, mailbox
):
    """Four clients at once (two before login, two after) each try a 200 MB line: each gets
    BYE, and the proxy's peak memory hardly moves."""
    login = f'L LOGIN {mailbox} "{dovecot_legacy.password}"\r\n'.encode()
    prefixes = [b"a NOOP ", b"T", login + b"a SEARCH TEXT ", login + b"b"]
    before = proxy.memory_kib("VmHWM")
    results: list[bytes] = []
    threads = [
        threading.Thread(
            target=lambda p=prefix: results.append(
                _send_until_cut_off(proxy.address, p, 200 * 1024 * 1024)
            )
        )
        for prefix in prefixes
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 4
    for said in results:
        assert said.endswith(LINE_TOO_LONG), said[-200:]
    growth_mib = (proxy.memory_kib("VmHWM") - before) / 1024
    assert growth_mib < 32, f"proxy peak memory grew by {growth_mib:.0f} MiB"
    assert proxy.memory_kib("VmRSS") < before + 32 * 1024
    assert proxy.log_text().count("closing connection: client line too long") == 4
    assert_still_serving(proxy, dovecot_legacy)


# ------------------------------------------------------------------ broken clients, other


def test_move_before_login_gets_bad_and_the_client_can_still_log_in(proxy, dovecot_legacy, mailbox):
    with RawClient(proxy.address) as client:
        replies = client.command(b"a", b"MOVE 1 Trash")
        assert replies[-1].startswith(b"a BAD "), replies
        client.login(mailbox, dovecot_legacy.password)


def test_clients_hanging_up_as_the_proxy_stops_do_not_crash_it(dovecot_legacy, tmp_path):
    for attempt in range(2):
        proxy = ProxyProcess(dovecot_legacy.address, tmp_path / f"proxy{attempt}.log")
        try:
            clients = [RawClient(proxy.address) for _ in range(3)]
            for client in clients:
                client.close()
            proxy.process.send_signal(signal.SIGTERM)
            status = proxy.process.wait(10)
            log = proxy.log_text()
        finally:
            proxy.stop()
        assert "Traceback" not in log, log[-3000:]
        assert status == 0


def test_log_lines_carry_no_client_bytes(proxy, dovecot_legacy):
    """The proxy logs none of what a client sends, not even garbage it refuses."""
    with RawClient(proxy.address) as client:
        client.send(b"\x01secret-looking-garbage\x02\r\nzz LOGOUT\r\n")
        responses, _ = responses_until(client, b"zz")
    assert _is_bad_or_bye(responses[0]), responses
    proxy.wait_for_log(r"closed client=")
    assert "secret-looking-garbage" not in proxy.log_text()
    assert not re.search(r"Traceback|ERROR", proxy.log_text())
