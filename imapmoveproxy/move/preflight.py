"""Before anything is touched: which policy, and whether the MOVE may run at all.

A MOVE with bad syntax gets BAD; an upstream whose capabilities are not known yet is asked
(``CAPABILITY``); an upstream with MOVE gets the client's own command (or one without UIDPLUS
when the guarded policy is off); a mailbox opened read-only gets ``NO [READ-ONLY]`` (the COPY
would succeed and the expunge be ignored); rights that forbid flagging or expunging (``MYRIGHTS``,
asked once per selected mailbox on an upstream with ACL) get ``NO [NOPERM]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire.capabilities import Capabilities
from ..wire.grammar import set_size
from . import replies
from .request import Policy, UpstreamCommand, astring_segments, policy_for
from .steps import Step

if TYPE_CHECKING:
    from .emulation import MoveEmulation


class Preflight:
    """The checks and the policy choice that start a MOVE."""

    def __init__(
        self, move: MoveEmulation, *, read_only: bool, guarded: bool, source: bytes | None
    ) -> None:
        self._move = move
        self._read_only = read_only
        self._guarded = guarded
        self._source = source  # the selected mailbox's name, if known (for MYRIGHTS)

    def start(self, caps: Capabilities | None) -> list[UpstreamCommand]:
        move = self._move
        if move.request.error is not None:
            move.outcome = "bad-syntax"
            move.finish(b"BAD", None, move.request.error)
            return []
        if caps is None:
            return move.send(Step.CAPABILITY, [b"CAPABILITY\r\n"])
        return self.begin(caps)

    def begin(self, caps: Capabilities) -> list[UpstreamCommand]:
        move = self._move
        request = move.request
        move.caps = caps
        move.policy = policy_for(caps, self._guarded)
        if not move.policy.emulated:
            # Nothing to emulate (native MOVE) or nothing safe to emulate with (no UIDPLUS):
            # the upstream answers the client's own command under the client's own tag.
            move.step = Step.FORWARD
            uid = b"UID " if request.uid else b""
            prefix = request.tag + b" " + uid + b"MOVE " + request.sequence_set + b" "
            return [astring_segments(prefix, [request.mailbox], caps)]
        if self._read_only:
            # COPY would succeed and the expunge be ignored, leaving every message in both
            # mailboxes: refuse before anything is copied.
            move.outcome = "read-only"
            move.finish(b"NO", b"READ-ONLY", replies.READ_ONLY)
            return []
        if b"ACL" in caps.names and self._source is not None and move.rights is None:
            myrights = astring_segments(b"MYRIGHTS ", [self._source], caps)
            return move.send_framed(Step.RIGHTS, [myrights])
        return self.check_rights()

    def check_rights(self) -> list[UpstreamCommand]:
        """Refuse before touching anything if the rights on the source forbid flagging or
        expunging (RFC 4314; an RFC 2086 server has a single "d" right for both)."""
        move = self._move
        rights = (move.rights or b"").lower()
        rfc4314 = any(name.startswith(b"RIGHTS=") for name in move.caps.names)
        needed = (b"t", b"e") if rfc4314 else (b"d",)
        if move.rights is not None and not all(right in rights for right in needed):
            move.outcome = "no-permission"
            move.finish(b"NO", b"NOPERM", replies.NO_PERMISSION % move.rights)
            return []
        sizes = [set_size(move.request.sequence_set), move.counts.exists]
        size = min((size for size in sizes if size is not None), default=None)
        listing = move.listing
        if (
            move.policy is Policy.GUARDED
            or not move.request.uid
            or size is None
            or size > listing.chunk_limit
        ):
            # Maybe too many for one COPY; or no COPYUID will say what the COPY took, so it may
            # only name UIDs checked to be in the client's set; or sequence numbers, which the
            # NOOP before the COPY may shift: listed as UIDs first (:meth:`Listing._sync`).
            return listing.prefetch(Step.PREFETCH, copy=False)
        return listing.prefetch(Step.COPY, copy=True)
