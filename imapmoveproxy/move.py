"""MOVE and UID MOVE: parsing the client's command and emulating it over COPY, STORE, UID EXPUNGE.

The emulation is a sans-IO state machine. The session hands it every upstream response that
arrives while it runs; it answers with the upstream commands to send next and writes what the
client must see into the client buffer. Its promise (RFC 6851 §3.3): each message is moved or left
where it was, the client sees what a native MOVE server sends, and nothing the proxy's own commands
cause (their tags, the COPY's tagged reply, FETCH responses of the STORE) leaks to the client.

The sequence of upstream commands, each step only after the previous one's tagged reply:

1. ``[UID] FETCH set (UID)`` (with ESEARCH, ``UID SEARCH RETURN (ALL) UID set`` for UID MOVE)
   pipelined with ``[UID] COPY set mbox``.
   The first one records which UIDs the set names right before the COPY, in case the COPY's
   tagged OK carries no COPYUID (RFC 4315 allows that); it is never used instead of COPYUID.
2. After COPY's tagged OK only: ``UID STORE uids +FLAGS.SILENT (\\Deleted)``, where ``uids`` are
   the messages the upstream confirmed it copied (split into several commands if long).
3. After every STORE's tagged reply: ``UID EXPUNGE uids``. It only removes messages of that set
   that carry ``\\Deleted``, all of which have been copied. The two are not pipelined: servers may
   run pipelined commands concurrently (Dovecot does), and an EXPUNGE that overtakes its STORE
   would leave messages flagged and in both mailboxes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from .capabilities import Capabilities
from .syntax import (
    SyntaxProblem,
    Tagged,
    chunk_set,
    code_name,
    compress_uids,
    encode_astring,
    expand_uid_set,
    fetch_uid,
    is_sequence_set,
    line_body,
    parse_command_start,
    parse_quoted,
)

# A command for the upstream as segments: each segment after the first waits for a "+".
UpstreamCommand = list[bytes]
TagSource = Callable[[], bytes]


@dataclass(slots=True, frozen=True)
class MoveRequest:
    """A client's MOVE or UID MOVE, complete and parsed (``error`` set if its syntax is bad)."""

    tag: bytes
    uid: bool
    sequence_set: bytes = b""
    mailbox: bytes = b""
    error: bytes | None = None


def parse_move(command: bytes, literal: bytes | None, tail: bytes) -> MoveRequest:
    """Parse a MOVE whose first line is ``command``.

    If the mailbox came as a literal, ``literal`` holds its bytes and ``tail`` the line that
    followed it; otherwise ``literal`` is ``None`` and the whole command is in ``command``.
    """
    start = parse_command_start(command)
    if start is None:  # the session only calls this for lines it recognised as MOVE
        raise ValueError("not a command line")
    uid = start.name.startswith(b"UID ")
    body = line_body(command)
    try:
        if body[start.args_offset : start.args_offset + 1] != b" ":
            raise SyntaxProblem("missing arguments")
        rest = body[start.args_offset + 1 :]
        sequence_set, _, mailbox_text = rest.partition(b" ")
        if not is_sequence_set(sequence_set):
            raise SyntaxProblem("invalid sequence set")
        if literal is not None:
            marker = mailbox_text.lstrip(b"~")
            if not re.fullmatch(rb"\{\d+[+-]?\}", marker):
                raise SyntaxProblem("invalid mailbox literal")
            if line_body(tail):
                raise SyntaxProblem("unexpected arguments after mailbox")
            mailbox = literal
        elif mailbox_text.startswith(b'"'):
            mailbox, end = parse_quoted(mailbox_text, 0)
            if end != len(mailbox_text):
                raise SyntaxProblem("unexpected arguments after mailbox")
        else:
            if not mailbox_text or not all(
                0x20 < b < 0x7F and b not in b'(){%*"\\' for b in mailbox_text
            ):
                raise SyntaxProblem("missing or invalid mailbox name")
            mailbox = mailbox_text
    except SyntaxProblem as problem:
        name = start.name.decode()
        return MoveRequest(
            start.tag, uid, error=f"Error in IMAP command {name}: {problem}".encode()
        )
    return MoveRequest(start.tag, uid, sequence_set, mailbox)


def astring_segments(prefix: bytes, value: bytes, caps: Capabilities) -> UpstreamCommand:
    """``prefix`` followed by ``value`` as an astring and CRLF, framed for this upstream.

    No byte of ``value`` can end the command line: values with CR, LF, NUL or 8-bit bytes go as
    a literal, non-synchronizing where the upstream allows it (LITERAL+, or LITERAL- up to 4096
    bytes), otherwise synchronizing, in which case the caller waits for "+" between segments.
    """
    inline, literal = encode_astring(value)
    if literal is None:
        return [prefix + inline + b"\r\n"]
    if caps.literal_plus or (caps.literal_minus and len(literal) <= 4096):
        return [prefix + b"{%d+}\r\n" % len(literal) + literal + b"\r\n"]
    return [prefix + b"{%d}\r\n" % len(literal), literal + b"\r\n"]


class Policy(enum.Enum):
    """How a MOVE is handled, named in logs and metrics."""

    NATIVE = "native"  # the upstream has MOVE: passed through
    UIDPLUS = "uidplus"  # COPY, UID STORE, UID EXPUNGE
    GUARDED = "guarded"  # no UIDPLUS: RFC 4315 §2.1 workaround around a plain EXPUNGE
    REFUSED = "refused"  # no UIDPLUS and the guarded policy is off: passed through


class Step(enum.Enum):
    CAPABILITY = "capability"  # learning the upstream's capabilities after authentication
    FORWARD = "forward"  # the client's MOVE sent to the upstream as it is
    COPY = "copy"
    FIND_SYNC = "find-sync"  # guarded: NOOP, so the search below sees other sessions' flags
    FIND_DELETED = "find-deleted"  # guarded: which other messages carry \Deleted
    FLAG = "flag"  # flag the moved messages (guarded: and unflag the others)
    RECHECK_SYNC = "recheck-sync"  # guarded: NOOP again
    RECHECK = "recheck"  # guarded: has another session flagged a message since?
    EXPUNGE = "expunge"
    RESTORE = "restore"  # guarded: put \Deleted back where it was
    VERIFY = "verify"  # guarded: which moved messages are still there after EXPUNGE
    UNDO = "undo"  # guarded, after a failure: unflag what we flagged, restore the others
    DONE = "done"


_FLAG = b"UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n"
_UNFLAG = b"UID STORE %s -FLAGS.SILENT (\\Deleted)\r\n"
_SEARCH_DELETED = b"UID SEARCH DELETED\r\n"
_RECHECKS = 3  # how often a guarded MOVE clears newly flagged messages before giving up


class MoveEmulation:
    """One client MOVE from the moment earlier commands have completed to its tagged reply."""

    def __init__(
        self,
        request: MoveRequest,
        *,
        read_only: bool,
        guarded: bool,
        new_tag: TagSource,
        emit: Callable[[bytes], None],
        max_set_bytes: int = 8192,
    ) -> None:
        self.request = request
        self.policy: Policy | None = None
        self.outcome = ""  # "moved", "copy-failed", "expunging-failed"... for logs and metrics
        self.step = Step.CAPABILITY
        self._read_only = read_only
        self._guarded = guarded
        self._new_tag = new_tag
        self._emit = emit
        self._max_set_bytes = max_set_bytes
        self._pending: set[bytes] = set()  # our tags still awaiting their tagged reply
        self._prefetch_tag = b""
        self._copy_tag = b""
        self._prefetched: list[int] = []
        self._copy_result: Tagged | None = None
        self._moving: set[int] = set()  # UIDs confirmed copied, to flag and expunge
        self._deleted: set[int] = set()  # guarded: last UID SEARCH DELETED result
        self._foreign: set[int] = set()  # guarded: other messages whose \Deleted we cleared
        self._already_deleted: set[int] = set()  # guarded: moved ones the user had flagged
        self._rechecks = 0
        self._expunges: list[bytes] = []  # UID EXPUNGE commands still to send, one by one
        self._remaining: set[int] = set()  # guarded: moved messages still there after EXPUNGE
        self._failure: Tagged | None = None
        self._failed_step = ""
        self._final_code: bytes | None = None  # HIGHESTMODSEQ of the last UID EXPUNGE
        self._held: list[bytes] = []  # EXISTS/RECENT caused by the COPY, shown after EXPUNGEs
        self._expunged = 0  # messages the client was told are gone since those were held

    @property
    def done(self) -> bool:
        return self.step is Step.DONE

    @property
    def expunging(self) -> bool:
        """Waiting for the replies to an EXPUNGE, whose ``* n EXPUNGE`` lines go to the client."""
        return self.step is Step.EXPUNGE

    def expunged(self, count: int) -> None:
        """``count`` EXPUNGE responses were relayed to the client without passing through
        :meth:`on_untagged`."""
        self._expunged += count

    def owns(self, tag: bytes) -> bool:
        return tag in self._pending

    # ------------------------------------------------------------------ starting

    def start(self, caps: Capabilities | None) -> list[UpstreamCommand]:
        if self.request.error is not None:
            self.outcome = "bad-syntax"
            self._finish(b"BAD", None, self.request.error)
            return []
        if caps is None:
            return self._send(Step.CAPABILITY, [b"CAPABILITY\r\n"])
        return self._begin(caps)

    def _begin(self, caps: Capabilities) -> list[UpstreamCommand]:
        request = self.request
        uid = b"UID " if request.uid else b""
        if caps.native_move or not (caps.uidplus or self._guarded):
            # Nothing to emulate (native MOVE) or nothing safe to emulate with (no UIDPLUS):
            # the upstream answers the client's own command under the client's own tag.
            self.step = Step.FORWARD
            self.policy = Policy.NATIVE if caps.native_move else Policy.REFUSED
            prefix = request.tag + b" " + uid + b"MOVE " + request.sequence_set + b" "
            return [astring_segments(prefix, request.mailbox, caps)]
        self.policy = Policy.UIDPLUS if caps.uidplus else Policy.GUARDED
        if self._read_only:
            # COPY would succeed and the expunge be ignored, leaving every message in both
            # mailboxes: refuse before anything is copied.
            self.outcome = "read-only"
            self._finish(b"NO", b"READ-ONLY", b"Mailbox is read-only, messages cannot be moved.")
            return []
        self.step = Step.COPY
        self._prefetch_tag = self._new_tag()
        self._copy_tag = self._new_tag()
        self._pending.update((self._prefetch_tag, self._copy_tag))
        if request.uid and caps.esearch:  # one short line however many messages
            prefetch = b" UID SEARCH RETURN (ALL) UID " + request.sequence_set + b"\r\n"
        else:  # FETCH is what every server gets right (imap4d's SEARCH UID is not)
            prefetch = b" " + uid + b"FETCH " + request.sequence_set + b" (UID)\r\n"
        prefetch = self._prefetch_tag + prefetch
        copy = self._copy_tag + b" " + uid + b"COPY " + request.sequence_set + b" "
        return [[prefetch], astring_segments(copy, request.mailbox, caps)]

    # ------------------------------------------------------------------ upstream responses

    def on_untagged(self, line: bytes) -> bool:
        """Whether an untagged upstream response that arrived during the MOVE goes to the client."""
        step = self.step
        if step is Step.CAPABILITY:
            return not _CAPABILITY_UNTAGGED_RE.match(line)
        if step is Step.COPY:
            if self._prefetch_tag in self._pending:
                if _SEARCH_RE.match(line):
                    self._prefetched.extend(_search_uids(line))
                    return False
                uid = fetch_uid(line)
                if uid is not None:
                    self._prefetched.append(uid)
                    return not _ONLY_UID_RE.match(line)
            if _COUNT_RE.match(line):
                # A MOVE into the selected mailbox announces the new messages after the
                # expunges, with the count that follows them: hold the COPY's EXISTS back.
                self._held.append(line)
                return False
            return True
        if step in (Step.FIND_DELETED, Step.RECHECK) and _SEARCH_RE.match(line):
            self._deleted.update(_search_uids(line))
            return False
        # FETCH responses about messages whose flags we change are caused by our STOREs (with
        # CONDSTORE even .SILENT answers with MODSEQ); those about others are relayed.
        uid = fetch_uid(line)
        if step is Step.VERIFY and uid is not None and _ONLY_UID_RE.match(line):
            if uid in self._moving:
                self._remaining.add(uid)
            return False
        if uid is not None and (uid in self._moving or uid in self._foreign):
            return False
        self._expunged += _expunge_count(line)
        return True

    def on_tagged(self, reply: Tagged, caps: Capabilities | None) -> list[UpstreamCommand]:
        """Advance on the tagged reply to one of our commands (or the forwarded MOVE)."""
        if self.step is Step.FORWARD:
            self.outcome = "forwarded"
            self.step = Step.DONE
            return []
        self._pending.discard(reply.tag)
        if self.step is Step.COPY:
            if reply.tag == self._copy_tag:
                self._copy_result = reply
        elif reply.status != b"OK":
            if self.step is Step.VERIFY:
                self._remaining = set()  # cannot tell: the EXPUNGE itself succeeded
            elif self._failure is None and self.step is not Step.CAPABILITY:
                self._failure = reply
                self._failed_step = self.step.value
        elif self.step is Step.EXPUNGE and code_name(reply.code) == b"HIGHESTMODSEQ":
            self._final_code = reply.code
        if self._pending:
            return []
        if self.step is Step.CAPABILITY:
            return self._begin(caps or Capabilities(frozenset()))  # no answer: no UIDPLUS
        return _NEXT[self.step](self)

    def answers(self, tag: bytes) -> bool:
        """Whether a tagged reply with ``tag`` is for this MOVE: one of the proxy's commands, or
        the client's MOVE forwarded under the client's tag."""
        return tag in self._pending or (self.step is Step.FORWARD and tag == self.request.tag)

    # ------------------------------------------------------------------ the steps

    def _after_copy(self) -> list[UpstreamCommand]:
        result = self._copy_result
        assert result is not None
        if result.status != b"OK":
            # Nothing was copied, so nothing else is done: the client gets the COPY's answer.
            self.outcome = "copy-failed"
            self._finish(result.status, result.code, result.text)
            return []
        copyuid = result.code if code_name(result.code) == b"COPYUID" else None
        if copyuid is not None and len(copyuid.split()) == 4:
            self._moving = set(expand_uid_set(copyuid.split()[2]))
            self._emit(b"* OK [" + copyuid + b"] Moved UIDs.\r\n")
        if not self._moving:
            self._moving = set(self._prefetched)
        if not self._moving:
            self.outcome = "moved"
            self._finish(b"OK", None, b"No messages found.")
            return []
        if self.policy is Policy.GUARDED:
            return self._send(Step.FIND_SYNC, [b"NOOP\r\n"])
        return self._send(Step.FLAG, self._per_set(_FLAG, self._moving))

    def _after_flag(self) -> list[UpstreamCommand]:
        if self.policy is Policy.UIDPLUS:
            # Even if flagging failed for some, UID EXPUNGE removes only messages of the set
            # that carry \\Deleted, all of them copied: those are moved, the rest stay.
            self._expunges = self._per_set(b"UID EXPUNGE %s\r\n", self._moving)
            return self._after_expunge()
        if self._failure is not None:
            return self._undo()
        return self._send(Step.RECHECK_SYNC, [b"NOOP\r\n"])

    def _after_find_deleted(self) -> list[UpstreamCommand]:
        """Guarded: clear \\Deleted on the other messages, flag the moved ones."""
        if self._failure is not None:
            return self._report()
        self._foreign = self._deleted - self._moving
        self._already_deleted = self._deleted & self._moving
        unflag = self._per_set(_UNFLAG, self._foreign)
        return self._send(Step.FLAG, unflag + self._per_set(_FLAG, self._moving))

    def _after_recheck(self) -> list[UpstreamCommand]:
        """Guarded: right before EXPUNGE, no message outside the move may carry \\Deleted."""
        if self._failure is not None:
            return self._undo()
        newly_flagged = self._deleted - self._moving
        if not newly_flagged:
            return self._send(Step.EXPUNGE, [b"EXPUNGE\r\n"])
        self._foreign |= newly_flagged  # another session flagged these meanwhile
        self._rechecks += 1
        if self._rechecks > _RECHECKS:
            self._failure = Tagged(b"", b"NO", b"INUSE", b"other sessions keep flagging messages")
            self._failed_step = "recheck"
            return self._undo()
        return self._send(Step.FLAG, self._per_set(_UNFLAG, newly_flagged))

    def _search_deleted(self, step: Step) -> list[UpstreamCommand]:
        """Guarded: ask which messages carry \\Deleted (after a NOOP made the view current:
        Dovecot, for one, only takes in other sessions' flag changes when it syncs)."""
        if self._failure is not None:
            return self._undo() if step is Step.RECHECK else self._report()
        self._deleted = set()
        return self._send(step, [_SEARCH_DELETED])

    def _after_expunge(self) -> list[UpstreamCommand]:
        if self._expunges:
            # One at a time: a server running two UID EXPUNGEs at once (Dovecot does) may
            # report some expunges only after both tagged replies, that is after our OK.
            return self._send(Step.EXPUNGE, [self._expunges.pop(0)])
        if self.policy is not Policy.GUARDED:
            return self._report()
        return self._send(Step.RESTORE, self._per_set(_FLAG, self._foreign))

    def _verify(self) -> list[UpstreamCommand]:
        """Guarded: a plain EXPUNGE does not say by UID what it removed; list what is left
        (imap4d, for one, can lose a flag that another session's write overlapped)."""
        if self._failure is not None:
            return self._report()
        return self._send(Step.VERIFY, [b"UID FETCH 1:* (UID)\r\n"])

    def _undo(self) -> list[UpstreamCommand]:
        """Guarded, after a failure before EXPUNGE: put every flag back as it was."""
        unflag = self._per_set(_UNFLAG, self._moving - self._already_deleted)
        return self._send(Step.UNDO, unflag + self._per_set(_FLAG, self._foreign))

    def _report(self) -> list[UpstreamCommand]:
        if self._remaining and self._failure is None:
            left = b",".join(compress_uids(list(self._remaining)))
            self._failure = Tagged(b"", b"NO", None, b"UIDs " + left + b" were not expunged")
            self._failed_step = "expunge"
        failure = self._failure
        if failure is None:
            self.outcome = "moved"
            self._finish(b"OK", self._final_code, b"Move completed.")
            return []
        self.outcome = f"{self._failed_step}-failed"
        reason = failure.text.decode("utf-8", "replace")
        if self._failed_step == "restore":
            # The messages were moved; only the \Deleted flags of others could not be put back.
            uids = b",".join(compress_uids(list(self._foreign))).decode()
            self._finish(
                b"OK",
                None,
                f"Move completed, but \\Deleted could not be restored on "
                f"UIDs {uids} ({reason}).".encode(),
            )
            return []
        if self.policy is Policy.GUARDED and self.step is Step.UNDO:
            state = "Nothing was removed from the source: every message is in both mailboxes"
        else:
            state = "Messages still listed in the source are in both mailboxes"
        text = (
            "MOVE incomplete: the messages were copied to the target, but removing them from the "
            f"source failed ({self._failed_step}: {reason}). {state}; none was lost."
        )
        self._finish(b"NO", failure.code, text.encode())
        return []

    def _per_set(self, template: bytes, uids: set[int]) -> list[bytes]:
        """``template`` once per UID set, split so that no command line grows too long."""
        sets = chunk_set(compress_uids(list(uids)), self._max_set_bytes)
        return [template % uid_set for uid_set in sets]

    def _send(self, step: Step, commands: list[bytes]) -> list[UpstreamCommand]:
        """Tag and send ``commands``, pipelined: together they make up ``step``."""
        self.step = step
        tagged: list[UpstreamCommand] = []
        for command in commands:
            tag = self._new_tag()
            self._pending.add(tag)
            tagged.append([tag + b" " + command])
        if not tagged:
            return _NEXT[step](self)
        return tagged

    def _finish(self, status: bytes, code: bytes | None, text: bytes) -> None:
        for line in self._held:
            match = _COUNT_RE.match(line)
            assert match is not None
            if match.group(2).upper() == b"EXISTS":
                line = b"* %d EXISTS\r\n" % (int(match.group(1)) - self._expunged)
            self._emit(line)
        code_part = b"[" + code + b"] " if code else b""
        self._emit(self.request.tag + b" " + status + b" " + code_part + text + b"\r\n")
        self.step = Step.DONE


_NEXT: dict[Step, Callable[[MoveEmulation], list[UpstreamCommand]]] = {
    Step.COPY: MoveEmulation._after_copy,
    Step.FIND_SYNC: lambda emulation: emulation._search_deleted(Step.FIND_DELETED),
    Step.RECHECK_SYNC: lambda emulation: emulation._search_deleted(Step.RECHECK),
    Step.FIND_DELETED: MoveEmulation._after_find_deleted,
    Step.FLAG: MoveEmulation._after_flag,
    Step.RECHECK: MoveEmulation._after_recheck,
    Step.EXPUNGE: MoveEmulation._after_expunge,
    Step.RESTORE: MoveEmulation._verify,
    Step.VERIFY: MoveEmulation._report,
    Step.UNDO: MoveEmulation._report,
}


_SEARCH_RE = re.compile(rb"\* (?:E?SEARCH)\b", re.IGNORECASE)
_ONLY_UID_RE = re.compile(rb"\* \d+ FETCH \((?:UID \d+|MODSEQ \(\d+\)| )+\)\r?\n$", re.IGNORECASE)
_CAPABILITY_UNTAGGED_RE = re.compile(rb"\* CAPABILITY ", re.IGNORECASE)
_COUNT_RE = re.compile(rb"\* (\d+) (EXISTS|RECENT)\r?\n$", re.IGNORECASE)
_EXPUNGE_RE = re.compile(rb"\* \d+ EXPUNGE\r?\n$", re.IGNORECASE)
_VANISHED_RE = re.compile(rb"\* VANISHED ([0-9:,]+)\r?\n$", re.IGNORECASE)


def _expunge_count(line: bytes) -> int:
    """How many messages an EXPUNGE or (not EARLIER) VANISHED response removes."""
    if _EXPUNGE_RE.match(line):
        return 1
    match = _VANISHED_RE.match(line)
    return len(expand_uid_set(match.group(1))) if match else 0


def _search_uids(line: bytes) -> list[int]:
    """UIDs from ``* SEARCH 1 2 3`` or ``* ESEARCH (TAG "x") UID ALL 1:3``."""
    body = line_body(line)
    if body[2:9].upper() == b"ESEARCH":
        match = re.search(rb" ALL ([0-9:,]+)", body, re.IGNORECASE)
        return expand_uid_set(match.group(1)) if match else []
    return [int(word) for word in body.split()[2:] if word.isdigit()]
