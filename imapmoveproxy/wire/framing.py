"""Split an IMAP byte stream into lines and literals, without parsing anything else.

This is the "fragmentizer" of the design: whatever else the proxy does, it first needs to know
where a line ends and which bytes are literal data that must never be mistaken for a command or a
response. A literal is announced by ``{n}``, ``{n+}`` or ``{n-}`` (RFC 7888), optionally preceded
by ``~`` (literal8, RFC 3516), at the very end of a line. Its bytes are handed out in chunks as
they arrive, so a 50 MB literal never sits in memory whole.

The framer is sans-IO: ``feed()`` bytes in, then call ``next_event()`` until it returns ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Line:
    """One line, terminator included, exactly as received.

    ``first`` is true when the line starts a new command or response; false when it continues one
    after a literal. ``literal`` is the size of the literal the line announces (``None`` if none),
    and ``sync`` whether that literal is synchronizing (``{n}``: the sender waits for ``+``).
    """

    data: bytes
    first: bool
    literal: int | None = None
    sync: bool = False


@dataclass(slots=True)
class Literal:
    """A chunk of literal data. ``last`` marks the chunk that completes the literal.

    ``data`` is a view into the received bytes, not a copy: literals are the bulk of the
    traffic, and the caller copies them once, into its output buffer.
    """

    data: memoryview
    last: bool


class LineTooLong(Exception):
    """The peer sent more than the allowed number of bytes without ending a line."""


Event = Line | Literal
_NOTHING = memoryview(b"")  # an empty run (immutable: one serves every caller)


def literal_marker(line: bytes) -> tuple[int, bool] | None:
    """Return ``(size, synchronizing)`` if ``line`` (terminator included) ends with a literal."""
    end = len(line) - 1  # index of b"\n"
    if end >= 1 and line[end - 1] == 0x0D:
        end -= 1
    if end < 3 or line[end - 1] != 0x7D:  # "}"
        return None
    close = end - 1
    sync = True
    digits_end = close
    if line[close - 1] in (0x2B, 0x2D):  # "+" or "-": non-synchronizing (RFC 7888)
        sync = False
        digits_end -= 1
    start = line.rfind(b"{", 0, digits_end)
    if start < 0 or start + 1 == digits_end or digits_end - start > 21:
        return None
    digits = line[start + 1 : digits_end]
    if not digits.isdigit():
        return None
    return int(digits), sync


class Framer:
    """Incremental splitter of one direction of an IMAP connection, in time linear in its input.

    Like h11's ``ReceiveBuffer``: the bytes received sit in one buffer that grows in place (a
    bytearray of the framer's own once bytes are left over; the caller's own bytes while nothing
    is), its consumed prefix is dropped only once it outweighs the rest, and :meth:`feed` notes
    where the last line end lies, so a partial line is never searched again as more of it
    arrives. A line that cannot end within ``max_line`` bytes is refused as soon as that is
    certain, without buffering the rest of it.

    Views handed out (:class:`Literal` chunks, :meth:`plain_run`) stay valid and unchanged for
    as long as the caller keeps them: a buffer with a view still alive is never resized (Python
    forbids that) but left to the view, and the framer goes on in a new one.

    A caller's buffer is only read, never written to, and let go of as soon as all of it has
    been handed out, or when the framer waits for the end of a line (the start it has is then
    copied): a caller that reuses its buffers (the shell's reads) knows one is free again once
    nothing refers to it, neither the framer nor a view.
    """

    __slots__ = (
        "_buf",
        "_first",
        "_last_newline",
        "_literal_left",
        "_max_line",
        "_own",
        "_pos",
        "_too_long",
    )

    def __init__(self, max_line: int = 65536) -> None:
        self._buf: bytes | bytearray = b""
        self._own = False  # the buffer is the framer's own bytearray (not the caller's)
        self._pos = 0  # where the bytes not yet handed out begin
        self._last_newline = -1  # index of the last b"\n" in the buffer (-1: none)
        self._too_long = False  # a line was found to exceed max_line: its rest is not kept
        self._literal_left = 0
        self._first = True
        self._max_line = max_line

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out."""
        return len(self._buf) - self._pos

    @property
    def in_line(self) -> bool:
        """The start of a line has arrived, and nothing after it: not its end yet."""
        return self._literal_left == 0 and self._last_newline < self._pos < len(self._buf)

    @property
    def literal_owed(self) -> int:
        """Bytes of the literal being received that the peer has not sent yet (0: not in one,
        or all of it is here)."""
        return max(self._literal_left - self.buffered, 0)

    @property
    def exhausted(self) -> bool:
        """Nothing to hand out, and nothing to report: :meth:`next_event` would return None."""
        return self._pos == len(self._buf) and not self._too_long

    @property
    def at_boundary(self) -> bool:
        """True between two messages: the next byte starts a new command or response."""
        return self._first

    def plain_run(self, first_stop: Callable[[bytes | bytearray, int], int]) -> memoryview:
        """Hand out, in one piece (a view, not a copy), the complete lines that come before the
        first line the caller must see alone (empty unless at a message boundary).

        ``first_stop(buf, start)`` returns an index inside the first such line, or ``len(buf)``;
        it must stop at any line that announces a literal.
        """
        buf, pos = self._buf, self._pos
        if not self._first or self._last_newline < pos:  # not even one complete line
            return _NOTHING
        end = buf.rfind(b"\n", pos, min(first_stop(buf, pos), self._last_newline + 1)) + 1
        if end <= pos:
            return _NOTHING
        self._advance(end)
        return memoryview(buf)[pos:end]

    def take_rest(self) -> bytes:
        """Every byte received and not handed out, as it came (at a message boundary: for
        another framer to go on with); this framer is left empty."""
        rest = bytes(memoryview(self._buf)[self._pos :])
        self._buf, self._own, self._pos, self._last_newline = b"", False, 0, -1
        return rest

    def cancel_literal(self) -> None:
        """The announced synchronizing literal was refused: its bytes will never be sent."""
        self._literal_left = 0
        self._first = True

    def feed(self, data: bytes | bytearray) -> None:
        """Bytes received, taken as they are (a bytearray is not copied: its owner must not
        change it while the framer or a view handed out refers to it)."""
        if self._too_long:
            return  # the caller is ending the connection: nothing more is framed
        partial = len(self._buf) - self._pos  # the start of a line, if anything is left over
        # Left over, nothing or the start of a line: checked only if it may grow too long.
        at_line = self._literal_left == 0 and self._last_newline < self._pos
        if at_line and partial + len(data) > self._max_line:
            self._check_partial_line(partial, data)
            if self._too_long:
                return
        buf, pos = self._buf, self._pos
        newline = data.rfind(b"\n")
        if pos == len(buf):  # nothing left over: take the caller's bytes as they are
            self._buf, self._own = data, False
            self._pos = 0
            self._last_newline = newline
            return
        if not self._own or pos > len(buf) - pos:
            # Our own bytearray now, or drop a consumed prefix larger than what remains (each
            # byte is moved at most once per time it is consumed: linear overall).
            buf = bytearray(memoryview(buf)[pos:])
            self._own = True
            self._last_newline -= pos
            self._pos = pos = 0
        try:
            buf += data
        except BufferError:  # a view of this buffer is still alive: leave the buffer to it
            buf = buf[pos:] + data
            self._last_newline -= pos
            self._pos = 0
        if newline >= 0:
            self._last_newline = len(buf) - len(data) + newline
        self._buf = buf

    def _check_partial_line(self, partial: int, data: bytes | bytearray) -> None:
        """All that is left over is the start of a line, ``partial`` bytes long: note if
        ``data`` cannot end it within ``max_line`` bytes."""
        room = self._max_line - partial  # bytes of data that may still belong to this line
        if data.find(b"\n", 0, max(room, 0)) < 0:
            self._too_long = True
            self._buf, self._own, self._pos, self._last_newline = b"", False, 0, -1

    def next_event(self) -> Event | None:
        buf = self._buf
        pos = self._pos
        if self._literal_left:
            available = len(buf) - pos
            if not available:
                return None
            take = min(available, self._literal_left)
            self._literal_left -= take
            self._advance(pos + take)
            return Literal(memoryview(buf)[pos : pos + take], self._literal_left == 0)
        if self._last_newline < pos:  # no line end received yet
            if self._too_long or len(buf) - pos > self._max_line:
                raise LineTooLong(f"line longer than {self._max_line} bytes")
            if isinstance(buf, bytearray) and not self._own:  # the caller's, maybe reused
                self._buf, self._pos, self._last_newline = bytes(memoryview(buf)[pos:]), 0, -1
            return None
        end = buf.find(b"\n", pos, self._last_newline + 1)
        if end + 1 - pos > self._max_line:
            raise LineTooLong(f"line longer than {self._max_line} bytes")
        line = bytes(memoryview(buf)[pos : end + 1])
        self._advance(end + 1)
        first = self._first
        marker = literal_marker(line) if line.endswith(b"}\r\n") or line.endswith(b"}\n") else None
        if marker is None:
            self._first = True
            return Line(line, first)
        size, sync = marker
        self._first = False
        self._literal_left = size
        return Line(line, first, size, sync)

    def _advance(self, end: int) -> None:
        """The bytes before ``end`` have been handed out; all of them: let go of the buffer."""
        if end < len(self._buf):
            self._pos = end
        else:
            self._buf, self._own, self._pos, self._last_newline = b"", False, 0, -1
