"""The UIDPLUS policy's steps after the COPY: flag exactly what COPYUID names, expunge it by UID
(one UID EXPUNGE at a time), retry once if too few went, and after a failure clear the flags the
proxy set before the check and rollback (:func:`.recovery.check`).

Functions over :class:`.state.MoveState`; :mod:`.emulation` runs them.
"""

from __future__ import annotations

from .state import FLAG, UNFLAG, MoveState, Next, Send, Step, Then, per_set


def after_copy(state: MoveState) -> Send:
    return Send(Step.FLAG, per_set(state, FLAG, state.chunk.moving))


def after_flag(state: MoveState) -> Next:
    if state.failure is not None:
        return recover(state)
    chunk = state.chunk
    # UID EXPUNGE removes only messages of the set that carry \\Deleted, all of them
    # copied: those are moved, the rest stay.
    chunk.expunges = [command for (command,) in per_set(state, b"UID EXPUNGE %s\r\n", chunk.moving)]
    if not chunk.retried:  # a retry's EXPUNGEs add to the first attempt's
        chunk.expunged_before = state.counts.expunged
    return after_expunge(state)


def after_expunge(state: MoveState) -> Next:
    chunk = state.chunk
    if chunk.expunges:
        # One at a time: a server running two UID EXPUNGEs at once (Dovecot does) may
        # report some expunges only after both tagged replies, that is after our OK.
        return Send(Step.EXPUNGE, [[chunk.expunges.pop(0)]])
    shown = state.counts.expunged - chunk.expunged_before
    if state.failure is None and shown == len(chunk.moving):
        return Then.CHUNK_DONE
    if state.failure is None and not chunk.retried:
        # Dovecot (maildir, other sessions copying into the mailbox) was seen answering OK
        # to a UID EXPUNGE that removed none of the messages just flagged. Flag and expunge
        # once more: messages already gone are skipped by both commands.
        chunk.retried = True
        state.expunge_retries += 1
        return Send(Step.FLAG, per_set(state, FLAG, chunk.moving))
    # Fewer (or other sessions' too) EXPUNGEs than messages moved: find out which are left.
    return recover(state)


def recover(state: MoveState) -> Send:
    """After a failure past the COPY: clear the \\Deleted flags the proxy set, then list
    which moved messages are still in the source. Once unflagged, no other session's
    EXPUNGE can remove them, so removing their copies from the target cannot lose them."""
    chunk = state.chunk
    return Send(Step.UNFLAG, per_set(state, UNFLAG, chunk.moving - chunk.already_deleted))
