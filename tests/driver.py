"""The one driver of the sans-IO session for unit tests: talks to it as the client and as the
upstream, and names the proxy's own upstream commands by their text, never by their tags.

The proxy numbers its commands (``imp1``, ``imp2``...); a test that spells those numbers out
breaks whenever a step is added or removed elsewhere. Here what the proxy sent upstream comes
back with its own tags stripped (the client's commands keep theirs), and a reply to one of the
proxy's commands is built from the command's text: ``driver.tagged(b"UID STORE", b"OK")``.
"""

from __future__ import annotations

import re
from typing import TypeVar

from hypothesis import strategies as st

from imapmoveproxy.engine.channel import TAG_PREFIX
from imapmoveproxy.engine.effects import (
    CheckFlags,
    Effect,
    FinishedMove,
    MoveFinished,
    MoveReady,
    RunRollback,
)
from imapmoveproxy.engine.session import Session, SessionSettings
from imapmoveproxy.move.copyflags import FlagCheckRequest
from imapmoveproxy.move.request import RollbackRequest
from imapmoveproxy.move.rollback import Credentials
from imapmoveproxy.wire.proxyproto import Endpoint

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] ready\r\n"
CAPS = (
    b"IMAP4rev1 LITERAL+ UIDPLUS CONDSTORE QRESYNC ESEARCH COMPRESS=DEFLATE AUTH=SCRAM-SHA-1-PLUS"
)
E = TypeVar("E", bound=Effect)
_PROXY_TAG_RE = re.compile(rb"(?m)^" + re.escape(TAG_PREFIX) + rb"\d+ ")
_TAGGED_RE = re.compile(rb"(?m)^(" + re.escape(TAG_PREFIX) + rb"\d+) (?:OK|NO|BAD)\b")


def strip_proxy_tags(data: bytes) -> bytes:
    """``data`` sent upstream, each of the proxy's own commands without its tag."""
    return _PROXY_TAG_RE.sub(b"", data)


class Driver:
    """A session, with helpers to talk to it as the client and as the upstream.

    As the trio layer does once it holds the mailbox's lock, the driver starts a MOVE as soon as
    the session announces one (``lock_by_hand=True``: the test does it).
    """

    def __init__(
        self,
        settings: SessionSettings | None = None,
        addresses: tuple[Endpoint, Endpoint] | None = None,
        lock_by_hand: bool = False,
    ) -> None:
        self.session = Session(settings, addresses=addresses)
        self.lock_by_hand = lock_by_hand
        self.client_saw = b""
        self.commands: list[bytes] = []  # the proxy's own commands, with their tags, in order
        self.answered: set[bytes] = set()  # their tags that the upstream has answered
        self.effects: list[Effect] = []  # the session's effects, not taken by the test yet

    # ------------------------------------------------------------------ bytes in and out

    def client(self, data: bytes) -> bytes:
        """Send client bytes; return what the proxy sent upstream as a result (see sent)."""
        self.session.receive_client(data)
        return self.sent()

    def upstream(self, data: bytes) -> bytes:
        """Send upstream bytes; return what the proxy sent upstream as a result (see sent)."""
        self.answered.update(_TAGGED_RE.findall(data))
        self.session.receive_upstream(data)
        return self.sent()

    def sent(self) -> bytes:
        """What the proxy sent upstream since the last call, its own tags stripped."""
        if not self.lock_by_hand and self.take(MoveReady):
            self.session.start_move()
        self.client_saw += bytes(self.session.take_to_client())
        data = bytes(self.session.take_to_upstream())
        commands = [line for line in data.split(b"\r\n") if _PROXY_TAG_RE.match(line)]
        tags = [command.split(b" ", 1)[0] for command in self.commands + commands]
        assert len(set(tags)) == len(tags), f"the proxy reused a tag of its own: {commands!r}"
        self.commands += commands
        return strip_proxy_tags(data)

    def seen(self) -> bytes:
        """What the client received since the last call."""
        self.client_saw += bytes(self.session.take_to_client())
        seen, self.client_saw = self.client_saw, b""
        return seen

    # ------------------------------------------------------------------ the session's effects

    def take(self, kind: type[E]) -> list[E]:
        """The effects of ``kind`` the session has queued and the test has not taken yet."""
        self.effects += self.session.take_effects()
        taken = [effect for effect in self.effects if isinstance(effect, kind)]
        self.effects = [effect for effect in self.effects if not isinstance(effect, kind)]
        return taken

    def move_ready(self) -> bool:
        """Whether a MOVE was announced ready since the last look (``lock_by_hand``)."""
        return bool(self.take(MoveReady))

    def take_rollback(self) -> tuple[RollbackRequest, Credentials] | None:
        """The rollback the session asked for, if any (there is at most one at a time)."""
        for effect in self.take(RunRollback):
            return effect.request, effect.credentials
        return None

    def take_flag_check(self) -> tuple[FlagCheckRequest, Credentials] | None:
        """The flag check the session asked for, if any (there is at most one at a time)."""
        for effect in self.take(CheckFlags):
            return effect.request, effect.credentials
        return None

    def take_finished_moves(self) -> list[FinishedMove]:
        return [effect.move for effect in self.take(MoveFinished)]

    # ------------------------------------------------------------------ the proxy's commands

    def tag(self, pattern: bytes) -> bytes:
        """The tag of the proxy's latest command not answered yet whose text (tag stripped,
        ending in CRLF) contains ``pattern``."""
        for tag, text in reversed(self.unanswered()):
            if pattern in text + b"\r\n":
                return tag
        raise AssertionError(f"no unanswered command like {pattern!r} in {self.commands!r}")

    def unanswered(self) -> list[tuple[bytes, bytes]]:
        """The proxy's commands not answered yet, oldest first: (tag, text without the tag)."""
        pairs = [command.split(b" ", 1) for command in self.commands]
        return [(tag, text) for tag, text in pairs if tag not in self.answered]

    def tagged(self, pattern: bytes, status: bytes) -> bytes:
        """The tagged reply ``status`` (``OK``, ``NO [CODE] text``...) to :meth:`tag`."""
        return self.tag(pattern) + b" " + status + b"\r\n"

    def answer(self, pattern: bytes, status: bytes) -> bytes:
        """Send :meth:`tagged` upstream; return what the proxy sent upstream as a result."""
        return self.upstream(self.tagged(pattern, status))

    def esearch(self, pattern: bytes, result: bytes = b"") -> bytes:
        """The ESEARCH response (``ALL 10:12``, or nothing found) to a ``UID SEARCH RETURN``."""
        return b'* ESEARCH (TAG "%s") UID%s\r\n' % (self.tag(pattern), result and b" " + result)


CUTS = st.lists(st.integers(min_value=1, max_value=400), max_size=15)  # offsets for cut()


def cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` cut at the offsets ``cuts`` (any order, repeats, beyond its end: ignored)."""
    pieces, start = [], 0
    for offset in sorted(set(cuts)):
        pieces.append(stream[start:offset])
        start = offset
    pieces.append(stream[start:])
    return [piece for piece in pieces if piece]


def listed(s: Driver, copy: bytes = b"", uid_set: bytes = b"", found: bytes = b"") -> bytes:
    """The answers to a MOVE's listing commands. A UID MOVE's: its ``NOOP``, its search of
    ``uid_set`` (what it ``found``, such as ``ALL 3:7``) and of \\Deleted, then ``copy`` to its
    COPY if given. A sequence-number MOVE's: its ``FETCH set (UID)`` and search of \\Deleted;
    its NOOP and COPY are sent only once these are answered (see :func:`synced`)."""
    if uid_set:
        first = b"UID " + uid_set + b"\r\n"
        reply = s.tagged(b"NOOP", b"OK") + (s.esearch(first, found) if found else b"")
    else:
        assert not copy, "a sequence-number MOVE's COPY is not sent yet: answer it with synced()"
        first, reply = b"(UID)", b""
    reply += s.tagged(first, b"OK") + s.tagged(b"DELETED", b"OK")
    return reply + (s.tagged(b"COPY", copy) if copy else b"")


def synced(s: Driver, copy: bytes) -> bytes:
    """The answers to what a sequence-number MOVE sends once its listing is answered: the
    ``NOOP`` and ``copy`` to the first ``UID COPY``."""
    return s.tagged(b"NOOP", b"OK") + s.tagged(b"COPY", copy)


def copied(script: Driver, already_deleted: bytes = b"") -> None:
    """Answer the start of ``c MOVE 1:2 Trash``: UIDs 10 and 11, copied as 20 and 21."""
    script.client(b"c MOVE 1:2 Trash\r\n")
    sent = script.upstream(
        b"* 1 FETCH (UID 10)\r\n* 2 FETCH (UID 11)\r\n" + script.tagged(b"(UID)", b"OK")
        + script.esearch(b"DELETED", already_deleted) + script.tagged(b"DELETED", b"OK")
    )  # fmt: skip
    assert sent == b"NOOP\r\nUID COPY 10:11 Trash\r\n"
    script.upstream(synced(script, b"OK [COPYUID 7 10:11 20:21] Done"))
    script.seen()


def greeted(settings: SessionSettings | None = None, lock_by_hand: bool = False) -> Driver:
    """A session that has had the upstream's greeting (and passed it on to the client)."""
    driver = Driver(settings, lock_by_hand=lock_by_hand)
    driver.upstream(GREETING)
    return driver


def logged_in(caps: bytes = CAPS, settings: SessionSettings | None = None) -> Driver:
    """A session logged in with INBOX selected; the client's view of that not read yet."""
    driver = greeted(settings)
    driver.client(b"a LOGIN user pass\r\n")
    driver.upstream(b"a OK [CAPABILITY " + caps + b"] Logged in\r\n")
    driver.client(b"b SELECT INBOX\r\n")
    driver.upstream(b"* 5 EXISTS\r\nb OK [READ-WRITE] Selected\r\n")
    return driver


def started(caps: bytes = CAPS, settings: SessionSettings | None = None) -> Driver:
    """:func:`logged_in`, the client's view of that already read."""
    driver = logged_in(caps, settings)
    driver.seen()
    return driver
