"""A client-view oracle: what one IMAP client has been told, checked after every response.

:class:`ClientView` is sans-IO: feed it the bytes the client sends (:meth:`ClientView.client`)
and every whole server response it reads (:meth:`ClientView.server`, or raw bytes through
:meth:`ClientView.server_bytes`).  It models the selected mailbox as the client sees it: the
message count (None until an EXISTS follows SELECT/EXAMINE), the UIDs and flags of the messages
at the sequence numbers where FETCH told them, and the commands in flight.  After each response
it asserts the invariants of RFC 3501/9051 section 7 and of RFC 6851 (MOVE); a violation raises
AssertionError with the tail of the transcript, and is kept in :attr:`ClientView.violations`.

The oracle must never raise a false alarm: whatever it cannot be sure of (a command it cannot
parse, a reply to a tag it never saw sent, a SELECT in flight) only disables checks.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

# Listening addresses of the proxies started by the tests (harness.ProxyProcess): imaplib
# sessions to one of them are watched (see harness.watch_imaplib).
PROXIES: set[tuple[str, int]] = set()
# Every view the hooks (RawClient, imaplib) created during the current test: the conftest
# fixture fails the test on a violation even if the test swallowed the AssertionError.
WATCHED: list[ClientView] = []

SEQUENCE_ONLY = {b"FETCH", b"STORE", b"SEARCH"}  # RFC 3501 7.4.1: no EXPUNGE during these
MAP_LIMIT = 2000  # UIDs remembered (shifting the map on EXPUNGE costs its size)

UidSet = list[tuple[int, int]]


def parse_uid_set(text: bytes) -> UidSet | None:
    """A uid-set as ranges, or None if it is not one (empty, 0, ``*``, junk)."""
    ranges = []
    for part in text.split(b","):
        match = re.fullmatch(rb"([1-9]\d*)(?::([1-9]\d*))?", part)
        if match is None:
            return None
        low, high = int(match[1]), int(match[2] or match[1])
        ranges.append((min(low, high), max(low, high)))
    return ranges


def set_size(ranges: UidSet) -> int:
    return sum(high - low + 1 for low, high in ranges)


def in_set(uid: int, ranges: UidSet) -> bool:
    return any(low <= uid <= high for low, high in ranges)


def _skip_value(data: bytes, i: int) -> int:
    """The end of the FETCH value starting at ``data[i]``: list, quoted, literal or atom."""
    if data[i : i + 1] == b"(":
        i += 1
        while i < len(data) and data[i : i + 1] != b")":
            i = i + 1 if data[i : i + 1] in (b" ", b"\r", b"\n") else _skip_value(data, i)
        return i + 1
    if data[i : i + 1] == b'"':
        i += 1
        while i < len(data) and data[i : i + 1] != b'"':
            i += 2 if data[i : i + 1] == b"\\" else 1
        return i + 1
    if (literal := re.compile(rb"~?\{(\d+)\+?\}\r\n").match(data, i)) is not None:
        return literal.end() + int(literal[1])
    while i < len(data) and data[i : i + 1] not in (b" ", b")", b"\r"):
        if data[i : i + 1] == b"[":  # BODY[HEADER.FIELDS (SUBJECT)]: spaces inside brackets
            close = data.find(b"]", i)
            i = close if close >= 0 else len(data)
        i += 1
    return i


def fetch_attributes(data: bytes) -> dict[bytes, bytes]:
    """The top-level ``name value`` pairs of a FETCH response (names upper-cased)."""
    i, items = data.find(b"(") + 1, []
    while 0 < i < len(data) and data[i : i + 1] != b")":
        if data[i : i + 1] in (b" ", b"\r", b"\n"):
            i += 1
            continue
        end = _skip_value(data, i)
        items.append(data[i:end])
        i = end
    return {name.upper(): value for name, value in zip(items[::2], items[1::2], strict=False)}


@dataclass
class Command:
    tag: bytes
    name: bytes  # upper case; "UID FETCH" for UID commands; b"" if not understood
    # MOVE only: the COPYUID source sets told so far, the known UIDs expunged during the
    # MOVE, and the number of expunges after its first untagged COPYUID.
    moved: UidSet = field(default_factory=list)
    copyuid_seen: bool = False
    expunged_uids: set[int] = field(default_factory=set)
    expunges_after_copyuid: int = 0

    @property
    def is_move(self) -> bool:
        return self.name in (b"MOVE", b"UID MOVE")


class ClientView:
    def __init__(self, name: str = "client") -> None:
        self.name = name
        self.count: int | None = None
        self.seq_uid: dict[int, int] = {}  # sequence number -> UID, where FETCH told it
        self.uid_seq: dict[int, int] = {}
        self.flags: dict[int, bytes] = {}  # sequence number -> the last FLAGS told
        self.in_flight: list[Command] = []
        self.violations: list[str] = []
        self._desync = False  # a tagged reply to a command we never saw: in-flight unreliable
        self._transcript: deque[str] = deque(maxlen=40)
        self._out = b""  # client bytes not yet a whole command
        self._line = b""  # the command being assembled (literals left out)
        self._literal_left = 0
        self._literal_taken = b""
        self._in = b""  # server bytes not yet a whole response (server_bytes)
        self._in_literal = 0

    # -- client side ------------------------------------------------------------------------

    def client(self, data: bytes) -> None:
        """Bytes the client sends (any chunking); whole commands update the model."""
        self._out += data
        while True:
            if self._literal_left:
                taken = self._out[: self._literal_left]
                self._out = self._out[len(taken) :]
                self._literal_taken += taken
                self._literal_left -= len(taken)
                if self._literal_left:
                    return
            end = self._out.find(b"\r\n")
            if end < 0:
                return
            line, self._out = self._out[:end], self._out[end + 2 :]
            self._line += line
            if (literal := re.search(rb"~?\{(\d+)\+?\}$", line)) is not None:
                self._literal_left, self._literal_taken = int(literal[1]), b""
                continue
            self._command(self._line)
            self._line = b""

    def _command(self, line: bytes) -> None:
        self._transcript.append(f"C: {line[:200]!r}")
        words = line.split(b" ", 3)
        if len(words) < 2 or not words[0] or words[0] in (b"*", b"+"):
            return  # DONE, AUTHENTICATE data, garbage: no command
        name = words[1].upper()
        if name == b"UID" and len(words) > 2:
            name = b"UID " + words[2].upper()
        if not re.fullmatch(rb"[A-Z]+( [A-Z]+)?", name):
            name = b""
        self.in_flight.append(Command(words[0], name))
        if name in (b"SELECT", b"EXAMINE", b"CLOSE", b"UNSELECT"):
            self._forget_mailbox()

    def _forget_mailbox(self) -> None:
        self.count = None
        self.seq_uid.clear()
        self.uid_seq.clear()
        self.flags.clear()

    # -- server side ------------------------------------------------------------------------

    def server_bytes(self, data: bytes) -> None:
        """Bytes read from the server (any chunking): whole responses go to :meth:`server`."""
        self._in += data
        start = 0
        while True:
            if self._in_literal:
                if len(self._in) - start < self._in_literal:
                    break
                start, self._in_literal = start + self._in_literal, 0
            end = self._in.find(b"\r\n", start)
            if end < 0:
                break
            start = end + 2
            if (literal := re.search(rb"\{(\d+)\}$", self._in[:end])) is not None:
                self._in_literal = int(literal[1])
                continue
            response, self._in, start = self._in[:start], self._in[start:], 0
            self.server(response)

    def server(self, response: bytes) -> None:
        """One whole response (its line, literals and CRLF)."""
        self._transcript.append(f"S: {response[:200]!r}")
        first = response.split(b"\r\n", 1)[0]
        if untagged := re.match(rb"\* (\d+) ([A-Za-z]+)", first):
            self._numbered(int(untagged[1]), untagged[2].upper(), response)
        elif vanished := re.match(rb"\* VANISHED (\S+)$", first, re.IGNORECASE):
            self._vanished(vanished[1])
        elif re.match(rb"\* OK \[COPYUID ", first, re.IGNORECASE):
            ranges = self._copyuid(first)
            move = next((c for c in self.in_flight if c.is_move), None)
            if ranges is not None and move is not None:
                if early := sorted(u for u in move.expunged_uids if in_set(u, ranges)):
                    self._fail(f"UIDs {early} were expunged before the COPYUID of their MOVE")
                move.moved += ranges
                move.copyuid_seen = True
        elif (tagged := re.match(rb"([^\s*+]+) (OK|NO|BAD)\b", first, re.IGNORECASE)) is not None:
            self._tagged(tagged[1], tagged[2].upper() == b"OK", first)

    def _numbered(self, n: int, kind: bytes, response: bytes) -> None:
        selecting = any(c.name in (b"SELECT", b"EXAMINE") for c in self.in_flight)
        if kind == b"EXPUNGE":  # a MOVE's count of expunges does not need the mailbox's
            self._note_expunge(1, [self.seq_uid[n]] if n in self.seq_uid else [])
        if kind == b"EXISTS":
            if self.count is not None and n < self.count and not selecting:
                self._fail(f"EXISTS {n} below the client's count {self.count}")
            self.count = n
        elif self.count is None or selecting:
            return  # another mailbox's, or the new one's before its EXISTS: nothing known
        elif kind == b"RECENT" and n > self.count:
            self._fail(f"RECENT {n} above the client's count {self.count}")
        elif kind == b"FETCH":
            self._check_seq(n, "FETCH")
            self._fetched(n, fetch_attributes(response))
        elif kind == b"EXPUNGE":
            self._check_seq(n, "EXPUNGE")
            names = {c.name for c in self.in_flight}
            if not self._desync and not names - SEQUENCE_ONLY:
                doing = b", ".join(sorted(names)).decode() or "no command"
                self._fail(f"EXPUNGE while the client runs {doing} (RFC 3501 7.4.1)")
            self._expunged(n)

    def _check_seq(self, n: int, kind: str) -> None:
        if not 1 <= n <= (self.count or 0):
            self._fail(f"{kind} {n} outside the client's 1..{self.count}")

    def _fetched(self, n: int, attributes: dict[bytes, bytes]) -> None:
        if b"FLAGS" in attributes:
            self.flags[n] = attributes[b"FLAGS"]
        if not (uid_text := attributes.get(b"UID", b"")).isdigit():
            return
        uid = int(uid_text)
        if self.uid_seq.get(uid, n) != n or self.seq_uid.get(n, uid) != uid:
            self._fail(
                f"FETCH {n} (UID {uid}) but the client was told UID {uid} at "
                f"{self.uid_seq.get(uid)} and message {n} with UID {self.seq_uid.get(n)}"
            )
        if len(self.seq_uid) < MAP_LIMIT:
            self.seq_uid[n], self.uid_seq[uid] = uid, n

    def _expunged(self, n: int) -> None:
        assert self.count is not None
        self.count -= 1
        self.seq_uid = {s - (s > n): u for s, u in self.seq_uid.items() if s != n}
        self.uid_seq = {u: s for s, u in self.seq_uid.items()}
        self.flags = {s - (s > n): f for s, f in self.flags.items() if s != n}

    def _note_expunge(self, number: int, uids: list[int]) -> None:
        """Count expunges (and their UIDs, where known) for the MOVEs in flight."""
        for move in self.in_flight:
            if move.is_move:
                move.expunges_after_copyuid += number * move.copyuid_seen
                move.expunged_uids.update(uids)

    def _vanished(self, text: bytes) -> None:
        ranges = parse_uid_set(text)
        if ranges is None:
            self._fail(f"VANISHED with an invalid uid-set {text!r}")
            return
        size = set_size(ranges)
        uids = [u for low, high in ranges for u in range(low, high + 1)] if size < MAP_LIMIT else []
        self._note_expunge(size, uids)
        if self.count is not None and not any(
            c.name in (b"SELECT", b"EXAMINE") for c in self.in_flight
        ):
            if size > self.count:
                self._fail(f"VANISHED {size} UIDs, the client's count is {self.count}")
            self.count = max(0, self.count - size)
        # Where the unknown UIDs sat is not known: forget the map rather than guess.
        self.seq_uid.clear()
        self.uid_seq.clear()
        self.flags.clear()

    def _copyuid(self, line: bytes) -> UidSet | None:
        """The source set of the COPYUID in ``line`` (checked), or None."""
        match = re.search(rb"\[COPYUID (\S+) (\S+) ([^\]\s]+)\]", line, re.IGNORECASE)
        if match is None:
            self._fail("unparseable COPYUID")
            return None
        source, target = parse_uid_set(match[2]), parse_uid_set(match[3])
        if not match[1].isdigit() or int(match[1]) == 0 or source is None or target is None:
            self._fail("COPYUID with an invalid UIDVALIDITY or uid-set")
            return None
        if set_size(source) != set_size(target):
            self._fail(f"COPYUID sets of different sizes: {match[2]!r} {match[3]!r}")
        return source

    def _tagged(self, tag: bytes, ok: bool, line: bytes) -> None:
        command = next((c for c in self.in_flight if c.tag == tag), None)
        if command is None:
            if self._line.split(b" ", 1)[0] == tag and self._literal_left:
                # A literal refused: what we took as its bytes are the commands that follow.
                self._out, self._line = self._literal_taken + self._out, b""
                self._literal_left, self._literal_taken = 0, b""
                self.client(b"")
            else:
                self._desync = True
            return
        self.in_flight.remove(command)
        if command.name in (b"SELECT", b"EXAMINE") and not ok:
            self._forget_mailbox()
        copyuid = re.search(rb"\[COPYUID ", line, re.IGNORECASE) is not None
        tagged_ranges = self._copyuid(line) if copyuid and ok else None
        if not (ok and command.is_move):
            return
        if tagged_ranges is not None:
            self._fail("COPYUID of a MOVE in its tagged OK, not in an untagged OK before the "
                       "EXPUNGEs (RFC 6851 4.3)")  # fmt: skip
        moved = set_size(command.moved)
        if command.expunges_after_copyuid < moved:
            self._fail(f"MOVE of {moved} messages (COPYUID) but only "
                       f"{command.expunges_after_copyuid} expunges after it")  # fmt: skip
        if kept := sorted(u for u in self.uid_seq if in_set(u, command.moved)):
            self._fail(f"MOVE OK but the moved UIDs {kept} were never expunged")

    def _fail(self, message: str) -> None:
        self.violations.append(message)
        transcript = "\n".join(self._transcript)
        raise AssertionError(f"{self.name}: {message}\n--- transcript tail ---\n{transcript}")
