"""Framing gives the same result however the byte stream is split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imapmoveproxy.framing import Framer, Line, LineTooLong, Literal, literal_marker


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
