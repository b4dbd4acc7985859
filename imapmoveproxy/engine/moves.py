"""A session's MOVEs: from the collected command to its tagged reply, and what is counted.

MOVE is a barrier: the collected MOVE waits until every earlier command has its tagged reply
(:meth:`MoveRunner.announce` then queues :class:`.effects.MoveReady`); the caller then takes the
source mailbox's lock and starts it. While it runs, the :class:`~..move.emulation.MoveEmulation`
gets the upstream responses; a second session, if it asks for one, is queued for the caller to
run (:class:`.effects.RunRollback`, :class:`.effects.CheckFlags`). Once it is answered, its state
(:class:`~..move.state.MoveState`) gives the log line and the metrics
(:class:`.effects.MoveFinished`).
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING, Protocol

from ..journal.entry import Entry, Phase
from ..move.copyflags import FlagRecorder, Result
from ..move.emulation import MoveEmulation
from ..move.request import MoveRequest, UpstreamCommand
from ..move.rollback import Credentials
from ..move.state import MoveState, Outcome
from ..wire.capabilities import Capabilities
from ..wire.commands import CommandChannel
from .effects import (
    CheckFlags,
    Effect,
    FinishedMove,
    ForgetMove,
    MoveFinished,
    MoveReady,
    RecordMove,
    RunRollback,
)
from .inflight import CommandsInFlight
from .mailbox import SelectedMailbox
from .output import Output

if TYPE_CHECKING:
    from .settings import Counters, SessionSettings

# The outcome counted for a MOVE refused because its lock could not be had, by response code.
LOCK_REFUSALS = {b"INUSE": "lock-timeout", b"UNAVAILABLE": "lock-unavailable"}


class MoveHost(Protocol):
    """What the MOVEs need of their session beyond its parts: the state they read, the effects
    they queue for the caller, and the end of a MOVE."""

    @property
    def authenticated(self) -> bool: ...

    @property
    def caps(self) -> Capabilities | None: ...

    @property
    def credentials(self) -> Credentials | None: ...

    @property
    def user(self) -> bytes | None: ...

    def queue(self, effect: Effect) -> None: ...

    def after_move(self) -> None: ...


class MoveRunner:
    """The MOVE waiting for earlier commands, the one running, and those answered."""

    __slots__ = (
        "_announced", "_channel", "_counters", "_entry", "_host", "_inflight", "_log", "_mailbox",
        "_output", "_recording", "_second_taken", "_settings", "running", "waiting",
    )  # fmt: skip

    def __init__(
        self,
        host: MoveHost,
        settings: SessionSettings,
        output: Output,
        channel: CommandChannel,
        inflight: CommandsInFlight,
        mailbox: SelectedMailbox,
        counters: Counters,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._host, self._settings = host, settings
        self._output, self._channel, self._inflight = output, channel, inflight
        self._mailbox, self._counters, self._log = mailbox, counters, log
        self.waiting: MoveRequest | None = None  # collected, not started
        self.running: MoveEmulation | None = None
        self._announced = False  # the waiting MOVE's MoveReady was queued
        self._second_taken = False  # the running MOVE's second session was handed out
        self._entry: Entry | None = None  # the running MOVE's journal entry, once recorded
        self._recording = False  # its RecordMove was queued, and not answered yet

    @property
    def waits_for_upstream(self) -> bool:
        """The running MOVE waits for the client's upstream connection (not for a second
        session of its own)."""
        running = self.running
        return running is not None and not running.waits_for_second_session

    def announce(self) -> None:
        """Queue :class:`.effects.MoveReady` once the waiting MOVE waits only for :meth:`start`:
        every earlier command has completed."""
        if self.waiting is None or self._announced:
            return
        if not self._inflight.count and self.running is None:
            self._announced = True
            self._host.queue(MoveReady(self._mailbox.uidvalidity))

    def collected(self, request: MoveRequest) -> None:
        self.waiting = request
        self._announced = False

    def start(self) -> None:
        """Begin the waiting MOVE."""
        host, request = self._host, self.waiting
        assert request is not None
        self.waiting, self._announced = None, False
        if not host.authenticated:  # as a native server answers a MOVE before login
            bad = b" BAD Error in IMAP command received by server.\r\n"
            self._output.reply(request.tag + bad)
            return
        mailbox, settings = self._mailbox, self._settings
        # Recorded only where recovery can find its way back: the user and the source known.
        journal = settings.journal and None not in (host.user, mailbox.name, mailbox.uidvalidity)
        self.running = MoveEmulation(
            request,
            read_only=mailbox.read_only,
            guarded=settings.guarded,
            channel=self._channel,
            emit=self._output.reply,
            max_set_bytes=settings.max_set_bytes,
            chunk_size=settings.chunk_size,
            source=mailbox.name,
            rights=mailbox.rights,
            exists=mailbox.exists,
            recent=mailbox.recent,
            flags=FlagRecorder() if settings.guarded else None,
            journal=journal,
            log=self._log,
        )
        self.step(self.running.start(host.caps))

    def refuse(self, code: bytes, text: bytes) -> None:
        """Answer the waiting MOVE with a tagged NO instead of starting it."""
        request = self.waiting
        assert request is not None
        self.waiting, self._announced = None, False
        self._output.reply(request.tag + b" NO [" + code + b"] " + text + b"\r\n")
        kind = b"UID MOVE" if request.uid else b"MOVE"
        self._count(kind, request.sequence_set, "none", LOCK_REFUSALS.get(code, "lock-refused"))
        self._host.after_move()

    def forwarded(self, name: bytes, arguments: bytes, caps: Capabilities | None) -> None:
        """A MOVE the upstream executes itself (it has MOVE, or no UIDPLUS and "refuse")."""
        assert caps is not None
        policy = "native" if caps.native_move else "refused"
        self._count(name, b"".join(arguments.split(b" ", 2)[1:2]), policy, "forwarded")

    def rollback_finished(self, error: str | None, missing: frozenset[int]) -> None:
        move = self.running
        assert move is not None and self._second_taken
        self._second_taken = False
        if error is not None:
            self._log.warning("rollback of a failed MOVE failed: %s", error)
        self.step(move.on_rollback(error, missing=missing))

    def recorded(self, durable: bool) -> None:
        """The journal entry of :class:`.effects.RecordMove` is durable, or cannot be."""
        move = self.running
        assert move is not None and self._recording
        self._recording = False
        self.step(move.recorded(durable))

    def _record(self, state: MoveState) -> None:
        """Queue the journal entry for the phase the MOVE waits for."""
        phase, chunk, entry = state.record, state.chunk, self._entry
        if phase is Phase.COPIED and entry is not None:
            seen = state.flags.seen if state.flags is not None else {}
            originals = {
                uid: (copied.date, tuple(sorted(copied.flags)))
                for uid, copied in seen.items()
                if uid in chunk.moving
            }
            entry = entry.copied(
                frozenset(chunk.already_deleted), dict(chunk.targets), chunk.target_validity,
                originals,
            )  # fmt: skip
        else:
            host, mailbox = self._host, self._mailbox
            assert host.user is not None and mailbox.name is not None and chunk.uids is not None
            assert state.policy is not None and mailbox.uidvalidity is not None
            entry = Entry(
                entry.id if entry is not None else secrets.token_hex(8),
                host.user, state.policy.value, mailbox.name, mailbox.uidvalidity,
                tuple(chunk.uids), state.request.mailbox, state.target_validity,
                state.target_uidnext, time.time(),
            )  # fmt: skip
        self._entry, self._recording = entry, True
        self._host.queue(RecordMove(entry))

    def flags_checked(self, result: Result, detail: str) -> None:
        """The second session of :class:`.effects.CheckFlags` ended: the MOVE's tagged reply."""
        move = self.running
        assert move is not None and self._second_taken
        self._second_taken = False
        self.step(move.on_flags(result, detail))

    def step(self, commands: list[UpstreamCommand]) -> None:
        """Send the running MOVE's next commands; finish it if it is answered."""
        host, move = self._host, self.running
        if commands:
            self._channel.send(commands)
        if move is None:
            return
        if move.state.record is not None and not self._recording:
            self._record(move.state)
        if host.credentials is None and (move.rollback_request or move.flag_request):
            off = self._settings.rollback == "off"
            reason = "second sessions are off" if off else "no login to replay for a second session"
            if move.rollback_request is not None:
                self._channel.send(move.on_rollback(reason, attempted=False))
            else:
                move.on_flags(Result.UNKNOWN, reason)
        if not move.done:
            credentials = host.credentials
            if self._second_taken or credentials is None:
                return
            if move.rollback_request is not None:
                self._second_taken = True
                host.queue(RunRollback(move.rollback_request, credentials))
            elif move.flag_request is not None:
                self._second_taken = True
                host.queue(CheckFlags(move.flag_request, credentials))
            return
        self.running = None
        state = move.state
        if self._entry is not None:
            host.queue(ForgetMove(self._entry.id))
            self._entry = None
        moved = state.outcome is Outcome.MOVED
        self._mailbox.rights = state.rights if moved else None
        self._mailbox.recent = state.counts.recent  # it may have shown a RECENT held back
        policy = state.policy.value if state.policy else "none"
        kind = b"UID MOVE" if state.request.uid else b"MOVE"
        self._count(kind, state.request.sequence_set, policy, state.outcome_name(), state)
        host.after_move()

    def _count(
        self,
        kind: bytes,
        sequence_set: bytes,
        policy: str,
        outcome: str,
        state: MoveState | None = None,
    ) -> None:
        """Log a MOVE answered, and count it for the connection's summary and the metrics."""
        rollback, duplicates, retries, flags, detail = "", 0, 0, "", ""
        level = logging.INFO
        if state is not None:
            result = state.rollback_result
            rollback = result.value if result is not None else ""
            duplicates, retries = state.duplicates, state.expunge_retries
            if state.flags_result is not None:  # guarded: the copies' flags
                flags_result, detail = state.flags_result
                flags = flags_result.value
                if flags_result in (Result.LOST, Result.UNKNOWN):
                    level = logging.WARNING
        log = self._log
        if log.isEnabledFor(level):  # the line is built only to be logged
            shown = sequence_set[:60] + (b"..." if len(sequence_set) > 60 else b"")
            line = (
                f"{kind.decode()} {shown.decode('ascii', 'replace')}: "
                f"policy={policy} outcome={outcome}"
                + (f" rollback={rollback}" if rollback else "")
                + (f" expunge_retries={retries}" if retries else "")
                + (f" flags={flags}" + (f" ({detail})" if detail else "") if flags else "")
            )
            log.log(level, "%s", line)
        if duplicates and state is not None:
            log.warning("MOVE left messages in both mailboxes: %s", state.reply.decode())
        moves = self._counters.moves
        key = f"{policy}-{outcome}"
        moves[key] = moves.get(key, 0) + 1
        finished = FinishedMove(policy, outcome, rollback, duplicates, retries, flags)
        self._host.queue(MoveFinished(finished))
