"""SPECIAL-USE mailboxes (RFC 6154) for an upstream without them: the attributes a ``* LIST`` or
``* LSUB`` response gets from a map of mailbox names.

A name matches case-insensitively, as it is or under ``INBOX`` and the line's hierarchy
delimiter (Courier's ``INBOX.Trash``). An attribute the mailbox has already is never added again,
nor any to a mailbox that has a special-use attribute of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

from . import responses

# The attributes of RFC 6154, and the names each is given by default.
DEFAULT_MAP: Mapping[str, tuple[str, ...]] = {
    "Trash": ("Trash", "Deleted Items", "Deleted Messages"),
    "Sent": ("Sent", "Sent Items", "Sent Messages"),
    "Drafts": ("Drafts",),
    "Junk": ("Junk", "Spam", "Junk E-mail"),
    "Archive": ("Archive",),
}
ATTRIBUTES = ("All", "Archive", "Drafts", "Flagged", "Junk", "Sent", "Trash")
_ATTRIBUTES_UPPER = frozenset(b"\\" + name.upper().encode() for name in ATTRIBUTES)

# The map as sessions use it: (upper-cased name, attribute) pairs; empty: the feature is off.
Names = tuple[tuple[bytes, bytes], ...]


def names(mapping: Mapping[str, Sequence[str]]) -> Names:
    """The pairs of a map of attribute (``"Trash"``) to mailbox names."""
    return tuple(
        (name.upper().encode(), b"\\" + attribute.encode())
        for attribute, mailbox_names in mapping.items()
        for name in mailbox_names
    )


DEFAULT_NAMES = names(DEFAULT_MAP)


@lru_cache(maxsize=16)
def _lookup(pairs: Names) -> dict[bytes, bytes]:
    return dict(pairs)


def annotate(line: bytes, pairs: Names) -> bytes:
    """``line`` with the special-use attribute its mailbox has in ``pairs``, if any."""
    found = responses.listing(line)
    if found is None:
        return line
    (start, end), delimiter, name = found
    lookup = _lookup(pairs)
    upper = name.upper()
    attribute = lookup.get(upper)
    if attribute is None and delimiter and upper.startswith(b"INBOX" + delimiter.upper()):
        attribute = lookup.get(upper[6:])
    if attribute is None:
        return line
    attributes = line[start:end]
    if any(a.upper() in _ATTRIBUTES_UPPER for a in attributes.split()):
        return line
    return line[:start] + (attributes + b" " if attributes else b"") + attribute + line[end:]


# The LIST-EXTENDED forms (RFC 5258) that ask for special-use mailboxes: the selection option
# ``LIST (SPECIAL-USE) ref pattern`` and the return option ``LIST ref pattern RETURN
# (SPECIAL-USE)``, each a reference and one pattern, quoted or atoms, and no other option.
_ASTRING = rb'(?:"(?:[^"\\\r\n]|\\.)*"|[^ "(){}\r\n]+)'
_EXTENDED_LIST_RE = re.compile(
    rb" (\(SPECIAL-USE\) )?(" + _ASTRING + rb" " + _ASTRING + rb")( RETURN \(SPECIAL-USE\))?\r\n$",
    re.IGNORECASE,
)


def plain_list(line: bytes, args_offset: int, list_extended: bool) -> tuple[bytes, bool] | None:
    """A client's LIST line asking for special-use mailboxes, as the proxy sends it to an upstream
    without SPECIAL-USE: the plain LIST, and whether only special-use mailboxes are to be kept
    (the selection option). None: the line goes as it is (an upstream with LIST-EXTENDED
    answers a return option itself, the proxy adding the attributes)."""
    match = _EXTENDED_LIST_RE.match(line, args_offset)
    if match is None:
        return None
    selection = match.group(1) is not None
    if not selection and (match.group(3) is None or list_extended):
        return None
    return line[:args_offset] + b" " + match.group(2) + b"\r\n", selection


def special(line: bytes) -> bool:
    """Whether a (annotated) LIST line names a special-use attribute."""
    found = responses.listing(line)
    if found is None:
        return False
    (start, end), _, _ = found
    return any(a.upper() in _ATTRIBUTES_UPPER for a in line[start:end].split())
