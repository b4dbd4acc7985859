"""COMPRESS=DEFLATE with the client (RFC 4978): imapmoveproxy/wire/deflate.py and its use by the
session (engine/session.py, engine/output.py, engine/client.py). Driven by tests/driver.py; the
client's side is a zlib stream of the test's own, flushed the way each kind of client does."""

from __future__ import annotations

import zlib

import pytest
from driver import CUTS, Driver, cut, greeted, listed, started
from hypothesis import given, settings
from hypothesis import strategies as st

from imapmoveproxy.engine.effects import Close
from imapmoveproxy.engine.session import SessionSettings
from imapmoveproxy.wire.deflate import Inflater

BACKLOG = SessionSettings().backlog


class Compressed:
    """The client's end of a compressed connection: what it sends, deflated and flushed with
    ``flush`` (zlib.Z_SYNC_FLUSH, or Z_PARTIAL_FLUSH as mbsync does); what it reads, inflated
    from exactly the bytes it got (nothing is read beyond them)."""

    def __init__(self, driver: Driver, flush: int = zlib.Z_SYNC_FLUSH) -> None:
        self.driver = driver
        self.flush = flush
        self._out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._in = zlib.decompressobj(-15)

    def deflate(self, data: bytes, flush: int | None = None) -> bytes:
        z = self._out
        return z.compress(data) + z.flush(self.flush if flush is None else flush)

    def send(self, data: bytes) -> bytes:
        """Send ``data`` compressed; return what the proxy sent upstream."""
        return self.driver.client(self.deflate(data))

    def seen(self) -> bytes:
        """What the client can read now: all of it, or the test fails (a response left inside
        the proxy's compressor would be missing here)."""
        return self._in.decompress(self.driver.seen())


def compressed(settings: SessionSettings | None = None, **kwargs: int) -> Compressed:
    s = started(settings=settings)
    assert s.client(b"z COMPRESS DEFLATE\r\n") == b""
    assert s.seen() == b"z OK DEFLATE active.\r\n"  # the last bytes sent as they are
    return Compressed(s, **kwargs)


def test_compress_is_offered_until_it_is_in_use():
    s = Driver(SessionSettings(special_use=()))  # the only addition besides MOVE
    s.upstream(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\n")
    # before login too: mbsync goes by this list when LOGIN's OK has none (imap4d)
    assert s.seen() == b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN COMPRESS=DEFLATE] ready\r\n"
    s.client(b"a LOGIN user pass\r\n")
    s.upstream(b"a OK [CAPABILITY IMAP4rev1 UIDPLUS COMPRESS=DEFLATE] Logged in\r\n")
    assert s.seen() == b"a OK [CAPABILITY IMAP4rev1 UIDPLUS MOVE COMPRESS=DEFLATE] Logged in\r\n"
    c = Compressed(s)
    s.client(b"b COMPRESS DEFLATE\r\n")
    s.seen()
    c.send(b"c CAPABILITY\r\n")
    s.upstream(b"* CAPABILITY IMAP4rev1 UIDPLUS\r\nc OK done\r\n")
    assert c.seen() == b"* CAPABILITY IMAP4rev1 UIDPLUS MOVE\r\nc OK done\r\n"


def test_compress_can_be_turned_off():
    s = started(settings=SessionSettings(compress=False))
    s.client(b"c CAPABILITY\r\n")
    s.upstream(b"* CAPABILITY IMAP4rev1 UIDPLUS\r\nc OK done\r\n")
    assert b"COMPRESS" not in s.seen()
    assert s.client(b"d COMPRESS DEFLATE\r\n") == b""  # not forwarded either
    assert s.seen() == b"d NO COMPRESS is not available through this proxy.\r\n"
    assert s.client(b"e NOOP\r\n") == b"e NOOP\r\n"  # and nothing is compressed


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"d COMPRESS DEFLATE\r\n", b"d NO [COMPRESSIONACTIVE] "),
        (b"d COMPRESS GZIP\r\n", b"d NO [COMPRESSIONACTIVE] "),
        (b"d STARTTLS\r\n", b"d BAD STARTTLS is not allowed after COMPRESS"),
    ],
)
def test_what_the_proxy_refuses_once_compressed(command: bytes, reply: bytes):
    c = compressed(SessionSettings(tls_offered=True))
    assert c.send(command) == b""
    assert c.seen().startswith(reply)
    assert c.send(b"e NOOP\r\n") == b"e NOOP\r\n"  # the connection goes on, compressed


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"d COMPRESS GZIP\r\n", b"d NO Unknown compression mechanism.\r\n"),
        (b"d COMPRESS\r\n", b"d BAD Expected COMPRESS DEFLATE.\r\n"),
    ],
)
def test_a_compress_the_proxy_cannot_do_leaves_the_connection_plain(command: bytes, reply: bytes):
    s = started()
    assert s.client(command) == b""
    assert s.seen() == reply
    assert s.client(b"e NOOP\r\n") == b"e NOOP\r\n"


def test_compress_before_login_is_refused():
    s = greeted()
    s.seen()
    assert s.client(b"a COMPRESS DEFLATE\r\n") == b""
    assert s.seen() == b"a BAD COMPRESS is valid only after login.\r\n"
    assert s.client(b"b LOGIN u p\r\n") == b"b LOGIN u p\r\n"  # plain


def test_compress_waits_for_the_commands_in_flight():
    s = started()
    s.client(b"c FETCH 1 BODY[]\r\n")
    s.client(b"d COMPRESS DEFLATE\r\n")
    s.upstream(b"* 1 FETCH (BODY[] {5}\r\nhello)\r\nc OK done\r\n")
    assert s.seen() == (
        b"d BAD Finish the other commands before COMPRESS.\r\n"
        b"* 1 FETCH (BODY[] {5}\r\nhello)\r\nc OK done\r\n"
    )


@pytest.mark.parametrize("flush", [zlib.Z_SYNC_FLUSH, zlib.Z_PARTIAL_FLUSH, zlib.Z_FULL_FLUSH])
def test_each_command_goes_on_as_soon_as_the_clients_flush_makes_it_readable(flush: int):
    """mbsync flushes with Z_PARTIAL_FLUSH: its commands must not wait for a sync flush (mox's
    COMPRESS waited, and iOS Mail timed out)."""
    c = compressed(flush=flush)
    assert c.send(b"c NOOP\r\n") == b"c NOOP\r\n"
    c.driver.upstream(b"* 3 EXISTS\r\nc OK done\r\n")
    assert c.seen() == b"* 3 EXISTS\r\nc OK done\r\n"
    assert c.send(b"d UID FETCH 1:* (FLAGS)\r\ne NOOP\r\n") == (
        b"d UID FETCH 1:* (FLAGS)\r\ne NOOP\r\n"
    )


def test_a_client_that_flushes_only_at_the_end_of_a_command_is_read_however_cut():
    c = compressed()
    line = b"c APPEND INBOX {11+}\r\nhello world\r\n"
    stream = c.deflate(line[:10], zlib.Z_NO_FLUSH) + c.deflate(line[10:], zlib.Z_SYNC_FLUSH)
    sent = b"".join(c.driver.client(stream[i : i + 1]) for i in range(len(stream)))
    assert sent == line


def test_every_burst_to_the_client_ends_flushed_and_bytes_before_compress_stay_plain():
    s = started()
    s.client(b"z COMPRESS DEFLATE\r\n")
    s.upstream(b"* 4 EXISTS\r\n")  # after the OK: compressed, with it
    raw = s.seen()
    plain = b"z OK DEFLATE active.\r\n"
    assert raw.startswith(plain)
    inflate = zlib.decompressobj(-15)
    assert inflate.decompress(raw[len(plain) :]) == b"* 4 EXISTS\r\n"
    for n in range(3):  # each burst alone is readable at once
        s.upstream(b"* %d EXISTS\r\n" % (5 + n))
        assert inflate.decompress(s.seen()) == b"* %d EXISTS\r\n" % (5 + n)


def test_bytes_sent_compressed_right_after_compress_are_inflated():
    s = started()
    ahead = zlib.compressobj(6, zlib.DEFLATED, -15)
    early = ahead.compress(b"e NOOP\r\n") + ahead.flush(zlib.Z_SYNC_FLUSH)
    assert s.client(b"z COMPRESS DEFLATE\r\n" + early) == b"e NOOP\r\n"


def test_a_move_runs_as_on_a_plain_connection():
    """The same UID MOVE, pipelined with a NOOP, on a compressed and on a plain connection: the
    same commands upstream, the same responses for the client."""
    c, plain = compressed(), started()
    runs = []
    for send, seen, s in ((c.send, c.seen, c.driver), (plain.client, plain.seen, plain)):
        sent = send(b"c UID MOVE 10:11 Trash\r\nd NOOP\r\n")
        sent += s.upstream(listed(s, b"OK [COPYUID 7 10:11 20:21] Done", b"10:11", b"ALL 10:11"))
        sent += s.answer(b"UID STORE", b"OK")
        sent += s.upstream(b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n" + s.tagged(b"UID EXPUNGE", b"OK"))
        sent += s.upstream(b"d OK done\r\n")
        runs.append((sent, seen()))
    assert runs[0] == runs[1]
    sent, seen = runs[0]
    assert sent.endswith(b"UID EXPUNGE 10:11\r\nd NOOP\r\n")
    assert seen.startswith(b"* OK [COPYUID 7 10:11 20:21]")
    assert seen.endswith(b"* 1 EXPUNGE\r\nc OK Move completed.\r\nd OK done\r\n")


def test_data_that_does_not_inflate_ends_the_connection_with_a_compressed_bye():
    c = compressed()
    c.driver.client(b"\xff\xff\xff\xff not deflate")
    assert c.seen() == b"* BYE Invalid compressed data.\r\n"
    assert c.driver.take(Close)


def test_a_decompression_bomb_is_inflated_only_as_fast_as_its_commands_go_through():
    """2 MB of pipelined NOOPs in 5 KB: never more than the backlog inflated and waiting, the
    reader told to stop reading meanwhile, and every NOOP forwarded in the end."""
    c = compressed()
    session = c.driver.session
    count = 250_000
    bomb = c.deflate(b"n NOOP\r\n" * count)
    assert len(bomb) < 10_000
    session.receive_client(bomb)
    forwarded = 0
    for _ in range(count):  # bounded: each round forwards at least one command
        assert session.client_buffered <= BACKLOG
        assert session.output.pending_to_upstream <= BACKLOG + 64
        if session.room_for_client():
            break
        sent = session.take_to_upstream()
        assert sent
        forwarded += sent.count(b"n NOOP\r\n")
        session.resume()
    forwarded += session.take_to_upstream().count(b"n NOOP\r\n")
    assert forwarded == count


def test_a_line_bomb_is_refused_before_it_is_inflated():
    c = compressed()
    c.driver.client(c.deflate(b"x" * (64 * 1024 * 1024)))  # 64 MB, no line end, in 64 KB
    assert c.seen() == b"* BYE Line too long.\r\n"
    assert c.driver.session.client_buffered < 2 * 1024 * 1024


def test_inflater_hands_out_bounded_pieces():
    data = bytes(range(256)) * 4096  # 1 MiB
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    inflater = Inflater()
    inflater.feed(z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH))
    pieces = []
    for _ in range(200):
        piece = inflater.take(10_000)
        if not piece:
            break
        assert len(piece) <= 10_000
        pieces.append(piece)
    assert not inflater.pending
    assert b"".join(pieces) == data


COMMANDS = [
    b"a NOOP\r\n",
    b"b UID FETCH 1:* (FLAGS)\r\n",
    b"c APPEND INBOX {5+}\r\nhello\r\n",
    b"d SEARCH UNSEEN\r\n",
    b'e LIST "" "*"\r\n',
]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=12),
    CUTS,
    st.sampled_from([zlib.Z_SYNC_FLUSH, zlib.Z_PARTIAL_FLUSH, zlib.Z_FULL_FLUSH]),
)
def test_the_upstream_gets_the_same_however_the_client_flushes_and_the_stream_is_cut(
    commands: list[bytes], cuts: list[int], flush: int
):
    """Each command flushed (sync, partial or full), the compressed stream then cut anywhere:
    the upstream gets exactly the commands, as from a plain client."""
    c = compressed()
    stream = b"".join(c.deflate(command, flush) for command in commands)
    sent = b"".join(c.driver.client(piece) for piece in cut(stream, cuts))
    assert sent == b"".join(commands)


def test_compress_waits_while_an_unsolicited_response_is_being_relayed():
    """The OK must be the last plain byte: it cannot wait behind a response in the middle of a
    literal (whose rest would then be compressed after a plain start)."""
    s = started()
    s.upstream(b"* 1 FETCH (BODY[] {10}\r\nhello")  # unsolicited, half of it here
    s.client(b"d COMPRESS DEFLATE\r\n")
    s.upstream(b"world)\r\n")
    assert s.seen() == (
        b"* 1 FETCH (BODY[] {10}\r\nhelloworld)\r\n"
        b"d BAD Finish the other commands before COMPRESS.\r\n"
    )
    assert s.client(b"e NOOP\r\n") == b"e NOOP\r\n"  # still plain
