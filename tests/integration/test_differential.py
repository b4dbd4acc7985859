"""Differential tests: through the proxy, a server with MOVE hidden answers like its native MOVE.

Two native references: Dovecot 2.3 and Cyrus IMAP 3.6 (see :data:`PAIRS`).  Every script runs
twice with identical mailboxes: directly against the server with MOVE advertised (the
reference), and through the proxy against the same server with MOVE hidden.  The response
streams must be equal once values that legitimately differ between two server instances are
normalised: UIDVALIDITY, Cyrus's MAILBOXID (RFC 8474 object ids), MODSEQ numbers (the
emulation's STORE bumps them), human-readable text and capability lists (the two servers are
configured differently).  A behaviour in which the native server's MOVE differs from the same
server's COPY/STORE/UID EXPUNGE is not normalised away: it is listed in :data:`SERVER_OWN` with
its reason, shown on the real server by a test of its own, and recorded in
docs/compatibility.md.  Afterwards what the legacy server received (Dovecot's rawlog, Cyrus's
telemetry) must show that the proxy never sent it a MOVE (nor Cyrus's XMOVE).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import RawClient, assert_counts_consistent, running_proxy
from servers import ImapServer, make_message


@dataclass(frozen=True)
class Step:
    tag: bytes
    command: bytes
    literal: bytes | None = None  # sent after the "+" that the command line asks for


def cmd(tag: str, text: str, literal: bytes | None = None) -> Step:
    return Step(tag.encode(), text.encode(), literal)


_TEXT_AFTER_STATUS = re.compile(rb"^(\S+ (?:OK|NO|BAD|BYE|PREAUTH)(?: \[[^\]]*\])?).*$", re.S)


def normalise(response: bytes) -> bytes:
    response = re.sub(rb"UIDVALIDITY \d+", b"UIDVALIDITY V", response)
    response = re.sub(rb"COPYUID \d+", b"COPYUID V", response)
    response = re.sub(rb"MAILBOXID \([^)]*\)", b"MAILBOXID (M)", response)
    response = re.sub(rb"(HIGHESTMODSEQ|MODSEQ) \(?\d+\)?", rb"\1 N", response)
    response = re.sub(rb"\[CAPABILITY [^\]]*\]", b"[CAPABILITY]", response)
    response = _TEXT_AFTER_STATUS.sub(rb"\1", response.rstrip(b"\r\n"))
    response = re.sub(rb"^\+ .*", b"+", response)
    return response


def run_script(client: RawClient, steps: list[Step], pipelined: bool) -> list[bytes]:
    responses: list[bytes] = []
    if pipelined:
        client.send(b"".join(s.tag + b" " + s.command + b"\r\n" for s in steps))
        responses = client.read_until(steps[-1].tag)
    else:
        for step in steps:
            if step.literal is None:
                responses += client.command(step.tag, step.command)
                continue
            client.send(step.tag + b" " + step.command + b"\r\n")
            responses.append(client.continuation())
            client.send(step.literal + b"\r\n")
            responses += client.read_until(step.tag)
    return [normalise(r) for r in responses]


def prepare(server: ImapServer, flagged: bool) -> str:
    user = server.new_user()
    server.seed(user, "INBOX", [make_message(f"message {i}") for i in range(1, 6)])
    server.seed(user, "Trash", [make_message("already in trash")])
    if flagged:  # the user's own \Deleted on message 2, which no MOVE below touches
        imap = server.connect(user)
        imap.select("INBOX")
        imap.store("2", "+FLAGS", "(\\Deleted)")
        imap.logout()
    return user


SCRIPTS: dict[str, list[Step]] = {
    "sequence MOVE": [
        cmd("s", "SELECT INBOX"), cmd("m", "MOVE 1,3 Trash"), cmd("f", "FETCH 1:* (UID FLAGS)"),
        cmd("t", "SELECT Trash"), cmd("g", "FETCH 1:* (UID FLAGS)"),
    ],
    "UID MOVE with ranges and *": [
        cmd("s", "SELECT INBOX"), cmd("m", "UID MOVE 3:* Trash"), cmd("f", "UID FETCH 1:* FLAGS"),
        cmd("n", "UID MOVE 1,100 Trash"), cmd("x", "STATUS Trash (MESSAGES UIDNEXT)"),
    ],
    "MOVE to the selected mailbox": [
        cmd("s", "SELECT INBOX"), cmd("m", "MOVE 1 INBOX"), cmd("f", "FETCH 1:* (UID FLAGS)"),
    ],
    "MOVE to a missing mailbox": [
        cmd("s", "SELECT INBOX"), cmd("m", "MOVE 1 Nowhere"), cmd("f", "FETCH 1:* (UID FLAGS)"),
    ],
    "MOVE with a literal mailbox name": [
        cmd("s", "SELECT INBOX"), cmd("m", "MOVE 4 {5}", b"Trash"),
        cmd("n", "MOVE 1 {5+}\r\nTrash"), cmd("f", "FETCH 1:* UID"),
        cmd("x", "STATUS Trash (MESSAGES)"),
    ],
    "QRESYNC": [
        cmd("e", "ENABLE QRESYNC"), cmd("s", "SELECT INBOX"), cmd("m", "UID MOVE 1,4 Trash"),
        cmd("n", "MOVE 1 Trash"), cmd("f", "FETCH 1:* (UID FLAGS)"),
    ],
    "CONDSTORE": [
        cmd("e", "ENABLE CONDSTORE"), cmd("s", "SELECT INBOX (CONDSTORE)"),
        cmd("m", "MOVE 1 Trash"), cmd("u", "UID MOVE 4:5 Trash"), cmd("f", "FETCH 1:* (UID FLAGS)"),
    ],
    "MOVE outside the selected state": [
        cmd("m", "MOVE 1 Trash"), cmd("s", "SELECT INBOX"), cmd("c", "CLOSE"),
        cmd("n", "MOVE 1 Trash"),
    ],
    "MOVE with bad syntax": [
        cmd("s", "SELECT INBOX"), cmd("a", "MOVE"), cmd("b", "MOVE 1"), cmd("c", "MOVE x Trash"),
        cmd("d", "UID MOVE 1:x Trash"), cmd("f", "FETCH 1:* UID"),
    ],
}  # fmt: skip

PIPELINED = [
    cmd("s", "SELECT INBOX"), cmd("a", "FETCH 1 FLAGS"), cmd("m", "MOVE 1:2 Trash"),
    cmd("b", "FETCH 1:* (UID FLAGS)"), cmd("n", "UID MOVE 5 Trash"), cmd("c", "NOOP"),
]  # fmt: skip


# (the native server's fixture, the same server with MOVE hidden) for each native reference
PAIRS = {"dovecot": ("dovecot_native", "dovecot_legacy"), "cyrus": ("cyrus_native", "cyrus_legacy")}
_MOVE_COMMAND = re.compile(rb"(?:UID )?X?MOVE\b", re.IGNORECASE)
# A MOVE (or Cyrus's older alias XMOVE) command line in what a server received.
_UPSTREAM_MOVE = re.compile(rb"^\S+ (?:UID )?X?MOVE\b[^\r\n]*", re.IGNORECASE | re.MULTILINE)


def upstream_moves(received: bytes) -> list[bytes]:
    """The MOVE and XMOVE command lines in ``received`` (what a server recorded)."""
    return _UPSTREAM_MOVE.findall(received)


@dataclass(frozen=True)
class ServerOwnDifference:
    """A reviewed difference between a server's native MOVE and the proxy's emulation on the
    same server that the server causes, not the proxy: the tagged reply of a MOVE through the
    proxy matching ``proxied`` is, natively, ``native`` (a replacement for ``proxied``)."""

    proxied: re.Pattern[bytes]
    native: bytes
    reason: str


# Every entry is shown on the real server by test_cyrus_own_differences_are_the_servers and
# listed in docs/compatibility.md ("Differential tests").  Nothing else may differ.
SERVER_OWN: dict[str, tuple[ServerOwnDifference, ...]] = {
    "dovecot": (),
    "cyrus": (
        ServerOwnDifference(
            re.compile(rb"^(\S+) OK \[HIGHESTMODSEQ N\]$"),
            rb"\1 OK",
            "Cyrus answers every UID EXPUNGE with OK [HIGHESTMODSEQ n], CONDSTORE enabled or not "
            "(optional then, RFC 7162 3.2.7), and the emulation relays it, as RFC 6851 4.4 asks "
            "of a MOVE with QRESYNC; Cyrus's own MOVE never reports HIGHESTMODSEQ, not even with "
            "QRESYNC enabled.",
        ),
    ),
}


@dataclass(frozen=True)
class Pair:
    """A server with MOVE advertised (the reference) and the same server with MOVE hidden."""

    name: str
    native: ImapServer
    legacy: ImapServer

    def as_native(self, proxied: list[bytes], steps: list[Step]) -> list[bytes]:
        """``proxied`` with the server's own differences (:data:`SERVER_OWN`) in the MOVEs'
        tagged replies turned into what the native server sends."""
        moves = {s.tag for s in steps if _MOVE_COMMAND.match(s.command)}
        result = []
        for response in proxied:
            if response.split(b" ", 1)[0] in moves:
                for known in SERVER_OWN[self.name]:
                    response = known.proxied.sub(known.native, response)
            result.append(response)
        return result


@pytest.fixture(params=list(PAIRS))
def pair(request: pytest.FixtureRequest) -> Pair:
    native, legacy = PAIRS[request.param]
    return Pair(request.param, request.getfixturevalue(native), request.getfixturevalue(legacy))


def both_ways(
    pair: Pair, tmp_path: Path, steps: list[Step], pipelined: bool = False, flagged: bool = True
) -> tuple[list[bytes], list[bytes], bytes]:
    """Run ``steps`` natively (one by one) and through the proxy (pipelined if asked), on
    mailboxes from :func:`prepare` (``flagged``: message 2 carries \\Deleted and no message is
    \\Recent any more; otherwise all five are \\Recent for the script's session)."""
    native_user = prepare(pair.native, flagged=flagged)
    with RawClient(pair.native.address) as client:
        client.login(native_user, pair.native.password)
        reference = run_script(client, steps, pipelined=False)
    legacy_user = prepare(pair.legacy, flagged=flagged)
    with (
        running_proxy(pair.legacy.address, tmp_path / "proxy.log") as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(legacy_user, pair.legacy.password)
        proxied = pair.as_native(run_script(client, steps, pipelined), steps)
    return reference, proxied, pair.legacy.received_bytes(legacy_user)


@pytest.mark.parametrize("name", SCRIPTS)
def test_proxy_answers_like_native_move(pair, tmp_path, name):
    reference, proxied, upstream_saw = both_ways(pair, tmp_path, SCRIPTS[name])
    assert proxied == reference
    assert upstream_moves(upstream_saw) == []
    assert b"COPY" in upstream_saw or name in ("MOVE with bad syntax",)


def test_pipelined_commands_around_move(pair, tmp_path):
    """Pipelined through the proxy, the stream equals the native one command at a time: the MOVE
    waits for earlier commands and later ones wait for it. (Native Dovecot itself interleaves
    pipelined commands freely, so its own pipelined stream is no fixed reference.)"""
    reference, proxied, upstream_saw = both_ways(pair, tmp_path, PIPELINED, pipelined=True)
    assert proxied == reference
    assert upstream_moves(upstream_saw) == []
    assert b"COPY" in upstream_saw


RECENT_MOVES = [
    cmd("s", "SELECT INBOX"), cmd("m", "MOVE 1 INBOX"), cmd("n", "UID MOVE 3:4 INBOX"),
    cmd("t", "MOVE 1 Trash"), cmd("f", "FETCH 1:* (UID FLAGS)"),
]  # fmt: skip


def test_recent_counts_stay_consistent_in_moves_into_the_selected_mailbox(
    dovecot_native, dovecot_legacy, tmp_path
):
    """Every message \\Recent: the COPY's EXISTS and RECENT, held back until after the
    expunges, and the RECENT the expunges cause must never announce more recent messages than
    the client has been told exist, nor one before the EXISTS it counts (native Dovecot:
    ``* 1 EXPUNGE``, ``* 5 EXISTS``, nothing more, since 5 messages are still recent)."""
    dovecot = Pair("dovecot", dovecot_native, dovecot_legacy)
    reference, proxied, _ = both_ways(dovecot, tmp_path, RECENT_MOVES, flagged=False)
    assert proxied == reference
    assert_counts_consistent(proxied, exists=0)


def move_replies(responses: list[bytes], steps: list[Step]) -> list[list[bytes]]:
    """The (normalised) responses to each MOVE of ``steps``, one list per MOVE, in order."""
    moves = {s.tag for s in steps if _MOVE_COMMAND.match(s.command)}
    groups: list[list[bytes]] = []
    current: list[bytes] = []
    for response in responses:
        current.append(response)
        tag = response.split(b" ", 1)[0]
        if tag in {s.tag for s in steps}:
            if tag in moves:
                groups.append(current)
            current = []
    return groups


def across_servers(group: list[bytes]) -> list[bytes]:
    """One MOVE's replies with what two different servers may legitimately word differently
    put in one form: the EXPUNGEs as the set of messages they remove (UW expunges in ascending
    order, Dovecot in descending), without EXISTS and RECENT (UW's EXPUNGE repeats the count it
    leaves and announces ``* 0 RECENT``) and without UW's untagged ``* OK [TRYCREATE]`` before
    its tagged NO [TRYCREATE]. The client-view oracle checks every count along the way."""
    removed: list[int] = []
    kept: list[bytes] = []
    for response in group:
        expunge = re.fullmatch(rb"\* (\d+) EXPUNGE", response)
        if expunge:
            number = int(expunge.group(1))
            for earlier in sorted(removed):
                number += earlier <= number
            removed.append(number)
        elif not re.fullmatch(rb"\* \d+ (EXISTS|RECENT)|\* OK \[TRYCREATE\]", response):
            kept.append(response)
    return [*kept[:-1], b"EXPUNGED " + b",".join(b"%d" % n for n in sorted(removed)), kept[-1]]


# The scripts UW-IMAP can take part in: it has no MOVE of its own, so its MOVEs through the proxy
# are compared with native Dovecot's, reply by reply (no QRESYNC or CONDSTORE on UW; its
# SELECT, FETCH and STATUS answers are its own and not compared).
UW_SCRIPTS = (
    "sequence MOVE", "UID MOVE with ranges and *", "MOVE to a missing mailbox",
    "MOVE with a literal mailbox name", "MOVE with bad syntax",
)  # fmt: skip


@pytest.mark.parametrize("name", UW_SCRIPTS)
@pytest.mark.parametrize("uw", ["uw_mbox", "uw_mix"])
def test_uw_moves_through_the_proxy_answer_like_native_dovecot(
    request, dovecot_native, uw, tmp_path, name
):
    steps = SCRIPTS[name]
    server: ImapServer = request.getfixturevalue(uw)
    native_user = prepare(dovecot_native, flagged=True)
    with RawClient(dovecot_native.address) as client:
        client.login(native_user, dovecot_native.password)
        reference = move_replies(run_script(client, steps, pipelined=False), steps)
    reference = [across_servers(group) for group in reference]
    user = prepare(server, flagged=True)
    with (
        running_proxy(server.address, tmp_path / "proxy.log") as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(user, server.password)
        proxied = move_replies(run_script(client, steps, pipelined=False), steps)
    assert [across_servers(group) for group in proxied] == reference
    assert upstream_moves(server.received_bytes(user)) == []


# A MOVE the proxy refuses, and the precise reason it gives (after "Error in IMAP command MOVE: ").
REFUSED = {
    b"MOVE": b"missing sequence set and mailbox name",
    b"MOVE 1:3 ": b"missing mailbox name",
    b"MOVE 1:x Trash": b'invalid sequence set "1:x"',
    b"MOVE 1:3 Trash extra": b'unexpected "extra" after the mailbox name',
    b'MOVE 1:3 "Trash" x': b'unexpected "x" after the mailbox name',
    b"MOVE 1:3 Tr(ash": b'invalid character "(" in mailbox name "Tr(ash" (a quoted string or a '
    b"literal may hold it)",
}


# Dovecot accepts extra spaces around MOVE's arguments, and so does the proxy (nothing is at risk).
# Cyrus 3.6's own MOVE answers them BAD: a server's leniency, so compared with Dovecot only.
EXTRA_SPACES = [
    cmd("s", "SELECT INBOX"), cmd("m", 'MOVE 1 "Trash" '), cmd("n", "MOVE  1  Trash  "),
    cmd("u", "UID MOVE  4:* Trash "), cmd("l", "MOVE 1 {5}", b"Trash "),
    cmd("f", "FETCH 1:* (UID FLAGS)"), cmd("x", "STATUS Trash (MESSAGES)"),
]  # fmt: skip


def test_extra_spaces_are_accepted_as_native_dovecot_does(dovecot_native, dovecot_legacy, tmp_path):
    dovecot = Pair("dovecot", dovecot_native, dovecot_legacy)
    reference, proxied, upstream_saw = both_ways(dovecot, tmp_path, EXTRA_SPACES)
    assert proxied == reference
    assert upstream_moves(upstream_saw) == [] and b"COPY" in upstream_saw


def test_refused_moves_say_what_is_wrong(dovecot_native, dovecot_legacy, tmp_path):
    """Each refusal names what is wrong, and nothing moves. One deliberate difference: native
    Dovecot ignores whatever follows the mailbox name and moves ``MOVE 1:3 Trash extra`` into
    Trash; the proxy refuses it, since a client that forgot its quotes may have meant a mailbox
    "Trash extra" (Dovecot's own text for the others is no more precise than the proxy's)."""
    native_user = prepare(dovecot_native, flagged=False)
    legacy_user = prepare(dovecot_legacy, flagged=False)
    with (
        running_proxy(dovecot_legacy.address, tmp_path / "proxy.log") as proxy,
        RawClient(dovecot_native.address) as native,
        RawClient(proxy.address) as proxied,
    ):
        sessions = ((native, dovecot_native, native_user), (proxied, dovecot_legacy, legacy_user))
        for client, server, user in sessions:
            client.login(user, server.password)
            client.command(b"s", b"SELECT INBOX")
        assert native.command(b"m", b"MOVE 1:3 Trash extra")[-1].startswith(b"m OK")
        for command, reason in REFUSED.items():
            reply = proxied.command(b"m", command)
            assert reply == [b"m BAD Error in IMAP command MOVE: " + reason + b"\r\n"], command
        assert len(proxied.command(b"f", b"FETCH 1:* UID")) == 5 + 1


def test_users_own_deleted_flags_are_left_alone(pair, tmp_path):
    user = prepare(pair.legacy, flagged=True)
    with (
        running_proxy(pair.legacy.address, tmp_path / "proxy.log") as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(user, pair.legacy.password)
        client.command(b"s", b"SELECT INBOX")
        assert client.command(b"m", b"MOVE 1,3:5 Trash")[-1].startswith(b"m OK")
        flags = client.command(b"f", b"FETCH 1:* (UID FLAGS)")
    assert len(flags) == 2  # Dovecot sends UID first, Cyrus FLAGS
    assert re.search(rb"\bUID 2\b", flags[0]) and b"FLAGS (\\Deleted" in flags[0]


def test_second_session_sees_the_expunges(pair, tmp_path):
    """Another session (also through the proxy) sees the moved messages go, as with native MOVE."""

    def observe(server: ImapServer, address: tuple[str, int]) -> list[bytes]:
        user = prepare(server, flagged=False)
        with RawClient(address) as mover, RawClient(address) as watcher:
            mover.login(user, server.password)
            watcher.login(user, server.password)
            watcher.command(b"w", b"SELECT INBOX")
            mover.command(b"s", b"SELECT INBOX")
            mover.command(b"m", b"UID MOVE 2:3 Trash")
            seen = [normalise(r) for r in watcher.command(b"n", b"NOOP")]
        # Dovecot may or may not report the \Deleted flag change of a message it then expunges
        # in the same NOOP; what matters is the expunges and nothing else.
        return [r for r in seen if not re.match(rb"\* \d+ FETCH \(FLAGS \(\\Deleted", r)]

    reference = observe(pair.native, pair.native.address)
    with running_proxy(pair.legacy.address, tmp_path / "proxy.log") as proxy:
        proxied = observe(pair.legacy, proxy.address)
    assert proxied == reference
    assert len([r for r in proxied if r.endswith(b" EXPUNGE")]) == 2


def test_cyrus_hides_move_only_from_its_capability_lists(cyrus_native, cyrus_legacy):
    """``suppress_capabilities: MOVE XMOVE`` removes both names from every capability list Cyrus
    sends (CAPABILITY before and after login, LOGIN's OK; its greeting's short list has neither
    anyway), but Cyrus still executes a MOVE it is sent: only what it received shows that the
    proxy never sends one, and its telemetry does show a MOVE that reaches it."""

    def capability_lists(server: ImapServer, user: str) -> list[set[bytes]]:
        with RawClient(server.address) as client:
            responses = [client.greeting, *client.command(b"c", b"CAPABILITY")]
            responses += client.login(user, server.password)
            responses += client.command(b"d", b"CAPABILITY")
        found = [re.search(rb"(?:\[CAPABILITY|^\* CAPABILITY) ([^\]\r]*)", r) for r in responses]
        return [set(m.group(1).upper().split()) for m in found if m]

    native_user = prepare(cyrus_native, flagged=False)
    native = capability_lists(cyrus_native, native_user)
    legacy_user = prepare(cyrus_legacy, flagged=False)
    legacy = capability_lists(cyrus_legacy, legacy_user)
    assert len(native) == len(legacy) == 4  # greeting, before login, LOGIN's OK, after login
    assert not {b"MOVE", b"XMOVE"} & (native[0] | legacy[0]), (native[0], legacy[0])
    assert all({b"MOVE", b"XMOVE"} <= caps for caps in native[1:]), native
    assert all(not {b"MOVE", b"XMOVE"} & caps for caps in legacy[1:]), legacy
    assert all(b"UIDPLUS" in caps for caps in legacy[1:]), legacy
    with RawClient(cyrus_legacy.address) as client:
        client.login(legacy_user, cyrus_legacy.password)
        client.command(b"s", b"SELECT INBOX")
        assert client.command(b"m", b"MOVE 1 Trash")[-1].startswith(b"m OK")
    assert upstream_moves(cyrus_legacy.received_bytes(legacy_user)) == [b"m MOVE 1 Trash"]


def test_cyrus_xmove_is_emulated_like_move(cyrus_native, cyrus_legacy, tmp_path):
    """Cyrus executes its older alias XMOVE even with MOVE hidden. Passed through, a ``UID
    XMOVE`` would move on the server outside the proxy's lock, log and metrics; the proxy
    emulates it as it does MOVE, and answers it as Cyrus's own XMOVE does."""
    steps = [
        cmd("s", "SELECT INBOX"), cmd("m", "UID XMOVE 1,3 Trash"), cmd("n", "XMOVE 1 Trash"),
        cmd("f", "FETCH 1:* (UID FLAGS)"),
    ]  # fmt: skip
    native_user = prepare(cyrus_native, flagged=True)
    with RawClient(cyrus_native.address) as client:
        client.login(native_user, cyrus_native.password)
        reference = run_script(client, steps, pipelined=False)
    legacy_user = prepare(cyrus_legacy, flagged=True)
    with (
        running_proxy(cyrus_legacy.address, tmp_path / "proxy.log") as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(legacy_user, cyrus_legacy.password)
        cyrus = Pair("cyrus", cyrus_native, cyrus_legacy)
        proxied = cyrus.as_native(run_script(client, steps, pipelined=False), steps)
        log = proxy.log_text()
    assert proxied == reference
    assert upstream_moves(cyrus_legacy.received_bytes(legacy_user)) == []
    assert re.search(r"UID MOVE 1,3: policy=uidplus outcome=moved", log), log
    assert re.search(r"MOVE 1: policy=uidplus outcome=moved", log), log


def test_cyrus_own_differences_are_the_servers(cyrus_native, cyrus_legacy):
    """SERVER_OWN["cyrus"], shown without the proxy: Cyrus's native MOVE reports no
    HIGHESTMODSEQ (with QRESYNC enabled or not), while its UID EXPUNGE reports one in its tagged
    OK even in a session that enabled neither CONDSTORE nor QRESYNC."""
    user = prepare(cyrus_native, flagged=False)
    with RawClient(cyrus_native.address) as client:
        client.login(user, cyrus_native.password)
        client.command(b"s", b"SELECT INBOX")
        plain = client.command(b"m", b"MOVE 1 Trash")
        client.command(b"e", b"ENABLE QRESYNC")
        client.command(b"t", b"SELECT INBOX")
        qresync = client.command(b"n", b"MOVE 1 Trash")
    assert plain[-1].startswith(b"m OK") and qresync[-1].startswith(b"n OK"), (plain, qresync)
    assert any(r.startswith(b"* VANISHED") for r in qresync), qresync
    assert not any(b"HIGHESTMODSEQ" in r for r in plain + qresync), (plain, qresync)

    user = prepare(cyrus_legacy, flagged=False)
    with RawClient(cyrus_legacy.address) as client:
        client.login(user, cyrus_legacy.password)
        client.command(b"s", b"SELECT INBOX")
        client.command(b"f", b"UID STORE 1 +FLAGS.SILENT (\\Deleted)")
        expunge = client.command(b"x", b"UID EXPUNGE 1")
    assert re.match(rb"x OK \[HIGHESTMODSEQ \d+\]", expunge[-1]), expunge
