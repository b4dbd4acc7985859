"""Flags that a server's COPY loses: detected after a guarded MOVE, and restored where it is safe.

GNU Mailutils imap4d's COPY drops every flag, so a MOVE emulated over it would mark the moved
messages unread and unflagged. Native MOVE and every UIDPLUS server tested keep them. Only the
guarded policy (no UIDPLUS, hence no COPYUID to say which copy is which) is concerned:

1. While the MOVE runs (no extra round trip, nothing the client sees):
   ``STATUS target (UIDNEXT UIDVALIDITY MESSAGES)`` pipelined with the listing step, and
   ``UID FETCH chunk (UID FLAGS INTERNALDATE)`` pipelined right before each chunk's ``UID COPY``.
   :class:`FlagRecorder` takes their answers out of the stream; the move only relays the rest.
2. Once everything is moved, before the MOVE's tagged OK (the client waits one more round trip
   and then sees the copies as they should be), if a moved message carried a flag worth
   keeping, a second session of the same user (:class:`FlagRestore`, like a rollback's) selects
   the target, checks its UIDVALIDITY (unless the target was empty: imap4d gives an empty
   mailbox a new UIDVALIDITY each time it is looked at, until a message is written to it), and
   fetches the messages from the old UIDNEXT on.
3. If and only if the first of them match the copied messages one by one, in UID order, by
   INTERNALDATE, the flags missing on them are added with ``UID STORE +FLAGS`` (never
   ``-FLAGS``, never ``\\Deleted`` or ``\\Recent``, only flags the target's PERMANENTFLAGS
   allow), and the FETCH responses of that STORE say whether they took. The client's selected
   mailbox is only EXAMINEd, never written: imap4d's two sessions would each write their own
   view of it over the other's (the client's session would drop the restored flags, and the
   second session, at its LOGOUT, the \\Deleted flags the MOVE had put back). Otherwise the
   loss is only reported.
4. The second session ends only once the server has closed its connection: imap4d and UW-IMAP
   write a session's view of an mbox file as the session ends, even after answering LOGOUT. The
   client's session is held meanwhile (the MOVE has no tagged reply yet), so that no two
   sessions ever write the same mailbox file at once (a stale one would lose or duplicate mail).

The result (:class:`Result`) goes into the MOVE's log line (``flags=...``), the
``imapmoveproxy_copy_flags_total{result}`` metric and, when the flags are not all there, the
tagged OK's text.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from ..wire import responses
from ..wire.capabilities import Capabilities
from ..wire.grammar import chunk_set, compress_uids
from .request import UpstreamCommand, status_command
from .rollback import Credentials, Phase, SecondSession

# Flags a copy never gets back: \Recent is the server's own, \Deleted would mark the copy for
# expunging.
_NEVER = frozenset((b"\\recent", b"\\deleted"))
_SYSTEM = frozenset((b"\\answered", b"\\flagged", b"\\seen", b"\\draft"))


class Result(enum.Enum):
    """What became of the flags of a guarded MOVE's messages, in logs and metrics."""

    KEPT = "kept"  # every copy had its flags: the server's COPY keeps them
    RESTORED = "restored"  # some copies lacked flags; they were added back
    LOST = "lost"  # some copies lack flags, and they were not (all) added back
    UNKNOWN = "unknown"  # the copies could not be checked (no second session, target changed)


def _kept(flags: frozenset[bytes]) -> frozenset[bytes]:
    """The flags a copy should carry too."""
    return frozenset(flag for flag in flags if flag.lower() not in _NEVER)


@dataclass(slots=True, frozen=True)
class Copied:
    """A message as its copy should look: its INTERNALDATE (which COPY keeps) and its flags."""

    date: bytes
    flags: frozenset[bytes]


@dataclass(slots=True, frozen=True)
class FlagCheckRequest:
    """The copies a guarded MOVE made, for a second session to check after the MOVE."""

    mailbox: bytes  # the target
    uidvalidity: bytes | None  # of the target before the COPY; None if it was empty
    uidnext: int  # of the target before the COPY: every copy has a UID from there on
    copied: tuple[Copied, ...]  # in the order of their UIDs in the source
    restore: bool  # False: only check (the target is the client's selected mailbox)


class FlagRecorder:
    """Notes, during a guarded MOVE, the target's UIDNEXT and the flags of the messages just
    before they are copied. The move sends its commands and hands it every untagged response
    first: those it answers True for are its own and go nowhere else."""

    def __init__(self) -> None:
        self._asked: set[int] = set()  # UIDs of the FETCHes sent
        self._seen: dict[int, Copied] = {}
        self._status_asked = False
        self._uidnext: int | None = None
        self._uidvalidity = b""
        self._messages: int | None = None

    def status_command(self, mailbox: bytes, caps: Capabilities) -> UpstreamCommand:
        """``STATUS mailbox (UIDNEXT UIDVALIDITY MESSAGES)``; sent once, before anything is
        copied."""
        self._status_asked = True
        return status_command(mailbox, caps)

    def fetch_command(self, uids: Sequence[int]) -> bytes:
        """``UID FETCH uids (UID FLAGS INTERNALDATE)``, pipelined before their ``UID COPY``."""
        self._asked.update(uids)
        return (
            b"UID FETCH " + b",".join(compress_uids(list(uids))) + b" (UID FLAGS INTERNALDATE)\r\n"
        )

    def on_untagged(self, line: bytes) -> bool:
        """Whether ``line`` answers one of the recorder's commands (and is then noted).

        A MOVE runs alone (every earlier client command has completed), so a STATUS response
        answers its STATUS; unsolicited FETCH responses never carry INTERNALDATE."""
        items = responses.status_counts(line) if self._status_asked else None
        if items is not None:
            if b"UIDNEXT" in items:
                self._uidnext = int(items[b"UIDNEXT"])
            self._uidvalidity = items.get(b"UIDVALIDITY", b"")
            self._messages = int(items[b"MESSAGES"]) if b"MESSAGES" in items else None
            return True
        uid = responses.fetch_uid(line)
        date = responses.internal_date(line)
        flags = responses.flags(line)
        if uid is None or uid not in self._asked or date is None or flags is None:
            return False
        self._seen[uid] = Copied(date, _kept(flags))
        return True

    @property
    def seen(self) -> dict[int, Copied]:
        """The messages noted so far, by UID in the source."""
        return self._seen

    def request(self, mailbox: bytes, selected: bytes | None) -> FlagCheckRequest | None:
        """What a second session should check once the MOVE has moved everything it listed
        (``selected``: the client's selected mailbox, if known); None if no moved message
        carried a flag to keep, or the target's UIDNEXT is unknown."""
        if self._uidnext is None or not any(copied.flags for copied in self._seen.values()):
            return None
        copied = tuple(self._seen[uid] for uid in sorted(self._seen))
        other = selected is not None and not _same_mailbox(selected, mailbox)
        validity = None if self._messages == 0 else self._uidvalidity
        return FlagCheckRequest(mailbox, validity, self._uidnext, copied, other)


def _same_mailbox(one: bytes, other: bytes) -> bool:
    inbox = one.upper() == b"INBOX" and other.upper() == b"INBOX"
    return inbox or one == other


class FlagRestore(SecondSession):
    """The second session of a :class:`FlagCheckRequest`: select the target, fetch the messages
    from its old UIDNEXT on, add the missing flags where the copies are identified for sure,
    log out. :meth:`outcome` says what it found and did."""

    def __init__(
        self, request: FlagCheckRequest, credentials: Credentials, max_set_bytes: int = 8192
    ) -> None:
        super().__init__(request.mailbox, request.uidvalidity, credentials)
        self.request = request
        # Only looked at, never written: imap4d writes a read-write session's whole view of
        # the mailbox when it ends, over what the client's own session changed meanwhile.
        self._examine = not request.restore
        self.result = Result.UNKNOWN
        self.detail = ""  # why, when it is not plain
        self._max_set_bytes = max_set_bytes
        self._found: dict[int, Copied] = {}  # UID in the target -> what it looks like
        self._permanent: frozenset[bytes] | None = None  # lower-cased PERMANENTFLAGS
        self._missing: dict[int, frozenset[bytes]] = {}  # copy's UID -> flags it lacks
        self._judged = False  # result and detail hold the verdict

    def outcome(self) -> tuple[Result, str]:
        """The result and what explains it, once the session has ended (however it ended)."""
        if self._judged:
            return self.result, "; ".join(filter(None, (self.detail, self.error)))
        if self._missing:  # a STORE was refused or cut off
            return Result.LOST, self.error or "the second session did not finish"
        return Result.UNKNOWN, self.error or "the second session did not finish"

    def _untagged(self, line: bytes) -> None:
        permanent = responses.permanent_flags(line)
        if permanent is not None:
            self._permanent = permanent
            return
        uid, flags = responses.fetch_uid(line), responses.flags(line)
        date = responses.internal_date(line)
        if uid is None or flags is None:
            return
        if self._phase is Phase.FIND and date is not None and uid >= self.request.uidnext:
            self._found[uid] = Copied(date, flags)
        elif self._phase is Phase.FLAG and uid in self._missing:
            lower = {flag.lower() for flag in flags}
            if all(flag.lower() in lower for flag in self._missing[uid]):
                del self._missing[uid]  # the STORE's answer shows them all

    def _advance(self) -> None:
        phase = self._phase
        if phase is Phase.SELECT:
            command = b"UID FETCH %d:* (UID FLAGS INTERNALDATE)\r\n" % self.request.uidnext
            self._send(Phase.FIND, [[command]])
        elif phase is Phase.FIND:
            self._compare()
        elif phase is Phase.FLAG:
            if self._missing:
                uids = b",".join(compress_uids(list(self._missing))).decode()
                self._finish(Result.LOST, f"the flags did not take on UIDs {uids}")
            else:
                self._finish(Result.RESTORED, "")

    def _compare(self) -> None:
        """Pair the copies with the first messages from the old UIDNEXT on, or touch nothing."""
        wanted = self.request.copied
        found = sorted(self._found.items())[: len(wanted)]
        if len(found) < len(wanted) or any(
            copy.date != source.date for (_, copy), source in zip(found, wanted, strict=True)
        ):
            self._finish(
                Result.UNKNOWN,
                f"the target's new messages ({len(self._found)}) do not match the "
                f"{len(wanted)} copied: nothing stored",
            )
            return
        for (uid, copy), source in zip(found, wanted, strict=True):
            has = {flag.lower() for flag in copy.flags}
            lacking = frozenset(flag for flag in _kept(source.flags) if flag.lower() not in has)
            if lacking:
                self._missing[uid] = lacking
        if not self._missing:
            self._finish(Result.KEPT, "")
            return
        if not self.request.restore:
            self._finish(Result.LOST, "not restored in the client's selected mailbox")
            return
        storable = {uid: self._storable(flags) for uid, flags in self._missing.items()}
        if storable != self._missing:
            self._finish(Result.LOST, "the target does not keep these flags")
            return
        groups: dict[frozenset[bytes], list[int]] = {}
        for uid, flags in self._missing.items():
            groups.setdefault(flags, []).append(uid)
        commands: list[UpstreamCommand] = []
        for flags, uids in groups.items():
            flag_list = b" ".join(sorted(flags))
            for uid_set in chunk_set(compress_uids(uids), self._max_set_bytes):
                commands.append([b"UID STORE %s +FLAGS (%s)\r\n" % (uid_set, flag_list)])
        self._send(Phase.FLAG, commands)

    def _storable(self, flags: frozenset[bytes]) -> frozenset[bytes]:
        """Those of ``flags`` that the target keeps and that can be sent as atoms."""
        permanent = self._permanent if self._permanent is not None else _SYSTEM
        return frozenset(
            flag
            for flag in flags
            if responses.sendable_flag(flag)
            and flag.lower() not in _NEVER
            and (flag.lower() in permanent or (b"\\*" in permanent and flag[:1] != b"\\"))
        )

    def _finish(self, result: Result, detail: str) -> None:
        """The verdict is in: log out, and end once the server has closed the connection
        (imap4d writes the flags to its mailbox file at the end of the session)."""
        self.result, self.detail, self._judged = result, detail, True
        self._logout()
