"""Differential tests: the proxy over Dovecot with MOVE hidden answers like Dovecot's native MOVE.

Every script runs twice with identical mailboxes: directly against Dovecot with MOVE advertised
(the reference), and through the proxy against Dovecot with MOVE hidden. The response streams
must be equivalent once values that legitimately differ are normalised: UIDVALIDITY, MODSEQ
numbers (the emulation's STORE bumps them), human-readable text and capability lists (the two
Dovecots are configured differently). Afterwards the legacy Dovecot's raw log must show that
the proxy never sent it a MOVE.
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
    "MOVE with extra spaces": [
        cmd("s", "SELECT INBOX"), cmd("m", 'MOVE 1 "Trash" '), cmd("n", "MOVE  1  Trash  "),
        cmd("u", "UID MOVE  4:* Trash "), cmd("l", "MOVE 1 {5}", b"Trash "),
        cmd("f", "FETCH 1:* (UID FLAGS)"), cmd("x", "STATUS Trash (MESSAGES)"),
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


def both_ways(
    dovecot_native,
    dovecot_legacy,
    tmp_path: Path,
    steps: list[Step],
    pipelined: bool = False,
    flagged: bool = True,
) -> tuple[list[bytes], list[bytes], bytes]:
    """Run ``steps`` natively (one by one) and through the proxy (pipelined if asked), on
    mailboxes from :func:`prepare` (``flagged``: message 2 carries \\Deleted and no message is
    \\Recent any more; otherwise all five are \\Recent for the script's session)."""
    native_user = prepare(dovecot_native, flagged=flagged)
    with RawClient(dovecot_native.address) as client:
        client.login(native_user, dovecot_native.password)
        reference = run_script(client, steps, pipelined=False)
    legacy_user = prepare(dovecot_legacy, flagged=flagged)
    with (
        running_proxy(dovecot_legacy.address, tmp_path / "proxy.log") as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(legacy_user, dovecot_legacy.password)
        proxied = run_script(client, steps, pipelined)
    return reference, proxied, dovecot_legacy.received_bytes(legacy_user)


@pytest.mark.parametrize("name", SCRIPTS)
def test_proxy_answers_like_native_move(dovecot_native, dovecot_legacy, tmp_path, name):
    reference, proxied, upstream_saw = both_ways(
        dovecot_native, dovecot_legacy, tmp_path, SCRIPTS[name]
    )
    assert proxied == reference
    assert b" MOVE " not in upstream_saw.upper()
    assert b"COPY" in upstream_saw or name in ("MOVE with bad syntax",)


def test_pipelined_commands_around_move(dovecot_native, dovecot_legacy, tmp_path):
    """Pipelined through the proxy, the stream equals the native one command at a time: the MOVE
    waits for earlier commands and later ones wait for it. (Native Dovecot itself interleaves
    pipelined commands freely, so its own pipelined stream is no fixed reference.)"""
    reference, proxied, upstream_saw = both_ways(
        dovecot_native, dovecot_legacy, tmp_path, PIPELINED, pipelined=True
    )
    assert proxied == reference
    assert b" MOVE " not in upstream_saw.upper()


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
    reference, proxied, _ = both_ways(
        dovecot_native, dovecot_legacy, tmp_path, RECENT_MOVES, flagged=False
    )
    assert proxied == reference
    assert_counts_consistent(proxied, exists=0)


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


def test_users_own_deleted_flags_are_left_alone(dovecot_legacy, tmp_path):
    user = prepare(dovecot_legacy, flagged=True)
    with (
        running_proxy(dovecot_legacy.address, tmp_path / "proxy.log") as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(user, dovecot_legacy.password)
        client.command(b"s", b"SELECT INBOX")
        assert client.command(b"m", b"MOVE 1,3:5 Trash")[-1].startswith(b"m OK")
        flags = client.command(b"f", b"FETCH 1:* (UID FLAGS)")
    assert len(flags) == 2 and b"UID 2 FLAGS (\\Deleted" in flags[0]


def test_second_session_sees_the_expunges(dovecot_native, dovecot_legacy, tmp_path):
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

    reference = observe(dovecot_native, dovecot_native.address)
    with running_proxy(dovecot_legacy.address, tmp_path / "proxy.log") as proxy:
        proxied = observe(dovecot_legacy, proxy.address)
    assert proxied == reference
    assert len([r for r in proxied if r.endswith(b" EXPUNGE")]) == 2
