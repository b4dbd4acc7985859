"""The guarded policy's steps after the COPY, for an upstream without UIDPLUS (RFC 4315 §2.1):
a plain EXPUNGE removes every message flagged \\Deleted, so the other messages' flags are cleared
first, checked again right before the EXPUNGE, and put back after it; what is left is listed.

Functions over :class:`.state.MoveState`; :mod:`.emulation` runs them.
"""

from __future__ import annotations

from ..wire.grammar import NumberSet
from .state import FLAG, UNFLAG, Failure, MoveState, Next, Send, Step, Then, per_set

_SEARCH_DELETED = b"UID SEARCH DELETED\r\n"
_RECHECKS = 3  # how often a guarded MOVE clears newly flagged messages before giving up


def after_copy(state: MoveState) -> Send:
    return Send(Step.FIND_SYNC, [[b"NOOP\r\n"]])


def find_deleted(state: MoveState) -> Next:
    """After the NOOP: which messages carry \\Deleted, before any is flagged."""
    if state.failure is not None:
        return Then.REPORT
    return _search_deleted(state, Step.FIND_DELETED)


def recheck(state: MoveState) -> Next:
    """After the second NOOP: which carry \\Deleted right before the EXPUNGE."""
    if state.failure is not None:
        return undo(state)
    return _search_deleted(state, Step.RECHECK)


def _search_deleted(state: MoveState, step: Step) -> Send:
    """Ask which messages carry \\Deleted (after a NOOP made the view current: Dovecot,
    for one, only takes in other sessions' flag changes when it syncs)."""
    state.deleted = NumberSet()
    return Send(step, [[_SEARCH_DELETED]])


def after_find_deleted(state: MoveState) -> Next:
    """Clear \\Deleted on the other messages, flag the moved ones."""
    if state.failure is not None:
        return Then.REPORT
    chunk = state.chunk
    chunk.foreign = set(state.deleted) - chunk.moving
    chunk.already_deleted = {uid for uid in chunk.moving if uid in state.deleted}
    unflag = per_set(state, UNFLAG, chunk.foreign)
    return Send(Step.FLAG, unflag + per_set(state, FLAG, chunk.moving))


def after_flag(state: MoveState) -> Next:
    if state.failure is not None:
        return undo(state)
    return Send(Step.RECHECK_SYNC, [[b"NOOP\r\n"]])


def after_recheck(state: MoveState) -> Next:
    """Right before EXPUNGE, no message outside the move may carry \\Deleted."""
    if state.failure is not None:
        return undo(state)
    chunk = state.chunk
    newly_flagged = set(state.deleted) - chunk.moving
    if not newly_flagged:
        return Send(Step.EXPUNGE, [[b"EXPUNGE\r\n"]])
    chunk.foreign |= newly_flagged  # another session flagged these meanwhile
    chunk.rechecks += 1
    if chunk.rechecks > _RECHECKS:
        text = b"other sessions keep flagging messages"
        state.failure = Failure(Step.RECHECK, b"NO", b"INUSE", text)
        return undo(state)
    return Send(Step.FLAG, per_set(state, UNFLAG, newly_flagged))


def after_expunge(state: MoveState) -> Send:
    return Send(Step.RESTORE, per_set(state, FLAG, state.chunk.foreign))


def verify(state: MoveState) -> Next:
    """A plain EXPUNGE does not say by UID what it removed; list what is left (imap4d, for
    one, can lose a flag that another session's write overlapped)."""
    if state.failure is not None:
        return Then.REPORT
    return Send(Step.VERIFY, [[b"UID FETCH 1:* (UID)\r\n"]])


def undo(state: MoveState) -> Send:
    """After a failure before EXPUNGE: put every flag back as it was."""
    chunk = state.chunk
    unflag = per_set(state, UNFLAG, chunk.moving - chunk.already_deleted)
    return Send(Step.UNDO, unflag + per_set(state, FLAG, chunk.foreign))
