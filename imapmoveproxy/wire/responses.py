"""What an upstream response is: every pattern the proxy recognises responses by, in one place.

Sans-IO and policy-free: each function looks at one response line (or, for the relay's fast
path, at a buffer of whole lines) and says what it is; the session, the MOVE emulation and the
rollback decide what to do about it. Capability lists are found by :mod:`.capabilities`.
"""

from __future__ import annotations

import re

from .grammar import NumberSet, line_body

# ---------------------------------------------------------------------- the relay's fast path

_NOT_UNTAGGED = re.compile(rb"\n[^*]")
_EXPUNGE_LINE = re.compile(rb"\* \d+ EXPUNGE\r\n")
_NOT_EXPUNGE = re.compile(rb"\n(?!\* \d+ EXPUNGE\r\n)")
# Inside a line, what makes the session look at it by itself: a literal announcement, a response
# code (capabilities, UIDVALIDITY, READ-ONLY...), BYE, EXISTS, RECENT, EXPUNGE (counted, in
# runs of their own: :func:`first_non_expunge`), imap4d's EXPUNGED (rewritten) and (at a line
# start) CAPABILITY.
_LOOK_AT = (
    b"}\r\n", b"}\n", b"[", b"* BYE", b" EXISTS\r\n", b" RECENT\r\n", b" EXPUNGE\r\n",
    b" EXPUNGED\r\n", b"\n* C", b"\n* c",
)  # fmt: skip


def first_stop_listing(buf: bytes | bytearray, start: int) -> int:
    """:func:`first_stop`, and also at ``* LIST`` / ``* LSUB`` (upper case, as every server tested
    sends them): the fast path while the proxy adds special-use attributes to them."""
    if buf[start : start + 7] in _LISTING:
        return start
    stop = first_stop(buf, start)
    for needle in (b"\n* LIST ", b"\n* LSUB "):
        found = buf.find(needle, start, stop)
        if found >= 0:
            stop = found + 1
    return stop


_LISTING = (b"* LIST ", b"* LSUB ")


def first_non_expunge(buf: bytes | bytearray, start: int) -> int:
    """Where the first line that is not ``* n EXPUNGE`` lies (``len(buf)``: none)."""
    if not _EXPUNGE_LINE.match(buf, start):
        return start
    match = _NOT_EXPUNGE.search(buf, start)
    return len(buf) if match is None else match.start() + 1


def first_stop(buf: bytes | bytearray, start: int) -> int:
    """Where the first line the session must see alone begins or lies (``len(buf)``: none).

    A run of plain untagged responses (a FETCH flood, say) is relayed in one piece; found with
    a few ``bytes.find`` calls, this costs far less than looking at each line in Python.
    """
    if buf[start : start + 1] != b"*" or buf[start : start + 3] in (b"* C", b"* c"):
        return start
    stop = len(buf)
    match = _NOT_UNTAGGED.search(buf, start, stop)
    if match is not None:
        stop = match.start() + 1
    for needle in _LOOK_AT:
        found = buf.find(needle, start, stop)
        if found >= 0:
            stop = found
    return stop


# ---------------------------------------------------------------------- one response line


def _group(match: re.Match[bytes] | None) -> bytes | None:
    """A pattern's first group, if it matched."""
    return match.group(1) if match else None


# The counts the proxy keeps track of are recognised in the one form the relay's fast path stops
# at (:data:`_LOOK_AT`), upper case and ending in CRLF, as every server tested sends them: a line
# in another form is relayed untouched and counted nowhere, with or without a MOVE running.
_EXPUNGED_RE = re.compile(rb"\* (\d+) EXPUNGED\r\n$")
_UIDVALIDITY_RE = re.compile(rb"\* OK \[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_COUNT_RE = re.compile(rb"\* (\d+) (EXISTS|RECENT)\r\n$")
_SEARCH_RE = re.compile(rb"\* (?:E?SEARCH)\b", re.IGNORECASE)
_ONLY_UID_RE = re.compile(rb"\* \d+ FETCH \((?:UID \d+|MODSEQ \(\d+\)| )+\)\r?\n$", re.IGNORECASE)
_CAPABILITY_UNTAGGED_RE = re.compile(rb"\* CAPABILITY ", re.IGNORECASE)
_EXPUNGE_RE = re.compile(rb"\* \d+ EXPUNGE\r\n$")
_VANISHED_RE = re.compile(rb"\* VANISHED ([0-9:,]+)\r?\n$", re.IGNORECASE)
_MYRIGHTS_RE = re.compile(rb"\* MYRIGHTS ", re.IGNORECASE)
_DELETED_FLAG_RE = re.compile(rb"FLAGS \([^)]*\\Deleted", re.IGNORECASE)
_ESEARCH_TAG_RE = re.compile(rb'\* ESEARCH \(TAG "([^"]*)"\)', re.IGNORECASE)
_ESEARCH_ALL_RE = re.compile(rb" ALL ([0-9:,]+)", re.IGNORECASE)
_UNTAGGED_FETCH_RE = re.compile(rb"\* (\d+) FETCH \(", re.IGNORECASE)
_FETCH_UID_RE = re.compile(rb"[( ]UID (\d+)", re.IGNORECASE)
_ANY_FETCH_UID_RE = re.compile(rb"\* \d+ FETCH \(.*UID (\d+)", re.IGNORECASE)


def expunged_number(line: bytes) -> bytes | None:
    """The message number of imap4d's non-standard ``* n EXPUNGED`` (None: not one)."""
    return _group(_EXPUNGED_RE.match(line))


def uidvalidity(line: bytes) -> bytes | None:
    """The UIDVALIDITY a ``* OK [UIDVALIDITY n]`` response gives."""
    return _group(_UIDVALIDITY_RE.match(line))


def count(line: bytes) -> tuple[int, bool] | None:
    """An EXISTS (``True``) or RECENT (``False``) response's number."""
    match = _COUNT_RE.match(line)
    return None if match is None else (int(match.group(1)), match.group(2).upper() == b"EXISTS")


def is_search(line: bytes) -> bool:
    """A SEARCH or ESEARCH response."""
    return _SEARCH_RE.match(line) is not None


def search_tag(line: bytes) -> bytes | None:
    """The command tag an ESEARCH response names (None for a plain SEARCH response)."""
    return _group(_ESEARCH_TAG_RE.match(line))


def search_set(line: bytes) -> NumberSet:
    """UIDs from ``* SEARCH 1 2 3`` or ``* ESEARCH (TAG "x") UID ALL 1:3``, unexpanded."""
    body = line_body(line)
    if body[2:9].upper() == b"ESEARCH":
        match = _ESEARCH_ALL_RE.search(body)
        return NumberSet.parse(match.group(1)) if match else NumberSet()
    return NumberSet.of(int(word) for word in body.split()[2:] if word.isdigit())


def is_capability(line: bytes) -> bool:
    """An untagged CAPABILITY response."""
    return _CAPABILITY_UNTAGGED_RE.match(line) is not None


def myrights(line: bytes) -> bytes | None:
    """The rights a ``* MYRIGHTS mailbox rights`` response gives."""
    return line_body(line).rsplit(b" ", 1)[-1] if _MYRIGHTS_RE.match(line) else None


def fetch_uid(line: bytes) -> int | None:
    """The UID item of an untagged FETCH response line, if the line is one and has it."""
    if _UNTAGGED_FETCH_RE.match(line) is None:
        return None
    match = _FETCH_UID_RE.search(line)
    return int(match.group(1)) if match else None


def last_fetch_uid(line: bytes) -> int | None:
    """The last ``UID n`` of an untagged FETCH response line (the rollback's reading)."""
    match = _ANY_FETCH_UID_RE.match(line)
    return int(match.group(1)) if match else None


def only_uid(line: bytes) -> bool:
    """A FETCH response carrying nothing but the UID (and MODSEQ): the answer to ``(UID)``."""
    return _ONLY_UID_RE.match(line) is not None


def flagged_deleted(line: bytes) -> bool:
    """A FETCH response whose FLAGS hold ``\\Deleted``."""
    return _DELETED_FLAG_RE.search(line) is not None


def expunge_number(line: bytes) -> int | None:
    """The message number of ``* n EXPUNGE`` (None: not one)."""
    return int(line.split(b" ", 2)[1]) if _EXPUNGE_RE.match(line) else None


def expunge_count(line: bytes) -> int:
    """How many messages an EXPUNGE or (not EARLIER) VANISHED response removes."""
    if _EXPUNGE_RE.match(line):
        return 1
    match = _VANISHED_RE.match(line)
    return NumberSet.parse(match.group(1)).size if match else 0


# ---------------------------------------------------------------------- what a response holds

_FLAGS_RE = re.compile(rb"[ (]FLAGS \(([^)]*)\)", re.IGNORECASE)
_DATE_RE = re.compile(rb'[ (]INTERNALDATE "([^"\r\n]*)"', re.IGNORECASE)
_STATUS_RE = re.compile(rb"\* STATUS ", re.IGNORECASE)
_STATUS_ITEM_RE = re.compile(rb"[ (](UIDNEXT|UIDVALIDITY|MESSAGES) (\d+)", re.IGNORECASE)
_PERMANENT_RE = re.compile(rb"\* OK \[PERMANENTFLAGS \(([^)]*)\)", re.IGNORECASE)
_FLAG_ATOM_RE = re.compile(rb"\\?[!#$&'+\-.0-9:;<=>?@A-Z^_`a-z|}~]+")
_NAMESPACE_RE = re.compile(rb'\* NAMESPACE \(\("((?:[^"\\]|\\.)*)" (?:"((?:[^"\\]|\\.)*)"|NIL)')
_SUBJECT_RE = re.compile(rb"Subject: ([^\r\n]*)", re.IGNORECASE)
_REMOVAL_RE = re.compile(rb"\* (?:\d+ EXPUNGE(?:\r?\n)?$|VANISHED )", re.IGNORECASE)


def flags(line: bytes) -> frozenset[bytes] | None:
    """The FLAGS item of a FETCH response (None: it has none)."""
    match = _FLAGS_RE.search(line)
    return frozenset(match.group(1).split()) if match else None


def internal_date(line: bytes) -> bytes | None:
    """The INTERNALDATE item of a FETCH response, unquoted."""
    return _group(_DATE_RE.search(line))


def status_counts(line: bytes) -> dict[bytes, bytes] | None:
    """UIDNEXT, UIDVALIDITY and MESSAGES (upper-cased names) of a STATUS response, those it
    gives (None: not a STATUS response)."""
    if not _STATUS_RE.match(line):
        return None
    return {name.upper(): value for name, value in _STATUS_ITEM_RE.findall(line)}


def permanent_flags(line: bytes) -> frozenset[bytes] | None:
    """The flags of a ``* OK [PERMANENTFLAGS (...)]`` response, lower-cased."""
    match = _PERMANENT_RE.match(line)
    return frozenset(match.group(1).lower().split()) if match else None


def sendable_flag(flag: bytes) -> bool:
    """Whether a flag as a response named it can be sent back as it is, an atom."""
    return _FLAG_ATOM_RE.fullmatch(flag) is not None


def personal_namespace(line: bytes) -> bytes | None:
    """The prefix of the first personal namespace a NAMESPACE response names."""
    return _group(_NAMESPACE_RE.match(line))


def subject(response: bytes) -> bytes | None:
    """The Subject header field's value in a FETCH response of header fields."""
    return _group(_SUBJECT_RE.search(response))


def removes(line: bytes) -> bool:
    """An EXPUNGE or a VANISHED response (with its terminator or without)."""
    return _REMOVAL_RE.match(line) is not None


# A LIST or LSUB response whose name is on the line (a name sent as a literal is left as it is):
# its attributes, its hierarchy delimiter and its name, quoted or an atom.
_LISTING_RE = re.compile(
    rb'\* (?:LIST|LSUB) \(([^)]*)\) (NIL|"(?:[^"\\]|\\.)") ("(?:[^"\\]|\\.)*"|[^ "{()\r\n]+)'
    rb"(?: \(.*\))?\r\n$",
    re.IGNORECASE,
)


def listing(line: bytes) -> tuple[tuple[int, int], bytes | None, bytes] | None:
    """A ``* LIST`` / ``* LSUB`` line: the span of its attributes, its delimiter (None: NIL) and
    its mailbox name unquoted; None: not one, or its name is a literal."""
    match = _LISTING_RE.match(line)
    if match is None:
        return None
    delimiter, name = match.group(2), match.group(3)
    if name[:1] == b'"':
        name = re.sub(rb"\\(.)", rb"\1", name[1:-1])
    return match.span(1), None if delimiter.upper() == b"NIL" else delimiter[1:-1][-1:], name
