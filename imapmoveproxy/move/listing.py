"""Step 1 of a MOVE: which UIDs the client's set names, and the COPYs, whole or in chunks.

A set small enough for one COPY is listed with ``[UID] FETCH set (UID)`` (or ``UID SEARCH
RETURN (ALL)``) and ``UID SEARCH ... DELETED``, pipelined with the COPY itself. A bigger set, and
every set of the guarded policy (whose COPY never says what it copied), is listed first, then
copied chunk by chunk with ``UID COPY`` of listed UIDs only; each chunk is moved or left alone on
its own (the steps after a COPY, then :meth:`Listing.next_chunk`).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING

from ..wire import responses
from ..wire.grammar import NumberSet, compress_uids
from .request import Policy, UpstreamCommand, astring_segments
from .steps import Step

if TYPE_CHECKING:
    from .emulation import MoveEmulation

_MOST_PER_COPY = 1_000_000  # chunk size when chunks are off: a COPYUID must stay expandable


class Listing:
    """The listing commands of a MOVE, and the chunks still to copy."""

    def __init__(self, move: MoveEmulation, chunk_size: int) -> None:
        self._move = move
        self.chunk_limit = chunk_size or _MOST_PER_COPY
        self.prefetch_tag = b""
        self.prefetch_ok = False
        self.deleted_tag = b""
        self.copy_tag = b""
        self.copy_set: NumberSet | None = None  # UIDs of a chunk's UID COPY
        self._queue: Iterator[int] = iter(())  # UIDs of the chunks still to move
        self.left = 0  # how many UIDs are in the queue
        self._synced = False  # the NOOP that brings the session's view up to date was sent

    def _sync(self) -> list[UpstreamCommand]:
        """``NOOP``, once, before the first COPY (and, for UID MOVE, before the listing): UW-IMAP
        tells a session of other sessions' expunges only then, and until then COPYs messages
        that another MOVE has moved already. Sequence numbers would shift under it, so a
        sequence-number MOVE sends it only once its set is listed as UIDs."""
        if self._synced:
            return []
        self._synced = True
        return [self._move.own([b"NOOP\r\n"])]

    def _tag(self) -> bytes:
        return self._move.channel.tag(self._move)

    def on_untagged(self, line: bytes) -> bool | None:
        """An untagged response during the listing or a COPY: whether it goes to the client,
        or None if it is none of the listing's business."""
        move = self._move
        if responses.is_search(line):
            tag = responses.search_tag(line)
            if tag == self.prefetch_tag:
                move.set_check.listed |= responses.search_set(line)
            elif tag in (None, self.deleted_tag):
                move.deleted |= responses.search_set(line)
            return False
        if move.channel.owner(self.prefetch_tag) is move:
            uid = responses.fetch_uid(line)
            if uid is not None and move.set_check.fetched(line, uid, move.counts.exists):
                return not responses.only_uid(line)
        return None

    def prefetch(self, step: Step, copy: bool) -> list[UpstreamCommand]:
        """Which UIDs the client's set names and (UIDPLUS) which of them carry \\Deleted
        already, so that a rollback clears only the flags the proxy set; pipelined with the
        COPY of the whole set if ``copy``."""
        move = self._move
        request, caps = move.request, move.caps
        uid = b"UID " if request.uid else b""
        move.step = step
        sync = self._sync() if request.uid else []
        self.prefetch_tag = self._tag()
        move.set_check.restart()
        searchres = request.sequence_set == b"$"  # SEARCHRES implies ESEARCH (RFC 5182)
        if (request.uid or searchres) and caps.esearch:  # one short line for any size
            prefetch = b" UID SEARCH RETURN (ALL) UID " + request.sequence_set + b"\r\n"
        else:  # FETCH is what every server gets right (imap4d's SEARCH UID is not)
            prefetch = b" " + uid + b"FETCH " + request.sequence_set + b" (UID)\r\n"
        commands = [*sync, [self.prefetch_tag + prefetch]]
        if move.policy is Policy.UIDPLUS:  # the guarded policy searches \Deleted on its own
            self.deleted_tag = self._tag()
            returns = b"RETURN (ALL) " if caps.esearch else b""
            search = b" UID SEARCH " + returns + uid + request.sequence_set + b" DELETED\r\n"
            commands.append([self.deleted_tag + search])
        flags = move.flags
        if flags is not None and move.policy is Policy.GUARDED and not copy:
            commands.append(move.own(flags.status_command(request.mailbox, caps)))
        if copy:  # last: it may wait for "+" before sending the mailbox name
            self.copy_set = None  # the client's own set
            self.copy_tag = self._tag()
            prefix = self.copy_tag + b" " + uid + b"COPY " + request.sequence_set + b" "
            commands.append(astring_segments(prefix, [request.mailbox], caps))
        return commands

    def after_prefetch(self) -> list[UpstreamCommand]:
        move = self._move
        listed = move.set_check
        if listed.outside:
            return move.recovery.refuse_outside()
        if not self.prefetch_ok or not listed.prefetched.size:
            # Let the COPY answer as the upstream would (an invalid set, no messages...).
            return self.prefetch(Step.COPY, copy=True)
        self._queue, self.left = iter(listed.prefetched), listed.prefetched.size
        move.total = self.left
        return self.next_chunk()

    def next_chunk(self) -> list[UpstreamCommand]:
        """Move the next chunk of UIDs: each chunk is moved or left alone on its own."""
        move = self._move
        move.moved += len(move.moving) - len(move.recovery.remaining)
        chunk = list(islice(self._queue, self.chunk_limit))
        self.left -= len(chunk)
        move.set_check.prefetched = self.copy_set = NumberSet.of(chunk)
        move.moving = set()
        move.recovery.new_chunk()
        move.foreign = set()
        move.steps.new_chunk()
        move.copy_result = None
        move.step = Step.COPY
        commands = self._sync()
        if move.flags is not None and move.policy is Policy.GUARDED:
            commands.append(move.own([move.flags.fetch_command(chunk)]))
        self.copy_tag = self._tag()
        copy = self.copy_tag + b" UID COPY " + b",".join(compress_uids(chunk)) + b" "
        return [*commands, astring_segments(copy, [move.request.mailbox], move.caps)]
