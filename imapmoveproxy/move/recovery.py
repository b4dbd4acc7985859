"""After a failure, and at the end: what a MOVE left where, the second session, the reply.

Step 4 of the emulation (:mod:`.emulation`): once the proxy's own ``\\Deleted`` flags are cleared
(the policy's undo), ``UID FETCH uids (UID FLAGS)`` lists which moved messages are still in the
source; the copies of those not flagged ``\\Deleted`` are handed to a second session
(:class:`.request.RollbackRequest`); then the client's tagged reply says what happened to every
message.

Functions over :class:`.state.MoveState`; :mod:`.emulation` runs them.
"""

from __future__ import annotations

from ..wire.grammar import compress_uids
from . import replies
from .request import Policy, RollbackRequest
from .state import (
    Failure,
    MoveState,
    Next,
    Outcome,
    Reply,
    RollbackResult,
    Send,
    Step,
    Then,
    per_set,
)


def _not_expunged(remaining: set[int]) -> Failure:
    left = b",".join(compress_uids(list(remaining)))
    return Failure(Step.EXPUNGE, b"NO", None, b"UIDs " + left + b" were not expunged")


def chunk_done(state: MoveState) -> Next:
    """The chunk's steps are over: the next chunk, or the tagged reply."""
    remaining = state.chunk.remaining
    if state.policy is Policy.GUARDED and remaining and state.failure is None:
        state.failure = _not_expunged(remaining)
    if state.failure is None and state.left:
        return Then.NEXT_CHUNK
    return report(state)


def refuse_outside(state: MoveState) -> Next:
    """The upstream named messages the client did not: flag and expunge nothing; remove
    the copies a COPY made, through the check and the second session."""
    outside, chunk = state.set_check.outside, state.chunk
    text = f"the server named {outside}, outside the set".encode()
    state.failure = Failure(Step.SET_CHECK, b"NO", b"SERVERBUG", text)
    if chunk.targets:  # copied: find which are still in the source, remove the copies
        state.total = state.total or len(chunk.targets)
        chunk.moving = set(chunk.targets)
        return check(state)
    copied = chunk.copied is not None and chunk.copied.status == b"OK"
    return Reply(Outcome.FAILED, b"NO", b"SERVERBUG", replies.outside(outside, copied))


def check(state: MoveState) -> Send:
    """List which moved messages are still in the source, and whether flagged."""
    chunk = state.chunk
    chunk.remaining, chunk.flagged = set(), set()
    return Send(Step.CHECK, per_set(state, b"UID FETCH %s (UID FLAGS)\r\n", chunk.moving))


def after_check(state: MoveState) -> Next:
    chunk = state.chunk
    chunk.remaining &= chunk.moving
    if not state.checked:
        return report(state)
    outside = state.failure is not None and state.failure.step is Step.SET_CHECK
    if not chunk.remaining and not outside:  # everything moved after all
        state.failure = None
        return chunk_done(state)
    if state.failure is None:
        state.failure = _not_expunged(chunk.remaining)
    # Those still flagged \Deleted (the user's own, or an unflag failed) stay in both: any
    # session's EXPUNGE may remove them from the source at any moment.
    removable = sorted((chunk.remaining - chunk.flagged) & set(chunk.targets))
    if not removable:
        state.rollback_result = RollbackResult.IMPOSSIBLE
        return report(state)
    state.rollback = RollbackRequest(
        state.request.mailbox,
        chunk.target_validity,
        tuple(chunk.targets[uid] for uid in removable),
        tuple(removable),
    )
    return Send(Step.ROLLBACK, [])  # waits for the second session (:func:`rolled_back`)


def rolled_back(
    state: MoveState, error: str | None, attempted: bool, missing: frozenset[int]
) -> Next:
    """The second session removed the copies of :attr:`.MoveState.rollback` (``error`` is
    None), failed to, or could not be ``attempted`` (no credentials). ``missing``: copies it
    found gone from the target already (another session moved or deleted them)."""
    request = state.rollback
    assert request is not None
    if error is None:
        state.rollback_result = RollbackResult.DONE
        pairs = zip(request.sources, request.uids, strict=True)
        state.vanished = {source for source, copy in pairs if copy in missing}
        state.removed = set(request.sources) - state.vanished
    else:
        state.rollback_result = RollbackResult.FAILED if attempted else RollbackResult.IMPOSSIBLE
        state.rollback_error = error
    state.rollback = None
    return report(state)


def report(state: MoveState) -> Reply:
    """The MOVE's tagged reply: moved, or what failed and where every message is."""
    failure = state.failure
    if failure is None:
        return Reply(Outcome.MOVED, b"OK", state.final_code, replies.MOVED)
    step = failure.step.value
    reason = failure.text.decode("utf-8", "replace")
    chunk = state.chunk
    if failure.step is Step.RESTORE:  # moved; only the \Deleted flags of others were not put back
        return Reply(Outcome.FAILED, b"OK", None, replies.restore_failed(chunk.foreign, reason))
    left = chunk.remaining - state.removed
    if state.policy is Policy.GUARDED:
        where = replies.UNDONE if state.step is Step.UNDO else replies.LISTED_LEFT
    elif not state.checked:
        where = replies.UNCHECKED
    elif left:
        state.duplicates = len(left)
        both = left - state.vanished
        where = replies.duplicates(both, chunk.targets, state.rollback_error, state.vanished)
    else:
        moved = state.moved + len(chunk.moving) - len(chunk.remaining)
        return Reply(
            Outcome.FAILED, b"NO", failure.code, replies.failed(step, reason, moved, state.total)
        )
    return Reply(Outcome.FAILED, b"NO", failure.code, replies.incomplete(step, reason, where))
