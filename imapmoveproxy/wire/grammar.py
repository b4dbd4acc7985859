"""The little IMAP grammar the proxy needs: tags, command names, astrings, sets, response codes.

Everything here works on complete lines (bytes, terminator included) and knows nothing of
connections. Anything the proxy does not need to understand is never parsed at all.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# ATOM-CHAR: any CHAR except atom-specials (RFC 3501 §9): ( ) { SP CTL % * " \ ]
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')
# The same as regular expression classes: ATOM-CHAR, and a tag's characters (ATOM-CHAR but "+").
_ATOM_CHARS = re.escape(bytes(b for b in range(0x21, 0x7F) if b not in _ATOM_SPECIALS))
_TAG_CHARS = re.escape(bytes(b for b in range(0x21, 0x7F) if b not in _ATOM_SPECIALS | {0x2B}))
MAX_TAG = 100
_TAG_RE_FULL = re.compile(rb"[%s]{1,%d}" % (_TAG_CHARS, MAX_TAG))
_WORD_RE = re.compile(rb"[%s]*" % _ATOM_CHARS)
# A command's tag and the word after it.
_COMMAND_START_RE = re.compile(rb"([%s]{1,%d}) ([%s]+)" % (_TAG_CHARS, MAX_TAG, _ATOM_CHARS))


def is_atom_char(byte: int) -> bool:
    return 0x20 < byte < 0x7F and byte not in _ATOM_SPECIALS


def is_tag(tag: bytes) -> bool:
    """A tag the proxy accepts: atom characters but "+", at most 100 bytes.

    The grammar (1*<ASTRING-CHAR except "+">) also allows "]" and any length, but Dovecot answers
    a tag with "]", or one over 126 bytes before login, with an untagged BAD: the proxy could not
    pair that reply with its command. Refused here, such a command gets the same untagged BAD.
    """
    return _TAG_RE_FULL.fullmatch(tag) is not None


@dataclass(slots=True, frozen=True)
class CommandStart:
    """What the proxy reads off the first line of a client command."""

    tag: bytes
    name: bytes  # upper-cased; for "UID xxx" it is b"UID XXX"
    args_offset: int  # index in the line where the arguments after ``name`` start


def parse_command_start(line: bytes) -> CommandStart | None:
    """Tag and command name of a client command line, or ``None`` if the line has neither.

    On every command's path: one regular expression, no loop over the line in Python."""
    match = _COMMAND_START_RE.match(line)
    if match is None:
        return None
    tag, name = match.group(1, 2)
    name = name.upper()
    offset = match.end()
    if name == b"UID":
        sub = _WORD_RE.match(line, offset + 1) if line[offset : offset + 1] == b" " else None
        if sub is None or sub.end() == offset + 1:
            return None
        return CommandStart(tag, b"UID " + sub.group().upper(), sub.end())
    return CommandStart(tag, name, offset)


def line_body(line: bytes) -> bytes:
    """The line without its CRLF (or bare LF) terminator."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


# --------------------------------------------------------------------------- sequence sets

_SEQ_NUMBER = rb"(?:[1-9][0-9]{0,9}|\*)"
_SEQ_SET_RE = re.compile(
    rb"(?:\$|"
    + _SEQ_NUMBER
    + rb"(?::"
    + _SEQ_NUMBER
    + rb")?(?:,"
    + _SEQ_NUMBER
    + rb"(?::"
    + _SEQ_NUMBER
    + rb")?)*)"
)


def is_sequence_set(text: bytes) -> bool:
    """RFC 3501 sequence-set, or "$" (SEARCHRES, RFC 5182)."""
    return _SEQ_SET_RE.fullmatch(text) is not None


def set_size(text: bytes) -> int | None:
    """How many numbers a sequence set names at most; ``None`` if it uses ``*`` or ``$``."""
    if b"*" in text or b"$" in text:
        return None
    total = 0
    for part in text.split(b","):
        low, _, high = part.partition(b":")
        total += abs(int(high or low) - int(low)) + 1
    return total


_BEYOND = 1 << 32  # larger than any sequence number or UID (both are 32-bit)


@dataclass(slots=True, frozen=True)
class NumberSet:
    """A set of message numbers kept as sorted, disjoint ranges: ``1:1500000`` stays small."""

    ranges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, text: bytes, star: int | None = None) -> NumberSet:
        """The numbers a sequence set (or a set from a response, without ``*``) names.

        ``*`` stands for ``star``, the largest number in use (RFC 3501 §9: ``7:*`` with 5 in use
        is ``5:7``); ``None`` means it is not known, and ``*`` covers every number up.
        ``$`` and malformed sets raise :class:`ValueError`.
        """
        top = _BEYOND if star is None else star
        pairs = []
        for part in text.split(b","):
            low, _, high = part.partition(b":")
            first = top if low == b"*" else int(low)
            last = first if not high else (top if high == b"*" else int(high))
            pairs.append((min(first, last), max(first, last)))
        return cls.of_ranges(pairs)

    @classmethod
    def of(cls, numbers: Iterable[int]) -> NumberSet:
        return cls.of_ranges((number, number) for number in numbers)

    @classmethod
    def of_ranges(cls, pairs: Iterable[tuple[int, int]]) -> NumberSet:
        merged: list[tuple[int, int]] = []
        for low, high in sorted(pairs):
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        return cls(tuple(merged))

    def __or__(self, other: NumberSet) -> NumberSet:
        return NumberSet.of_ranges(self.ranges + other.ranges)

    def __sub__(self, other: NumberSet) -> NumberSet:
        left: list[tuple[int, int]] = []
        others, start = other.ranges, 0
        for low, high in self.ranges:
            while start < len(others) and others[start][1] < low:
                start += 1
            index = start
            while low <= high:
                if index >= len(others) or others[index][0] > high:
                    left.append((low, high))
                    break
                if others[index][0] > low:
                    left.append((low, others[index][0] - 1))
                low = max(low, others[index][1] + 1)
                index += 1
        return NumberSet(tuple(left))

    def __and__(self, other: NumberSet) -> NumberSet:
        return self - (self - other)

    def text(self, most: int = 10) -> str:
        """The first ``most`` ranges as a set, for messages."""
        parts = [f"{low}" if low == high else f"{low}:{high}" for low, high in self.ranges]
        return ",".join(parts[:most]) + (",..." if len(parts) > most else "")

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int):
            return False
        index = bisect_right(self.ranges, number, key=lambda pair: pair[0]) - 1
        return index >= 0 and self.ranges[index][1] >= number

    def __iter__(self) -> Iterator[int]:
        for low, high in self.ranges:
            yield from range(low, high + 1)

    @property
    def size(self) -> int:
        return sum(high - low + 1 for low, high in self.ranges)

    @property
    def highest(self) -> int | None:
        return self.ranges[-1][1] if self.ranges else None


def expand_uid_set(text: bytes, limit: int = 1_000_000) -> list[int]:
    """Expand a set of plain numbers (no ``*``), as in COPYUID, into an ordered list."""
    numbers: list[int] = []
    for part in text.split(b","):
        low, _, high = part.partition(b":")
        first = int(low)
        last = int(high) if high else first
        step = 1 if last >= first else -1
        if len(numbers) + abs(last - first) + 1 > limit:
            raise ValueError("set too large")
        numbers.extend(range(first, last + step, step))
    return numbers


def compress_uids(uids: list[int]) -> list[bytes]:
    """Sorted, de-duplicated ranges ``b"a:b"`` / ``b"a"`` covering exactly ``uids``."""
    parts: list[bytes] = []
    ordered = sorted(set(uids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(b"%d" % ordered[i] if i == j else b"%d:%d" % (ordered[i], ordered[j]))
        i = j + 1
    return parts


def chunk_set(parts: list[bytes], max_bytes: int) -> list[bytes]:
    """Join set parts with commas into sets of at most ``max_bytes`` bytes each."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for part in parts:
        if current and size + 1 + len(part) > max_bytes:
            chunks.append(b",".join(current))
            current, size = [], 0
        size += len(part) + (1 if current else 0)
        current.append(part)
    if current:
        chunks.append(b",".join(current))
    return chunks


# --------------------------------------------------------------------------- strings


class SyntaxProblem(ValueError):
    """The client's arguments do not follow the grammar; the text goes into a BAD reply."""


def parse_quoted(text: bytes, start: int) -> tuple[bytes, int]:
    """Decode a quoted string starting at ``text[start] == '"'``; return (value, end index)."""
    out = bytearray()
    i = start + 1
    while i < len(text):
        byte = text[i]
        if byte == 0x22:  # closing quote
            return bytes(out), i + 1
        if byte == 0x5C:  # backslash: only \" and \\ are allowed
            if i + 1 >= len(text) or text[i + 1] not in (0x22, 0x5C):
                raise SyntaxProblem("invalid escape in quoted string")
            out.append(text[i + 1])
            i += 2
            continue
        if byte in (0x0D, 0x0A, 0x00):
            raise SyntaxProblem("invalid character in quoted string")
        out.append(byte)
        i += 1
    raise SyntaxProblem("unterminated quoted string")


_LITERAL_RE = re.compile(rb"~?\{(\d{1,9})\+?\}\r?\n")


def parse_astring(text: bytes, start: int) -> tuple[bytes, int]:
    """Decode the astring at ``text[start]``: an atom, a quoted string, or a literal whose bytes
    follow its ``{n}`` and line end in ``text``; return (value, end index)."""
    if text[start : start + 1] == b'"':
        return parse_quoted(text, start)
    literal = _LITERAL_RE.match(text, start)
    if literal is not None:
        end = literal.end() + int(literal.group(1))
        if end > len(text):
            raise SyntaxProblem("literal shorter than announced")
        return text[literal.end() : end], end
    end = start
    while end < len(text) and (is_atom_char(text[end]) or text[end] == 0x5D):
        end += 1
    if end == start:
        raise SyntaxProblem("missing astring")
    return text[start:end], end


def encode_astring(value: bytes) -> tuple[bytes, bytes | None]:
    """How to send ``value`` as an astring: ``(inline, None)`` or ``(b"", literal)``.

    A value that cannot be sent as a quoted string (CR, LF, NUL or 8-bit bytes) must go as a
    literal, which the caller frames for the upstream's LITERAL+ support.
    """
    if value and all(is_atom_char(b) or b == 0x5D for b in value):
        return value, None
    if all(0x01 <= b <= 0x7F and b not in (0x0A, 0x0D) for b in value):
        escaped = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + escaped + b'"', None
    return b"", value


# --------------------------------------------------------------------------- responses


@dataclass(slots=True, frozen=True)
class Tagged:
    """A tagged status response: ``tag OK|NO|BAD [code] text``."""

    tag: bytes
    status: bytes  # b"OK", b"NO" or b"BAD" (upper-cased)
    code: bytes | None  # the response code without brackets, e.g. b"COPYUID 1 2 3"
    text: bytes  # everything after the status word and the space, terminator excluded


def parse_status(line: bytes, start: int) -> tuple[bytes, bytes | None, bytes]:
    """Parse ``STATUS [code] text`` from ``line[start:]`` (terminator excluded)."""
    body = line_body(line)
    space = body.find(b" ", start)
    if space < 0:
        return body[start:].upper(), None, b""
    status = body[start:space].upper()
    rest = body[space + 1 :]
    code = None
    if rest.startswith(b"["):
        close = rest.find(b"]")
        if close > 0:
            code = rest[1:close]
            rest = rest[close + 1 :].lstrip(b" ")
    return status, code, rest


def parse_tagged(line: bytes) -> Tagged | None:
    space = line.find(b" ")
    if space <= 0:
        return None
    status, code, text = parse_status(line, space + 1)
    if status not in (b"OK", b"NO", b"BAD"):
        return None
    return Tagged(line[:space], status, code, text)


def code_name(code: bytes | None) -> bytes:
    """The upper-cased name of a response code (``COPYUID`` of ``COPYUID 1 2 3``)."""
    if not code:
        return b""
    return code.split(b" ", 1)[0].upper()


_ID_TOKEN = re.compile(rb'\s*(\(|\)|NIL|"(?:[^"\\\r\n]|\\.)*")', re.IGNORECASE)
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)


def strip_x_fields(arguments: bytes) -> bytes | None:
    """ID's parameter list without the ``x-`` fields (RFC 2971), or None if it is malformed.

    Only the proxy may say which address a client comes from (x-originating-ip and friends).
    A key is judged by what the server reads: Dovecot turns any backslash-escaped character of
    a quoted string into the character itself (``"x\\-originating-ip"`` is x-originating-ip).
    """
    tokens: list[bytes] = []
    pos = 0
    while pos < len(arguments):
        match = _ID_TOKEN.match(arguments, pos)
        if match is None:
            if arguments[pos:].strip():
                return None
            break
        tokens.append(match.group(1))
        pos = match.end()
    if [t.upper() for t in tokens] == [b"NIL"]:
        return b"NIL"
    if len(tokens) < 2 or tokens[0] != b"(" or tokens[-1] != b")" or len(tokens) % 2:
        return None
    pairs = [(tokens[i], tokens[i + 1]) for i in range(1, len(tokens) - 1, 2)]
    if any(key[:1] != b'"' or b"(" in (key, value) or b")" in (key, value) for key, value in pairs):
        return None
    kept = [
        key + b" " + value
        for key, value in pairs
        if _ESCAPED.sub(rb"\1", key[1:-1])[:2].lower() != b"x-"
    ]
    return b"(" + b" ".join(kept) + b")" if kept else b"NIL"
