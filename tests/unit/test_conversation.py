"""The proxy's side of a conversation with a server (wire/conversation.py), bytes in and out."""

from __future__ import annotations

import pytest

from imapmoveproxy.wire.conversation import Conversation, ConversationError, Reply, Response

OWNER = object()


def events(conversation: Conversation, data: bytes) -> list[Reply | Response]:
    conversation.receive(data)
    found: list[Reply | Response] = []
    while (event := conversation.next_event()) is not None:
        found.append(event)
    return found


def test_commands_go_out_pipelined_under_tags_and_their_replies_come_back_to_their_owner():
    conversation = Conversation(b"t")
    other = object()
    conversation.send([[b"NOOP\r\n"], [b"CHECK\r\n"]], OWNER)
    conversation.send([[b"LOGOUT\r\n"]], other)
    assert conversation.take_outgoing() == b"t1 NOOP\r\nt2 CHECK\r\nt3 LOGOUT\r\n"
    assert conversation.take_outgoing() == b""
    got = events(conversation, b"* 3 EXISTS\r\nt1 OK done\r\nt2 NO [ALERT] no\r\n")
    assert got[0] == Response(b"* 3 EXISTS\r\n", b"* 3 EXISTS\r\n")
    first, second = got[1:]
    assert isinstance(first, Reply) and isinstance(second, Reply)
    assert (first.tagged.tag, first.tagged.status, first.owner) == (b"t1", b"OK", OWNER)
    assert (second.tagged.code, second.tagged.text) == (b"ALERT", b"no")
    assert not conversation.awaiting(OWNER) and conversation.awaiting(other)


def test_a_literal_waits_for_the_go_ahead_unless_the_command_is_refused_first():
    conversation = Conversation(b"t")
    conversation.send([[b"LOGIN {4}\r\n", b"user pass\r\n"]], OWNER)
    assert conversation.take_outgoing() == b"t1 LOGIN {4}\r\n"
    assert events(conversation, b"+ go ahead\r\n") == []
    assert conversation.take_outgoing() == b"user pass\r\n"
    conversation.send([[b"LOGIN {4}\r\n", b"user pass\r\n"]], OWNER)
    conversation.take_outgoing()
    [reply] = events(conversation, b"t2 NO [CANNOT] no literals\r\n")
    assert isinstance(reply, Reply) and reply.tagged.status == b"NO"
    with pytest.raises(ConversationError, match="unexpected continuation request"):
        events(conversation, b"+ late\r\n")  # the literal is never sent


def test_a_response_comes_whole_with_its_literals_however_the_bytes_are_split():
    conversation = Conversation(b"t")
    whole = b"* 1 FETCH (UID 4 BODY[HEADER] {12}\r\nSubject: x\r\n FLAGS ())\r\n"
    got: list[Reply | Response] = []
    for byte in range(len(whole)):
        got += events(conversation, whole[byte : byte + 1])
    assert got == [Response(b"* 1 FETCH (UID 4 BODY[HEADER] {12}\r\n", whole)]


def test_the_capabilities_are_those_the_server_last_listed():
    conversation = Conversation(b"t")
    events(conversation, b"* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n")
    assert conversation.caps.names == {b"IMAP4REV1", b"LITERAL+"}
    conversation.send([[b"LOGIN a b\r\n"]], OWNER)
    events(conversation, b"t1 OK [CAPABILITY IMAP4rev1 UIDPLUS] in\r\n")
    assert conversation.caps.names == {b"IMAP4REV1", b"UIDPLUS"}
    events(conversation, b"* CAPABILITY IMAP4rev2\r\n")
    assert conversation.caps.names == {b"IMAP4REV2"}


@pytest.mark.parametrize(
    ("server", "error"),
    [
        (b"x9 OK who?\r\n", "unexpected reply b'x9 OK who?'"),
        (b"t1 MAYBE\r\n", "unexpected reply b't1 MAYBE'"),
        (b"+ \r\n", "unexpected continuation request"),
        (b"* " + b"x" * 100 + b"\r\n", "overlong line from the mail server"),
        (b"* 1 FETCH (BODY[] {90}\r\n" + b"x" * 90, "overlong response from the mail server"),
    ],
)
def test_what_no_command_waits_for_ends_the_conversation(server: bytes, error: str):
    conversation = Conversation(b"t", max_line=64)
    conversation.send([[b"NOOP\r\n"]], OWNER)
    with pytest.raises(ConversationError) as raised:
        events(conversation, server)
    assert str(raised.value) == error


def test_a_closed_connection_is_told_after_the_responses_that_came_before_it():
    conversation = Conversation(b"t")
    conversation.receive(b"* BYE going\r\n* OK half a li")
    conversation.connection_lost()
    assert conversation.next_event() == Response(b"* BYE going\r\n", b"* BYE going\r\n")
    with pytest.raises(ConversationError, match="the connection was closed"):
        conversation.next_event()


def test_input_after_starttls_is_dropped():
    conversation = Conversation(b"t")
    conversation.send([[b"STARTTLS\r\n"]], OWNER)
    conversation.receive(b"t1 OK begin TLS\r\n* injected\r\n")
    assert isinstance(conversation.next_event(), Reply)
    conversation.drop_input()
    assert conversation.next_event() is None
