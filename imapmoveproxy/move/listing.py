"""Step 1 of a MOVE: which UIDs the client's set names, the COPYs, whole or in chunks, and what
each COPY did.

A set small enough for one COPY is listed with ``[UID] FETCH set (UID)`` (or ``UID SEARCH
RETURN (ALL)``) and ``UID SEARCH ... DELETED``, pipelined with the COPY itself. A bigger set, and
every set of the guarded policy (whose COPY never says what it copied), is listed first, then
copied chunk by chunk with ``UID COPY`` of listed UIDs only; each chunk is moved or left alone on
its own (the steps after a COPY, then :func:`next_chunk`).

Functions over :class:`.state.MoveState`; :mod:`.emulation` runs them.
"""

from __future__ import annotations

from bisect import bisect_left

from ..journal.entry import Phase
from ..wire import responses
from ..wire.grammar import NumberSet, Tagged, code_name, compress_uids, expand_uid_set
from . import guarded, replies, uidplus
from .request import Policy, UpstreamCommand, astring_segments, status_command
from .state import Chunk, Failure, MoveState, Next, Outcome, Reply, Role, Send, Step, Then

MOST_PER_COPY = 1_000_000  # chunk size when chunks are off: a COPYUID must stay expandable
_OTHER, _PREFETCH, _DELETED, _COPY = Role.OTHER, Role.PREFETCH, Role.DELETED, Role.COPY


def _sync(state: MoveState) -> list[UpstreamCommand]:
    """``NOOP``, once, before the first COPY (and, for UID MOVE, before the listing): UW-IMAP
    tells a session of other sessions' expunges only then, and until then COPYs messages
    that another MOVE has moved already. Sequence numbers would shift under it, so a
    sequence-number MOVE sends it only once its set is listed as UIDs."""
    if state.synced:
        return []
    state.synced = True
    return [[b"NOOP\r\n"]]


def on_untagged(state: MoveState, line: bytes) -> bool | None:
    """An untagged response during the listing or a COPY: whether it goes to the client,
    or None if it is none of the listing's business."""
    if responses.is_search(line):
        tag = responses.search_tag(line)
        if tag == state.prefetch_tag:
            state.set_check.listed |= responses.search_set(line)
        elif tag in (None, state.deleted_tag):
            state.deleted |= responses.search_set(line)
        return False
    if state.prefetching:
        uid = responses.fetch_uid(line)
        if uid is not None and state.set_check.fetched(line, uid, state.counts.exists):
            return not responses.only_uid(line)
    return None


def prefetch(state: MoveState, step: Step, copy: bool) -> Send:
    """Which UIDs the client's set names and (UIDPLUS) which of them carry \\Deleted
    already, so that a rollback clears only the flags the proxy set; pipelined with the
    COPY of the whole set if ``copy``."""
    request, caps = state.request, state.caps
    uid = b"UID " if request.uid else b""
    commands = _sync(state) if request.uid else []
    roles = [_OTHER] * len(commands)
    state.set_check.restart()
    searchres = request.sequence_set == b"$"  # SEARCHRES implies ESEARCH (RFC 5182)
    if (request.uid or searchres) and caps.esearch:  # one short line for any size
        commands.append([b"UID SEARCH RETURN (ALL) UID " + request.sequence_set + b"\r\n"])
    else:  # FETCH is what every server gets right (imap4d's SEARCH UID is not)
        commands.append([uid + b"FETCH " + request.sequence_set + b" (UID)\r\n"])
    roles.append(_PREFETCH)
    if state.policy is Policy.UIDPLUS:  # the guarded policy searches \Deleted on its own
        returns = b"RETURN (ALL) " if caps.esearch else b""
        commands.append([b"UID SEARCH " + returns + uid + request.sequence_set + b" DELETED\r\n"])
        roles.append(_DELETED)
    flags = state.flags
    if flags is not None and state.policy is Policy.GUARDED and not copy:
        commands.append(flags.status_command(request.mailbox, caps))
        roles.append(_OTHER)
        state.target_asked = True
    elif state.journal and not copy:
        commands.append(status_command(request.mailbox, caps))
        roles.append(_OTHER)
        state.target_asked = True
    if copy:  # last: it may wait for "+" before sending the mailbox name
        state.chunk.uids = None  # the client's own set
        prefix = uid + b"COPY " + request.sequence_set + b" "
        commands.append(astring_segments(prefix, [request.mailbox], caps))
        roles.append(_COPY)
    return Send(step, commands, tuple(roles))


def after_prefetch(state: MoveState) -> Next:
    listed = state.set_check
    if listed.outside:
        return Then.REFUSE_OUTSIDE
    if not state.prefetch_ok or not listed.prefetched.size:
        # Let the COPY answer as the upstream would (an invalid set, no messages...).
        return prefetch(state, Step.COPY, copy=True)
    state.listed, state.next_uid = listed.prefetched, 0
    state.total = state.left = listed.prefetched.size
    return next_chunk(state)


def _take(listed: NumberSet, start: int, count: int) -> list[int]:
    """The first ``count`` numbers of ``listed`` from ``start`` on."""
    ranges = listed.ranges
    taken: list[int] = []
    for low, high in ranges[bisect_left(ranges, start, key=lambda pair: pair[1]) :]:
        low = max(low, start)
        taken.extend(range(low, min(high, low + count - len(taken) - 1) + 1))
        if len(taken) >= count:
            break
    return taken


def next_chunk(state: MoveState) -> Send:
    """Move the next chunk of UIDs: each chunk is moved or left alone on its own."""
    done = state.chunk
    state.moved += len(done.moving) - len(done.remaining)
    if done.targets:  # the next chunk's copies come after this one's
        state.target_uidnext = max(state.target_uidnext, max(done.targets.values()) + 1)
    chunk = _take(state.listed, state.next_uid, state.chunk_limit)
    state.left -= len(chunk)
    if chunk:
        state.next_uid = chunk[-1] + 1
    state.set_check.prefetched = uids = NumberSet.of(chunk)
    state.chunk = Chunk(uids)
    commands = _sync(state)
    if state.flags is not None and state.policy is Policy.GUARDED:
        commands.append([state.flags.fetch_command(chunk)])
    roles = (*[_OTHER] * len(commands), _COPY)
    copy = b"UID COPY " + b",".join(compress_uids(chunk)) + b" "
    commands.append(astring_segments(copy, [state.request.mailbox], state.caps))
    return Send(Step.COPY, commands, roles, record=Phase.INTENT)


def after_copy(state: MoveState) -> Next:
    """The COPY (of this chunk) has its tagged reply: what it copied, then the policy's steps."""
    chunk = state.chunk
    result = chunk.copied
    assert result is not None
    if result.status != b"OK":
        return _copy_failed(state, result)
    copyuid = result.code if code_name(result.code) == b"COPYUID" else None
    if copyuid is not None and b"0" in copyuid.split()[2:]:
        # UW-IMAP's answer to a COPY that matched no message (RFC 4315 has no UID 0):
        # nothing was copied, whatever the listing named.
        return _copied_nothing(state)
    shown = b""
    if copyuid is not None and len(copyuid.split()) == 4:
        _, validity, sources, targets = copyuid.split()
        chunk.targets = dict(zip(expand_uid_set(sources), expand_uid_set(targets), strict=False))
        chunk.moving = set(chunk.targets)
        chunk.target_validity = validity
        state.set_check.copied(NumberSet.of(chunk.moving), chunk.uids, state.counts.exists)
        if state.set_check.outside:  # its copies are removed, and the client is told why
            return Then.REFUSE_OUTSIDE
        shown = b"* OK [" + copyuid + b"] Moved UIDs.\r\n"
    elif state.set_check.outside:
        return Then.REFUSE_OUTSIDE
    if not chunk.moving:
        chunk.moving = set(state.set_check.prefetched)
    if not chunk.moving:
        return _copied_nothing(state)  # (no COPYUID was shown: it named UIDs)
    chunk.already_deleted = {uid for uid in chunk.moving if uid in state.deleted}
    state.total = state.total or len(chunk.moving)
    first = guarded.after_copy if state.policy is Policy.GUARDED else uidplus.after_copy
    send = first(state)
    send.show, send.record = shown, Phase.COPIED
    return send


def _copy_failed(state: MoveState, result: Tagged) -> Next:
    return _not_copied(state, Failure(Step.COPY, result.status, result.code, result.text))


def journal_refused(state: MoveState) -> Next:
    """The journal could not record this chunk and the MOVE may not go on without it
    (``journal_unavailable = "refuse"``)."""
    return _not_copied(state, Failure(Step.COPY, b"NO", b"UNAVAILABLE", replies.NO_JOURNAL))


def _not_copied(state: MoveState, failure: Failure) -> Next:
    """Nothing was copied in this chunk, so nothing else is done."""
    state.failure = failure
    if not state.moved:  # the client gets the COPY's answer, as from a native MOVE
        return Reply(Outcome.FAILED, failure.status, failure.code, failure.text)
    state.chunk.moving = set()
    return Then.REPORT


def _copied_nothing(state: MoveState) -> Next:
    """The COPY (of this chunk) copied no message: the next chunk, or the tagged reply."""
    state.chunk.moving = set()
    if not state.moved:
        state.flags = None  # no copy whose flags to check
    if state.moved or state.left:
        return Then.CHUNK_DONE
    return Reply(Outcome.MOVED, b"OK", None, replies.NO_MESSAGES)
