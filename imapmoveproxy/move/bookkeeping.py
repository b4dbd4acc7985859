"""What a MOVE keeps track of besides its steps: which messages the client's set names (the
prefetch, judged against the set), and what the client has been shown of the mailbox meanwhile
(EXPUNGEs counted, EXISTS and RECENT held back from the COPY on)."""

from __future__ import annotations

from ..wire import responses
from ..wire.grammar import NumberSet
from .request import MoveRequest


class ClientCounts:
    """The selected mailbox's counts as the client sees them during the MOVE.

    A MOVE into the selected mailbox announces the new messages after the expunges, with the
    count that follows them, as a native MOVE does. So from the COPY on, EXISTS and RECENT wait
    for the tagged reply, where only the latest of each is shown: a RECENT shown before them
    could count messages whose EXISTS the client has not seen yet.

    Except where an EXPUNGE would name a message the client has not been told exists (new mail
    that a ``1:*`` copied along): the EXISTS held goes first (:meth:`before_expunge`), as a
    native server announces new mail before it expunges it.
    """

    __slots__ = ("_exists_held", "_recent_held", "exists", "expunged", "recent", "told")

    def __init__(self, exists: int | None, recent: int | None) -> None:
        self.exists = exists  # how many messages the mailbox has at most, if known
        self.told = exists  # how many the client has been told of, if known
        self.recent = recent  # the RECENT count the client was last shown, if known
        self.expunged = 0  # EXPUNGEs the client was shown during this MOVE
        self._exists_held = False
        self._recent_held: int | None = None

    @property
    def holding_exists(self) -> bool:
        return self._exists_held

    def shown_expunges(self, count: int) -> None:
        """``count`` EXPUNGE responses went to the client."""
        self.expunged += count
        if self.exists is not None:
            self.exists -= count
        if self.told is not None:
            self.told -= count

    def before_expunge(self, number: int) -> bytes:
        """What must reach the client before ``* number EXPUNGE``: the EXISTS held, if the
        client has not been told of message ``number`` yet."""
        if not self._exists_held or self.exists is None:
            return b""
        if self.told is not None and number <= self.told:
            return b""
        self._exists_held = False
        self.told = self.exists
        return b"* %d EXISTS\r\n" % self.exists

    def count(self, number: int, exists: bool, copying: bool) -> bool:
        """An EXISTS or RECENT response: whether it goes to the client now (``copying``: the
        COPY has been sent and has no reply yet)."""
        if exists:
            self.exists = number
        holding = self._exists_held or self._recent_held is not None
        if not copying and not holding:
            if exists:
                self.told = number
            else:
                self.recent = number
            return True
        if exists:
            self._exists_held = True
        else:
            self._recent_held = number
        return False

    def held(self) -> bytes:
        """The EXISTS and RECENT held back, as they go before the tagged reply."""
        shown = b""
        if self._exists_held and self.exists is not None:
            shown += b"* %d EXISTS\r\n" % self.exists
            self.told = self.exists
        recent = self._recent_held
        if recent is not None and self.exists is not None:
            recent = min(recent, self.exists)  # never more recent messages than exist
        if recent is not None and recent != self.recent:  # unchanged: not repeated
            shown += b"* %d RECENT\r\n" % recent
            self.recent = recent
        return shown


class SetCheck:
    """Which messages the client's set names, as the prefetch's answer and COPYUID tell.

    Only what lies in the client's set counts: a FETCH about a message outside it is another
    session's news; an answer to the proxy's own FETCH, SEARCH or COPY naming a message outside
    it is noted in :attr:`outside` (the MOVE then ends with a NO before anything is flagged).
    """

    __slots__ = ("_cache", "_fetched", "_numbered", "_request", "listed", "outside", "prefetched")

    def __init__(self, request: MoveRequest) -> None:
        self._request = request
        self._cache: tuple[int | None, NumberSet] | None = None  # (star, client's set)
        self.listed = NumberSet()  # UIDs the prefetch's ESEARCH named
        self._fetched: dict[int, bool] = {}  # UID FETCH prefetch: UID -> only UID (our answer)
        self._numbered: dict[int, int] = {}  # FETCH prefetch: number in the set -> its UID
        self.outside = ""  # what the upstream named outside the client's set, if it did
        self.prefetched = NumberSet()  # UIDs in the client's set, once the prefetch is judged

    def restart(self) -> None:
        """A prefetch is sent (again)."""
        self.listed, self._fetched, self._numbered = NumberSet(), {}, {}

    def fetched(self, line: bytes, uid: int, exists: int | None) -> bool:
        """Note a FETCH with ``uid`` that came while the prefetch ran; return whether it is
        (maybe) the answer to it. A FETCH about a message outside the client's set is another
        session's news (with CONDSTORE it carries the UID too): it never joins the MOVE."""
        if self._request.uid:  # judged once the whole answer is in: "*" is its highest UID
            self._fetched[uid] = self._fetched.get(uid, False) or responses.only_uid(line)
            return True
        number = int(line.split(b" ", 2)[1])
        client = self.client_set(exists)
        if client is not None and number not in client:
            return False
        if self._numbered.setdefault(number, uid) != uid:
            self.outside = f"message {number} as UIDs {self._numbered[number]} and {uid}"
        return True

    def client_set(self, star: int | None) -> NumberSet | None:
        """The numbers the client's set names, ``*`` being ``star``; None for ``$``."""
        if self._request.sequence_set == b"$":
            return None
        if self._cache is None or self._cache[0] != star:
            self._cache = (star, NumberSet.parse(self._request.sequence_set, star))
        return self._cache[1]

    def judge(self) -> None:
        """The prefetch's answer is complete: keep what lies in the client's set, and note in
        :attr:`outside` an answer to the proxy's own FETCH or SEARCH that lies outside it."""
        named = self.listed | NumberSet.of(self._numbered.values())
        if self._request.uid:
            # the answer to the proxy's own FETCH (UID) or SEARCH, then others' news in the set
            named |= NumberSet.of(uid for uid, only in self._fetched.items() if only)
            highest = max(max(self._fetched, default=0), self.listed.highest or 0)
            client = self.client_set(highest)
            if client is not None:
                self._note(named - client)
                named = (named | NumberSet.of(self._fetched)) & client
        self.prefetched = named

    def copied(self, sources: NumberSet, copy_set: NumberSet | None, exists: int | None) -> None:
        """COPYUID's source UIDs against the set the COPY named (``copy_set``, None: the
        client's own): for UIDs, inside it (``*`` being its highest UID); for sequence numbers,
        no more messages than it names."""
        if copy_set is not None:
            self._note(sources - copy_set)
        elif self._request.uid:
            client = self.client_set(sources.highest)
            if client is not None:
                self._note(sources - client)
        else:
            client = self.client_set(exists)
            if client is not None and sources.size > client.size:
                self.outside = f"{sources.size} messages for a set of {client.size}"

    def _note(self, outside: NumberSet) -> None:
        if outside.ranges and not self.outside:
            self.outside = f"UIDs {outside.text()}"
