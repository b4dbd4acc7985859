"""After a failure, and at the end: what a MOVE left where, the second session, the reply.

Step 4 of the emulation (:mod:`.emulation`): once the proxy's own ``\\Deleted`` flags are cleared
(the policy's undo), ``UID FETCH uids (UID FLAGS)`` lists which moved messages are still in the
source; the copies of those not flagged ``\\Deleted`` are handed to a second session
(:class:`RollbackRequest`); then the client's tagged reply says what happened to every message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire.grammar import Tagged, compress_uids
from . import replies
from .request import Policy, RollbackRequest, UpstreamCommand
from .steps import Step

if TYPE_CHECKING:
    from .emulation import MoveEmulation


OUTSIDE = "set-check"  # the step named when the upstream names messages outside the set


class Recovery:
    """Where the messages of a chunk are after a failure, and the MOVE's tagged reply."""

    def __init__(self, move: MoveEmulation) -> None:
        self._move = move
        self.targets: dict[int, int] = {}  # source UID -> UID of its copy (COPYUID)
        self.target_validity = b""  # UIDVALIDITY of the target, from COPYUID
        self.remaining: set[int] = set()  # moved messages still in the source after EXPUNGE
        self.flagged: set[int] = set()  # moved messages carrying \\Deleted after the unflag
        self.checked = True  # whether ``remaining`` is known for sure
        self.removed: set[int] = set()  # of those, the ones whose copies were removed
        self.vanished: set[int] = set()  # of those, the ones whose copies had left the target
        self.request: RollbackRequest | None = None  # waiting for a second session
        self._error = ""  # why the second session failed

    def new_chunk(self) -> None:
        self.targets, self.remaining = {}, set()

    def chunk_done(self) -> list[UpstreamCommand]:
        """The chunk's steps are over: the next chunk, or the tagged reply."""
        move = self._move
        if move.policy is Policy.GUARDED and self.remaining and move.failure is None:
            left = b",".join(compress_uids(list(self.remaining)))
            move.failure = Tagged(b"", b"NO", None, b"UIDs " + left + b" were not expunged")
            move.failed_step = "expunge"
        if move.failure is None and move.listing.left:
            return move.listing.next_chunk()
        return self.report()

    def refuse_outside(self) -> list[UpstreamCommand]:
        """The upstream named messages the client did not: flag and expunge nothing; remove
        the copies a COPY made, through the check and the second session."""
        move = self._move
        request, outside = move.request, move.set_check.outside
        move.log.warning(
            "%sMOVE %s: the server named messages outside the set (%s): MOVE refused",
            "UID " * request.uid, request.sequence_set[:60].decode(), outside,
        )  # fmt: skip
        text = f"the server named {outside}, outside the set".encode()
        move.failure, move.failed_step = Tagged(b"", b"NO", b"SERVERBUG", text), OUTSIDE
        if self.targets:  # copied: find which are still in the source, remove the copies
            move.total = move.total or len(self.targets)
            move.moving = set(self.targets)
            return self.check()
        copied = move.copy_result is not None and move.copy_result.status == b"OK"
        move.outcome = f"{OUTSIDE}-failed"
        move.finish(b"NO", b"SERVERBUG", replies.outside(outside, copied))
        return []

    def check(self) -> list[UpstreamCommand]:
        """List which moved messages are still in the source, and whether flagged."""
        move = self._move
        self.remaining, self.flagged = set(), set()
        return move.send(Step.CHECK, move.per_set(b"UID FETCH %s (UID FLAGS)\r\n", move.moving))

    def after_check(self) -> list[UpstreamCommand]:
        move = self._move
        self.remaining &= move.moving
        if not self.checked:
            return self.report()
        if not self.remaining and move.failed_step != OUTSIDE:  # everything moved after all
            move.failure = None
            return self.chunk_done()
        if move.failure is None:
            left = b",".join(compress_uids(list(self.remaining)))
            move.failure = Tagged(b"", b"NO", None, b"UIDs " + left + b" were not expunged")
            move.failed_step = "expunge"
        # Those still flagged \Deleted (the user's own, or an unflag failed) stay in both: any
        # session's EXPUNGE may remove them from the source at any moment.
        removable = sorted((self.remaining - self.flagged) & set(self.targets))
        if not removable:
            move.rollback = "impossible"
            return self.report()
        move.step = Step.ROLLBACK
        self.request = RollbackRequest(
            move.request.mailbox,
            self.target_validity,
            tuple(self.targets[uid] for uid in removable),
            tuple(removable),
        )
        return []

    def on_rollback(
        self, error: str | None, *, attempted: bool = True, missing: frozenset[int] = frozenset()
    ) -> list[UpstreamCommand]:
        """The second session removed the copies of :attr:`request` (``error`` is None),
        failed to, or could not be ``attempted`` (no credentials). ``missing``: copies it found
        gone from the target already (another session moved or deleted them)."""
        move, request = self._move, self.request
        assert move.step is Step.ROLLBACK and request is not None
        if error is None:
            move.rollback = "done"
            pairs = zip(request.sources, request.uids, strict=True)
            self.vanished = {source for source, copy in pairs if copy in missing}
            self.removed = set(request.sources) - self.vanished
        else:
            move.rollback = "failed" if attempted else "impossible"
            self._error = error
        self.request = None
        return self.report()

    def report(self) -> list[UpstreamCommand]:
        """The MOVE's tagged reply: moved, or what failed and where every message is."""
        move = self._move
        failure = move.failure
        if failure is None:
            move.outcome = "moved"
            move.finish(b"OK", move.final_code, replies.MOVED)
            return []
        step = move.failed_step
        move.outcome = f"{step}-failed"
        reason = failure.text.decode("utf-8", "replace")
        if step == "restore":  # moved; only the \Deleted flags of others were not put back
            move.finish(b"OK", None, replies.restore_failed(move.foreign, reason))
            return []
        left = self.remaining - self.removed
        if move.policy is Policy.GUARDED:
            state = replies.UNDONE if move.step is Step.UNDO else replies.LISTED_LEFT
        elif not self.checked:
            state = replies.UNCHECKED
        elif left:
            move.duplicates = len(left)
            both = left - self.vanished
            state = replies.duplicates(both, self.targets, self._error, self.vanished)
        else:
            moved = move.moved + len(move.moving) - len(self.remaining)
            move.finish(b"NO", failure.code, replies.failed(step, reason, moved, move.total))
            return []
        move.finish(b"NO", failure.code, replies.incomplete(step, reason, state))
        return []
