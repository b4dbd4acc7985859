"""The one trio driver of the conversations in which the proxy is a server's client.

A :class:`~..wire.conversation.Conversation` (or a second session built on one) says what to
send and takes what the server says; :class:`ServerLink` is the one loop that moves those bytes
over a trio stream, until its peer is done. :class:`ServerClient` runs a conversation one
command at a time on it, for whoever awaits each reply in turn: the STARTTLS setup
(:mod:`.tls`) and the probe's sessions. The second sessions (:mod:`.tasks`) run their own
steps, and the link runs until they are over: once past the login, only when the server has
closed the connection (an mbox server writes a session's view of the mailbox as it ends).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import trio

from ..wire.commands import UpstreamCommand
from ..wire.conversation import Conversation, ConversationError, Event, Reply, Response
from ..wire.grammar import Tagged

_MAX_READS = 100_000  # per run: the caller's timeouts bound it too
_MAX_RESPONSES = 100_000  # before a command's tagged reply


class Peer(Protocol):
    """A sans-IO client's side of a connection: bytes in, bytes out, the end of the stream."""

    def receive(self, data: bytes | bytearray) -> None: ...

    def take_outgoing(self) -> bytes: ...

    def connection_lost(self) -> None: ...


P = TypeVar("P", bound=Peer)


class ServerLink(Generic[P]):
    """``peer`` over ``stream``: ``greeting`` is what was read of the stream already; each send
    and each read may take ``timeout`` seconds (the caller may bound the whole instead)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        peer: P,
        timeout: float = math.inf,
        greeting: bytes = b"",
    ) -> None:
        self.stream = stream
        self.peer = peer
        self._timeout = timeout
        if greeting:
            peer.receive(greeting)

    async def run(self, done: Callable[[], bool]) -> None:
        """Send what the peer has to send, and feed it what the server says, until ``done()``.
        A connection the server closes (or breaks) is told to the peer; if that does not make
        it done, :class:`ConversationError`."""
        peer = self.peer
        for _ in range(_MAX_READS):
            finished = done()  # which may have given the peer more to send (after a "+")
            outgoing = peer.take_outgoing()
            if outgoing:
                with trio.fail_after(self._timeout):
                    await self.stream.send_all(outgoing)
            if finished:
                return
            try:
                with trio.fail_after(self._timeout):
                    data = await self.stream.receive_some(64 * 1024)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if data:
                peer.receive(data)
                continue
            peer.connection_lost()
            if done():
                return
            raise ConversationError("the connection was closed")
        raise ConversationError("the mail server never finished")

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


@dataclass(slots=True, frozen=True)
class Exchange:
    """What a command got: the untagged responses that came before its tagged reply, and the
    reply."""

    untagged: list[Response]
    tagged: Tagged


class ServerClient(ServerLink[Conversation]):
    """A :class:`Conversation` over a stream, one command at a time."""

    async def greeting(self) -> Response:
        """The server's first response (no command is out: a tagged line is an error)."""
        event = await self._next_event()
        assert isinstance(event, Response)
        return event

    async def command(self, segments: UpstreamCommand) -> Exchange:
        """Send a command (without its tag; each segment after the first waits for ``+``) and
        read until its tagged reply."""
        self.peer.send([segments], self)
        untagged: list[Response] = []
        for _ in range(_MAX_RESPONSES):
            event = await self._next_event()
            if isinstance(event, Reply):
                return Exchange(untagged, event.tagged)
            untagged.append(event)
        raise ConversationError(f"no tagged reply to {segments[0][:80]!r}")

    def over(self, stream: trio.abc.Stream) -> None:
        """Go on over ``stream``, the TLS layer STARTTLS began: what the server sent before it,
        in plaintext, is dropped."""
        self.stream = stream
        self.peer.drop_input()

    async def _next_event(self) -> Event:
        events: list[Event] = []

        def arrived() -> bool:
            event = self.peer.next_event()
            if event is not None:
                events.append(event)
            return bool(events)

        await self.run(arrived)
        return events[0]
