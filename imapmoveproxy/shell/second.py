"""Second sessions: a sans-IO peer of the proxy's own (a rollback, a flag check, a journal
recovery) driven over a new connection to a backend, bounded in time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

from ..wire.conversation import ConversationError
from ..wire.proxyproto import Endpoint
from .serverlink import Peer, ServerLink
from .tls import UpstreamUnavailable

if TYPE_CHECKING:
    from .backends import Backend


class SecondPeer(Peer, Protocol):
    @property
    def done(self) -> bool: ...

    @property
    def ending(self) -> bool: ...


async def run_second_session(
    backend: Backend, peer: SecondPeer, addresses: tuple[Endpoint, Endpoint] | None, timeout: float
) -> str | None:
    """Drive ``peer`` over a new upstream connection (for the client at ``addresses``; None:
    the proxy's own), bounded by ``timeout``; what went wrong with the connection, if anything
    did. A session that has done its work and only waits for the server to close the connection
    (``peer.ending``) and does not see it in time is a failure too: an mbox server may write its
    view of a mailbox after that."""
    try:
        with trio.fail_after(timeout):
            stream, greeting = await backend.open(addresses)
            link = ServerLink(stream, peer, greeting=greeting)
            try:
                await link.run(lambda: peer.done)
            finally:
                await link.aclose()
    except (
        OSError,
        trio.TooSlowError,
        trio.BrokenResourceError,
        UpstreamUnavailable,
        ConversationError,
    ) as exc:
        why = "the server did not end it" if peer.ending else exc or "timed out"
        return f"second session: {why}"
    return None
