"""COMPRESS=DEFLATE (RFC 4978) as a sans-IO transform: raw DEFLATE (RFC 1951) each way.

The proxy compresses what goes to the client in bursts: everything queued for it at one time is
compressed and ended with a sync flush (:meth:`Deflater.burst`), so no response ever waits
inside the compressor for more output that may never come.

What the client sends is inflated in bounded pieces (:meth:`Inflater.take`): a small deflate
stream that inflates to gigabytes (a decompression bomb) is inflated only as fast as the session
looks at the result, never into memory. Every byte that the client's flushes make decodable is
handed out at once, whatever kind of flush the client used (a sync flush, a partial flush as
mbsync sends, or none until the end of a command): zlib's inflate returns all the output its
input completes. (mox withdrew its COMPRESS in 2025 because its Go reader held partially
flushed data back until more came: iOS Mail then waited for replies to commands the server had
not read.)

Memory: zlib's default compressor keeps a 32 KiB window and a 64 Ki-entry hash, about 256 KiB
per connection. The proxy's compressor uses a 4 KiB window and memory level 5 (about 38 KiB),
compressing IMAP traffic nearly as well; the inflater must accept the largest window a client
may use (32 KiB), which zlib allocates once the client's first bytes are inflated.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

LEVEL = 3  # zlib's fast strategy (levels 1-3); Dovecot's default is 6
WINDOW_BITS = 12  # 4 KiB window (the most is 15: 32 KiB)
MEM_LEVEL = 5  # hash table of 2**(5+7) entries (zlib's default 8: 2**15)
CLIENT_WINDOW_BITS = 15  # a client may use any window: the inflater accepts the largest


class InflateError(Exception):
    """The client's bytes are not a raw DEFLATE stream, or the stream ended."""


class Deflater:
    """What goes to the client, compressed."""

    __slots__ = ("_z",)

    def __init__(self) -> None:
        self._z = zlib.compressobj(LEVEL, zlib.DEFLATED, -WINDOW_BITS, MEM_LEVEL)

    def burst(self, buffers: Sequence[bytes | bytearray | memoryview]) -> bytes:
        """``buffers`` compressed, ended with a sync flush: the client can read all of it."""
        z = self._z
        parts = [z.compress(buffer) for buffer in buffers]
        parts.append(z.flush(zlib.Z_SYNC_FLUSH))
        return b"".join(parts)


class Inflater:
    """What the client sends, inflated in pieces of a size the caller chooses."""

    __slots__ = ("_full", "_input", "_z")

    def __init__(self) -> None:
        self._z = zlib.decompressobj(-CLIENT_WINDOW_BITS)
        self._input: bytes | bytearray = b""  # compressed bytes not inflated yet
        self._full = False  # the last piece filled its size: zlib may hold more output

    @property
    def pending(self) -> bool:
        """Input remains, or output may: :meth:`take` before feeding more."""
        return bool(self._input) or self._full

    def feed(self, data: bytes | bytearray) -> None:
        """Compressed bytes received (only once :attr:`pending` is False). The caller's bytes
        are kept only until the next :meth:`take`, which keeps a copy of what it leaves."""
        assert not self.pending, "take() what is pending before feeding more"
        self._input = data

    def take(self, most: int) -> bytes:
        """At most ``most`` inflated bytes (b"": nothing more until more is fed)."""
        z = self._z
        try:
            piece = z.decompress(self._input, most)
        except zlib.error as exc:
            raise InflateError(str(exc)) from None
        self._input = z.unconsumed_tail
        self._full = len(piece) == most
        if z.eof:
            raise InflateError("the compressed stream ended")
        return piece
