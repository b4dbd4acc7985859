"""What a session asks of its caller: typed effects, queued as they happen.

The session is sans-IO: it cannot start a TLS handshake, take a mailbox's lock, open a second
upstream connection or end the connection. It queues an effect for each, and the caller takes
them all after every step (:meth:`.session.Session.take_effects`) and acts on each in order:

* :class:`StartTls`: the client's STARTTLS had its OK; once that is delivered, the handshake
  (then :meth:`~.session.Session.tls_established`).
* :class:`MoveReady`: a MOVE waits only for the lock of its source mailbox (:attr:`key`); the
  caller takes it, then :meth:`~.session.Session.start_move` (or
  :meth:`~.session.Session.refuse_move` if it cannot be had), and gives it back once the MOVE
  has had its tagged reply (:class:`MoveFinished`).
* :class:`RunRollback`: a second session that removes a failed MOVE's copies, reporting to
  :meth:`~.session.Session.rollback_finished`.
* :class:`CheckFlags`: a second session that checks (and restores) the flags of a guarded MOVE's
  copies, reporting to :meth:`~.session.Session.flag_check_finished`.
* :class:`RecordMove`: a MOVE waits until its journal entry is durable, then
  :meth:`~.session.Session.move_recorded`; :class:`ForgetMove`: the entry may go.
* :class:`LookupJournal`: the client's login reply waits for the user's unfinished journal
  entries, under their mailboxes' locks (:meth:`~.session.Session.resume`), then for their
  recovery (:mod:`.resumes`).
* :class:`MoveFinished`: a MOVE had its tagged reply (its metrics).
* :class:`Close`: the connection must end once the client has its BYE.

Each is queued once: an effect not acted on is not asked for again.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..journal.entry import Entry
from ..move.copyflags import FlagCheckRequest
from ..move.request import RollbackRequest
from ..move.rollback import Credentials


@dataclass(slots=True, frozen=True)
class StartTls:
    """Start TLS with the client once its STARTTLS's OK has been delivered."""


@dataclass(slots=True, frozen=True)
class MoveReady:
    """A MOVE waits only for its source mailbox's lock (every earlier command has completed).

    The lock keeps two connections from emulating MOVEs out of the same mailbox at once: both
    COPYs could succeed before either expunges, leaving a message in two targets (a native MOVE
    does no better: Dovecot 2.3, four sessions moving the same messages, left each of them four
    times)."""

    key: bytes  # the selected mailbox's UIDVALIDITY


@dataclass(slots=True, frozen=True)
class RunRollback:
    """Run the second session that removes a failed MOVE's copies."""

    request: RollbackRequest
    credentials: Credentials


@dataclass(slots=True, frozen=True)
class CheckFlags:
    """Run the second session that checks the flags of a guarded MOVE's copies."""

    request: FlagCheckRequest
    credentials: Credentials


@dataclass(slots=True, frozen=True)
class FinishedMove:
    """A MOVE answered, for the metrics."""

    policy: str
    outcome: str
    rollback: str = ""  # "", "done", "failed", "impossible"
    duplicates: int = 0  # messages left in both mailboxes
    expunge_retries: int = 0  # UID EXPUNGEs that removed too few and were tried once more
    flags: str = ""  # guarded: what became of the copies' flags (copyflags.Result), if checked


@dataclass(slots=True, frozen=True)
class MoveFinished:
    """A MOVE had its tagged reply: its lock may go, its metrics are due."""

    move: FinishedMove


@dataclass(slots=True, frozen=True)
class RecordMove:
    """Write ``entry`` to the journal; the MOVE goes on once it is durable."""

    entry: Entry


@dataclass(slots=True, frozen=True)
class ForgetMove:
    """The MOVE of this journal entry had its tagged reply: remove the entry."""

    entry_id: str


@dataclass(slots=True, frozen=True)
class LookupJournal:
    """The server accepted ``user``'s login: find the user's unfinished journal entries."""

    user: bytes


@dataclass(slots=True, frozen=True)
class Close:
    """End the connection, once the client has read its BYE."""

    reason: str


Effect = (
    StartTls
    | MoveReady
    | RunRollback
    | CheckFlags
    | RecordMove
    | ForgetMove
    | LookupJournal
    | MoveFinished
    | Close
)
