"""The texts of the tagged replies the client gets from an emulated MOVE (besides the upstream's
own answers it passes on). Kept apart from the steps: they say what happened, in words."""

from __future__ import annotations

from collections.abc import Iterable

from ..wire.grammar import compress_uids

MOVED = b"Move completed."
NO_MESSAGES = b"No messages found."
NO_JOURNAL = b"The MOVE journal cannot be written: nothing was moved, try again later."
READ_ONLY = b"Mailbox is read-only, messages cannot be moved."
NO_PERMISSION = b"Permission denied: messages cannot be removed from this mailbox (rights: %s)."
UNDONE = "Nothing was removed from the source: every message is in both mailboxes"
LISTED_LEFT = "Messages still listed in the source are in both mailboxes"
UNCHECKED = "Which are still in the source could not be checked: those are in both mailboxes"


def uids(values: Iterable[int]) -> str:
    """``values`` as a compact UID set (``1:3,7``)."""
    return b",".join(compress_uids(list(values))).decode()


def outside(named: str, copied: bool) -> bytes:
    """The upstream named messages outside the client's set, and nothing was flagged."""
    state = (
        "nothing was removed from the source, but its COPY may have left copies in the target"
        if copied  # no COPYUID says as what
        else "nothing was copied, flagged or expunged"
    )
    return f"MOVE failed: the server named {named}, outside the set; {state}.".encode()


def restore_failed(foreign: Iterable[int], reason: str) -> bytes:
    """Guarded: the messages were moved; only the \\Deleted flags of others were not restored."""
    return (
        f"Move completed, but \\Deleted could not be restored on UIDs {uids(foreign)} ({reason})."
    ).encode()


def failed(step: str, reason: str, moved: int, total: int) -> bytes:
    """Nothing is left in both mailboxes: some chunks moved, the others untouched."""
    return (
        f"MOVE failed ({step}: {reason}): {moved} of {total} messages were moved, "
        "the others are unaffected."
    ).encode()


def incomplete(step: str, reason: str, state: str) -> bytes:
    """Copied, but not removed from the source: ``state`` says what is where."""
    return (
        "MOVE incomplete: the messages were copied to the target, but removing them from the "
        f"source failed ({step}: {reason}). {state}; none was lost."
    ).encode()


def duplicates(
    both: set[int], targets: dict[int, int], rollback_error: str, vanished: set[int]
) -> str:
    """What the tagged NO says of the messages left in both mailboxes (or maybe twice)."""
    parts = []
    if both:
        copies = uids(targets[uid] for uid in both if uid in targets) or "unknown"
        why = f" (removing the copies failed: {rollback_error})" * bool(rollback_error)
        parts.append(f"UIDs {uids(both)} are in both mailboxes (copies: UIDs {copies}){why}")
    if vanished:
        parts.append(
            f"the copies of UIDs {uids(vanished)} had left the target before they could be "
            "removed (another session moved or deleted them), so those messages may exist twice"
        )
    state = "; ".join(parts)
    return state[:1].upper() + state[1:]


def flags_lost(detail: str, checked: bool) -> bytes:
    """Moved, but the server's COPY lost flags that could not be put back on the copies (or,
    not ``checked``, may have: nothing could look)."""
    lost = "lost" if checked else "may have lost"
    return f"Move completed, but the moved messages {lost} their flags ({detail}).".encode()
