"""The second session that removes a failed MOVE's copies, driven with scripted server replies.

tests/integration/test_fault_matrix.py runs it against a real Dovecot; here each refusal is
produced on demand, which a real server cannot be made to do at every step.

Once past LOGIN it ends only when the server closes the connection after its LOGOUT (an mbox
server writes the session's view of the mailbox as the session ends): the tests call
``connection_lost()`` to see it done.
"""

from __future__ import annotations

import base64

import pytest

from imapmoveproxy.move.request import RollbackRequest
from imapmoveproxy.move.rollback import Credentials, Rollback, plain_credentials
from imapmoveproxy.wire.capabilities import Capabilities

REQUEST = RollbackRequest(b"Sent Items", b"7", (20, 21, 23), (10, 11, 13))
USER = Credentials(b"user", b"user", b"pass")


def step(rollback: Rollback, server: bytes) -> bytes:
    rollback.receive(server)
    return rollback.take_outgoing()


def test_logs_in_selects_removes_exactly_the_copies_checks_and_logs_out():
    rollback = Rollback(REQUEST, USER)
    assert step(rollback, b"* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n") == (
        b"rb1 LOGIN user pass\r\n"
    )
    assert step(rollback, b"rb1 OK Logged in\r\n") == b'rb2 SELECT "Sent Items"\r\n'
    sent = step(rollback, b"* OK [UIDVALIDITY 7] Ok\r\n* 9 EXISTS\r\nrb2 OK [READ-WRITE] Sel\r\n")
    assert sent == b"rb3 UID FETCH 20:21,23 (UID)\r\n"  # which copies are there
    found = b"* 1 FETCH (UID 20)\r\n* 2 FETCH (UID 21)\r\n* 3 FETCH (UID 23)\r\nrb3 OK\r\n"
    assert step(rollback, found) == b"rb4 UID STORE 20:21,23 +FLAGS.SILENT (\\Deleted)\r\n"
    assert step(rollback, b"rb4 OK\r\n") == b"rb5 UID EXPUNGE 20:21,23\r\n"
    assert step(rollback, b"* 3 EXPUNGE\r\nrb5 OK\r\n") == b"rb6 UID FETCH 20:21,23 (UID)\r\n"
    assert step(rollback, b"rb6 OK\r\n") == b"rb7 LOGOUT\r\n"
    assert rollback.ending and not rollback.done  # until the server closes the connection
    assert step(rollback, b"* BYE Logging out\r\nrb7 OK Bye\r\n") == b""  # the BYE is no error
    assert not rollback.done
    rollback.connection_lost()
    assert rollback.done and rollback.error is None and rollback.missing == frozenset()


def test_copies_already_gone_from_the_target_are_named():
    rollback = Rollback(REQUEST, USER)
    step(rollback, b"* OK hi\r\nrb1 OK\r\n* OK [UIDVALIDITY 7] x\r\nrb2 OK\r\n")
    step(rollback, b"* 2 FETCH (UID 21)\r\nrb3 OK\r\n")  # 20 and 23 were moved away meanwhile
    sent = step(rollback, b"rb4 OK\r\n* 2 EXPUNGE\r\nrb5 OK\r\nrb6 OK\r\n")
    assert sent.endswith(b"rb7 LOGOUT\r\n")
    rollback.connection_lost()
    assert rollback.done and rollback.error is None and rollback.missing == {20, 23}


def test_a_copy_still_there_afterwards_is_a_failure():
    rollback = Rollback(REQUEST, USER)
    step(rollback, b"* OK hi\r\nrb1 OK\r\n* OK [UIDVALIDITY 7] x\r\nrb2 OK\r\n")
    step(rollback, b"* 2 FETCH (UID 21)\r\nrb3 OK\r\nrb4 OK\r\nrb5 OK\r\n")
    assert step(rollback, b"* 1 FETCH (UID 21)\r\nrb6 OK\r\n") == b"rb7 LOGOUT\r\n"
    assert rollback.ending and not rollback.done
    rollback.connection_lost()
    assert rollback.done and rollback.error == "UIDs 21 of the target were not removed"


def test_a_recreated_target_is_not_touched():
    rollback = Rollback(REQUEST, USER)
    sent = step(rollback, b"* OK hi\r\nrb1 OK\r\n* OK [UIDVALIDITY 8] x\r\nrb2 OK\r\n")
    assert b"STORE" not in sent and sent.endswith(b"\r\nrb3 LOGOUT\r\n")
    rollback.connection_lost()
    assert rollback.done and rollback.error == "the target's UIDVALIDITY is now 8"


@pytest.mark.parametrize(
    ("server", "error"),
    [
        (b"* BYE go away\r\n", "greeting b'* BYE go away'"),
        (b"* OK hi\r\nrb1 NO [AUTHENTICATIONFAILED] Nope\r\n", "login refused: Nope"),
        (b"* OK hi\r\nrb9 OK\r\n", "unexpected reply b'rb9 OK'"),
    ],
)
def test_a_refusal_up_to_the_login_ends_it_at_once_with_the_reason(server: bytes, error: str):
    rollback = Rollback(REQUEST, USER)
    assert b"LOGOUT" not in step(rollback, server)
    assert rollback.done and not rollback.ending and rollback.error == error


@pytest.mark.parametrize(
    ("server", "error"),
    [
        (b"* OK hi\r\nrb1 OK\r\nrb2 NO [NONEXISTENT] Gone\r\n", "select refused: Gone"),
        (
            b"* OK hi\r\nrb1 OK\r\n* BYE shutting down\r\n",
            "the mail server said b'* BYE shutting down'",
        ),
        (
            b"* OK hi\r\nrb1 OK\r\n* OK [UIDVALIDITY 7] x\r\nrb2 OK\r\nrb3 BAD Busy\r\n",
            "find refused: Busy",
        ),
    ],
)
def test_a_refusal_after_the_login_logs_out_and_ends_when_the_server_closes(
    server: bytes, error: str
):
    rollback = Rollback(REQUEST, USER)
    assert step(rollback, server).endswith(b" LOGOUT\r\n")
    assert rollback.ending and not rollback.done and rollback.error == error
    step(rollback, b"* 1 FETCH (UID 20)\r\nrb9 OK\r\n")  # anything after LOGOUT is ignored
    rollback.connection_lost()
    assert rollback.done and rollback.error == error  # the reason, not the closed connection


def test_a_dropped_connection_is_a_failure():
    rollback = Rollback(REQUEST, USER)
    step(rollback, b"* OK hi\r\n")
    rollback.connection_lost()
    assert rollback.done and rollback.error == "the mail server closed the connection"
    rollback = Rollback(REQUEST, USER)  # with the copies flagged, before their expunge
    step(rollback, b"* OK hi\r\nrb1 OK\r\n* OK [UIDVALIDITY 7] x\r\nrb2 OK\r\n")
    step(rollback, b"* 1 FETCH (UID 20)\r\nrb3 OK\r\n")
    rollback.connection_lost()
    assert rollback.done and rollback.error == "the mail server closed the connection"


def test_a_master_user_logs_in_for_the_user_with_plain():
    master = USER.as_master(b"admin", b"secret")
    command = master.command(Capabilities.parse(b"IMAP4rev1 SASL-IR"))
    assert command == [b"AUTHENTICATE PLAIN " + base64.b64encode(b"user\0admin\0secret") + b"\r\n"]
    without_ir = master.command(Capabilities.parse(b"IMAP4rev1"))
    assert without_ir[0] == b"AUTHENTICATE PLAIN\r\n"  # the response waits for "+"
    rollback = Rollback(REQUEST, master)
    assert step(rollback, b"* OK hi\r\n") == b"rb1 AUTHENTICATE PLAIN\r\n"
    assert step(rollback, b"+ \r\n") == without_ir[1]


def test_passwords_needing_a_literal_wait_for_the_servers_go_ahead():
    rollback = Rollback(REQUEST, Credentials(b"user", b"user", b"p\xc3\xa4ss"))
    assert step(rollback, b"* OK hi\r\n") == b"rb1 LOGIN user {5}\r\n"
    assert step(rollback, b"+ go\r\n") == b"p\xc3\xa4ss\r\n"


@pytest.mark.parametrize("response", [b"*\r\n", b"bm90IHBsYWlu\r\n", b"!!!\r\n", b"AABw\r\n"])
def test_unusable_plain_responses_keep_no_credentials(response: bytes):
    assert plain_credentials(response) is None
