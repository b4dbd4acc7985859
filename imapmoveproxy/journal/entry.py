"""One journal entry: a MOVE's chunk as the journal keeps it, and its JSON form.

An entry is written before a chunk's ``UID COPY`` is sent (phase :attr:`Phase.INTENT`) and again
once the COPY's OK is in, before anything is flagged (:attr:`Phase.COPIED`, with the COPYUID
mapping and the messages the user had flagged ``\\Deleted`` already). It is removed once the MOVE
has its tagged reply. It holds the user's name, never a password: recovery runs in the user's
own next session (:mod:`.recovery`).

Mailbox names are bytes on the wire; they are kept as Latin-1 text, which maps every byte to
one character and back. An entry whose form is not exactly this one is never guessed at
(:class:`Unreadable`): mbsync's journal refuses to replay a line it cannot read, and so do we.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from ..wire.grammar import NumberSet, compress_uids

VERSION = 1


class Phase(enum.Enum):
    """How far the chunk got, as far as the journal knows for sure."""

    INTENT = "intent"  # the COPY may have been sent: its answer is unknown
    COPIED = "copied"  # the COPY's OK is in: flags and expunges may have been sent


class Unreadable(ValueError):
    """A stored entry is not in the form this version writes: it is left for an operator."""


@dataclass(slots=True, frozen=True)
class Entry:
    """What recovery needs to finish or undo one chunk of a MOVE."""

    id: str
    user: bytes  # the identity the server accepted (LOGIN's user, AUTHENTICATE's authzid)
    policy: str  # "uidplus" or "guarded": how the originals are expunged
    source: bytes
    source_validity: bytes
    uids: tuple[int, ...]  # the chunk's source UIDs, ascending
    target: bytes
    target_validity: bytes  # before the COPY (b"": the target was empty then)
    target_uidnext: int  # before the COPY: every copy has a UID from there on
    created: float  # seconds since the epoch
    phase: Phase = Phase.INTENT
    user_deleted: frozenset[int] = frozenset()  # COPIED: flagged \Deleted by the user before
    copies: dict[int, int] = field(default_factory=dict)  # COPIED: source UID -> copy (COPYUID)
    # COPIED, guarded: source UID -> (INTERNALDATE, flags) before the COPY (imap4d's drops them)
    originals: dict[int, tuple[bytes, tuple[bytes, ...]]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": VERSION,
                "id": self.id,
                "user": self.user.decode("latin-1"),
                "policy": self.policy,
                "source": self.source.decode("latin-1"),
                "source_validity": self.source_validity.decode("ascii"),
                "uids": _set_text(self.uids),
                "target": self.target.decode("latin-1"),
                "target_validity": self.target_validity.decode("ascii"),
                "target_uidnext": self.target_uidnext,
                "created": self.created,
                "phase": self.phase.value,
                "user_deleted": _set_text(self.user_deleted),
                "copies": [[source, copy] for source, copy in sorted(self.copies.items())],
                "originals": [
                    [uid, date.decode("latin-1"), [flag.decode("latin-1") for flag in flags]]
                    for uid, (date, flags) in sorted(self.originals.items())
                ],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Entry:
        """The entry ``text`` holds; :class:`Unreadable` if it is not exactly this form."""
        try:
            data = json.loads(text)
            if data.pop("v") != VERSION or set(data) != _FIELDS:
                raise Unreadable(f"unknown entry form: {sorted(data)}")
            return cls(
                id=_str(data["id"]),
                user=_str(data["user"]).encode("latin-1"),
                policy=_choice(data["policy"], ("uidplus", "guarded")),
                source=_str(data["source"]).encode("latin-1"),
                source_validity=_digits(data["source_validity"]),
                uids=_uid_set(data["uids"]),
                target=_str(data["target"]).encode("latin-1"),
                target_validity=_digits(data["target_validity"], empty=True),
                target_uidnext=_int(data["target_uidnext"]),
                created=float(data["created"]),
                phase=Phase(data["phase"]),
                user_deleted=frozenset(_uid_set(data["user_deleted"])),
                copies={_int(source): _int(copy) for source, copy in data["copies"]},
                originals={
                    _int(uid): (
                        _str(date).encode("latin-1"),
                        tuple(_str(flag).encode("latin-1") for flag in flags),
                    )
                    for uid, date, flags in data["originals"]
                },
            )
        except Unreadable:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Unreadable(f"unreadable entry: {exc}") from exc

    def copied(
        self,
        user_deleted: frozenset[int],
        copies: dict[int, int],
        validity: bytes,
        originals: dict[int, tuple[bytes, tuple[bytes, ...]]],
    ) -> Entry:
        """This entry once its COPY had its OK (``validity``: the target's, from COPYUID)."""
        return Entry(
            self.id, self.user, self.policy, self.source, self.source_validity, self.uids,
            self.target, validity or self.target_validity, self.target_uidnext, self.created,
            Phase.COPIED, user_deleted, copies, originals,
        )  # fmt: skip

    def describe(self) -> dict[str, object]:
        """The entry as ``imapmoveproxy journal list --json`` shows it."""
        shown: dict[str, object] = json.loads(self.to_json())
        del shown["v"]
        return shown


_FIELDS = {
    "id", "user", "policy", "source", "source_validity", "uids", "target", "target_validity",
    "target_uidnext", "created", "phase", "user_deleted", "copies", "originals",
}  # fmt: skip


def _set_text(uids: tuple[int, ...] | frozenset[int]) -> str:
    return b",".join(compress_uids(sorted(uids))).decode() if uids else ""


def _uid_set(value: object) -> tuple[int, ...]:
    text = _str(value)
    return tuple(NumberSet.parse(text.encode())) if text else ()


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise Unreadable(f"expected text, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Unreadable(f"expected a number, got {value!r}")
    return value


def _digits(value: object, empty: bool = False) -> bytes:
    text = _str(value)
    if not (text.isdigit() or (empty and not text)):
        raise Unreadable(f"expected digits, got {text!r}")
    return text.encode()


def _choice(value: object, allowed: tuple[str, ...]) -> str:
    text = _str(value)
    if text not in allowed:
        raise Unreadable(f"unexpected {text!r}")
    return text
