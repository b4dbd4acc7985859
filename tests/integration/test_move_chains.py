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
from harness import RawClient, running_proxy
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


def _subjects_and_flags(server: ImapServer, user: str, mailbox: str) -> list[tuple[str, str]]:
    """(subject, sorted flags but \\Recent) of every message of ``mailbox``, on the server."""
    with RawClient(server.address, oracle=False) as client:  # straight to the server
        client.login(user, server.password)
        selected = client.command(b"s", b"EXAMINE " + mailbox.encode())
        assert selected[-1].startswith(b"s OK"), selected
        if any(re.match(rb"\* 0 EXISTS", r) for r in selected):
            return []
        replies = client.command(b"f", b"FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        client.logout()
    found = []
    for reply in replies[:-1]:
        subject = re.search(rb"Subject: (\S+)", reply, re.IGNORECASE)
        flags = re.search(rb"FLAGS \(([^)]*)\)", reply)
        assert subject and flags, reply
        kept = sorted(set(flags.group(1).decode().split()) - {"\\Recent"})
        found.append((subject.group(1).decode(), " ".join(kept)))
    return found


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
    moved = _subjects_and_flags(server, user, archive)
    counts = Counter(subject for subject, _ in moved)
    assert {s for s, n in counts.items() if n > 1} == set(), "duplicated in Archive"
    assert expected - set(counts) == set(), "lost"
    assert {flags for _, flags in moved} == {"\\Flagged \\Seen"}
    assert _subjects_and_flags(server, user, "INBOX") == []
    assert _subjects_and_flags(server, user, work) == []
