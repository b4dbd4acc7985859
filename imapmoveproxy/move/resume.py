"""Finishing, at the user's next login, the MOVEs a dead proxy left half done (sans-IO).

The journal (:mod:`..journal`) holds, per MOVE chunk, what was to be moved and how far it got.
:class:`Resume` runs in the user's own new upstream session, after the server accepted the
login and before the client hears so (the client's session is held: on mbox servers no other
session of the user writes the mailboxes meanwhile), under each source mailbox's MOVE lock. For
each entry:

1. ``SELECT`` the source (its UIDVALIDITY must be the recorded one), ``UID FETCH`` the chunk's
   originals ``(UID FLAGS INTERNALDATE)``.
2. ``SELECT`` the target (the same check, unless it was empty), ``UID FETCH`` every message from
   the recorded UIDNEXT on. A copy is the one COPYUID named, or else the first unpaired new
   message with the original's INTERNALDATE, in UID order (COPY keeps it, and copies in UID
   order: :mod:`.copyflags` pairs them the same way). Flags a copy lacks (imap4d's COPY drops
   them all) are added back.
3. Every original still there whose copy is there is flagged and expunged (``UID EXPUNGE``, or
   without UIDPLUS the guarded way: other messages' ``\\Deleted`` set aside around ``EXPUNGE``);
   an original whose copy is gone keeps (or gets back) its flags, ``\\Deleted`` only if the user
   had set it. If only some copies are there while the COPY's answer was never seen (a COPY that
   is not atomic), the copies are removed instead (with UIDPLUS; otherwise the entry is kept).
4. Nothing selected is left behind (``UNSELECT``, or ``EXAMINE`` and ``CLOSE``, which never
   expunges a mailbox opened read-only).

Run twice, it does nothing the second time: originals gone are not looked for again. A changed
UIDVALIDITY, a mailbox that cannot be opened or a server that refuses a step leaves the entry for
an operator (:attr:`Verdict.kept`).
"""

from __future__ import annotations

import enum
from collections.abc import Generator, Iterable
from dataclasses import dataclass

from ..journal.entry import Entry, Phase
from ..wire import responses
from ..wire.capabilities import Capabilities
from ..wire.conversation import Conversation, ConversationError
from ..wire.conversation import Reply as ConversationReply
from ..wire.grammar import Tagged, chunk_set, compress_uids, line_body
from .request import UpstreamCommand, astring_segments
from .rollback import Credentials

ITEMS = b" (UID FLAGS INTERNALDATE)\r\n"
_NEVER = frozenset((b"\\recent", b"\\deleted"))


class Outcome(enum.Enum):
    FINISHED = "finished"  # the originals whose copies are there were expunged
    NOTHING = "nothing"  # no copy was made: the originals are as they were
    UNDONE = "undone"  # some copies only: removed, the originals kept
    KEPT = "kept"  # not touched, or not all done: left for an operator


@dataclass(slots=True, frozen=True)
class Verdict:
    entry: Entry
    outcome: Outcome
    moved: int = 0
    detail: str = ""

    @property
    def kept(self) -> bool:
        return self.outcome is Outcome.KEPT


@dataclass(slots=True, frozen=True)
class Message:
    uid: int
    flags: frozenset[bytes]
    date: bytes | None


Answers = tuple[list[Tagged], list[bytes]]  # tagged replies of a batch, untagged lines meanwhile
Batches = Generator[list[UpstreamCommand], Answers, None]


class Resume:
    """The recovery of a user's entries, one batch of pipelined commands at a time: the caller
    tags and sends :meth:`start`'s commands, hands every untagged response to
    :meth:`on_untagged` and every tagged reply to :meth:`on_tagged`, which returns the next
    batch; :attr:`verdicts` once :attr:`done`."""

    def __init__(self, entries: list[Entry], caps: Capabilities, max_set_bytes: int = 8192) -> None:
        self.verdicts: list[Verdict] = []
        self.done = False
        self._caps = caps
        self._max = max_set_bytes
        self._awaited = 0
        self._replies: list[Tagged] = []
        self._lines: list[bytes] = []
        self._steps = self._all(entries)

    def start(self) -> list[UpstreamCommand]:
        return self._next(None)

    def on_untagged(self, line: bytes) -> None:
        self._lines.append(line)

    def on_tagged(self, reply: Tagged) -> list[UpstreamCommand]:
        self._replies.append(reply)
        self._awaited -= 1
        if self._awaited:
            return []
        answers = (self._replies, self._lines)
        self._replies, self._lines = [], []
        return self._next(answers)

    def _next(self, answers: Answers | None) -> list[UpstreamCommand]:
        try:
            batch = self._steps.send(answers) if answers is not None else next(self._steps)
            while not batch:  # nothing to send in this step: on to the next
                batch = self._steps.send(([], []))
        except StopIteration:
            self.done = True
            return []
        self._awaited = len(batch)
        return batch

    # ------------------------------------------------------------------ the procedure

    def _all(self, entries: list[Entry]) -> Batches:
        selected = False
        for entry in entries:
            verdict = yield from self._one(entry)
            self.verdicts.append(verdict)
            selected = True
        if selected:  # leave the session as the login left it: nothing selected
            if b"UNSELECT" in self._caps.names:
                yield [[b"UNSELECT\r\n"]]
            else:
                yield [self._mailbox_command(b"EXAMINE ", entries[-1].source)]
                yield [[b"CLOSE\r\n"]]

    def _one(self, entry: Entry) -> Generator[list[UpstreamCommand], Answers, Verdict]:
        def kept(detail: str) -> Verdict:
            return Verdict(entry, Outcome.KEPT, detail=detail)

        problem = yield from self._select(entry.source, entry.source_validity)
        if problem:
            return kept(f"source {problem}")
        answers = yield self._fetch(entry.uids)
        lines = answers[1]
        if not _ok(answers):
            return kept("the originals could not be fetched")
        wanted = set(entry.uids)
        originals = {m.uid: m for m in _messages(lines) if m.uid in wanted}

        problem = yield from self._select(entry.target, entry.target_validity)
        if problem:
            return kept(f"target {problem}")
        first = max(entry.target_uidnext, 1)
        answers = yield [[b"UID FETCH %d:*" % first + ITEMS]]
        lines = answers[1]
        if not _ok(answers):
            return kept("the target's new messages could not be fetched")
        found = {m.uid: m for m in _messages(lines) if m.uid >= first}
        known = {  # as recorded (guarded), or as they are if still there
            uid: Message(uid, frozenset(flags), date)
            for uid, (date, flags) in entry.originals.items()
        }
        known.update(originals)
        copies = _pair(entry, known, found)
        present = set(originals)
        with_copy = present & set(copies)

        if entry.phase is Phase.INTENT and with_copy and with_copy != present:
            if not self._caps.uidplus:
                return kept("some copies only, and no UID EXPUNGE to remove them")
            targets = [copies[uid] for uid in with_copy]
            answers = yield self._each(b"UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n", targets)
            if _ok(answers):
                answers = yield self._each(b"UID EXPUNGE %s\r\n", targets)
            if not _ok(answers):
                return kept("the copies could not be removed")
            return Verdict(entry, Outcome.UNDONE, detail=f"{len(targets)} copies removed")

        # Without COPYUID a copy is told by its INTERNALDATE alone: with some copies gone (another
        # session deleted them), which ones cannot be told for sure when dates repeat. Then
        # nothing is expunged nor flagged: the originals get back their flags, the entry waits.
        guessed = not entry.copies and bool(with_copy) and with_copy != present
        restore = "" if guessed else (yield from self._restore_flags(known, found, copies))

        problem = yield from self._select(entry.source, entry.source_validity)
        if problem:
            return kept(f"source {problem}")
        if entry.phase is Phase.COPIED:  # the proxy may have flagged those without a copy
            unflag = (present if guessed else present - with_copy) - entry.user_deleted
            if unflag:
                answers = yield self._each(b"UID STORE %s -FLAGS.SILENT (\\Deleted)\r\n", unflag)
                if not _ok(answers):
                    return kept("the originals' flags could not be put back")
        if guessed:
            missing = len(present - with_copy)
            return kept(f"{missing} copies gone, and without COPYUID which ones cannot be told")
        if not with_copy:
            if entry.phase is Phase.COPIED and not present and copies:
                return Verdict(entry, Outcome.FINISHED, detail="expunged before the proxy died")
            return Verdict(entry, Outcome.NOTHING)
        if self._caps.uidplus:
            answers = yield self._each(b"UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n", with_copy)
            if _ok(answers):
                answers = yield self._each(b"UID EXPUNGE %s\r\n", with_copy)
        else:
            answers = yield from self._guarded_expunge(with_copy)
        checked = yield self._fetch(sorted(with_copy))
        left = {m.uid for m in _messages(checked[1])} & with_copy
        if not _ok(answers) or not _ok(checked) or left:
            return kept(f"{len(left)} originals are still in the source")
        return Verdict(entry, Outcome.FINISHED, len(with_copy), restore)

    def _select(
        self, mailbox: bytes, validity: bytes
    ) -> Generator[list[UpstreamCommand], Answers, str]:
        """``SELECT mailbox``; what is wrong with it (``""``: nothing)."""
        (reply,), lines = yield [self._mailbox_command(b"SELECT ", mailbox)]
        if reply.status != b"OK":
            return "cannot be selected"
        now = next(filter(None, map(responses.uidvalidity, lines)), None)
        counts = (responses.count(line) for line in lines)
        empty = (0, True) in counts  # imap4d renews an empty mailbox's UIDVALIDITY at each look
        if validity and now != validity and not empty:
            return f"UIDVALIDITY changed ({validity.decode()} -> {(now or b'?').decode()})"
        return ""

    def _restore_flags(
        self,
        originals: dict[int, Message],
        found: dict[int, Message],
        copies: dict[int, int],
    ) -> Generator[list[UpstreamCommand], Answers, str]:
        """Add to the copies (the target selected) the flags their originals carry."""
        groups: dict[frozenset[bytes], list[int]] = {}
        for uid in copies.keys() & originals.keys():  # the flags known, recorded or seen
            has = {flag.lower() for flag in found[copies[uid]].flags}
            lacking = frozenset(
                flag
                for flag in originals[uid].flags
                if flag.lower() not in _NEVER
                and flag.lower() not in has
                and responses.sendable_flag(flag)
            )
            if lacking:
                groups.setdefault(lacking, []).append(copies[uid])
        if not groups:
            return ""
        commands: list[UpstreamCommand] = []
        for flags, uids in groups.items():
            template = b"UID STORE %s +FLAGS.SILENT (" + b" ".join(sorted(flags)) + b")\r\n"
            commands += self._each(template, uids)
        answers = yield commands
        restored = sum(len(uids) for uids in groups.values())
        return f"flags restored on {restored}" if _ok(answers) else "flags not restored"

    def _guarded_expunge(
        self, moved: set[int]
    ) -> Generator[list[UpstreamCommand], Answers, Answers]:
        """Expunge ``moved`` without UIDPLUS: the other messages flagged ``\\Deleted`` are
        unflagged around a plain ``EXPUNGE``, then flagged again."""
        _, lines = yield [[b"UID SEARCH DELETED\r\n"]]
        others: set[int] = set()
        for line in lines:
            if responses.is_search(line):
                others |= set(responses.search_set(line))
        others -= moved
        unflag = self._each(b"UID STORE %s -FLAGS.SILENT (\\Deleted)\r\n", others)
        answers = yield unflag + self._each(b"UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n", moved)
        if _ok(answers):
            answers = yield [[b"EXPUNGE\r\n"]]
        if others:
            yield self._each(b"UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n", others)
        return answers

    # ------------------------------------------------------------------ commands

    def _mailbox_command(self, verb: bytes, mailbox: bytes) -> UpstreamCommand:
        return astring_segments(verb, [mailbox], self._caps)

    def _fetch(self, uids: Iterable[int]) -> list[UpstreamCommand]:
        return self._each(b"UID FETCH %s" + ITEMS.replace(b"%", b"%%"), uids)

    def _each(self, template: bytes, uids: Iterable[int]) -> list[UpstreamCommand]:
        sets = chunk_set(compress_uids(list(uids)), self._max)
        return [[template % uid_set] for uid_set in sets]


def _ok(answers: Answers) -> bool:
    return all(reply.status == b"OK" for reply in answers[0])


def _messages(lines: list[bytes]) -> list[Message]:
    found = []
    for line in lines:
        uid = responses.fetch_uid(line)
        flags = responses.flags(line)
        if uid is not None and flags is not None:
            found.append(Message(uid, flags, responses.internal_date(line)))
    return found


def _pair(entry: Entry, originals: dict[int, Message], found: dict[int, Message]) -> dict[int, int]:
    """Each original's copy among the target's new messages: the one COPYUID named, or the
    first unpaired one with the same INTERNALDATE, in UID order. (Not the size: imap4d counts
    its Status header in it, which a copy lacks. Not the Message-ID: it sits in the header,
    which a server may only send as a literal.)"""
    if entry.copies:
        return {source: copy for source, copy in entry.copies.items() if copy in found}
    pairs: dict[int, int] = {}
    free = sorted(found)
    for uid in sorted(originals):
        original = originals[uid]
        for index, copy in enumerate(free):
            candidate = found[copy]
            if candidate.date == original.date:
                pairs[uid] = copy
                del free[index]
                break
    return pairs


class ResumeSession:
    """A :class:`Resume` in a session of its own, for entries whose user is not logging in: log
    in as the user (a master login: ``rollback = "master"``), recover, log out; over only once
    the server has closed the connection (mbox servers write a session's view at its end).
    Sans-IO, driven by :class:`..shell.serverlink.ServerLink`; :attr:`verdicts` once
    :attr:`done`, :attr:`error` if the session itself failed."""

    def __init__(self, entries: list[Entry], credentials: Credentials, max_set_bytes: int) -> None:
        self.done = False
        self.error: str | None = None
        self.ending = False  # LOGOUT sent
        self._entries, self._credentials, self._max = entries, credentials, max_set_bytes
        self._conversation = Conversation(b"jr")
        self._resume: Resume | None = None
        self._greeted = False

    @property
    def verdicts(self) -> list[Verdict]:
        return self._resume.verdicts if self._resume is not None else []

    def receive(self, data: bytes | bytearray) -> None:
        conversation = self._conversation
        conversation.receive(data)
        while not self.done and not self.ending:
            try:
                event = conversation.next_event()
            except ConversationError as exc:
                self._end(str(exc))
                return
            if event is None:
                return
            if isinstance(event, ConversationReply):
                self._reply(event.tagged)
            elif not self._greeted:
                self._greeted = True
                if event.line[:5].upper() != b"* OK ":
                    self._end(f"greeting {line_body(event.line)[:80]!r}")
                    return
                login = self._credentials.command(conversation.caps)
                conversation.send([login, [b"CAPABILITY\r\n"]], self)
            elif self._resume is not None:
                self._resume.on_untagged(event.line)

    def take_outgoing(self) -> bytes:
        return self._conversation.take_outgoing()

    def connection_lost(self) -> None:
        if not self.ending and not self.done:
            self.error = "the mail server closed the connection"
        self.done = True

    def _reply(self, reply: Tagged) -> None:
        resume = self._resume
        if resume is None:  # the login, or the CAPABILITY after it
            if reply.status != b"OK":
                self._end(f"login refused: {reply.text.decode('utf-8', 'replace')[:200]}")
            elif not self._conversation.awaiting(self):
                resume = self._resume = Resume(self._entries, self._conversation.caps, self._max)
                self._send(resume.start())
            return
        self._send(resume.on_tagged(reply))

    def _send(self, commands: list[UpstreamCommand]) -> None:
        if commands:
            self._conversation.send(commands, self)
        elif self._resume is not None and self._resume.done:
            self._end(None)

    def _end(self, error: str | None) -> None:
        self.error = error
        self.ending = True
        self._conversation.send([[b"LOGOUT\r\n"]], self)
