"""Many MOVEs in a row into the same folders, as real clients do them, on every server.

JavaMail's ``Folder.moveMessages`` and go-imap loops move batch after batch: new mail arrives in
INBOX, is moved to Work, then from Work to Archive, over and over, in one session. On the mbox
servers (imap4d, UW-IMAP's mbox format) any second session the proxy opens (to restore the
flags imap4d's COPY drops) must never hold a mailbox file while the client's session writes it:
a session with a stale view rewrites the whole file (issue: 221 of 300 messages lost, 38
duplicated, with the flag restoration's session still there when the client moved on).

Every round is checked on the server itself at the end: each message exactly once, where it
belongs, with its flags; and the client's view is checked after every response by the
client-view oracle of :class:`harness.RawClient`.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest
from harness import RawClient, running_proxy, subjects_and_flags
from servers import ImapServer, make_message

ROUNDS = 20
BATCH = 5


@dataclasses.dataclass(frozen=True)
class Chain:
    fixture: str
    proxy_args: tuple[str, ...] = ()
    prefix: str = ""  # the personal namespace's prefix (Courier: "INBOX.")
    policy: str = "uidplus"  # as the MOVEs' log lines must name it


CHAINS = {
    "dovecot-legacy": Chain("dovecot_legacy"),
    "dovecot-native": Chain("dovecot_native", policy="native"),
    "imap4d-guarded": Chain("imap4d", ("--no-uidplus", "guarded"), policy="guarded"),
    "cyrus-legacy": Chain("cyrus_legacy"),
    "courier": Chain("courier", prefix="INBOX."),
    "uw-mbox": Chain("uw_mbox"),
    "uw-mix": Chain("uw_mix"),
}


def _append(client: RawClient, mailbox: bytes, message: bytes, flags: bytes) -> None:
    """APPEND through the client's own session (a synchronizing literal: every server has it)."""
    client.send(b"a APPEND %s (%s) {%d}\r\n" % (mailbox, flags, len(message)))
    client.continuation()
    client.send(message + b"\r\n")
    replies = client.read_until(b"a")
    assert replies[-1].startswith(b"a OK"), replies


def _move_all(client: RawClient, tag: bytes, source: bytes, target: bytes) -> None:
    selected = client.command(b"s", b"SELECT " + source)
    assert selected[-1].startswith(b"s OK"), selected
    replies = client.command(tag, b"MOVE 1:* " + target)
    assert replies[-1].startswith(tag + b" OK"), replies
    assert b"lost their flags" not in replies[-1], replies
    expunged = sum(1 for reply in replies if re.match(rb"\* \d+ EXPUNGE\r\n", reply))
    assert expunged == BATCH, replies


@pytest.mark.parametrize("kind", list(CHAINS))
def test_consecutive_moves_into_the_same_folders_keep_every_message_once_with_its_flags(
    kind: str, request: pytest.FixtureRequest, tmp_path
):
    """20 rounds of: APPEND 5 \\Seen \\Flagged messages to INBOX, SELECT INBOX, MOVE 1:* Work,
    SELECT Work, MOVE 1:* Archive. Every MOVE answers OK and expunges its 5 messages; at the end
    Archive holds the 100 messages once each, still \\Seen and \\Flagged, and INBOX and Work
    are empty (on today's imap4d the flag restoration's second session lost or duplicated
    dozens of them)."""
    chain = CHAINS[kind]
    server: ImapServer = request.getfixturevalue(chain.fixture)
    user = server.new_user()
    work, archive = chain.prefix + "Work", chain.prefix + "Archive"
    server.seed(user, work, [])
    server.seed(user, archive, [])
    with running_proxy(server.address, tmp_path / "proxy.log", *chain.proxy_args) as proxy:
        with RawClient(proxy.address) as client:
            client.login(user, server.password)
            for round_ in range(ROUNDS):
                for i in range(BATCH):
                    message = make_message(f"r{round_}m{i}")
                    _append(client, b"INBOX", message, b"\\Seen \\Flagged")
                _move_all(client, b"m1", b"INBOX", work.encode())
                _move_all(client, b"m2", work.encode(), archive.encode())
            client.logout()
        log = proxy.log_text()
    policies = set(re.findall(r"MOVE 1:\*: policy=(\w+)", log))
    assert policies == {chain.policy}, log
    expected = {f"r{r}m{i}" for r in range(ROUNDS) for i in range(BATCH)}
    moved = subjects_and_flags(server, user, archive)
    counts = Counter(subject for subject, _ in moved)
    assert {s for s, n in counts.items() if n > 1} == set(), "duplicated in Archive"
    assert expected - set(counts) == set(), "lost"
    assert {flags for _, flags in moved} == {frozenset({"\\Flagged", "\\Seen"})}
    assert subjects_and_flags(server, user, "INBOX") == []
    assert subjects_and_flags(server, user, work) == []


PIPELINED_ROUNDS = 4


def _appends(number: int) -> list[tuple[bytes, bytes]]:
    """A round's APPENDs (one a 300 KB message) as (command line without literal, message)."""
    appends = []
    for i in range(BATCH):
        body = "x" * 300_000 + "\r\n" if i == 0 else "Hello.\r\n"
        message = make_message(f"p{number}m{i}", body)
        appends.append((b"a%d%d APPEND INBOX (\\Seen \\Flagged) " % (number, i), message))
    return appends


def _pipelined_round(
    client: RawClient, number: int, work: bytes, archive: bytes, literal_plus: bool
) -> bytes:
    """One round as one write: APPENDs (one big literal among them; sent one by one first on a
    server without LITERAL+, where each literal waits for "+"), SELECT, MOVE, a command that
    reuses the MOVE's tag while the MOVE is in flight, a FETCH of the target's flags, and a
    second MOVE. Returns the bytes to write."""
    data = b""
    for command, message in _appends(number):
        if literal_plus:
            data += command + b"{%d+}\r\n" % len(message) + message + b"\r\n"
        else:
            client.send(command + b"{%d}\r\n" % len(message))
            client.continuation()
            client.send(message + b"\r\n")
            assert client.read_until(command.split(b" ", 1)[0])[-1].split(b" ")[1] == b"OK"
    data += b"s%d SELECT INBOX\r\n" % number
    data += b"m MOVE 1:* " + work + b"\r\n"
    data += b"m SELECT " + work + b"\r\n"  # the MOVE's tag, reused while the MOVE runs
    data += b"f%d FETCH 1:* (FLAGS)\r\n" % number
    data += b"n%d MOVE 1:* " % number + archive + b"\r\n"
    return data


@pytest.mark.parametrize("kind", list(CHAINS))
def test_a_pipelining_client_that_reads_late_moves_every_message_once(
    kind: str, request: pytest.FixtureRequest, tmp_path
):
    """As mbsync writes: four rounds of APPENDs (a 300 KB literal among them), SELECT, MOVE, a
    command reusing the MOVE's tag, a FETCH and a second MOVE, all in one write, and nothing
    read until all of it is written (the APPENDs go first, one by one, where the server has no
    LITERAL+ and the client may not send a literal unasked). Every command succeeds in order;
    the FETCH after each MOVE already shows the target's flags (the MOVE is a barrier, and on
    imap4d its flags are back before its tagged OK); at the end Archive holds every message
    once, flags kept. The client-view oracle checks every response."""
    chain = CHAINS[kind]
    server: ImapServer = request.getfixturevalue(chain.fixture)
    user = server.new_user()
    work, archive = (chain.prefix + "Work").encode(), (chain.prefix + "Archive").encode()
    server.seed(user, work.decode(), [])
    server.seed(user, archive.decode(), [])
    expected = [f"p{n}m{i}" for n in range(PIPELINED_ROUNDS) for i in range(BATCH)]
    last = b"n%d" % (PIPELINED_ROUNDS - 1)
    with running_proxy(server.address, tmp_path / "proxy.log", *chain.proxy_args) as proxy:
        with RawClient(proxy.address, timeout=60) as client:
            capability = b"".join(client.login(user, server.password))
            literal_plus = b"LITERAL+" in capability.upper()
            script = b"".join(
                _pipelined_round(client, n, work, archive, literal_plus)
                for n in range(PIPELINED_ROUNDS)
            )
            client.send(script)
            responses = client.read_until(last)
            client.logout()
        log = proxy.log_text()
    tagged = [r for r in responses if not r.startswith((b"*", b"+"))]
    assert all(b" OK " in r for r in tagged), tagged
    tags = [r.split(b" ", 1)[0] for r in tagged]
    appended = [b"a%d%d" % (0, i) for i in range(BATCH)] if literal_plus else []
    per_round = [*appended, b"s0", b"m", b"m", b"f0", b"n0"]
    assert tags[: len(per_round)] == per_round, tags
    assert len(tags) == len(per_round) * PIPELINED_ROUNDS, tags
    fetched = [r for r in responses if re.match(rb"\* \d+ FETCH \(FLAGS", r)]
    assert len(fetched) == BATCH * PIPELINED_ROUNDS, fetched
    assert all(b"\\Seen" in r and b"\\Flagged" in r for r in fetched), fetched
    assert set(re.findall(r"MOVE 1:\*: policy=(\w+)", log)) == {chain.policy}, log
    moved = subjects_and_flags(server, user, archive.decode())
    assert Counter(subject for subject, _ in moved) == Counter(expected)
    assert {flags for _, flags in moved} == {frozenset({"\\Flagged", "\\Seen"})}
    assert subjects_and_flags(server, user, "INBOX") == []
    assert subjects_and_flags(server, user, work.decode()) == []
