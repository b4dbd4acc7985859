"""The UIDPLUS policy's steps after the COPY: flag exactly what COPYUID names, expunge it by UID
(one UID EXPUNGE at a time), retry once if too few went, and after a failure clear the flags the
proxy set before the check and rollback (:meth:`.emulation.MoveEmulation.check`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .request import UpstreamCommand
from .steps import FLAG, UNFLAG, Step

if TYPE_CHECKING:
    from .emulation import MoveEmulation


class UidplusSteps:
    """What a UIDPLUS MOVE does once its COPY has said what it copied."""

    __slots__ = ("_expunged_before", "_expunges", "_move", "_retried")

    def __init__(self, move: MoveEmulation) -> None:
        self._move = move
        self._expunges: list[bytes] = []  # UID EXPUNGE commands still to send, one by one
        self._expunged_before = 0  # EXPUNGEs shown when this chunk's EXPUNGE began
        self._retried = False  # this chunk's flag and expunge were sent a second time

    def new_chunk(self) -> None:
        self._retried = False

    def after_copy(self) -> list[UpstreamCommand]:
        move = self._move
        return move.send(Step.FLAG, move.per_set(FLAG, move.moving))

    def after_flag(self) -> list[UpstreamCommand]:
        move = self._move
        if move.failure is not None:
            return self.recover()
        # UID EXPUNGE removes only messages of the set that carry \\Deleted, all of them
        # copied: those are moved, the rest stay.
        self._expunges = move.per_set(b"UID EXPUNGE %s\r\n", move.moving)
        if not self._retried:  # a retry's EXPUNGEs add to the first attempt's
            self._expunged_before = move.counts.expunged
        return self.after_expunge()

    def after_expunge(self) -> list[UpstreamCommand]:
        move = self._move
        if self._expunges:
            # One at a time: a server running two UID EXPUNGEs at once (Dovecot does) may
            # report some expunges only after both tagged replies, that is after our OK.
            return move.send(Step.EXPUNGE, [self._expunges.pop(0)])
        shown = move.counts.expunged - self._expunged_before
        if move.failure is None and shown == len(move.moving):
            return move.recovery.chunk_done()
        if move.failure is None and not self._retried:
            # Dovecot (maildir, other sessions copying into the mailbox) was seen answering OK
            # to a UID EXPUNGE that removed none of the messages just flagged. Flag and expunge
            # once more: messages already gone are skipped by both commands.
            self._retried = True
            move.expunge_retries += 1
            return move.send(Step.FLAG, move.per_set(FLAG, move.moving))
        # Fewer (or other sessions' too) EXPUNGEs than messages moved: find out which are left.
        return self.recover()

    def recover(self) -> list[UpstreamCommand]:
        """After a failure past the COPY: clear the \\Deleted flags the proxy set, then list
        which moved messages are still in the source. Once unflagged, no other session's
        EXPUNGE can remove them, so removing their copies from the target cannot lose them."""
        move = self._move
        return move.send(Step.UNFLAG, move.per_set(UNFLAG, move.moving - move.already_deleted))
