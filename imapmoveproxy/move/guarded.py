"""The guarded policy's steps after the COPY, for an upstream without UIDPLUS (RFC 4315 §2.1):
a plain EXPUNGE removes every message flagged \\Deleted, so the other messages' flags are cleared
first, checked again right before the EXPUNGE, and put back after it; what is left is listed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire.grammar import NumberSet, Tagged
from .request import UpstreamCommand
from .steps import FLAG, UNFLAG, Step

if TYPE_CHECKING:
    from .emulation import MoveEmulation

_SEARCH_DELETED = b"UID SEARCH DELETED\r\n"
_RECHECKS = 3  # how often a guarded MOVE clears newly flagged messages before giving up


class GuardedSteps:
    """What a guarded MOVE does once its COPY has succeeded."""

    __slots__ = ("_move", "_rechecks")

    def __init__(self, move: MoveEmulation) -> None:
        self._move = move
        self._rechecks = 0

    def new_chunk(self) -> None:
        self._rechecks = 0

    def after_copy(self) -> list[UpstreamCommand]:
        return self._move.send(Step.FIND_SYNC, [b"NOOP\r\n"])

    def search_deleted(self, step: Step) -> list[UpstreamCommand]:
        """Ask which messages carry \\Deleted (after a NOOP made the view current: Dovecot,
        for one, only takes in other sessions' flag changes when it syncs)."""
        move = self._move
        if move.failure is not None:
            return self.undo() if step is Step.RECHECK else move.recovery.report()
        move.deleted = NumberSet()
        return move.send(step, [_SEARCH_DELETED])

    def after_find_deleted(self) -> list[UpstreamCommand]:
        """Clear \\Deleted on the other messages, flag the moved ones."""
        move = self._move
        if move.failure is not None:
            return move.recovery.report()
        move.foreign = set(move.deleted) - move.moving
        move.already_deleted = {uid for uid in move.moving if uid in move.deleted}
        unflag = move.per_set(UNFLAG, move.foreign)
        return move.send(Step.FLAG, unflag + move.per_set(FLAG, move.moving))

    def after_flag(self) -> list[UpstreamCommand]:
        if self._move.failure is not None:
            return self.undo()
        return self._move.send(Step.RECHECK_SYNC, [b"NOOP\r\n"])

    def after_recheck(self) -> list[UpstreamCommand]:
        """Right before EXPUNGE, no message outside the move may carry \\Deleted."""
        move = self._move
        if move.failure is not None:
            return self.undo()
        newly_flagged = set(move.deleted) - move.moving
        if not newly_flagged:
            return move.send(Step.EXPUNGE, [b"EXPUNGE\r\n"])
        move.foreign |= newly_flagged  # another session flagged these meanwhile
        self._rechecks += 1
        if self._rechecks > _RECHECKS:
            move.failure = Tagged(b"", b"NO", b"INUSE", b"other sessions keep flagging messages")
            move.failed_step = "recheck"
            return self.undo()
        return move.send(Step.FLAG, move.per_set(UNFLAG, newly_flagged))

    def after_expunge(self) -> list[UpstreamCommand]:
        move = self._move
        return move.send(Step.RESTORE, move.per_set(FLAG, move.foreign))

    def verify(self) -> list[UpstreamCommand]:
        """A plain EXPUNGE does not say by UID what it removed; list what is left (imap4d, for
        one, can lose a flag that another session's write overlapped)."""
        move = self._move
        if move.failure is not None:
            return move.recovery.report()
        return move.send(Step.VERIFY, [b"UID FETCH 1:* (UID)\r\n"])

    def undo(self) -> list[UpstreamCommand]:
        """After a failure before EXPUNGE: put every flag back as it was."""
        move = self._move
        unflag = move.per_set(UNFLAG, move.moving - move.already_deleted)
        return move.send(Step.UNDO, unflag + move.per_set(FLAG, move.foreign))
