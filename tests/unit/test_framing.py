"""Framing gives the same result however the byte stream is split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imapmoveproxy.wire import framing
from imapmoveproxy.wire.framing import Framer, Line, LineTooLong, Literal, literal_marker


def frame(chunks: list[bytes], max_line: int = 65536) -> list[tuple[str, bytes, bool]]:
    """Feed chunks; return the events with literal chunks merged (their split is free)."""
    framer = Framer(max_line)
    events: list[tuple[str, bytes, bool]] = []
    for chunk in chunks:
        framer.feed(chunk)
        while (event := framer.next_event()) is not None:
            if isinstance(event, Literal):
                data = bytes(event.data)
                if events and events[-1][0] == "literal" and not events[-1][2]:
                    events[-1] = ("literal", events[-1][1] + data, event.last)
                else:
                    events.append(("literal", data, event.last))
            else:
                events.append(("line", event.data, event.first))
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


STREAM = (
    b"* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n"
    b"a1 APPEND INBOX (\\Seen) {12}\r\nhello\r\nworld\r\n"
    b"* 1 FETCH (BODY[] {5}\r\n{3}\r\n UID 7)\r\n"
    b"a2 LOGIN {1+}\r\nu {0}\r\n\r\n"
    b"a3 MOVE 1 ~{2}\r\n\r\n\r\n"
    b"a4 NOOP\n"
)


def test_stream_is_framed_into_lines_and_literals():
    events = frame([STREAM])
    assert events[:4] == [
        ("line", b"* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n", True),
        ("line", b"a1 APPEND INBOX (\\Seen) {12}\r\n", True),
        ("literal", b"hello\r\nworld", True),
        ("line", b"\r\n", False),
    ]
    # "{3}\r\n" inside the FETCH literal is data, not a literal announcement
    assert ("literal", b"{3}\r\n", True) in events
    assert ("line", b"a2 LOGIN {1+}\r\n", True) in events
    assert ("literal", b"u", True) in events
    assert ("line", b" {0}\r\n", False) in events
    assert events[-1] == ("line", b"a4 NOOP\n", True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_split_gives_the_same_events(cuts):
    assert frame(split(STREAM, cuts)) == frame([STREAM])


def test_one_byte_at_a_time_gives_the_same_events():
    assert frame([bytes([b]) for b in STREAM]) == frame([STREAM])


atoms = st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b"\n", b"x"))
literals = st.binary(max_size=40)


@st.composite
def imap_streams(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, bytes, bool]]]:
    """A random stream of lines and literals, and the events it must frame into."""
    out, expected = b"", []
    first = True
    for _ in range(draw(st.integers(1, 8))):
        text = draw(atoms).replace(b"}", b")")
        if draw(st.booleans()):
            body = draw(literals)
            plus = draw(st.sampled_from([b"", b"+", b"-"]))
            line = text + b" {%d%s}\r\n" % (len(body), plus)
            expected.append(("line", line, first))
            if body:
                expected.append(("literal", body, True))
            out += line + body
            first = False
        else:
            line = text + b"\r\n"
            expected.append(("line", line, first))
            out += line
            first = True
    return out, expected


@settings(max_examples=300, deadline=None)
@given(imap_streams(), st.lists(st.integers(0, 400), max_size=10))
def test_random_streams_frame_as_built(stream, cuts):
    data, expected = stream
    assert frame(split(data, cuts)) == expected


def test_literal_markers():
    assert literal_marker(b"a APPEND x {12}\r\n") == (12, True)
    assert literal_marker(b"a APPEND x {12+}\r\n") == (12, False)
    assert literal_marker(b"a APPEND x ~{3-}\n") == (3, False)
    assert literal_marker(b"a NOOP {x}\r\n") is None
    assert literal_marker(b"a NOOP {}\r\n") is None
    assert literal_marker(b"}\r\n") is None


def test_overlong_line_is_refused_without_waiting_for_its_end():
    framer = Framer(max_line=1024)
    framer.feed(b"a" * 2000)
    with pytest.raises(LineTooLong):
        framer.next_event()


def test_literal_bytes_are_streamed_not_held():
    framer = Framer()
    framer.feed(b"* 1 FETCH (BODY[] {100000}\r\n" + b"x" * 1000)
    assert isinstance(framer.next_event(), Line)
    chunk = framer.next_event()
    assert isinstance(chunk, Literal) and len(chunk.data) == 1000 and not chunk.last
    assert framer.buffered == 0


def test_trailing_bytes_change_no_event_and_stay_buffered():
    """A stream followed by the start of a next command frames as the stream alone, fed whole
    or a byte at a time; the start waits in the buffer."""
    trailing = b"a5 UID FETCH 1:* (FL"
    for chunks in ([STREAM + trailing], [bytes([b]) for b in STREAM + trailing]):
        framer = Framer()
        events = []
        for chunk in chunks:
            framer.feed(chunk)
            while (event := framer.next_event()) is not None:
                events.append(event)
        assert [e.data for e in events if isinstance(e, Line)] == [
            e[1] for e in frame([STREAM]) if e[0] == "line"
        ]
        assert framer.buffered == len(trailing)


LONG_LINE = b"* SEARCH" + b" 12345" * 40_000 + b"\r\n"  # 240 KB


def test_long_line_fed_in_pieces_is_looked_at_once_not_per_piece():
    """The upstream relay asks for complete lines after every read: while a long line is still
    arriving, there are none, and the partial line is not searched again (issue 12, defect 7:
    a 15 MiB line in 16 KiB pieces cost 2 s of CPU)."""
    looked_at: list[int] = []

    def first_stop(buf: bytes | bytearray, start: int) -> int:
        looked_at.append(len(buf) - start)  # what a search from ``start`` may have to read
        return len(buf)

    framer = Framer(max_line=len(LONG_LINE))
    for offset in range(0, len(LONG_LINE), 1024):
        framer.feed(LONG_LINE[offset : offset + 1024])
        assert not framer.plain_run(first_stop) or offset + 1024 >= len(LONG_LINE)
    assert sum(looked_at) <= len(LONG_LINE)
    assert framer.buffered == 0


class CountingBuffer(bytearray):
    """The framer's buffer, counting the bytes its searches read (deterministic, not timed)."""

    scanned = 0

    def find(self, sub, start=0, end=None):  # type: ignore[override]
        end = len(self) if end is None else min(end, len(self))
        CountingBuffer.scanned += max(end - start, 0)
        return super().find(sub, start, end)

    rfind = None  # type: ignore[assignment]  # the framer never searches its buffer backwards


class CountingBytes(bytes):
    """Bytes fed to the framer, counting what the framer's searches of them read."""

    def rfind(self, sub, start=0, end=None):  # type: ignore[override]
        end = len(self) if end is None else min(end, len(self))
        CountingBuffer.scanned += max(end - start, 0)
        return super().rfind(sub, start, end)

    def find(self, sub, start=0, end=None):  # type: ignore[override]
        end = len(self) if end is None else min(end, len(self))
        CountingBuffer.scanned += max(end - start, 0)
        return super().find(sub, start, end)


@pytest.mark.parametrize("piece", [1, 100, 4096])
def test_a_long_line_costs_linear_work_however_it_is_split(monkeypatch, piece):
    """Fed in pieces, a long line is searched for its end about once and its buffer grows in
    place: never copied or searched again from its start at each feed (that was quadratic)."""
    monkeypatch.setattr(framing, "bytearray", CountingBuffer, raising=False)
    CountingBuffer.scanned = 0
    line = (LONG_LINE if piece > 1 else LONG_LINE[:20_000] + b"\r\n") + b"a NOOP\r\n"
    framer = Framer(max_line=len(line))
    events: list[bytes | memoryview] = []
    buffers: list[bytes | bytearray] = []  # kept alive, so that each is a distinct object
    for offset in range(0, len(line), piece):
        framer.feed(CountingBytes(line[offset : offset + piece]))
        if not buffers or buffers[-1] is not framer._buf:
            buffers.append(framer._buf)
        while (event := framer.next_event()) is not None:
            events.append(event.data)
    assert b"".join(events) == line and len(events) == 2
    assert CountingBuffer.scanned <= 3 * len(line)  # each piece once, the buffer once
    assert len(buffers) <= 4  # a line: its first piece as it came, then one bytearray


def test_an_overlong_partial_line_is_refused_before_it_is_buffered():
    framer = Framer(max_line=1024)
    framer.feed(b"a SEARCH TEXT " + b"x" * 500)
    assert framer.next_event() is None
    framer.feed(b"x" * 100_000)
    assert framer.buffered <= 1024
    with pytest.raises(LineTooLong):
        framer.next_event()
    framer.feed(b"x" * 100_000 + b"\r\n")  # the rest of it is not kept either
    assert framer.buffered <= 1024


@pytest.mark.parametrize("piece", [1, 7, 1024])
def test_max_line_boundary_however_the_line_is_split(piece):
    """A line of exactly max_line bytes (terminator included) passes; one byte more does not."""
    fits = b"a NOOP " + b"x" * (100 - len(b"a NOOP \r\n")) + b"\r\n"
    assert frame(split(fits, list(range(0, len(fits), piece))), max_line=100)[0][1] == fits
    with pytest.raises(LineTooLong):
        frame(split(b"x" + fits, list(range(0, len(fits) + 1, piece))), max_line=100)


def test_views_handed_out_stay_valid_while_more_is_fed():
    """A caller may keep a literal chunk or a run of lines (views, not copies) past the next
    feed: the framer then leaves that buffer alone instead of failing to resize it."""
    framer = Framer()
    framer.feed(b"* 1 FETCH (BODY[] {10}\r\n01234")
    assert isinstance(framer.next_event(), Line)
    framer.feed(b"56789)\r\n" + b"* 2 EXISTS\r\n" * 3)  # left over: now in a bytearray
    chunk = framer.next_event()
    assert isinstance(chunk, Literal) and chunk.last
    framer.feed(b"* 3 EXISTS\r\n")  # the bytearray cannot grow while ``chunk`` views it
    assert framer.next_event() == Line(b")\r\n", first=False)
    run = framer.plain_run(lambda buf, start: buf.find(b"* 3", start))
    assert bytes(run) == b"* 2 EXISTS\r\n" * 3
    framer.feed(b"* 4 EXI")  # nor while ``run`` views it
    framer.feed(b"STS\r\n")
    assert [bytes(framer.plain_run(lambda buf, start: len(buf)))] == [
        b"* 3 EXISTS\r\n* 4 EXISTS\r\n"
    ]
    assert bytes(chunk.data) == b"0123456789"
    assert bytes(run) == b"* 2 EXISTS\r\n" * 3


def test_in_line_only_while_the_start_of_a_line_waits_for_its_end():
    framer = Framer()
    assert not framer.in_line
    framer.feed(b"a NOOP\r\nb APPEND INBOX {3+}\r\nab")
    assert not framer.in_line  # complete lines are waiting to be taken
    assert [type(framer.next_event()) for _ in range(3)] == [Line, Line, Literal]
    assert not framer.in_line  # inside a literal
    framer.feed(b"c\r\nc NO")
    assert isinstance(framer.next_event(), Literal)
    assert [framer.next_event(), framer.next_event()] == [Line(b"\r\n", first=False), None]
    assert framer.in_line
    framer.feed(b"OP\r\n")
    assert not framer.in_line
