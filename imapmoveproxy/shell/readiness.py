"""Whether the upstream accepts connections, for /readyz: asked at most once per TTL."""

from __future__ import annotations

import math

import trio

from ..config import Address

TTL = 2.0  # seconds a readiness answer is reused, however often a prober asks


class UpstreamReadiness:
    """Opens a TCP connection to the upstream at most once per :data:`TTL` seconds."""

    __slots__ = ("_checked", "_ready", "_timeout", "_upstream")

    def __init__(self, upstream: Address, connect_timeout: float) -> None:
        self._upstream = upstream
        self._timeout = min(2.0, connect_timeout)
        self._checked = -math.inf
        self._ready = False

    async def check(self) -> bool:
        if trio.current_time() < self._checked + TTL:
            return self._ready
        self._ready = await self._accepts()
        self._checked = trio.current_time()
        return self._ready

    async def _accepts(self) -> bool:
        with trio.move_on_after(self._timeout):
            try:
                stream = await trio.open_tcp_stream(self._upstream.host, self._upstream.port)
            except OSError:
                return False
            await trio.aclose_forcefully(stream)
            return True
        return False
