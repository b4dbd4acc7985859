"""MOVE and UID MOVE: parsing the client's command and emulating it over COPY, STORE, UID EXPUNGE.

The emulation is a sans-IO state machine, and this module is all of its transitions (h11's
rule: everything that changes the state machine lives in one file). The MOVE's state is one
record (:class:`.state.MoveState`); the steps are functions over it in :mod:`.preflight`,
:mod:`.listing`, :mod:`.uidplus`, :mod:`.guarded` and :mod:`.recovery`, each returning the next
step's commands, a hand-over, or the tagged reply; :data:`TRANSITIONS` says which function runs
once a step's commands are all answered, and :meth:`MoveEmulation._run` is the one loop that
follows them. Only this module assigns the step. The session hands the emulation every
upstream response that arrives while it runs; it answers with the upstream commands to send
next and writes what the client must see into the client buffer.

Its promise (RFC 6851 §3.3): each message is moved or left where it was, the client sees what a
native MOVE server sends, and nothing the proxy's own commands cause (their tags, the COPY's
tagged reply, FETCH responses of the STORE) leaks to the client.

The sequence of upstream commands, each step only after the previous one's tagged reply:

0. Once per selected mailbox, on an upstream with ACL: ``MYRIGHTS`` on the source; without the
   rights to flag and expunge, NO [NOPERM] before anything is touched.
1. ``[UID] FETCH set (UID)`` (with ESEARCH, ``UID SEARCH RETURN (ALL) UID set`` for UID MOVE) and
   ``UID SEARCH [UID] set DELETED``, pipelined with ``[UID] COPY set mbox``.
   The first records which UIDs the set names right before the COPY, in case the COPY's tagged
   OK carries no COPYUID (RFC 4315 allows that); it is never used instead of COPYUID. The second
   says which of them the user had flagged, so that a rollback leaves those flags alone.
   A set that may hold more than ``chunk_size`` messages, and every set of the guarded policy
   (whose COPY never says what it copied), is listed first and then moved chunk by chunk
   (``UID COPY`` of listed UIDs, steps 2 and 3, then the next chunk).
   Only what lies in the client's set counts: a FETCH about a message outside it is another
   session's news (relayed); an answer to the proxy's own FETCH, SEARCH or COPY naming a message
   outside it (imap4d answers ``UID FETCH 4000000000`` with its last message) ends the MOVE
   with a NO before anything is flagged, its copies removed as in step 4.
2. After COPY's tagged OK only: ``UID STORE uids +FLAGS.SILENT (\\Deleted)``, where ``uids`` are
   the messages the upstream confirmed it copied (split into several commands if long).
3. After every STORE's tagged reply: ``UID EXPUNGE uids``. It only removes messages of that set
   that carry ``\\Deleted``, all of which have been copied. The two are not pipelined: servers may
   run pipelined commands concurrently (Dovecot does), and an EXPUNGE that overtakes its STORE
   would leave messages flagged and in both mailboxes.
4. If a STORE failed, or the EXPUNGEs shown are not exactly one per message: ``UID STORE uids
   -FLAGS.SILENT (\\Deleted)`` where the proxy set the flag, then ``UID FETCH uids (UID FLAGS)``
   to learn which are still in the source, and a :class:`RollbackRequest` for their copies,
   which a second session removes from the target (:mod:`.rollback`).

Guarded, with a :class:`.copyflags.FlagRecorder`: ``STATUS target`` rides with the listing of
step 1 and ``UID FETCH chunk (UID FLAGS INTERNALDATE)`` with each chunk's ``UID COPY``, so that
flags the server's COPY drops can be put back after the MOVE (:mod:`.copyflags`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..journal.entry import Phase
from ..wire import responses
from ..wire.capabilities import Capabilities
from ..wire.commands import CommandChannel
from ..wire.grammar import Tagged, code_name
from . import guarded, listing, preflight, recovery, replies, uidplus
from .bookkeeping import ClientCounts, SetCheck
from .copyflags import FlagCheckRequest, FlagRecorder, Result
from .request import MoveRequest, Policy, RollbackRequest, UpstreamCommand
from .state import (
    NO_CAPABILITIES,
    Failure,
    MoveState,
    Next,
    Outcome,
    Reply,
    Role,
    Send,
    Step,
    Then,
)

StepFunction = Callable[[MoveState], Next]

_BEFORE_POLICY: dict[Step | Then, StepFunction] = {Step.CAPABILITY: preflight.begin}
_EMULATED: dict[Step | Then, StepFunction] = {
    Step.RIGHTS: preflight.check_rights,
    Step.PREFETCH: listing.after_prefetch,
    Step.COPY: listing.after_copy,  # which goes on to the policy's after_copy
    Step.CHECK: recovery.after_check,
    Then.NEXT_CHUNK: listing.next_chunk,
    Then.CHUNK_DONE: recovery.chunk_done,
    Then.REPORT: recovery.report,
    Then.REFUSE_OUTSIDE: recovery.refuse_outside,
}
TRANSITIONS: dict[Policy | None, dict[Step | Then, StepFunction]] = {
    None: _BEFORE_POLICY,
    Policy.UIDPLUS: {
        **_EMULATED,
        Step.FLAG: uidplus.after_flag,
        Step.EXPUNGE: uidplus.after_expunge,
        Step.UNFLAG: recovery.check,
    },
    Policy.GUARDED: {
        **_EMULATED,
        Step.FIND_SYNC: guarded.find_deleted,
        Step.FIND_DELETED: guarded.after_find_deleted,
        Step.FLAG: guarded.after_flag,
        Step.RECHECK_SYNC: guarded.recheck,
        Step.RECHECK: guarded.after_recheck,
        Step.EXPUNGE: guarded.after_expunge,
        Step.RESTORE: guarded.verify,
        Step.VERIFY: recovery.chunk_done,
        Step.UNDO: recovery.report,
    },
}
"""What runs once every command of a step has its tagged reply (or at once, if the step had
nothing to send), and where a hand-over (:class:`.state.Then`) leads. A step without an entry
waits for something else: the forwarded MOVE's reply, a second session (ROLLBACK,
COPY_FLAGS), or nothing (DONE)."""

# Steps whose failure does not make the MOVE fail: they only gather facts (or, for UNFLAG, the
# CHECK that follows finds out what the failure left behind).
_UNFAILING = frozenset(
    (Step.CAPABILITY, Step.RIGHTS, Step.PREFETCH, Step.COPY, Step.CHECK, Step.UNFLAG)
)


class MoveEmulation:
    """One client MOVE from the moment earlier commands have completed to its tagged reply:
    its state (:attr:`state`), and what connects it to the session."""

    __slots__ = ("_awaited", "_channel", "_emit", "_log", "_unrecorded", "state")

    def __init__(
        self,
        request: MoveRequest,
        *,
        read_only: bool,
        guarded: bool,
        channel: CommandChannel,
        emit: Callable[[bytes], None],
        max_set_bytes: int = 8192,
        chunk_size: int = 0,
        source: bytes | None = None,
        rights: bytes | None = None,
        exists: int | None = None,
        recent: int | None = None,
        flags: FlagRecorder | None = None,
        journal: bool = False,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.state = MoveState(
            request,
            ClientCounts(exists, recent),
            SetCheck(request),
            read_only=read_only,
            guarded=guarded,
            source=source,
            rights=rights,
            max_set_bytes=max_set_bytes,
            chunk_limit=chunk_size or listing.MOST_PER_COPY,
            flags=flags,
            journal=journal,
        )
        self._channel = channel  # the proxy's commands on the upstream connection
        self._emit = emit  # to the client
        self._log = log  # the connection's
        self._awaited = 0  # commands of the current step still awaiting their tagged reply
        self._unrecorded: Send | None = None  # a step's commands, sent once its phase is recorded

    # ------------------------------------------------------------------ what the session asks

    @property
    def done(self) -> bool:
        return self.state.step is Step.DONE

    @property
    def waits_for_second_session(self) -> bool:
        return self.state.step in (Step.ROLLBACK, Step.COPY_FLAGS)

    @property
    def rollback_request(self) -> RollbackRequest | None:
        """Copies a second session must remove from the target, if the MOVE waits for it."""
        return self.state.rollback

    @property
    def flag_request(self) -> FlagCheckRequest | None:
        """The copies' flags a second session must check, if the MOVE waits for it."""
        return self.state.flag_request

    @property
    def expunges_in_runs(self) -> bool:
        """Whether the EXPUNGE responses may be relayed in runs, not looked at one by one: no
        EXISTS is held back that one of them might need first (``before_expunge``)."""
        state = self.state
        return state.step is Step.EXPUNGE and not state.counts.holding_exists

    def expunged(self, count: int) -> None:
        """``count`` EXPUNGE responses were relayed to the client without passing through
        :meth:`on_untagged`."""
        self.state.counts.shown_expunges(count)

    def forwarded(self, tag: bytes) -> bool:
        """Whether a tagged reply with ``tag`` answers the client's MOVE, sent to the upstream
        under the client's tag (the proxy's own commands are known by the channel's table)."""
        state = self.state
        return state.step is Step.FORWARD and tag == state.request.tag

    # ------------------------------------------------------------------ events in

    def start(self, caps: Capabilities | None) -> list[UpstreamCommand]:
        """The first commands of the MOVE (or none: it is answered already)."""
        return self._run(preflight.start(self.state, caps))

    def on_untagged(self, line: bytes) -> bool:
        """Whether an untagged upstream response that arrived during the MOVE goes to the client."""
        state = self.state
        if state.target_asked and _target_status(state, line):
            if state.flags is not None:  # the guarded policy's flag check reads it too
                state.flags.on_untagged(line)
            return False
        if state.flags is not None and state.flags.on_untagged(line):
            return False
        step = state.step
        if step is Step.CAPABILITY:
            return not responses.is_capability(line)
        rights = responses.myrights(line) if step is Step.RIGHTS else None
        if rights is not None:
            state.rights = rights
            return False
        count = responses.count(line)
        if count is not None:
            return state.counts.count(*count, copying=step is Step.COPY)
        if step is Step.COPY or step is Step.PREFETCH:
            relayed = listing.on_untagged(state, line)
            if relayed is not None:
                return relayed
        elif (step is Step.FIND_DELETED or step is Step.RECHECK) and responses.is_search(line):
            state.deleted |= responses.search_set(line)
            return False
        # FETCH responses about messages whose flags we change are caused by our STOREs (with
        # CONDSTORE even .SILENT answers with MODSEQ); those about others are relayed.
        chunk = state.chunk
        uid = responses.fetch_uid(line)
        if step is Step.VERIFY and uid is not None and responses.only_uid(line):
            if uid in chunk.moving:
                chunk.remaining.add(uid)
            return False
        if step is Step.CHECK and uid in chunk.moving:
            chunk.remaining.add(uid)
            if responses.flagged_deleted(line):
                chunk.flagged.add(uid)
            return False
        if uid is not None and (uid in chunk.moving or uid in chunk.foreign):
            return False
        number = responses.expunge_number(line)
        if number is not None:
            told = state.counts.before_expunge(number)
            if told:
                self._emit(told)
        expunged = responses.expunge_count(line)
        if expunged:
            state.counts.shown_expunges(expunged)
        return True

    def on_tagged(self, reply: Tagged, caps: Capabilities | None) -> list[UpstreamCommand]:
        """Advance on the tagged reply to one of our commands (or the forwarded MOVE)."""
        state = self.state
        step = state.step
        if step is Step.FORWARD:
            state.outcome, state.step = Outcome.FORWARDED, Step.DONE
            return []
        ok = reply.status == b"OK"
        tag = reply.tag
        if tag == state.copy_tag:
            state.chunk.copied = reply
        elif tag == state.prefetch_tag:
            state.prefetching, state.prefetch_ok = False, ok
            state.set_check.judge()
        elif step is Step.VERIFY and not ok:
            state.chunk.remaining = set()  # cannot tell: the EXPUNGE itself succeeded
        elif step is Step.CHECK and not ok:
            state.checked = False  # cannot tell which messages are left
        elif step is Step.EXPUNGE and ok and code_name(reply.code) == b"HIGHESTMODSEQ":
            state.final_code = reply.code
        elif not ok and step not in _UNFAILING and state.failure is None:
            state.failure = Failure(step, reply.status, reply.code, reply.text)
        self._awaited -= 1
        if self._awaited:
            return []
        if step is Step.CAPABILITY:
            state.caps = caps or NO_CAPABILITIES  # none: no UIDPLUS
        return self._run(TRANSITIONS[state.policy][step](state))

    def recorded(self, durable: bool) -> list[UpstreamCommand]:
        """The phase :attr:`.MoveState.record` asked for is in the journal (``durable``), or
        cannot be and the MOVE may not go on without it (a chunk not copied yet is left
        alone); the commands that waited for it."""
        state, send = self.state, self._unrecorded
        assert state.record is not None and send is not None
        phase, state.record, self._unrecorded = state.record, None, None
        if not durable and phase is Phase.INTENT:
            return self._run(listing.journal_refused(state))
        return self._tagged(send)

    def on_rollback(
        self, error: str | None, *, attempted: bool = True, missing: frozenset[int] = frozenset()
    ) -> list[UpstreamCommand]:
        """The second session of :attr:`rollback_request` ended (:func:`.recovery.rolled_back`)."""
        assert self.state.step is Step.ROLLBACK
        return self._run(recovery.rolled_back(self.state, error, attempted, missing))

    def on_flags(self, result: Result, detail: str) -> list[UpstreamCommand]:
        """The copies' flags were checked (:attr:`flag_request`): now the tagged OK, which says
        so if they are not all there."""
        state = self.state
        code, text = state.held_reply
        state.flag_request, state.flags_result = None, (result, detail)
        if result in (Result.LOST, Result.UNKNOWN):
            text = replies.flags_lost(detail, checked=result is Result.LOST)
        return self._run(Reply(Outcome.MOVED, b"OK", code, text))

    # ------------------------------------------------------------------ the one loop

    def _run(self, next_: Next) -> list[UpstreamCommand]:
        """Follow the steps from ``next_`` until one sends commands (returned, tagged) or the
        MOVE waits for something else or is answered."""
        state = self.state
        while True:
            if isinstance(next_, Send):
                state.step = next_.step
                if next_.show:
                    self._emit(next_.show)
                if next_.commands and next_.record is not None and state.journal:
                    state.record, self._unrecorded = next_.record, next_
                    return []  # sent once recorded (:meth:`recorded`)
                if next_.commands:
                    return self._tagged(next_)
                function = TRANSITIONS[state.policy].get(next_.step)
                if function is None:  # waits for a second session
                    return []
                next_ = function(state)
            elif isinstance(next_, Reply):
                self._finish(next_)
                return []
            else:
                if next_ is Then.REFUSE_OUTSIDE:
                    self._warn_outside()
                next_ = TRANSITIONS[state.policy][next_](state)

    def _tagged(self, send: Send) -> list[UpstreamCommand]:
        """``send``'s commands, each under a new tag of this MOVE's; the tags whose answers the
        listing reads are noted in the state."""
        if send.step is Step.FORWARD:  # the client's own command, under the client's tag
            return send.commands
        state, new_tag = self.state, self._channel.tag
        roles = send.roles
        tagged: list[UpstreamCommand] = []
        for index, (first, *rest) in enumerate(send.commands):
            tag = new_tag(self)
            if roles:
                role = roles[index]
                if role is Role.PREFETCH:
                    state.prefetch_tag, state.prefetching = tag, True
                elif role is Role.DELETED:
                    state.deleted_tag = tag
                elif role is Role.COPY:
                    state.copy_tag = tag
            tagged.append([tag + b" " + first, *rest])
        self._awaited += len(tagged)
        return tagged

    def _finish(self, reply: Reply) -> None:
        """The tagged reply; held back (guarded) while a second session checks the copies'
        flags (:mod:`.copyflags`), as the client's session waits for it and so writes nothing."""
        state = self.state
        state.outcome = reply.outcome
        flags = state.flags
        if flags is not None and state.flags_result is None and reply.outcome is Outcome.MOVED:
            state.flag_request = flags.request(state.request.mailbox, state.source)
            if state.flag_request is not None:
                state.held_reply, state.step = (reply.code, reply.text), Step.COPY_FLAGS
                return
        held = state.counts.held()
        if held:
            self._emit(held)
        code_part = b"[" + reply.code + b"] " if reply.code else b""
        state.reply = state.request.tag + b" " + reply.status + b" " + code_part + reply.text
        self._emit(state.reply + b"\r\n")
        state.step = Step.DONE

    def _warn_outside(self) -> None:
        request = self.state.request
        self._log.warning(
            "%sMOVE %s: the server named messages outside the set (%s): MOVE refused",
            "UID " * request.uid, request.sequence_set[:60].decode(), self.state.set_check.outside,
        )  # fmt: skip


def _target_status(state: MoveState, line: bytes) -> bool:
    """Note the target's STATUS before the first COPY; whether ``line`` was it."""
    items = responses.status_counts(line)
    if items is None:
        return False
    state.target_asked = False
    state.target_uidnext = int(items.get(b"UIDNEXT", b"0"))
    empty = items.get(b"MESSAGES") == b"0"  # imap4d renews an empty mailbox's UIDVALIDITY
    state.target_validity = b"" if empty else items.get(b"UIDVALIDITY", b"")
    return True
