"""MOVE and UID MOVE: parsing the client's command and emulating it over COPY, STORE, UID EXPUNGE.

The emulation is a sans-IO state machine. The session hands it every upstream response that
arrives while it runs; it answers with the upstream commands to send next and writes what the
client must see into the client buffer. Its promise (RFC 6851 §3.3): each message is moved or left
where it was, the client sees what a native MOVE server sends, and nothing the proxy's own commands
cause (their tags, the COPY's tagged reply, FETCH responses of the STORE) leaks to the client.

The sequence of upstream commands, each step only after the previous one's tagged reply:

1. ``FETCH set (UID)`` (``UID SEARCH UID set`` for UID MOVE) pipelined with ``[UID] COPY set mbox``.
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


class Step(enum.Enum):
    CAPABILITY = "capability"  # learning the upstream's capabilities after authentication
    FORWARD = "forward"  # upstream has MOVE, or cannot support emulation: sent as it is
    COPY = "copy"
    FLAG = "flag"  # UID STORE +FLAGS.SILENT (\Deleted)
    EXPUNGE = "expunge"  # UID EXPUNGE
    DONE = "done"


class MoveEmulation:
    """One client MOVE from the moment earlier commands have completed to its tagged reply."""

    def __init__(
        self,
        request: MoveRequest,
        read_only: bool,
        new_tag: TagSource,
        emit: Callable[[bytes], None],
        max_set_bytes: int = 8192,
    ) -> None:
        self.request = request
        self._read_only = read_only
        self._new_tag = new_tag
        self._emit = emit
        self._max_set_bytes = max_set_bytes
        self.step = Step.CAPABILITY
        self.outcome = ""  # "emulated", "forwarded", "failed", "refused"... for logs
        self._pending: set[bytes] = set()  # our tags still awaiting their tagged reply
        self._prefetch_tag = b""
        self._copy_tag = b""
        self._prefetched: list[int] = []
        self._copy_result: Tagged | None = None
        self._moving: set[int] = set()  # UIDs confirmed copied, to flag and expunge
        self._failure: Tagged | None = None
        self._failed_step = ""
        self._expunge_ok: Tagged | None = None
        self._remove_sets: list[bytes] = []  # the UID sets flagged, then expunged
        self._held: list[bytes] = []  # EXISTS/RECENT caused by the COPY, shown after EXPUNGEs
        self._expunged = 0  # messages the client was told are gone since those were held

    @property
    def done(self) -> bool:
        return self.step is Step.DONE

    def owns(self, tag: bytes) -> bool:
        return tag in self._pending

    # ------------------------------------------------------------------ starting

    def start(self, caps: Capabilities | None) -> list[UpstreamCommand]:
        if self.request.error is not None:
            self._finish(b"BAD", None, self.request.error)
            return []
        if caps is None:
            tag = self._new_tag()
            self._pending.add(tag)
            return [[tag + b" CAPABILITY\r\n"]]
        return self._begin(caps)

    def _begin(self, caps: Capabilities) -> list[UpstreamCommand]:
        request = self.request
        uid = b"UID " if request.uid else b""
        if caps.native_move or not caps.uidplus:
            # Nothing to emulate (native MOVE) or nothing safe to emulate with (no UIDPLUS):
            # the upstream answers the client's own command under the client's own tag.
            self.step = Step.FORWARD
            self.outcome = "native" if caps.native_move else "refused"
            prefix = request.tag + b" " + uid + b"MOVE " + request.sequence_set + b" "
            return [astring_segments(prefix, request.mailbox, caps)]
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
        if request.uid:
            search = b"UID SEARCH RETURN (ALL) UID " if caps.esearch else b"UID SEARCH UID "
            prefetch = self._prefetch_tag + b" " + search + request.sequence_set + b"\r\n"
        else:
            prefetch = self._prefetch_tag + b" FETCH " + request.sequence_set + b" (UID)\r\n"
        copy = self._copy_tag + b" " + uid + b"COPY " + request.sequence_set + b" "
        return [[prefetch], astring_segments(copy, request.mailbox, caps)]

    # ------------------------------------------------------------------ upstream responses

    def on_untagged(self, line: bytes) -> bool:
        """Whether an untagged upstream response that arrived during the MOVE goes to the client."""
        if self.step is Step.COPY and self._prefetch_tag in self._pending:
            if _SEARCH_RE.match(line):
                self._prefetched.extend(_search_uids(line))
                return False
            uid = fetch_uid(line)
            if uid is not None:
                self._prefetched.append(uid)
                return not _ONLY_UID_RE.match(line)
        if self.step is Step.COPY and _COUNT_RE.match(line):
            # A MOVE into the selected mailbox announces the new messages after the expunges,
            # with the count that follows them; hold the COPY's EXISTS/RECENT back until then.
            self._held.append(line)
            return False
        if self.step in (Step.FLAG, Step.EXPUNGE):
            # FETCH responses about the messages being moved are caused by our STORE (with
            # CONDSTORE even .SILENT answers with MODSEQ); those about others are relayed.
            uid = fetch_uid(line)
            if uid is not None and uid in self._moving:
                return False
            self._expunged += _expunge_count(line)
        elif self.step is Step.CAPABILITY:
            return not _CAPABILITY_UNTAGGED_RE.match(line)
        return True

    def on_tagged(self, reply: Tagged, caps: Capabilities | None) -> list[UpstreamCommand]:
        """Advance on the tagged reply to one of our commands (or the forwarded MOVE)."""
        if self.step is Step.FORWARD:
            self.step = Step.DONE
            return []
        self._pending.discard(reply.tag)
        if self.step is Step.CAPABILITY:
            if caps is None:  # the upstream would not say: treat it as lacking UIDPLUS
                caps = Capabilities(frozenset())
            return self._begin(caps)
        if self.step is Step.COPY:
            if reply.tag == self._copy_tag:
                self._copy_result = reply
            if self._pending:
                return []
            return self._after_copy()
        if reply.status != b"OK" and self._failure is None:
            self._failure = reply
            self._failed_step = "flagging" if self.step is Step.FLAG else "expunging"
        elif self.step is Step.EXPUNGE:
            self._expunge_ok = reply
        if self._pending:
            return []
        if self.step is Step.FLAG:
            return self._commands(Step.EXPUNGE, b"UID EXPUNGE %s\r\n")
        self._report_removal()
        return []

    def forwarded_tagged_line(self, line: bytes) -> bool:
        """True if ``line`` is the tagged reply to the MOVE forwarded under the client's tag."""
        return self.step is Step.FORWARD and line.startswith(self.request.tag + b" ")

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
            self.outcome = "emulated"
            self._finish(b"OK", None, b"No messages found.")
            return []
        self._remove_sets = chunk_set(compress_uids(list(self._moving)), self._max_set_bytes)
        return self._commands(Step.FLAG, b"UID STORE %s +FLAGS.SILENT (\\Deleted)\r\n")

    def _commands(self, step: Step, template: bytes) -> list[UpstreamCommand]:
        """One command per UID set of the messages being moved, all pipelined in one step."""
        self.step = step
        commands: list[UpstreamCommand] = []
        for uid_set in self._remove_sets:
            tag = self._new_tag()
            self._pending.add(tag)
            commands.append([tag + b" " + template % uid_set])
        return commands

    def _report_removal(self) -> None:
        failure = self._failure
        if failure is None:
            self.outcome = "emulated"
            code = self._expunge_ok.code if self._expunge_ok else None
            if code_name(code) != b"HIGHESTMODSEQ":
                code = None
            self._finish(b"OK", code, b"Move completed.")
            return
        self.outcome = f"{self._failed_step}-failed"
        reason = failure.text.decode("utf-8", "replace")
        text = (
            f"MOVE incomplete: the messages were copied to the target, but {self._failed_step} "
            f"them in the source failed ({reason}). Messages still listed in the source are now "
            "in both mailboxes; none was lost."
        )
        self._finish(b"NO", failure.code, text.encode())

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
