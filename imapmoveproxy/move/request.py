"""A client's MOVE as the proxy reads it, the policy that handles it, and the framing of the
astring arguments of the proxy's own upstream commands (literals where a value needs one)."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..wire.capabilities import Capabilities
from ..wire.commands import UpstreamCommand
from ..wire.grammar import (
    SyntaxProblem,
    encode_astring,
    is_sequence_set,
    line_body,
    parse_command_start,
    parse_quoted,
)


@dataclass(slots=True, frozen=True)
class MoveRequest:
    """A client's MOVE or UID MOVE, complete and parsed (``error`` set if its syntax is bad)."""

    tag: bytes
    uid: bool
    sequence_set: bytes = b""
    mailbox: bytes = b""
    error: bytes | None = None


def parse_move(command: bytes, literal: bytes | None, tail: bytes) -> MoveRequest:
    """Parse a MOVE whose first line is ``command``.

    If the mailbox came as a literal, ``literal`` holds its bytes and ``tail`` the line that
    followed it; otherwise ``literal`` is ``None`` and the whole command is in ``command``.

    Extra spaces between and after the arguments are accepted, as native Dovecot does: they
    leave no doubt about the set or the mailbox. Anything else after the mailbox name is
    refused (Dovecot ignores it, but ``MOVE 1 Sent Items`` may well mean "Sent Items"), and
    every refusal says what is wrong.
    """
    start = parse_command_start(command)
    if start is None:  # the session only calls this for lines it recognised as MOVE
        raise ValueError("not a command line")
    uid = start.name.startswith(b"UID ")
    body = line_body(command)
    try:
        sequence_set, _, mailbox_text = body[start.args_offset :].lstrip(b" ").partition(b" ")
        mailbox_text = mailbox_text.lstrip(b" ")
        if not sequence_set:
            raise SyntaxProblem("missing sequence set and mailbox name")
        if not is_sequence_set(sequence_set):
            raise SyntaxProblem(f"invalid sequence set {_shown(sequence_set)}")
        if not mailbox_text:
            raise SyntaxProblem("missing mailbox name")
        if literal is not None:
            if not re.fullmatch(rb"\{\d+[+-]?\}", mailbox_text.lstrip(b"~")):
                raise SyntaxProblem(f"invalid mailbox literal {_shown(mailbox_text)}")
            _nothing_after(line_body(tail))
            mailbox = literal
        elif mailbox_text.startswith(b'"'):
            mailbox, end = parse_quoted(mailbox_text, 0)
            _nothing_after(mailbox_text[end:])
        else:
            mailbox, _, after = mailbox_text.partition(b" ")
            bad = next((b for b in mailbox if not 0x20 < b < 0x7F or b in b'(){%*"\\'), None)
            if bad is not None:
                raise SyntaxProblem(
                    f"invalid character {_shown(bytes([bad]))} in mailbox name "
                    f"{_shown(mailbox)} (a quoted string or a literal may hold it)"
                )
            _nothing_after(after)
    except SyntaxProblem as problem:
        name = start.name.decode()
        return MoveRequest(
            start.tag, uid, error=f"Error in IMAP command {name}: {problem}".encode()
        )
    return MoveRequest(start.tag, uid, sequence_set, mailbox)


def _nothing_after(rest: bytes) -> None:
    """Refuse what follows a MOVE's mailbox name, unless it is only spaces."""
    extra = rest.strip(b" ")
    if extra:
        raise SyntaxProblem(f"unexpected {_shown(extra)} after the mailbox name")


def _shown(text: bytes, limit: int = 40) -> str:
    """``text`` for an error message: quoted, shortened, non-printable bytes escaped."""
    shown = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in text[:limit])
    return f'"{shown}"' + ("..." if len(text) > limit else "")


def astring_segments(prefix: bytes, values: Sequence[bytes], caps: Capabilities) -> UpstreamCommand:
    """``prefix``, then ``values`` as astrings separated by spaces, then CRLF, framed for this
    upstream.

    No byte of a value can end the command line: values with CR, LF, NUL or 8-bit bytes go as
    literals, non-synchronizing where the upstream allows it (LITERAL+, or LITERAL- up to 4096
    bytes), otherwise synchronizing, in which case the caller waits for "+" between segments.
    """
    segments: list[bytes] = []
    current = prefix
    for index, value in enumerate(values):
        current += b" " if index else b""
        inline, literal = encode_astring(value)
        if literal is None:
            current += inline
        elif caps.literal_plus or (caps.literal_minus and len(literal) <= 4096):
            current += b"{%d+}\r\n" % len(literal) + literal
        else:
            segments.append(current + b"{%d}\r\n" % len(literal))
            current = literal
    segments.append(current + b"\r\n")
    return segments


def status_command(mailbox: bytes, caps: Capabilities) -> UpstreamCommand:
    """``STATUS mailbox (UIDNEXT UIDVALIDITY MESSAGES)``: a target before its COPY."""
    segments = astring_segments(b"STATUS ", [mailbox], caps)
    segments[-1] = segments[-1][:-2] + b" (UIDNEXT UIDVALIDITY MESSAGES)\r\n"
    return segments


@dataclass(slots=True, frozen=True)
class RollbackRequest:
    """Copies in the target of messages a failed MOVE left in the source: a second session of
    the same user removes them (the client's session cannot select the target)."""

    mailbox: bytes
    uidvalidity: bytes  # of the target, from COPYUID: the copies are only removed if it holds
    uids: tuple[int, ...]  # the copies' UIDs in the target
    sources: tuple[int, ...]  # the UIDs in the source of the messages they are copies of


class Policy(enum.Enum):
    """How a MOVE is handled, named in logs and metrics."""

    NATIVE = "native"  # the upstream has MOVE: passed through
    UIDPLUS = "uidplus"  # COPY, UID STORE, UID EXPUNGE
    GUARDED = "guarded"  # no UIDPLUS: RFC 4315 §2.1 workaround around a plain EXPUNGE
    REFUSED = "refused"  # no UIDPLUS and the guarded policy is off: passed through

    @property
    def emulated(self) -> bool:
        """The proxy emulates MOVE (and advertises it) under this policy."""
        return self in (Policy.UIDPLUS, Policy.GUARDED)


def policy_for(caps: Capabilities, guarded: bool) -> Policy:
    """How MOVE is handled in front of an upstream with ``caps`` (``guarded``: the
    ``no_uidplus = "guarded"`` setting)."""
    if caps.native_move:
        return Policy.NATIVE
    if caps.uidplus:
        return Policy.UIDPLUS
    return Policy.GUARDED if guarded else Policy.REFUSED
