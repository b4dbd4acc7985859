"""Capability lists: what the upstream offers, and what the proxy shows the client instead.

Capabilities appear in three places (the greeting's response code, ``* CAPABILITY`` and the tagged
OK of LOGIN/AUTHENTICATE); all of them go through :func:`rewrite_line`. Names are compared
case-insensitively and otherwise left exactly as the upstream spelled them.

The upstream's STARTTLS and LOGINDISABLED are about the proxy's connection to it, never the
client's: they are always removed, and the session adds its own where the proxy offers TLS.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_CAPABILITY_RE = re.compile(
    rb"(?:\* CAPABILITY |[^ ]+ (?:OK|NO|BAD|PREAUTH|BYE) \[CAPABILITY )([^\]\r\n]*)", re.IGNORECASE
)


_MOST_LISTS = 256  # distinct capability lists kept parsed (an upstream has a handful)


def _listed_or_rev2(name: bytes) -> property:
    """A capability that is listed, or implied by IMAP4rev2 (which includes it)."""
    return property(lambda caps: name in caps.names or b"IMAP4REV2" in caps.names)


@dataclass(slots=True, frozen=True)
class Capabilities:
    """An upstream capability list, upper-cased for comparison."""

    names: frozenset[bytes]

    @classmethod
    def parse(cls, text: bytes) -> Capabilities:
        """The list ``text`` names: one object per distinct list, shared by every session of
        an upstream (a list of 30 names costs each idle connection 3.7 KiB otherwise)."""
        caps = _PARSED.get(text)
        if caps is None:
            if len(_PARSED) >= _MOST_LISTS:
                _PARSED.clear()
            caps = _PARSED[text] = cls(frozenset(name.upper() for name in text.split()))
        return caps

    native_move = _listed_or_rev2(b"MOVE")
    uidplus = _listed_or_rev2(b"UIDPLUS")
    literal_minus = _listed_or_rev2(b"LITERAL-")
    esearch = _listed_or_rev2(b"ESEARCH")

    @property
    def literal_plus(self) -> bool:
        return b"LITERAL+" in self.names


_PARSED: dict[bytes, Capabilities] = {}


def _hidden(name: bytes) -> bool:
    """Capabilities a terminating proxy cannot honour."""
    upper = name.upper()
    return (
        upper.startswith(b"COMPRESS=")  # would compress past the proxy's parser
        or (upper.startswith(b"AUTH=") and upper.endswith(b"-PLUS"))  # channel binding
        or upper in (b"STARTTLS", b"LOGINDISABLED")  # about the upstream's TLS, not the client's
    )


# What to add to an upstream list: the session decides (MOVE; the proxy's own STARTTLS...).
Additions = Callable[["Capabilities"], Sequence[bytes]]


def rewrite_names(text: bytes, add: Sequence[bytes]) -> bytes:
    """The capability list shown to the client for the upstream's list ``text``."""
    names = [name for name in text.split() if not _hidden(name)]
    present = {name.upper() for name in names}
    return b" ".join(names + [name for name in add if name not in present])


def find_list(line: bytes) -> tuple[int, int] | None:
    """Byte span of the capability names in ``line``, if it carries a capability list."""
    match = _CAPABILITY_RE.match(line)
    return None if match is None else match.span(1)


def rewrite_line(line: bytes, additions: Additions) -> tuple[bytes, Capabilities | None]:
    """Rewrite the capability list in ``line``; return the new line and the upstream's list."""
    span = find_list(line)
    if span is None:
        return line, None
    start, end = span
    original = line[start:end]
    upstream = Capabilities.parse(original)
    return line[:start] + rewrite_names(original, additions(upstream)) + line[end:], upstream
