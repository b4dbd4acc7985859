"""The command channel (imapmoveproxy/wire/commands.py): tags, the table of commands awaiting
their reply, and the segments of a command that wait for the server's ``+``."""

from __future__ import annotations

from imapmoveproxy.wire.commands import CommandChannel


def channel() -> tuple[CommandChannel, list[bytes]]:
    written: list[bytes] = []
    return CommandChannel(b"imp", written.append), written


def test_tags_are_new_for_every_command_and_name_their_owner() -> None:
    commands, _ = channel()
    move, other = object(), object()
    first, second = commands.tag(move), commands.tag(other)
    assert first != second and first.startswith(b"imp") and second.startswith(b"imp")
    assert commands.owner(first) is move and commands.owner(second) is other
    assert commands.awaiting(move) and commands.awaiting(other)
    assert commands.answered(first) is move
    assert not commands.awaiting(move) and commands.awaiting(other)
    assert commands.owner(first) is None  # answered once: a second reply is nobody's
    assert commands.answered(first) is None
    assert commands.answered(b"zz1") is None  # a tag nobody sent


def test_a_literal_waits_for_the_plus_of_its_own_command() -> None:
    commands, written = channel()
    owner = object()
    noop = commands.own([b"NOOP\r\n"], owner)
    copy = commands.own([b"UID COPY 4 {5}\r\n", b"caf\xc3\xa9\r\n"], owner)
    commands.send([noop, copy])
    assert written == [noop[0], copy[0]]  # the mailbox name is held back
    # The pipelined NOOP's reply comes first: the COPY's literal still waits for its "+".
    assert commands.answered(noop[0].split(b" ")[0]) is owner
    assert commands.continue_command()
    assert written[-1] == b"caf\xc3\xa9\r\n"
    assert not commands.continue_command()  # nothing more waits: a "+" for someone else


def test_a_refused_command_line_never_sends_its_literal() -> None:
    commands, written = channel()
    owner = object()
    copy = commands.own([b"UID COPY 4 {5}\r\n", b"caf\xc3\xa9\r\n"], owner)
    commands.send([copy])
    assert commands.answered(copy[0].split(b" ")[0]) is owner  # "NO" to the first line
    assert not commands.continue_command()
    assert written == [copy[0]]
