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

import enum
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from .capabilities import Capabilities
from .syntax import (
    NumberSet,
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
    set_size,
)

if TYPE_CHECKING:
    from .copyflags import FlagRecorder

log = logging.getLogger(__name__)

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

    Extra spaces between and after the arguments are accepted, as native Dovecot does: they
    leave no doubt about the set or the mailbox. Anything else after the mailbox name is
    refused (Dovecot ignores it, but ``MOVE 1 Sent Items`` may well mean "Sent Items"), and
    every refusal says what is wrong.
    """
    start = parse_command_start(command)
    if start is None:  # the session only calls this for lines it recognised as MOVE
        raise ValueError("not a command line")
    uid = start.name.startswith(b"UID ")
    body = line_body(command)
    try:
        sequence_set, _, mailbox_text = body[start.args_offset :].lstrip(b" ").partition(b" ")
        mailbox_text = mailbox_text.lstrip(b" ")
        if not sequence_set:
            raise SyntaxProblem("missing sequence set and mailbox name")
        if not is_sequence_set(sequence_set):
            raise SyntaxProblem(f"invalid sequence set {_shown(sequence_set)}")
        if not mailbox_text:
            raise SyntaxProblem("missing mailbox name")
        if literal is not None:
            if not re.fullmatch(rb"\{\d+[+-]?\}", mailbox_text.lstrip(b"~")):
                raise SyntaxProblem(f"invalid mailbox literal {_shown(mailbox_text)}")
            _nothing_after(line_body(tail))
            mailbox = literal
        elif mailbox_text.startswith(b'"'):
            mailbox, end = parse_quoted(mailbox_text, 0)
            _nothing_after(mailbox_text[end:])
        else:
            mailbox, _, after = mailbox_text.partition(b" ")
            bad = next((b for b in mailbox if not 0x20 < b < 0x7F or b in b'(){%*"\\'), None)
            if bad is not None:
                raise SyntaxProblem(
                    f"invalid character {_shown(bytes([bad]))} in mailbox name "
                    f"{_shown(mailbox)} (a quoted string or a literal may hold it)"
                )
            _nothing_after(after)
    except SyntaxProblem as problem:
        name = start.name.decode()
        return MoveRequest(
            start.tag, uid, error=f"Error in IMAP command {name}: {problem}".encode()
        )
    return MoveRequest(start.tag, uid, sequence_set, mailbox)


def _nothing_after(rest: bytes) -> None:
    """Refuse what follows a MOVE's mailbox name, unless it is only spaces."""
    extra = rest.strip(b" ")
    if extra:
        raise SyntaxProblem(f"unexpected {_shown(extra)} after the mailbox name")


def _shown(text: bytes, limit: int = 40) -> str:
    """``text`` for an error message: quoted, shortened, non-printable bytes escaped."""
    shown = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in text[:limit])
    return f'"{shown}"' + ("..." if len(text) > limit else "")


def astring_segments(prefix: bytes, values: Sequence[bytes], caps: Capabilities) -> UpstreamCommand:
    """``prefix``, then ``values`` as astrings separated by spaces, then CRLF, framed for this
    upstream.

    No byte of a value can end the command line: values with CR, LF, NUL or 8-bit bytes go as
    literals, non-synchronizing where the upstream allows it (LITERAL+, or LITERAL- up to 4096
    bytes), otherwise synchronizing, in which case the caller waits for "+" between segments.
    """
    segments: list[bytes] = []
    current = prefix
    for index, value in enumerate(values):
        current += b" " if index else b""
        inline, literal = encode_astring(value)
        if literal is None:
            current += inline
        elif caps.literal_plus or (caps.literal_minus and len(literal) <= 4096):
            current += b"{%d+}\r\n" % len(literal) + literal
        else:
            segments.append(current + b"{%d}\r\n" % len(literal))
            current = literal
    segments.append(current + b"\r\n")
    return segments


@dataclass(slots=True, frozen=True)
class RollbackRequest:
    """Copies in the target of messages a failed MOVE left in the source: a second session of
    the same user removes them (the client's session cannot select the target)."""

    mailbox: bytes
    uidvalidity: bytes  # of the target, from COPYUID: the copies are only removed if it holds
    uids: tuple[int, ...]  # the copies' UIDs in the target
    sources: tuple[int, ...]  # the UIDs in the source of the messages they are copies of


class Policy(enum.Enum):
    """How a MOVE is handled, named in logs and metrics."""

    NATIVE = "native"  # the upstream has MOVE: passed through
    UIDPLUS = "uidplus"  # COPY, UID STORE, UID EXPUNGE
    GUARDED = "guarded"  # no UIDPLUS: RFC 4315 §2.1 workaround around a plain EXPUNGE
    REFUSED = "refused"  # no UIDPLUS and the guarded policy is off: passed through

    @property
    def emulated(self) -> bool:
        """The proxy emulates MOVE (and advertises it) under this policy."""
        return self in (Policy.UIDPLUS, Policy.GUARDED)


def policy_for(caps: Capabilities, guarded: bool) -> Policy:
    """How MOVE is handled in front of an upstream with ``caps`` (``guarded``: the
    ``no_uidplus = "guarded"`` setting)."""
    if caps.native_move:
        return Policy.NATIVE
    if caps.uidplus:
        return Policy.UIDPLUS
    return Policy.GUARDED if guarded else Policy.REFUSED


class Step(enum.Enum):
    CAPABILITY = "capability"  # learning the upstream's capabilities after authentication
    FORWARD = "forward"  # the client's MOVE sent to the upstream as it is
    RIGHTS = "rights"  # MYRIGHTS on the source, if not known yet (ACL)
    PREFETCH = "prefetch"  # a MOVE too big for one chunk: which UIDs to move, before copying
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
    UNFLAG = "unflag"  # UIDPLUS, after a failure: clear the \\Deleted flags the proxy set
    CHECK = "check"  # UIDPLUS, after a failure: which moved messages are still in the source
    ROLLBACK = "rollback"  # waiting for a second session to remove their copies from the target
    DONE = "done"


_FLAG = b"UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n"
_UNFLAG = b"UID STORE %s -FLAGS.SILENT (\\Deleted)\r\n"
_SEARCH_DELETED = b"UID SEARCH DELETED\r\n"
_RECHECKS = 3  # how often a guarded MOVE clears newly flagged messages before giving up
_MOST_PER_COPY = 1_000_000  # chunk size when chunks are off: a COPYUID must stay expandable
_OUTSIDE = "set-check"  # the step named when the upstream names messages outside the set


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
        chunk_size: int = 0,
        source: bytes | None = None,
        rights: bytes | None = None,
        exists: int | None = None,
        recent: int | None = None,
        flags: FlagRecorder | None = None,
    ) -> None:
        self.request = request
        self.flags = flags  # guarded: notes what the COPY should keep (:mod:`.copyflags`)
        self.policy: Policy | None = None
        self.outcome = ""  # "moved", "copy-failed", "expunge-failed"... for logs and metrics
        self.rollback = ""  # "done", "failed" or "impossible" once copies had to be removed
        self.duplicates = 0  # messages this MOVE left in both mailboxes
        self.expunge_retries = 0  # chunks whose UID EXPUNGE removed too few, flagged again
        self.rights = rights  # MYRIGHTS on the source: given cached, or learned here
        self.step = Step.CAPABILITY
        self._read_only = read_only
        self._guarded = guarded
        self._new_tag = new_tag
        self._emit = emit
        self._max_set_bytes = max_set_bytes
        self._chunk_size = chunk_size
        self._source = source  # the selected mailbox's name, if known (for MYRIGHTS)
        self._exists = exists  # how many messages the mailbox has at most, if known
        self.recent = recent  # the RECENT count the client was last shown, if known
        self._caps = Capabilities(frozenset())
        self._pending: set[bytes] = set()  # our tags still awaiting their tagged reply
        self._prefetch_tag = b""
        self._prefetch_ok = False
        self._deleted_tag = b""
        self._copy_tag = b""
        self._copy_set: NumberSet | None = None  # UIDs of a chunk's UID COPY
        self._listed = NumberSet()  # UIDs the prefetch's ESEARCH named
        self._fetched: dict[int, bool] = {}  # UID FETCH prefetch: UID -> only UID (our answer)
        self._numbered: dict[int, int] = {}  # FETCH prefetch: number in the set -> its UID
        self._outside = ""  # what the upstream named outside the client's set, if it did
        self._client_cache: tuple[int | None, NumberSet] | None = None  # (star, client's set)
        self._prefetched = NumberSet()  # UIDs in the client's set, once the prefetch is judged
        self._queue: Iterator[int] = iter(())  # UIDs of the chunks still to move
        self._left = 0  # how many UIDs are in the queue
        self._moved = 0  # messages moved by earlier chunks
        self._total = 0  # messages to move in all
        self._copy_result: Tagged | None = None
        self._moving: set[int] = set()  # UIDs confirmed copied, to flag and expunge
        self._targets: dict[int, int] = {}  # source UID -> UID of its copy (COPYUID)
        self._deleted = NumberSet()  # messages carrying \Deleted (last search)
        self._foreign: set[int] = set()  # guarded: other messages whose \Deleted we cleared
        self._already_deleted: set[int] = set()  # moved ones the user had flagged
        self._rechecks = 0
        self._retried = False  # uidplus: this chunk's flag and expunge were sent a second time
        self._expunges: list[bytes] = []  # UID EXPUNGE commands still to send, one by one
        self._expunged_before = 0  # self._expunged when this chunk's EXPUNGE began
        self._remaining: set[int] = set()  # moved messages still in the source after EXPUNGE
        self._flagged: set[int] = set()  # moved messages carrying \\Deleted after the unflag
        self._checked = True  # whether _remaining is known for sure
        self._removed: set[int] = set()  # of those, the ones whose copies were removed
        self._vanished: set[int] = set()  # of those, the ones whose copies had left the target
        self._target_validity = b""  # UIDVALIDITY of the target, from COPYUID
        self._failure: Tagged | None = None
        self._failed_step = ""
        self._final_code: bytes | None = None  # HIGHESTMODSEQ of the last UID EXPUNGE
        # From the COPY on, EXISTS and RECENT are held back and shown after the expunges: the
        # latest EXISTS (as _exists, lowered by the expunges shown since), then the latest RECENT.
        self._exists_held = False
        self._recent_held: int | None = None
        self._expunged = 0  # EXPUNGEs the client was shown during this MOVE
        self.rollback_request: RollbackRequest | None = None  # waiting for a second session
        self.reply = b""  # the tagged reply, once sent
        self._rollback_error = ""

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
        if self._exists is not None:
            self._exists -= count

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
        self._caps = caps
        self.policy = policy_for(caps, self._guarded)
        if not self.policy.emulated:
            # Nothing to emulate (native MOVE) or nothing safe to emulate with (no UIDPLUS):
            # the upstream answers the client's own command under the client's own tag.
            self.step = Step.FORWARD
            uid = b"UID " if request.uid else b""
            prefix = request.tag + b" " + uid + b"MOVE " + request.sequence_set + b" "
            return [astring_segments(prefix, [request.mailbox], caps)]
        if self._read_only:
            # COPY would succeed and the expunge be ignored, leaving every message in both
            # mailboxes: refuse before anything is copied.
            self.outcome = "read-only"
            self._finish(b"NO", b"READ-ONLY", b"Mailbox is read-only, messages cannot be moved.")
            return []
        if b"ACL" in caps.names and self._source is not None and self.rights is None:
            return self._send_framed(
                Step.RIGHTS, [astring_segments(b"MYRIGHTS ", [self._source], caps)]
            )
        return self._check_rights()

    def _check_rights(self) -> list[UpstreamCommand]:
        """Refuse before touching anything if the rights on the source forbid flagging or
        expunging (RFC 4314; an RFC 2086 server has a single "d" right for both)."""
        rights = (self.rights or b"").lower()
        rfc4314 = any(name.startswith(b"RIGHTS=") for name in self._caps.names)
        needed = (b"t", b"e") if rfc4314 else (b"d",)
        if self.rights is not None and not all(right in rights for right in needed):
            self.outcome = "no-permission"
            text = b"Permission denied: messages cannot be removed from this mailbox (rights: %s)."
            self._finish(b"NO", b"NOPERM", text % self.rights)
            return []
        sizes = [set_size(self.request.sequence_set), self._exists]
        size = min((size for size in sizes if size is not None), default=None)
        if self.policy is Policy.GUARDED or size is None or size > self._chunk_limit:
            # Maybe too many for one COPY; or no COPYUID will say what the COPY took, so it may
            # only name UIDs checked to be in the client's set.
            return self._prefetch(Step.PREFETCH, copy=False)
        return self._prefetch(Step.COPY, copy=True)

    @property
    def _chunk_limit(self) -> int:
        return self._chunk_size or _MOST_PER_COPY

    def _prefetch(self, step: Step, copy: bool) -> list[UpstreamCommand]:
        """Which UIDs the client's set names and (UIDPLUS) which of them carry \\Deleted
        already, so that a rollback clears only the flags the proxy set; pipelined with the
        COPY of the whole set if ``copy``."""
        request = self.request
        uid = b"UID " if request.uid else b""
        self.step = step
        self._prefetch_tag = self._new_tag()
        self._pending.add(self._prefetch_tag)
        self._listed, self._fetched, self._numbered = NumberSet(), {}, {}
        searchres = request.sequence_set == b"$"  # SEARCHRES implies ESEARCH (RFC 5182)
        if (request.uid or searchres) and self._caps.esearch:  # one short line for any size
            prefetch = b" UID SEARCH RETURN (ALL) UID " + request.sequence_set + b"\r\n"
        else:  # FETCH is what every server gets right (imap4d's SEARCH UID is not)
            prefetch = b" " + uid + b"FETCH " + request.sequence_set + b" (UID)\r\n"
        commands = [[self._prefetch_tag + prefetch]]
        if self.policy is Policy.UIDPLUS:  # the guarded policy searches \Deleted on its own
            self._deleted_tag = self._new_tag()
            self._pending.add(self._deleted_tag)
            returns = b"RETURN (ALL) " if self._caps.esearch else b""
            search = b" UID SEARCH " + returns + uid + request.sequence_set + b" DELETED\r\n"
            commands.append([self._deleted_tag + search])
        if self.flags is not None and self.policy is Policy.GUARDED and not copy:
            commands.append(self._own(self.flags.status_command(request.mailbox, self._caps)))
        if copy:  # last: it may wait for "+" before sending the mailbox name
            self._copy_set = None  # the client's own set
            self._copy_tag = self._new_tag()
            self._pending.add(self._copy_tag)
            prefix = self._copy_tag + b" " + uid + b"COPY " + request.sequence_set + b" "
            commands.append(astring_segments(prefix, [request.mailbox], self._caps))
        return commands

    def _after_prefetch(self) -> list[UpstreamCommand]:
        if self._outside:
            return self._refuse_outside()
        if not self._prefetch_ok or not self._prefetched.size:
            # Let the COPY answer as the upstream would (an invalid set, no messages...).
            return self._prefetch(Step.COPY, copy=True)
        self._queue, self._left = iter(self._prefetched), self._prefetched.size
        self._total = self._left
        return self._next_chunk()

    def _next_chunk(self) -> list[UpstreamCommand]:
        """Move the next chunk of UIDs: each chunk is moved or left alone on its own."""
        self._moved += len(self._moving) - len(self._remaining)
        chunk = list(islice(self._queue, self._chunk_limit))
        self._left -= len(chunk)
        self._prefetched = self._copy_set = NumberSet.of(chunk)
        self._moving, self._targets, self._remaining = set(), {}, set()
        self._foreign, self._rechecks, self._retried = set(), 0, False
        self._copy_result = None
        self.step = Step.COPY
        flags = []
        if self.flags is not None and self.policy is Policy.GUARDED:
            flags = [self._own([self.flags.fetch_command(chunk)])]
        self._copy_tag = self._new_tag()
        self._pending.add(self._copy_tag)
        uid_set = b",".join(compress_uids(chunk))
        copy = self._copy_tag + b" UID COPY " + uid_set + b" "
        return [*flags, astring_segments(copy, [self.request.mailbox], self._caps)]

    # ------------------------------------------------------------------ upstream responses

    def on_untagged(self, line: bytes) -> bool:
        """Whether an untagged upstream response that arrived during the MOVE goes to the client."""
        if self.flags is not None and self.flags.on_untagged(line):
            return False
        step = self.step
        if step is Step.CAPABILITY:
            return not _CAPABILITY_UNTAGGED_RE.match(line)
        if step is Step.RIGHTS and _MYRIGHTS_RE.match(line):
            self.rights = line_body(line).rsplit(b" ", 1)[-1]
            return False
        count = _COUNT_RE.match(line)
        if count is not None:
            return self._count(int(count.group(1)), count.group(2).upper() == b"EXISTS")
        if step in (Step.COPY, Step.PREFETCH):
            if _SEARCH_RE.match(line):
                tag = _search_tag(line)
                if tag == self._prefetch_tag:
                    self._listed |= _search_set(line)
                elif tag in (None, self._deleted_tag):
                    self._deleted |= _search_set(line)
                return False
            if self._prefetch_tag in self._pending:
                uid = fetch_uid(line)
                if uid is not None and self._prefetched_fetch(line, uid):
                    return not _ONLY_UID_RE.match(line)
        elif step in (Step.FIND_DELETED, Step.RECHECK) and _SEARCH_RE.match(line):
            self._deleted |= _search_set(line)
            return False
        # FETCH responses about messages whose flags we change are caused by our STOREs (with
        # CONDSTORE even .SILENT answers with MODSEQ); those about others are relayed.
        uid = fetch_uid(line)
        if step is Step.VERIFY and uid is not None and _ONLY_UID_RE.match(line):
            if uid in self._moving:
                self._remaining.add(uid)
            return False
        if step is Step.CHECK and uid in self._moving:
            self._remaining.add(uid)
            if _DELETED_FLAG_RE.search(line):
                self._flagged.add(uid)
            return False
        if uid is not None and (uid in self._moving or uid in self._foreign):
            return False
        expunged = _expunge_count(line)
        if expunged:
            self.expunged(expunged)
        return True

    def _count(self, number: int, exists: bool) -> bool:
        """An EXISTS or RECENT response: whether it goes to the client now.

        A MOVE into the selected mailbox announces the new messages after the expunges, with
        the count that follows them, as a native MOVE does. So from the COPY on, EXISTS and
        RECENT wait for the tagged reply, where only the latest of each is shown: a RECENT
        shown before them could count messages whose EXISTS the client has not seen yet."""
        if exists:
            self._exists = number
        holding = self._exists_held or self._recent_held is not None
        if self.step is not Step.COPY and not holding:
            if not exists:
                self.recent = number
            return True
        if exists:
            self._exists_held = True
        else:
            self._recent_held = number
        return False

    def _prefetched_fetch(self, line: bytes, uid: int) -> bool:
        """Note a FETCH with ``uid`` that came while the prefetch ran; return whether it is
        (maybe) the answer to it. A FETCH about a message outside the client's set is another
        session's news (with CONDSTORE it carries the UID too): it never joins the MOVE."""
        if self.request.uid:  # judged once the whole answer is in: "*" is its highest UID
            self._fetched[uid] = self._fetched.get(uid, False) or bool(_ONLY_UID_RE.match(line))
            return True
        number = int(line.split(b" ", 2)[1])
        client = self._client_set(self._exists)
        if client is not None and number not in client:
            return False
        if self._numbered.setdefault(number, uid) != uid:
            self._outside = f"message {number} as UIDs {self._numbered[number]} and {uid}"
        return True

    def _client_set(self, star: int | None) -> NumberSet | None:
        """The numbers the client's set names, ``*`` being ``star``; None for ``$``."""
        if self.request.sequence_set == b"$":
            return None
        if self._client_cache is None or self._client_cache[0] != star:
            self._client_cache = (star, NumberSet.parse(self.request.sequence_set, star))
        return self._client_cache[1]

    def _judge_prefetch(self) -> None:
        """The prefetch's answer is complete: keep what lies in the client's set, and note in
        :attr:`_outside` an answer to the proxy's own FETCH or SEARCH that lies outside it."""
        named = self._listed | NumberSet.of(self._numbered.values())
        if self.request.uid:
            # the answer to the proxy's own FETCH (UID) or SEARCH, then others' news in the set
            named |= NumberSet.of(uid for uid, only in self._fetched.items() if only)
            highest = max(max(self._fetched, default=0), self._listed.highest or 0)
            client = self._client_set(highest)
            if client is not None:
                self._note_outside(named - client)
                named = (named | NumberSet.of(self._fetched)) & client
        self._prefetched = named

    def _note_outside(self, outside: NumberSet) -> None:
        if outside.ranges and not self._outside:
            self._outside = f"UIDs {outside.text()}"

    def on_tagged(self, reply: Tagged, caps: Capabilities | None) -> list[UpstreamCommand]:
        """Advance on the tagged reply to one of our commands (or the forwarded MOVE)."""
        if self.step is Step.FORWARD:
            self.outcome = "forwarded"
            self.step = Step.DONE
            return []
        self._pending.discard(reply.tag)
        ok = reply.status == b"OK"
        step = self.step
        if reply.tag == self._copy_tag:
            self._copy_result = reply
        elif reply.tag == self._prefetch_tag:
            self._prefetch_ok = ok
            self._judge_prefetch()
        elif step is Step.VERIFY and not ok:
            self._remaining = set()  # cannot tell: the EXPUNGE itself succeeded
        elif step is Step.CHECK and not ok:
            self._checked = False  # cannot tell which messages are left
        elif step is Step.EXPUNGE and ok and code_name(reply.code) == b"HIGHESTMODSEQ":
            self._final_code = reply.code
        elif not ok and step not in _UNFAILING and self._failure is None:
            self._failure = reply
            self._failed_step = step.value
        if self._pending:
            return []
        if step is Step.CAPABILITY:
            return self._begin(caps or Capabilities(frozenset()))  # no answer: no UIDPLUS
        return _NEXT[step](self)

    def answers(self, tag: bytes) -> bool:
        """Whether a tagged reply with ``tag`` is for this MOVE: one of the proxy's commands, or
        the client's MOVE forwarded under the client's tag."""
        return tag in self._pending or (self.step is Step.FORWARD and tag == self.request.tag)

    def on_rollback(
        self, error: str | None, *, attempted: bool = True, missing: frozenset[int] = frozenset()
    ) -> list[UpstreamCommand]:
        """The second session removed the copies of :attr:`rollback_request` (``error`` is
        None), failed to, or could not be ``attempted`` (no credentials). ``missing``: copies
        it found gone from the target already (another session moved or deleted them)."""
        request = self.rollback_request
        assert self.step is Step.ROLLBACK and request is not None
        if error is None:
            self.rollback = "done"
            pairs = zip(request.sources, request.uids, strict=True)
            self._vanished = {source for source, copy in pairs if copy in missing}
            self._removed = set(request.sources) - self._vanished
        else:
            self.rollback = "failed" if attempted else "impossible"
            self._rollback_error = error
        self.rollback_request = None
        return self._report()

    # ------------------------------------------------------------------ the steps

    def _after_copy(self) -> list[UpstreamCommand]:
        result = self._copy_result
        assert result is not None
        if result.status != b"OK":
            # Nothing was copied in this chunk, so nothing else is done.
            self.outcome = "copy-failed"
            if not self._moved:  # the client gets the COPY's answer, as from a native MOVE
                self._finish(result.status, result.code, result.text)
                return []
            self._failure, self._failed_step = result, "copy"
            self._moving = set()
            return self._report()
        copyuid = result.code if code_name(result.code) == b"COPYUID" else None
        if copyuid is not None and len(copyuid.split()) == 4:
            _, _, sources, targets = copyuid.split()
            self._targets = dict(
                zip(expand_uid_set(sources), expand_uid_set(targets), strict=False)
            )
            self._moving = set(self._targets)
            self._target_validity = copyuid.split()[1]
            self._check_copied(NumberSet.of(self._moving))
            if self._outside:  # its copies are removed, and the client is told why
                return self._refuse_outside()
            self._emit(b"* OK [" + copyuid + b"] Moved UIDs.\r\n")
        elif self._outside:
            return self._refuse_outside()
        if not self._moving:
            self._moving = set(self._prefetched)
        if not self._moving:
            self.outcome = "moved"
            self._finish(b"OK", None, b"No messages found.")
            return []
        self._already_deleted = {uid for uid in self._moving if uid in self._deleted}
        self._total = self._total or len(self._moving)
        if self.policy is Policy.GUARDED:
            return self._send(Step.FIND_SYNC, [b"NOOP\r\n"])
        return self._send(Step.FLAG, self._per_set(_FLAG, self._moving))

    def _check_copied(self, sources: NumberSet) -> None:
        """COPYUID's source UIDs against the set the COPY named: for UIDs, inside it (``*``
        being its highest UID); for sequence numbers, no more messages than it names."""
        if self._copy_set is not None:
            self._note_outside(sources - self._copy_set)
        elif self.request.uid:
            client = self._client_set(sources.highest)
            if client is not None:
                self._note_outside(sources - client)
        else:
            client = self._client_set(self._exists)
            if client is not None and sources.size > client.size:
                self._outside = f"{sources.size} messages for a set of {client.size}"

    def _refuse_outside(self) -> list[UpstreamCommand]:
        """The upstream named messages the client did not (:attr:`_outside`): flag and expunge
        nothing; remove the copies a COPY made, through the check and rollback of step 4."""
        request = self.request
        log.warning(
            "%sMOVE %s: the server named messages outside the set (%s): MOVE refused",
            "UID " * request.uid, request.sequence_set[:60].decode(), self._outside,
        )  # fmt: skip
        self._failure = Tagged(
            b"", b"NO", b"SERVERBUG", f"the server named {self._outside}, outside the set".encode()
        )
        self._failed_step = _OUTSIDE
        if self._targets:  # copied: find which are still in the source, then remove the copies
            self._total = self._total or len(self._targets)
            self._moving = set(self._targets)
            return self._check()
        copied = self._copy_result is not None and self._copy_result.status == b"OK"
        state = (
            "nothing was removed from the source, but its COPY may have left copies in the target"
            if copied  # no COPYUID says as what
            else "nothing was copied, flagged or expunged"
        )
        self.outcome = f"{_OUTSIDE}-failed"
        text = f"MOVE failed: the server named {self._outside}, outside the set; {state}."
        self._finish(b"NO", b"SERVERBUG", text.encode())
        return []

    def _after_flag(self) -> list[UpstreamCommand]:
        if self.policy is Policy.UIDPLUS:
            if self._failure is not None:
                return self._recover()
            # UID EXPUNGE removes only messages of the set that carry \\Deleted, all of them
            # copied: those are moved, the rest stay.
            self._expunges = self._per_set(b"UID EXPUNGE %s\r\n", self._moving)
            if not self._retried:  # a retry's EXPUNGEs add to the first attempt's
                self._expunged_before = self._expunged
            return self._after_expunge()
        if self._failure is not None:
            return self._undo()
        return self._send(Step.RECHECK_SYNC, [b"NOOP\r\n"])

    def _after_find_deleted(self) -> list[UpstreamCommand]:
        """Guarded: clear \\Deleted on the other messages, flag the moved ones."""
        if self._failure is not None:
            return self._report()
        self._foreign = set(self._deleted) - self._moving
        self._already_deleted = {uid for uid in self._moving if uid in self._deleted}
        unflag = self._per_set(_UNFLAG, self._foreign)
        return self._send(Step.FLAG, unflag + self._per_set(_FLAG, self._moving))

    def _after_recheck(self) -> list[UpstreamCommand]:
        """Guarded: right before EXPUNGE, no message outside the move may carry \\Deleted."""
        if self._failure is not None:
            return self._undo()
        newly_flagged = set(self._deleted) - self._moving
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
        self._deleted = NumberSet()
        return self._send(step, [_SEARCH_DELETED])

    def _after_expunge(self) -> list[UpstreamCommand]:
        if self._expunges:
            # One at a time: a server running two UID EXPUNGEs at once (Dovecot does) may
            # report some expunges only after both tagged replies, that is after our OK.
            return self._send(Step.EXPUNGE, [self._expunges.pop(0)])
        if self.policy is Policy.GUARDED:
            return self._send(Step.RESTORE, self._per_set(_FLAG, self._foreign))
        if self._failure is None and self._expunged - self._expunged_before == len(self._moving):
            return self._chunk_done()
        if self._failure is None and not self._retried:
            # Dovecot (maildir, other sessions copying into the mailbox) was seen answering OK
            # to a UID EXPUNGE that removed none of the messages just flagged. Flag and expunge
            # once more: messages already gone are skipped by both commands.
            self._retried = True
            self.expunge_retries += 1
            return self._send(Step.FLAG, self._per_set(_FLAG, self._moving))
        # Fewer (or other sessions' too) EXPUNGEs than messages moved: find out which are left.
        return self._recover()

    def _recover(self) -> list[UpstreamCommand]:
        """UIDPLUS, after a failure past the COPY: clear the \\Deleted flags the proxy set, then
        list which moved messages are still in the source. Once unflagged, no other session's
        EXPUNGE can remove them, so removing their copies from the target cannot lose them."""
        unflag = self._per_set(_UNFLAG, self._moving - self._already_deleted)
        return self._send(Step.UNFLAG, unflag)

    def _check(self) -> list[UpstreamCommand]:
        self._remaining, self._flagged = set(), set()
        return self._send(Step.CHECK, self._per_set(b"UID FETCH %s (UID FLAGS)\r\n", self._moving))

    def _after_check(self) -> list[UpstreamCommand]:
        self._remaining &= self._moving
        if not self._checked:
            return self._report()
        if not self._remaining and self._failed_step != _OUTSIDE:  # everything moved after all
            self._failure = None
            return self._chunk_done()
        if self._failure is None:
            left = b",".join(compress_uids(list(self._remaining)))
            self._failure = Tagged(b"", b"NO", None, b"UIDs " + left + b" were not expunged")
            self._failed_step = "expunge"
        # Those still flagged \Deleted (the user's own, or an unflag failed) stay in both: any
        # session's EXPUNGE may remove them from the source at any moment.
        removable = sorted((self._remaining - self._flagged) & set(self._targets))
        if not removable:
            self.rollback = "impossible"
            return self._report()
        self.step = Step.ROLLBACK
        self.rollback_request = RollbackRequest(
            self.request.mailbox,
            self._target_validity,
            tuple(self._targets[uid] for uid in removable),
            tuple(removable),
        )
        return []

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

    def _chunk_done(self) -> list[UpstreamCommand]:
        if self.policy is Policy.GUARDED and self._remaining and self._failure is None:
            left = b",".join(compress_uids(list(self._remaining)))
            self._failure = Tagged(b"", b"NO", None, b"UIDs " + left + b" were not expunged")
            self._failed_step = "expunge"
        if self._failure is None and self._left:
            return self._next_chunk()
        return self._report()

    def _report(self) -> list[UpstreamCommand]:
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
        moved = self._moved + len(self._moving) - len(self._remaining)
        if self.policy is Policy.GUARDED:
            if self.step is Step.UNDO:
                state = "Nothing was removed from the source: every message is in both mailboxes"
            else:
                state = "Messages still listed in the source are in both mailboxes"
        elif not self._checked:
            state = (
                "Which are still in the source could not be checked: those are in both mailboxes"
            )
        elif self._remaining - self._removed:
            self.duplicates = len(self._remaining - self._removed)
            state = self._duplicates_state()
        else:
            text = (
                f"MOVE failed ({self._failed_step}: {reason}): {moved} of {self._total} "
                "messages were moved, the others are unaffected."
            )
            self._finish(b"NO", failure.code, text.encode())
            return []
        text = (
            "MOVE incomplete: the messages were copied to the target, but removing them from the "
            f"source failed ({self._failed_step}: {reason}). {state}; none was lost."
        )
        self._finish(b"NO", failure.code, text.encode())
        return []

    def _duplicates_state(self) -> str:
        """What the tagged NO says of the messages left in both mailboxes (or maybe twice)."""
        both = self._remaining - self._removed - self._vanished
        parts = []
        if both:
            sources = b",".join(compress_uids(list(both))).decode()
            targets = [self._targets[uid] for uid in both if uid in self._targets]
            copies = b",".join(compress_uids(targets)).decode() or "unknown"
            why = f" (removing the copies failed: {self._rollback_error})" * bool(
                self._rollback_error
            )
            parts.append(f"UIDs {sources} are in both mailboxes (copies: UIDs {copies}){why}")
        if self._vanished:
            sources = b",".join(compress_uids(list(self._vanished))).decode()
            parts.append(
                f"the copies of UIDs {sources} had left the target before they could be removed "
                "(another session moved or deleted them), so those messages may exist twice"
            )
        state = "; ".join(parts)
        return state[:1].upper() + state[1:]

    def _per_set(self, template: bytes, uids: set[int]) -> list[bytes]:
        """``template`` once per UID set, split so that no command line grows too long."""
        sets = chunk_set(compress_uids(list(uids)), self._max_set_bytes)
        return [template % uid_set for uid_set in sets]

    def _own(self, command: UpstreamCommand) -> UpstreamCommand:
        """``command`` under a new tag of the proxy's, awaited with the current step."""
        tag = self._new_tag()
        self._pending.add(tag)
        return [tag + b" " + command[0], *command[1:]]

    def _send(self, step: Step, commands: list[bytes]) -> list[UpstreamCommand]:
        """Tag and send ``commands``, pipelined: together they make up ``step``."""
        return self._send_framed(step, [[command] for command in commands])

    def _send_framed(self, step: Step, commands: list[UpstreamCommand]) -> list[UpstreamCommand]:
        self.step = step
        tagged: list[UpstreamCommand] = []
        for first, *rest in commands:
            tag = self._new_tag()
            self._pending.add(tag)
            tagged.append([tag + b" " + first, *rest])
        if not tagged:
            return _NEXT[step](self)
        return tagged

    def _finish(self, status: bytes, code: bytes | None, text: bytes) -> None:
        if self._exists_held and self._exists is not None:
            self._emit(b"* %d EXISTS\r\n" % self._exists)
        recent = self._recent_held
        if recent is not None and self._exists is not None:
            recent = min(recent, self._exists)  # never more recent messages than exist
        if recent is not None and recent != self.recent:  # unchanged: not repeated
            self._emit(b"* %d RECENT\r\n" % recent)
            self.recent = recent
        code_part = b"[" + code + b"] " if code else b""
        self.reply = self.request.tag + b" " + status + b" " + code_part + text
        self._emit(self.reply + b"\r\n")
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
    Step.VERIFY: MoveEmulation._chunk_done,
    Step.UNDO: MoveEmulation._report,
    Step.RIGHTS: MoveEmulation._check_rights,
    Step.PREFETCH: MoveEmulation._after_prefetch,
    Step.UNFLAG: MoveEmulation._check,
    Step.CHECK: MoveEmulation._after_check,
}
# Steps whose failure does not make the MOVE fail: they only gather facts (or, for UNFLAG, the
# CHECK that follows finds out what the failure left behind).
_UNFAILING = frozenset(
    (Step.CAPABILITY, Step.RIGHTS, Step.PREFETCH, Step.COPY, Step.CHECK, Step.UNFLAG)
)


_SEARCH_RE = re.compile(rb"\* (?:E?SEARCH)\b", re.IGNORECASE)
_ONLY_UID_RE = re.compile(rb"\* \d+ FETCH \((?:UID \d+|MODSEQ \(\d+\)| )+\)\r?\n$", re.IGNORECASE)
_CAPABILITY_UNTAGGED_RE = re.compile(rb"\* CAPABILITY ", re.IGNORECASE)
_COUNT_RE = re.compile(rb"\* (\d+) (EXISTS|RECENT)\r?\n$", re.IGNORECASE)
_EXPUNGE_RE = re.compile(rb"\* \d+ EXPUNGE\r?\n$", re.IGNORECASE)
_VANISHED_RE = re.compile(rb"\* VANISHED ([0-9:,]+)\r?\n$", re.IGNORECASE)
_MYRIGHTS_RE = re.compile(rb"\* MYRIGHTS ", re.IGNORECASE)
_DELETED_FLAG_RE = re.compile(rb"FLAGS \([^)]*\\Deleted", re.IGNORECASE)
_ESEARCH_TAG_RE = re.compile(rb'\* ESEARCH \(TAG "([^"]*)"\)', re.IGNORECASE)


def _search_tag(line: bytes) -> bytes | None:
    """The command tag an ESEARCH response names (None for a plain SEARCH response)."""
    match = _ESEARCH_TAG_RE.match(line)
    return match.group(1) if match else None


def _expunge_count(line: bytes) -> int:
    """How many messages an EXPUNGE or (not EARLIER) VANISHED response removes."""
    if _EXPUNGE_RE.match(line):
        return 1
    match = _VANISHED_RE.match(line)
    return NumberSet.parse(match.group(1)).size if match else 0


def _search_set(line: bytes) -> NumberSet:
    """UIDs from ``* SEARCH 1 2 3`` or ``* ESEARCH (TAG "x") UID ALL 1:3``, unexpanded."""
    body = line_body(line)
    if body[2:9].upper() == b"ESEARCH":
        match = re.search(rb" ALL ([0-9:,]+)", body, re.IGNORECASE)
        return NumberSet.parse(match.group(1)) if match else NumberSet()
    return NumberSet.of(int(word) for word in body.split()[2:] if word.isdigit())
