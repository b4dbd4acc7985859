"""What one session has for each peer, and the rule for the proxy's own replies."""

from __future__ import annotations

from ..wire.framing import Framer


class Output:
    """Bytes queued for the client and for the upstream.

    A reply of the proxy's own (a BAD, a ``+``, a MOVE's answer, a BYE) never lands inside an
    upstream response being relayed, which may be in the middle of a literal: it waits in
    ``deferred`` until the upstream framer is between two responses.
    """

    __slots__ = ("_upstream", "deferred", "to_client", "to_upstream")

    def __init__(self, upstream: Framer) -> None:
        self._upstream = upstream
        self.to_client = bytearray()
        self.to_upstream = bytearray()
        self.deferred = bytearray()

    @property
    def pending_to_client(self) -> int:
        """Bytes queued for the client, the replies held back behind a response included."""
        return len(self.to_client) + len(self.deferred)

    @property
    def ready_to_client(self) -> int:
        """Bytes :meth:`take_to_client` would return now."""
        return len(self.to_client)

    @property
    def pending_to_upstream(self) -> int:
        return len(self.to_upstream)

    def reply(self, data: bytes) -> None:
        """Queue a reply of the proxy's own for the client."""
        if self._upstream.at_boundary:
            self.to_client += data
        else:
            self.deferred += data

    def flush_deferred(self) -> None:
        """The upstream response being relayed may have ended: release the replies held."""
        if self.deferred and self._upstream.at_boundary:
            self.to_client += self.deferred
            self.deferred = bytearray()

    def take_to_client(self) -> bytearray:
        data, self.to_client = self.to_client, bytearray()
        return data

    def take_to_upstream(self) -> bytearray:
        data, self.to_upstream = self.to_upstream, bytearray()
        return data
