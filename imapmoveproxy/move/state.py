"""A MOVE's state as one record of plain data, and what a step answers with.

:class:`MoveState` holds everything one MOVE knows: the request and its settings, the policy,
the current step, the chunk being moved (:class:`Chunk`: its UIDs, the COPY's answer, the COPYUID
mapping, what is confirmed copied and what is left), the failure as a typed value
(:class:`Failure`), the outcome and the counts for the log line. It is what a crash journal
persists phase by phase; nothing in it refers to a connection, a channel or a callback.

The step modules (:mod:`.preflight`, :mod:`.listing`, :mod:`.uidplus`, :mod:`.guarded`,
:mod:`.recovery`) are functions over this record. Each returns what comes next: the commands of
a step (:class:`Send`), a hand-over to another module's function (:class:`Then`) or the tagged
reply (:class:`Reply`). Only :mod:`.emulation` acts on those, and only it assigns
:attr:`MoveState.step`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..journal.entry import Phase
from ..wire.capabilities import Capabilities
from ..wire.grammar import NumberSet, Tagged, chunk_set, compress_uids
from .bookkeeping import ClientCounts, SetCheck
from .copyflags import FlagCheckRequest, FlagRecorder, Result
from .request import MoveRequest, Policy, RollbackRequest, UpstreamCommand

NO_CAPABILITIES = Capabilities(frozenset())  # before they are known: no UIDPLUS
NOTHING = NumberSet()


class Step(enum.Enum):
    """The steps of an emulated MOVE, named in logs and metrics."""

    CAPABILITY = "capability"  # learning the upstream's capabilities after authentication
    FORWARD = "forward"  # the client's MOVE sent to the upstream as it is
    RIGHTS = "rights"  # MYRIGHTS on the source, if not known yet (ACL)
    PREFETCH = "prefetch"  # a MOVE too big for one chunk: which UIDs to move, before copying
    COPY = "copy"
    SET_CHECK = "set-check"  # names a failure only: the server named messages outside the set
    FIND_SYNC = "find-sync"  # guarded: NOOP, so the search below sees other sessions' flags
    FIND_DELETED = "find-deleted"  # guarded: which other messages carry \Deleted
    FLAG = "flag"  # flag the moved messages (guarded: and unflag the others)
    RECHECK_SYNC = "recheck-sync"  # guarded: NOOP again
    RECHECK = "recheck"  # guarded: has another session flagged a message since?
    EXPUNGE = "expunge"
    RESTORE = "restore"  # guarded: put \Deleted back where it was
    VERIFY = "verify"  # guarded: which moved messages are still there after EXPUNGE
    UNDO = "undo"  # guarded, after a failure: unflag what we flagged, restore the others
    UNFLAG = "unflag"  # UIDPLUS, after a failure: clear the \\Deleted flags the proxy set
    CHECK = "check"  # UIDPLUS, after a failure: which moved messages are still in the source
    ROLLBACK = "rollback"  # waiting for a second session to remove their copies from the target
    COPY_FLAGS = "copy-flags"  # guarded: waiting for a second session to restore the copies' flags
    DONE = "done"


class Outcome(enum.Enum):
    """How a MOVE ended, in logs and metrics (:meth:`MoveState.outcome_name`)."""

    MOVED = "moved"
    FORWARDED = "forwarded"  # the upstream ran the client's MOVE itself
    BAD_SYNTAX = "bad-syntax"
    READ_ONLY = "read-only"
    NO_PERMISSION = "no-permission"
    FAILED = "failed"  # named after the failure's step: "copy-failed", "expunge-failed"...


class RollbackResult(enum.Enum):
    """What became of the copies a failed MOVE had to remove from the target."""

    DONE = "done"
    FAILED = "failed"
    IMPOSSIBLE = "impossible"  # still flagged \Deleted in the source, or no second session


@dataclass(slots=True, frozen=True)
class Failure:
    """Why a MOVE failed: the step, and the server's answer (or the proxy's own finding)."""

    step: Step
    status: bytes  # b"NO" or b"BAD"
    code: bytes | None  # a response code for the client's tagged NO, without brackets
    text: bytes


@dataclass(slots=True)
class Chunk:
    """The UIDs one COPY moves, and what is known of them."""

    uids: NumberSet | None = None  # listed UIDs of its UID COPY; None: the client's own set
    copied: Tagged | None = None  # the COPY's tagged reply
    targets: dict[int, int] = field(default_factory=dict)  # source UID -> its copy's (COPYUID)
    target_validity: bytes = b""  # UIDVALIDITY of the target, from COPYUID
    moving: set[int] = field(default_factory=set)  # confirmed copied: to flag and expunge
    already_deleted: set[int] = field(default_factory=set)  # of those, flagged by the user
    foreign: set[int] = field(default_factory=set)  # guarded: others whose \Deleted we cleared
    remaining: set[int] = field(default_factory=set)  # moved ones still in the source
    flagged: set[int] = field(default_factory=set)  # of those, carrying \Deleted (the check)
    retried: bool = False  # UIDPLUS: its flag and expunge were sent a second time
    expunges: list[bytes] = field(default_factory=list)  # UIDPLUS: UID EXPUNGEs still to send
    expunged_before: int = 0  # UIDPLUS: EXPUNGEs shown when its UID EXPUNGE began
    rechecks: int = 0  # guarded: how often messages newly flagged by others were cleared


@dataclass(slots=True)
class MoveState:
    """One client MOVE, from the moment earlier commands have completed to its tagged reply."""

    request: MoveRequest
    counts: ClientCounts  # the selected mailbox's EXISTS/RECENT/EXPUNGEs as the client sees them
    set_check: SetCheck  # which messages the client's set names
    # settings and what the session knew when the MOVE began
    read_only: bool = False
    guarded: bool = False  # the guarded policy is allowed (no UIDPLUS)
    source: bytes | None = None  # the selected mailbox's name, if known (for MYRIGHTS)
    rights: bytes | None = None  # MYRIGHTS on the source: given cached, or learned here
    max_set_bytes: int = 8192
    chunk_limit: int = 1_000_000
    flags: FlagRecorder | None = None  # guarded: what the COPY should keep (:mod:`.copyflags`)
    journal: bool = False  # each chunk is recorded before its COPY and after (:mod:`..journal`)
    # where the MOVE is
    caps: Capabilities = NO_CAPABILITIES
    policy: Policy | None = None
    step: Step = Step.CAPABILITY
    # the listing (:mod:`.listing`): the tags whose answers it reads, and the chunks
    prefetch_tag: bytes = b""
    deleted_tag: bytes = b""
    copy_tag: bytes = b""
    prefetching: bool = False  # the prefetch awaits its tagged reply
    prefetch_ok: bool = False
    synced: bool = False  # the NOOP that brings the session's view up to date was sent
    listed: NumberSet = NOTHING  # the UIDs listed for chunks
    next_uid: int = 0  # every listed UID below it has had its chunk
    left: int = 0  # listed UIDs still to move
    chunk: Chunk = field(default_factory=Chunk)
    deleted: NumberSet = NOTHING  # messages carrying \Deleted (last search)
    # the journal: the target before the first COPY, and the phase to record before going on
    target_asked: bool = False  # its STATUS was sent
    target_uidnext: int = 0  # every copy has a UID from there on (0: unknown)
    target_validity: bytes = b""  # b"": unknown, or the target was empty (imap4d renews it)
    record: Phase | None = None  # the emulation waits until this phase is recorded
    # the end
    failure: Failure | None = None
    checked: bool = True  # whether the check after a failure knows what is left for sure
    final_code: bytes | None = None  # HIGHESTMODSEQ of the last UID EXPUNGE
    rollback: RollbackRequest | None = None  # copies a second session must remove, awaited
    rollback_result: RollbackResult | None = None
    rollback_error: str = ""  # why the second session failed
    removed: set[int] = field(default_factory=set)  # left in the source; their copies removed
    vanished: set[int] = field(default_factory=set)  # left in the source; copies had gone
    flag_request: FlagCheckRequest | None = None  # copies' flags to check before the tagged OK
    flags_result: tuple[Result, str] | None = None  # and the verdict
    held_reply: tuple[bytes | None, bytes] = (None, b"")  # the tagged OK's code and text meanwhile
    outcome: Outcome | None = None
    reply: bytes = b""  # the tagged reply, once sent
    # counts for the log line and the metrics
    moved: int = 0  # messages moved by earlier chunks
    total: int = 0  # messages to move in all
    duplicates: int = 0  # messages this MOVE left in both mailboxes
    expunge_retries: int = 0  # chunks whose UID EXPUNGE removed too few, flagged again

    def outcome_name(self) -> str:
        """The outcome as logs and metrics name it."""
        outcome = self.outcome
        if outcome is Outcome.FAILED and self.failure is not None:
            return f"{self.failure.step.value}-failed"
        return outcome.value if outcome is not None else ""


class Role(enum.Enum):
    """What a command of a step is to :mod:`.emulation`, which tags it."""

    OTHER = 0
    PREFETCH = 1  # the listing of the client's set: its answers say which UIDs it names
    DELETED = 2  # the search for \Deleted among them
    COPY = 3


@dataclass(slots=True)
class Send:
    """Go to ``step``: send ``commands`` (untagged, pipelined), and show ``show`` to the client
    first (after ``record``, with a journal, is durable). A step with nothing to send is over
    at once."""

    step: Step
    commands: list[UpstreamCommand]
    roles: tuple[Role, ...] = ()  # one per command, where some answers matter (:class:`Role`)
    show: bytes = b""
    record: Phase | None = None  # with a journal: record this phase before sending anything


class Then(enum.Enum):
    """A step function hands over to another module's function (named in
    :mod:`.emulation`'s table): modules never call each other in a circle."""

    NEXT_CHUNK = "next-chunk"  # the listing: copy the next chunk
    CHUNK_DONE = "chunk-done"  # recovery: the chunk's steps are over
    REPORT = "report"  # recovery: the tagged reply after a failure (or none)
    REFUSE_OUTSIDE = "refuse-outside"  # recovery: the server named messages outside the set


@dataclass(slots=True, frozen=True)
class Reply:
    """The MOVE's tagged reply (the flags' check may hold a tagged OK back)."""

    outcome: Outcome
    status: bytes
    code: bytes | None
    text: bytes


Next = Send | Then | Reply

FLAG = b"UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n"
UNFLAG = b"UID STORE %s -FLAGS.SILENT (\\Deleted)\r\n"


def per_set(state: MoveState, template: bytes, uids: set[int]) -> list[UpstreamCommand]:
    """``template`` once per UID set, split so that no command line grows too long."""
    sets = chunk_set(compress_uids(list(uids)), state.max_set_bytes)
    return [[template % uid_set] for uid_set in sets]
