"""MOVE and UID MOVE: parsing the client's command and emulating it over COPY, STORE, UID EXPUNGE.

The emulation is a sans-IO state machine. The session hands it every upstream response that
arrives while it runs; it answers with the upstream commands to send next and writes what the
client must see into the client buffer. Its promise (RFC 6851 §3.3): each message is moved or left
where it was, the client sees what a native MOVE server sends, and nothing the proxy's own commands
cause (their tags, the COPY's tagged reply, FETCH responses of the STORE) leaks to the client.

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
from typing import TYPE_CHECKING

from ..wire import responses
from ..wire.capabilities import Capabilities
from ..wire.grammar import (
    NumberSet,
    Tagged,
    chunk_set,
    code_name,
    compress_uids,
    expand_uid_set,
)
from . import replies
from .bookkeeping import ClientCounts, SetCheck
from .copyflags import Result
from .guarded import GuardedSteps
from .listing import Listing
from .preflight import Preflight
from .recovery import Recovery
from .request import (
    MoveRequest,
    Policy,
    RollbackRequest,
    UpstreamCommand,
)
from .steps import Step
from .uidplus import UidplusSteps

if TYPE_CHECKING:
    from ..wire.commands import CommandChannel
    from .copyflags import FlagCheckRequest, FlagRecorder


class MoveEmulation:
    """One client MOVE from the moment earlier commands have completed to its tagged reply."""

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
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.request = request
        self.log = log  # the connection's
        self.source = source
        self.flags = flags  # guarded: notes what the COPY should keep (:mod:`.copyflags`)
        # the copies' flags for a second session to check before the tagged OK, and its verdict
        self.flag_request: FlagCheckRequest | None = None
        self.flags_result: tuple[Result, str] | None = None
        self._held_reply: tuple[bytes | None, bytes] = (None, b"")
        self.policy: Policy | None = None
        self.outcome = ""  # "moved", "copy-failed", "expunge-failed"... for logs and metrics
        self.rollback = ""  # "done", "failed" or "impossible" once copies had to be removed
        self.duplicates = 0  # messages this MOVE left in both mailboxes
        self.expunge_retries = 0  # chunks whose UID EXPUNGE removed too few, flagged again
        self.rights = rights  # MYRIGHTS on the source: given cached, or learned here
        self.step = Step.CAPABILITY
        self.channel = channel  # the proxy's commands on the upstream connection
        self._emit = emit
        self._max_set_bytes = max_set_bytes
        self.preflight = Preflight(self, read_only=read_only, guarded=guarded, source=source)
        self.counts = ClientCounts(exists, recent)
        self.set_check = SetCheck(request)
        self.caps = Capabilities(frozenset())
        self.listing = Listing(self, chunk_size)
        self.moved = 0  # messages moved by earlier chunks
        self.total = 0  # messages to move in all
        self.copy_result: Tagged | None = None
        self.moving: set[int] = set()  # UIDs confirmed copied, to flag and expunge
        self.deleted = NumberSet()  # messages carrying \Deleted (last search)
        self.foreign: set[int] = set()  # guarded: other messages whose \Deleted we cleared
        self.already_deleted: set[int] = set()  # moved ones the user had flagged
        self.uidplus = UidplusSteps(self)
        self.guarded = GuardedSteps(self)
        self.failure: Tagged | None = None
        self.failed_step = ""
        self.final_code: bytes | None = None  # HIGHESTMODSEQ of the last UID EXPUNGE
        self.recovery = Recovery(self)
        self.reply = b""  # the tagged reply, once sent

    @property
    def done(self) -> bool:
        return self.step is Step.DONE

    @property
    def expunges_in_runs(self) -> bool:
        """Whether the EXPUNGE responses may be relayed in runs, not looked at one by one: no
        EXISTS is held back that one of them might need first (``before_expunge``)."""
        return self.step is Step.EXPUNGE and not self.counts.holding_exists

    def expunged(self, count: int) -> None:
        """``count`` EXPUNGE responses were relayed to the client without passing through
        :meth:`on_untagged`."""
        self.counts.shown_expunges(count)

    @property
    def recent(self) -> int | None:
        """The RECENT count the client was last shown, if known."""
        return self.counts.recent

    @property
    def rollback_request(self) -> RollbackRequest | None:
        """Copies a second session must remove from the target, if the MOVE waits for it."""
        return self.recovery.request

    def on_rollback(
        self, error: str | None, *, attempted: bool = True, missing: frozenset[int] = frozenset()
    ) -> list[UpstreamCommand]:
        """The second session of :attr:`rollback_request` ended (:meth:`Recovery.on_rollback`)."""
        return self.recovery.on_rollback(error, attempted=attempted, missing=missing)

    @property
    def pending(self) -> bool:
        """Whether commands of this MOVE still await their tagged reply."""
        return self.channel.awaiting(self)

    # ------------------------------------------------------------------ starting

    def start(self, caps: Capabilities | None) -> list[UpstreamCommand]:
        """The first commands of the MOVE (or none: it is answered already)."""
        return self.preflight.start(caps)

    def _count_shown(self, number: int, exists: bool) -> bool:
        return self.counts.count(number, exists, copying=self.step is Step.COPY)

    # ------------------------------------------------------------------ upstream responses

    def on_untagged(self, line: bytes) -> bool:
        """Whether an untagged upstream response that arrived during the MOVE goes to the client."""
        if self.flags is not None and self.flags.on_untagged(line):
            return False
        step = self.step
        if step is Step.CAPABILITY:
            return not responses.is_capability(line)
        rights = responses.myrights(line) if step is Step.RIGHTS else None
        if rights is not None:
            self.rights = rights
            return False
        count = responses.count(line)
        if count is not None:
            return self._count_shown(*count)
        if step in (Step.COPY, Step.PREFETCH):
            relayed = self.listing.on_untagged(line)
            if relayed is not None:
                return relayed
        elif step in (Step.FIND_DELETED, Step.RECHECK) and responses.is_search(line):
            self.deleted |= responses.search_set(line)
            return False
        # FETCH responses about messages whose flags we change are caused by our STOREs (with
        # CONDSTORE even .SILENT answers with MODSEQ); those about others are relayed.
        uid = responses.fetch_uid(line)
        if step is Step.VERIFY and uid is not None and responses.only_uid(line):
            if uid in self.moving:
                self.recovery.remaining.add(uid)
            return False
        if step is Step.CHECK and uid in self.moving:
            self.recovery.remaining.add(uid)
            if responses.flagged_deleted(line):
                self.recovery.flagged.add(uid)
            return False
        if uid is not None and (uid in self.moving or uid in self.foreign):
            return False
        number = responses.expunge_number(line)
        if number is not None:
            told = self.counts.before_expunge(number)
            if told:
                self._emit(told)
        expunged = responses.expunge_count(line)
        if expunged:
            self.expunged(expunged)
        return True

    def on_tagged(self, reply: Tagged, caps: Capabilities | None) -> list[UpstreamCommand]:
        """Advance on the tagged reply to one of our commands (or the forwarded MOVE)."""
        if self.step is Step.FORWARD:
            self.outcome = "forwarded"
            self.step = Step.DONE
            return []
        ok = reply.status == b"OK"
        step = self.step
        if reply.tag == self.listing.copy_tag:
            self.copy_result = reply
        elif reply.tag == self.listing.prefetch_tag:
            self.listing.prefetch_ok = ok
            self.set_check.judge()
        elif step is Step.VERIFY and not ok:
            self.recovery.remaining = set()  # cannot tell: the EXPUNGE itself succeeded
        elif step is Step.CHECK and not ok:
            self.recovery.checked = False  # cannot tell which messages are left
        elif step is Step.EXPUNGE and ok and code_name(reply.code) == b"HIGHESTMODSEQ":
            self.final_code = reply.code
        elif not ok and step not in _UNFAILING and self.failure is None:
            self.failure = reply
            self.failed_step = step.value
        if self.pending:
            return []
        if step is Step.CAPABILITY:
            return self.preflight.begin(caps or Capabilities(frozenset()))  # none: no UIDPLUS
        return _NEXT[step](self)

    def answers(self, tag: bytes) -> bool:
        """Whether a tagged reply with ``tag`` is for this MOVE: one of the proxy's commands, or
        the client's MOVE forwarded under the client's tag."""
        mine = self.channel.owner(tag) is self
        return mine or (self.step is Step.FORWARD and tag == self.request.tag)

    # ------------------------------------------------------------------ the steps

    def _after_copy(self) -> list[UpstreamCommand]:
        result = self.copy_result
        assert result is not None
        if result.status != b"OK":
            # Nothing was copied in this chunk, so nothing else is done.
            self.outcome = "copy-failed"
            if not self.moved:  # the client gets the COPY's answer, as from a native MOVE
                self.finish(result.status, result.code, result.text)
                return []
            self.failure, self.failed_step = result, "copy"
            self.moving = set()
            return self.recovery.report()
        copyuid = result.code if code_name(result.code) == b"COPYUID" else None
        if copyuid is not None and b"0" in copyuid.split()[2:]:
            # UW-IMAP's answer to a COPY that matched no message (RFC 4315 has no UID 0):
            # nothing was copied, whatever the listing named.
            return self._copied_nothing()
        if copyuid is not None and len(copyuid.split()) == 4:
            _, _, sources, targets = copyuid.split()
            self.recovery.targets = dict(
                zip(expand_uid_set(sources), expand_uid_set(targets), strict=False)
            )
            self.moving = set(self.recovery.targets)
            self.recovery.target_validity = copyuid.split()[1]
            self.set_check.copied(
                NumberSet.of(self.moving), self.listing.copy_set, self.counts.exists
            )
            if self.set_check.outside:  # its copies are removed, and the client is told why
                return self.recovery.refuse_outside()
            self._emit(b"* OK [" + copyuid + b"] Moved UIDs.\r\n")
        elif self.set_check.outside:
            return self.recovery.refuse_outside()
        if not self.moving:
            self.moving = set(self.set_check.prefetched)
        if not self.moving:
            return self._copied_nothing()
        self.already_deleted = {uid for uid in self.moving if uid in self.deleted}
        self.total = self.total or len(self.moving)
        return self.steps.after_copy()

    def _copied_nothing(self) -> list[UpstreamCommand]:
        """The COPY (of this chunk) copied no message: the next chunk, or the tagged reply."""
        self.moving = set()
        if not self.moved:
            self.flags = None  # no copy whose flags to check
        if self.moved or self.listing.left:
            return self.recovery.chunk_done()
        self.outcome = "moved"
        self.finish(b"OK", None, replies.NO_MESSAGES)
        return []

    @property
    def steps(self) -> UidplusSteps | GuardedSteps:
        """The steps after the COPY, as the policy has them."""
        return self.guarded if self.policy is Policy.GUARDED else self.uidplus

    def per_set(self, template: bytes, uids: set[int]) -> list[bytes]:
        """``template`` once per UID set, split so that no command line grows too long."""
        sets = chunk_set(compress_uids(list(uids)), self._max_set_bytes)
        return [template % uid_set for uid_set in sets]

    def own(self, command: UpstreamCommand) -> UpstreamCommand:
        """``command`` under a new tag of this MOVE's, awaited with the current step."""
        return self.channel.own(command, self)

    def send(self, step: Step, commands: list[bytes]) -> list[UpstreamCommand]:
        """Tag and send ``commands``, pipelined: together they make up ``step``."""
        return self.send_framed(step, [[command] for command in commands])

    def send_framed(self, step: Step, commands: list[UpstreamCommand]) -> list[UpstreamCommand]:
        self.step = step
        tagged: list[UpstreamCommand] = []
        for command in commands:
            tagged.append(self.own(command))
        if not tagged:
            return _NEXT[step](self)
        return tagged

    @property
    def waits_for_second_session(self) -> bool:
        return self.step in (Step.ROLLBACK, Step.COPY_FLAGS)

    def on_flags(self, result: Result, detail: str) -> list[UpstreamCommand]:
        """The copies' flags were checked (:attr:`flag_request`): now the tagged OK, which says
        so if they are not all there."""
        code, text = self._held_reply
        self.flag_request, self.flags_result = None, (result, detail)
        if result in (Result.LOST, Result.UNKNOWN):
            text = replies.flags_lost(detail, checked=result is Result.LOST)
        self.finish(b"OK", code, text)
        return []

    def finish(self, status: bytes, code: bytes | None, text: bytes) -> None:
        if self.flags is not None and self.flags_result is None and self.outcome == "moved":
            # Guarded: the copies' flags first, by a second session (:mod:`.copyflags`), while
            # the client's session waits for this reply and so writes nothing.
            self.flag_request = self.flags.request(self.request.mailbox, self.source)
            if self.flag_request is not None:
                self._held_reply, self.step = (code, text), Step.COPY_FLAGS
                return
        held = self.counts.held()
        if held:
            self._emit(held)
        code_part = b"[" + code + b"] " if code else b""
        self.reply = self.request.tag + b" " + status + b" " + code_part + text
        self._emit(self.reply + b"\r\n")
        self.step = Step.DONE


_NEXT: dict[Step, Callable[[MoveEmulation], list[UpstreamCommand]]] = {
    Step.COPY: MoveEmulation._after_copy,
    Step.FIND_SYNC: lambda emulation: emulation.guarded.search_deleted(Step.FIND_DELETED),
    Step.RECHECK_SYNC: lambda emulation: emulation.guarded.search_deleted(Step.RECHECK),
    Step.FIND_DELETED: lambda emulation: emulation.guarded.after_find_deleted(),
    Step.FLAG: lambda emulation: emulation.steps.after_flag(),
    Step.RECHECK: lambda emulation: emulation.guarded.after_recheck(),
    Step.EXPUNGE: lambda emulation: emulation.steps.after_expunge(),
    Step.RESTORE: lambda emulation: emulation.guarded.verify(),
    Step.VERIFY: lambda emulation: emulation.recovery.chunk_done(),
    Step.UNDO: lambda emulation: emulation.recovery.report(),
    Step.RIGHTS: lambda emulation: emulation.preflight.check_rights(),
    Step.PREFETCH: lambda emulation: emulation.listing.after_prefetch(),
    Step.UNFLAG: lambda emulation: emulation.recovery.check(),
    Step.CHECK: lambda emulation: emulation.recovery.after_check(),
}
# Steps whose failure does not make the MOVE fail: they only gather facts (or, for UNFLAG, the
# CHECK that follows finds out what the failure left behind).
_UNFAILING = frozenset(
    (Step.CAPABILITY, Step.RIGHTS, Step.PREFETCH, Step.COPY, Step.CHECK, Step.UNFLAG)
)
