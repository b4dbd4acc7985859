"""Compatibility matrix, Python IMAP libraries: imaplib, IMAPClient, imap-tools, aioimaplib.

Each library is used the way its documentation shows (its own move call where it has one, with
its own fallback when the server lacks MOVE), through the proxy in front of each real server:
log in, list, select, fetch, move ``compat 2`` from INBOX to Archive.  The result is checked on
the server itself (see tests/compat/common.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import re
import sys
from importlib import metadata

import aioimaplib
import imap_tools
import imapclient
import pytest
from compat.common import MOVED, SOURCE, Target, record, target_fixture

target = target_fixture()

_FETCH_UID_RE = re.compile(rb"UID (\d+)")


def _uid_of(fetched: list[object], subject: str) -> str:
    """UID of the message whose Subject header is ``subject`` in an imaplib-style FETCH reply."""
    for item in fetched:
        if isinstance(item, tuple) and subject.encode() in item[1]:
            match = _FETCH_UID_RE.search(item[0])
            assert match, item
            return match.group(1).decode()
    raise AssertionError(f"{subject!r} not fetched: {fetched!r}")


def test_imaplib(target: Target, request: pytest.FixtureRequest) -> None:
    imap = imaplib.IMAP4(target.host, target.port, timeout=10)
    try:
        imap.login(target.user, target.password)
        typ, listing = imap.list()
        names = [line for line in listing if isinstance(line, bytes)]
        assert typ == "OK" and any(target.archive.encode() in line for line in names), listing
        typ, _ = imap.select(SOURCE)
        assert typ == "OK"
        typ, fetched = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        uid = _uid_of(fetched, MOVED)
        # imaplib has no move call: the script asks for the post-login capabilities (imaplib's
        # own ``capabilities`` attribute keeps the pre-login list) and uses UID MOVE.
        typ, caps = imap.capability()
        assert typ == "OK" and b"MOVE" in caps[0].split(), caps
        typ, data = imap.uid("MOVE", uid, target.archive)
        assert typ == "OK", data
        # What imaplib recorded of the MOVE's untagged EXPUNGE (imap4d's own "* 2 EXPUNGED",
        # which imaplib files under another name, reaches it as "* 2 EXPUNGE").
        _, expunged = imap.response("EXPUNGE")
        assert expunged == [b"2"], (expunged, imap.untagged_responses)
        imap.logout()
    finally:
        _close_imaplib(imap)
    moves = target.check_moved()
    assert [m.command for m in moves] == ["UID MOVE"]
    record(request, target, client="imaplib", version=_python_version(), moves=moves, expunges=1)


def test_imapclient(target: Target, request: pytest.FixtureRequest) -> None:
    client = imapclient.IMAPClient(target.host, port=target.port, ssl=False, timeout=10)
    try:
        client.login(target.user, target.password)
        folders = [name for _flags, _delim, name in client.list_folders()]
        assert target.archive in folders, folders
        client.select_folder(SOURCE)
        fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        # The key echoes the server's spelling (Courier quotes the field: ("SUBJECT")).
        uids = [uid for uid, data in fetched.items()
                if any(key.startswith(b"BODY[HEADER") and MOVED.encode() in value
                       for key, value in data.items())]  # fmt: skip
        assert len(uids) == 1, fetched
        # IMAPClient.move() raises CapabilityError unless the server advertises MOVE.
        assert client.has_capability("MOVE")
        client.move(uids, target.archive)
        client.logout()
    finally:
        _close_imaplib(client._imap)
    moves = target.check_moved()
    assert [m.command for m in moves] == ["UID MOVE"]
    record(request, target, client="IMAPClient", version=imapclient.__version__, moves=moves)


def test_imap_tools(target: Target, request: pytest.FixtureRequest) -> None:
    mailbox = imap_tools.MailBoxUnencrypted(target.host, target.port, timeout=10)
    with mailbox.login(target.user, target.password, initial_folder=SOURCE) as box:
        assert target.archive in [folder.name for folder in box.folder.list()]
        messages = list(box.fetch(imap_tools.AND(subject=MOVED), mark_seen=False))
        assert [m.subject for m in messages] == [MOVED]
        # MailBox.move(): UID MOVE if imaplib's ``capabilities`` has MOVE, else UID COPY, UID
        # STORE +FLAGS (\Deleted) and a plain EXPUNGE.  imaplib's list is the PRE-login one.
        pre_login_move = "MOVE" in box.client.capabilities
        uid = messages[0].uid
        assert uid is not None
        box.move([uid], target.archive)
    moves = target.check_moved()
    note = ""
    if target.kind == "dovecot-native" or target.kind.startswith("routed-"):
        # Dovecot lists MOVE only after login, and the proxy passes a MOVE-capable server's
        # capabilities through untouched; a routing proxy lists its own before login, and
        # cannot know the user's backend then: imap-tools falls back to COPY + STORE + EXPUNGE.
        assert not pre_login_move and moves == []
        note = "pre-login CAPABILITY lacks MOVE: COPY + STORE + plain EXPUNGE fallback"
    else:
        # In front of a MOVE-less server the proxy adds MOVE to the pre-login list too.
        assert pre_login_move and [m.command for m in moves] == ["UID MOVE"]
    version = metadata.version("imap-tools")
    record(request, target, client="imap-tools", version=version, moves=moves, note=note)


def test_aioimaplib(target: Target, request: pytest.FixtureRequest) -> None:
    # pytest-trio runs async tests under trio: aioimaplib needs asyncio, so run our own loop.
    expunges = asyncio.run(asyncio.wait_for(_aioimaplib_session(target), timeout=30))
    moves = target.check_moved()
    assert [m.command for m in moves] == ["UID MOVE"]
    assert expunges == [b"2 EXPUNGE"]  # the one standard EXPUNGE, on imap4d too
    version = metadata.version("aioimaplib")
    record(request, target, client="aioimaplib", version=version, moves=moves, expunges=1)


async def _aioimaplib_session(target: Target) -> list[bytes]:
    """Log in, find and UID MOVE the message; the MOVE's untagged EXPUNGE lines."""
    client = aioimaplib.IMAP4(host=target.host, port=target.port, timeout=10)
    await client.wait_hello_from_server()
    response = await client.login(target.user, target.password)
    assert response.result == "OK", response
    # aioimaplib's capability set is the greeting's (it ignores the LOGIN reply's CAPABILITY
    # code) until capability() is called; move() raises Abort without MOVE in it.
    await client.protocol.capability()
    response = await client.list('""', "*")
    assert response.result == "OK" and any(
        target.archive.encode() in line for line in response.lines
    )
    response = await client.select(SOURCE)
    assert response.result == "OK", response
    response = await client.uid("fetch", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert response.result == "OK", response
    uid = None
    for index, line in enumerate(response.lines):
        if isinstance(line, bytearray) and MOVED.encode() in line:
            match = _FETCH_UID_RE.search(bytes(response.lines[index - 1]))
            assert match, response.lines
            uid = match.group(1).decode()
    assert uid is not None, response.lines
    assert client.has_capability("MOVE"), client.protocol.capabilities
    response = await client.uid("move", uid, target.archive)
    assert response.result == "OK", response
    await client.logout()
    return [bytes(line) for line in response.lines if re.fullmatch(rb"\d+ EXPUNGED?", line)]


def _close_imaplib(imap: imaplib.IMAP4) -> None:
    if imap.state != "LOGOUT":
        with contextlib.suppress(Exception):
            imap.shutdown()


def _python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))
