"""Before anything is touched: which policy, and whether the MOVE may run at all.

A MOVE with bad syntax gets BAD; an upstream whose capabilities are not known yet is asked
(``CAPABILITY``); an upstream with MOVE gets the client's own command (or one without UIDPLUS
when the guarded policy is off); a mailbox opened read-only gets ``NO [READ-ONLY]`` (the COPY
would succeed and the expunge be ignored); rights that forbid flagging or expunging (``MYRIGHTS``,
asked once per selected mailbox on an upstream with ACL) get ``NO [NOPERM]``.

Functions over :class:`.state.MoveState`; :mod:`.emulation` runs them.
"""

from __future__ import annotations

from ..wire.capabilities import Capabilities
from ..wire.grammar import set_size
from . import listing, replies
from .request import Policy, astring_segments, policy_for
from .state import MoveState, Next, Outcome, Reply, Send, Step


def start(state: MoveState, caps: Capabilities | None) -> Next:
    """The MOVE's first step (``caps``: the upstream's, if known)."""
    if state.request.error is not None:
        return Reply(Outcome.BAD_SYNTAX, b"BAD", None, state.request.error)
    if caps is None:
        return Send(Step.CAPABILITY, [[b"CAPABILITY\r\n"]])
    state.caps = caps
    return begin(state)


def begin(state: MoveState) -> Next:
    """The upstream's capabilities are known (:attr:`.MoveState.caps`): choose the policy."""
    request, caps = state.request, state.caps
    state.policy = policy_for(caps, state.guarded)
    if not state.policy.emulated:
        # Nothing to emulate (native MOVE) or nothing safe to emulate with (no UIDPLUS):
        # the upstream answers the client's own command under the client's own tag.
        uid = b"UID " if request.uid else b""
        prefix = request.tag + b" " + uid + b"MOVE " + request.sequence_set + b" "
        return Send(Step.FORWARD, [astring_segments(prefix, [request.mailbox], caps)])
    if state.read_only:
        # COPY would succeed and the expunge be ignored, leaving every message in both
        # mailboxes: refuse before anything is copied.
        return Reply(Outcome.READ_ONLY, b"NO", b"READ-ONLY", replies.READ_ONLY)
    if b"ACL" in caps.names and state.source is not None and state.rights is None:
        return Send(Step.RIGHTS, [astring_segments(b"MYRIGHTS ", [state.source], caps)])
    return check_rights(state)


def check_rights(state: MoveState) -> Next:
    """Refuse before touching anything if the rights on the source forbid flagging or
    expunging (RFC 4314; an RFC 2086 server has a single "d" right for both)."""
    rights = state.rights
    if rights is not None:
        rfc4314 = any(name.startswith(b"RIGHTS=") for name in state.caps.names)
        needed = (b"t", b"e") if rfc4314 else (b"d",)
        if not all(right in rights.lower() for right in needed):
            return Reply(Outcome.NO_PERMISSION, b"NO", b"NOPERM", replies.NO_PERMISSION % rights)
    request = state.request
    sizes = [set_size(request.sequence_set), state.counts.exists]
    size = min((size for size in sizes if size is not None), default=None)
    if (
        state.journal  # the target's UIDNEXT is recorded before the COPY
        or state.policy is Policy.GUARDED
        or not request.uid
        or size is None
        or size > state.chunk_limit
    ):
        # Maybe too many for one COPY; or no COPYUID will say what the COPY took, so it may
        # only name UIDs checked to be in the client's set; or sequence numbers, which the
        # NOOP before the COPY may shift: listed as UIDs first (:func:`.listing.prefetch`).
        return listing.prefetch(state, Step.PREFETCH, copy=False)
    return listing.prefetch(state, Step.COPY, copy=True)
