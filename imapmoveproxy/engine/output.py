"""What one session has for each peer, and the rule for the proxy's own replies."""

from __future__ import annotations

from ..wire.deflate import Deflater
from ..wire.framing import Framer

Buffer = bytes | bytearray | memoryview

# A piece of upstream bytes at least this long is queued for the client as it is (a view into
# the received bytes) instead of being copied into the client's buffer: literal data, long runs
# of plain responses. Only if it is at least a quarter of the buffer it views: a view keeps
# that whole buffer alive (a reused read buffer is not read into again while a view into it is
# queued: shell/connection.py ``Buffers``), and the bytes queued are bounded.
NO_COPY = 8192


class Output:
    """Bytes queued for the client and for the upstream.

    A reply of the proxy's own (a BAD, a ``+``, a MOVE's answer, a BYE) never lands inside an
    upstream response being relayed, which may be in the middle of a literal: it waits in
    ``deferred`` until the upstream framer is between two responses.

    The client's bytes are ``to_client``, the buffer being appended to, after the pieces already
    queued whole (:meth:`relay`). Once the client's connection is compressed
    (:meth:`start_compression`), what the client is to get is compressed as it is taken, in
    one burst ended by a sync flush: the counts here are of bytes before compression.
    """

    __slots__ = (
        "_deflater", "_plain", "_plain_bytes", "_queued", "_queued_bytes", "_upstream",
        "deferred", "to_client", "to_upstream",
    )  # fmt: skip

    def __init__(self, upstream: Framer) -> None:
        self._upstream = upstream
        self.to_client = bytearray()
        self.to_upstream = bytearray()
        self.deferred = bytearray()
        self._queued: list[Buffer] = []  # for the client, before ``to_client``
        self._queued_bytes = 0
        self._deflater: Deflater | None = None  # COMPRESS=DEFLATE with the client
        self._plain: list[Buffer] = []  # queued before compression started, not taken yet
        self._plain_bytes = 0

    @property
    def pending_to_client(self) -> int:
        """Bytes queued for the client, the replies held back behind a response included."""
        return self.ready_to_client + len(self.deferred)

    @property
    def ready_to_client(self) -> int:
        """Bytes :meth:`take_to_client` would return now (before compression)."""
        return self._plain_bytes + self._queued_bytes + len(self.to_client)

    @property
    def pending_to_upstream(self) -> int:
        return len(self.to_upstream)

    def relay(self, data: bytes | memoryview) -> None:
        """Queue upstream bytes for the client: a big piece without copying it."""
        if len(data) < NO_COPY or not isinstance(data, memoryview) or len(data) * 4 < _size(data):
            self.to_client += data
            return
        if self.to_client:
            self._queue(self.to_client)
            self.to_client = bytearray()
        self._queue(data)

    def _queue(self, data: Buffer) -> None:
        self._queued.append(data)
        self._queued_bytes += len(data)

    def reply(self, data: bytes) -> None:
        """Queue a reply of the proxy's own for the client."""
        if self._upstream.at_boundary:
            self.to_client += data
        else:
            self.deferred += data

    @property
    def replies_at_once(self) -> bool:
        """A reply of the proxy's own queued now goes out next, held back by nothing."""
        return self._upstream.at_boundary and not self.deferred

    def flush_deferred(self) -> None:
        """The upstream response being relayed may have ended: release the replies held."""
        if self.deferred and self._upstream.at_boundary:
            self.to_client += self.deferred
            self.deferred = bytearray()

    @property
    def compressed(self) -> bool:
        """What the client is to get is compressed (COMPRESS=DEFLATE)."""
        return self._deflater is not None

    def start_compression(self) -> None:
        """Everything queued for the client from now on is compressed; what is queued already
        (the COMPRESS command's OK last) goes out as it is, before it."""
        self._plain = self.take_client_buffers()
        self._plain_bytes = sum(len(buffer) for buffer in self._plain)
        self._deflater = Deflater()

    def take_client_buffers(self) -> list[Buffer]:
        """What the client is to get, in order: as the pieces it was queued in, or, once
        compressed, in one piece (after the plain bytes queued before compression started)."""
        buffers = self._queued
        if self.to_client:
            buffers.append(self.to_client)
        self._queued, self._queued_bytes, self.to_client = [], 0, bytearray()
        if self._deflater is not None and buffers:
            buffers = [self._deflater.burst(buffers)]
        if self._plain:
            buffers = self._plain + buffers
            self._plain, self._plain_bytes = [], 0
        return buffers

    def take_to_client(self) -> bytearray:
        """What the client is to get, in one piece."""
        return bytearray().join(self.take_client_buffers())

    def take_upstream_buffers(self) -> list[Buffer]:
        """What the upstream is to get, as the writer takes it."""
        data = self.take_to_upstream()
        return [data] if data else []

    def take_to_upstream(self) -> bytearray:
        data, self.to_upstream = self.to_upstream, bytearray()
        return data


def _size(view: memoryview) -> int:
    """The size of the buffer ``view`` looks into."""
    underlying = view.obj
    return len(underlying) if isinstance(underlying, bytes | bytearray) else len(view)
