"""TLS on both sides: the proxy's certificate for clients, and verified TLS to the upstream."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import trio

from ..config import Config
from ..wire.capabilities import Capabilities
from ..wire.commands import CommandChannel
from ..wire.framing import Framer, Line
from ..wire.grammar import Tagged, line_body, parse_status, parse_tagged

log = logging.getLogger(__name__)


class UpstreamUnavailable(Exception):
    """The upstream cannot be used safely (no STARTTLS, failed handshake...): tell the client."""


def client_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The context clients' TLS terminates in: TLS 1.2 or newer, the system's modern defaults
    (Python's defaults already disable compression and weak ciphers)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class Certificates:
    """The proxy's own certificate, reloaded from disk on request (SIGHUP) without a restart."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._cert, self._key = cert, key
        self.context = client_context(cert, key)

    def reload(self) -> None:
        try:
            self.context = client_context(self._cert, self._key)
        except (OSError, ssl.SSLError) as exc:
            log.error("certificate reload failed, keeping the previous one: %s", exc)
            return
        log.info("certificate reloaded from %s", self._cert)


def upstream_context(config: Config) -> ssl.SSLContext | None:
    """The context for TLS to the upstream, or None for plaintext."""
    if config.upstream_tls == "none":
        return None
    context = ssl.create_default_context(
        cafile=str(config.upstream_ca) if config.upstream_ca else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.upstream_client_cert and config.upstream_client_key:
        context.load_cert_chain(config.upstream_client_cert, config.upstream_client_key)
    if not config.upstream_tls_verify:
        log.warning(
            "INSECURE: the upstream's TLS certificate is NOT verified (upstream_tls_verify = "
            "false); anyone between the proxy and %s can read and change all mail traffic",
            config.upstream,
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def open_upstream(
    config: Config, context: ssl.SSLContext | None, preamble: bytes = b""
) -> tuple[trio.abc.Stream, bytes]:
    """Connect to the upstream as configured; return the stream and any greeting already read.

    With ``starttls`` the greeting is read, STARTTLS negotiated (never silently skipped), and
    the greeting handed on is rebuilt with the capabilities the upstream lists over TLS.
    """
    address = config.upstream
    server_name = config.upstream_server_name or address.host
    stream: trio.abc.Stream = await trio.open_tcp_stream(address.host, address.port)
    if preamble:  # a PROXY protocol header comes before anything else, TLS included
        await stream.send_all(preamble)
    if context is None:
        return stream, b""
    if config.upstream_tls == "implicit":
        return await _handshake(stream, context, server_name), b""
    setup = _Setup(stream, config.max_line_length)
    greeting = await setup.reader.line()
    if not greeting.startswith(b"* OK"):
        raise UpstreamUnavailable(f"greeting {line_body(greeting)[:80]!r}")
    caps = Capabilities.parse(_capability_code(greeting) or await setup.capabilities())
    if b"STARTTLS" not in caps.names:
        raise UpstreamUnavailable("the upstream does not offer STARTTLS")
    _, reply = await setup.command(b"STARTTLS\r\n")
    if reply.status != b"OK":
        raise UpstreamUnavailable(f"STARTTLS refused: {reply.text[:80]!r}")
    tls = await _handshake(stream, context, server_name)
    caps_text = await setup.over(tls).capabilities()
    _, _, text = parse_status(greeting, 2)
    return tls, b"* OK [CAPABILITY " + caps_text + b"] " + text + b"\r\n"


async def _handshake(stream: trio.abc.Stream, context: ssl.SSLContext, name: str) -> trio.SSLStream:
    tls = trio.SSLStream(stream, context, server_hostname=name)
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        raise UpstreamUnavailable(f"TLS handshake failed: {exc.__cause__ or exc}") from exc
    return tls


def _capability_code(greeting: bytes) -> bytes | None:
    _, code, _ = parse_status(greeting, 2)
    if code is not None and code[:11].upper() == b"CAPABILITY ":
        return code[11:]
    return None


class _Reader:
    """Reads whole response lines off a stream (the few exchanges before the session starts)."""

    def __init__(self, stream: trio.abc.Stream, max_line: int) -> None:
        self._stream = stream
        self._framer = Framer(max_line)

    async def line(self) -> bytes:
        for _ in range(10_000):  # bounded: the connect timeout bounds the time too
            event = self._framer.next_event()
            if isinstance(event, Line):
                return event.data
            if event is None:
                data = await self._stream.receive_some(65536)
                if not data:
                    raise UpstreamUnavailable("connection closed during setup")
                self._framer.feed(data)
        raise UpstreamUnavailable("no response line during setup")


class _Setup:
    """The proxy's commands before the session starts (CAPABILITY, STARTTLS), on the same
    kind of channel as all its others: tags it allocates, replies to tags nobody sent refused."""

    def __init__(self, stream: trio.abc.Stream, max_line: int) -> None:
        self._stream = stream
        self._max_line = max_line
        self.reader = _Reader(stream, max_line)
        self._out = bytearray()
        self._channel = CommandChannel(b"setup", self._out.extend)

    def over(self, stream: trio.abc.Stream) -> _Setup:
        """The same conversation over ``stream`` (the TLS layer, once negotiated)."""
        self._stream, self.reader = stream, _Reader(stream, self._max_line)
        return self

    async def command(self, command: bytes) -> tuple[list[bytes], Tagged]:
        """Send ``command`` (without a tag); its untagged responses and its tagged reply."""
        self._channel.send([self._channel.own([command], self)])
        await self._stream.send_all(bytes(self._out))
        self._out.clear()
        untagged: list[bytes] = []
        for _ in range(1000):
            line = await self.reader.line()
            reply = parse_tagged(line) if line[:1] not in (b"*", b"+") else None
            if reply is None:
                untagged.append(line)
            elif self._channel.answered(reply.tag) is None:
                raise UpstreamUnavailable(f"reply to a tag nobody sent: {line[:80]!r}")
            else:
                return untagged, reply
        raise UpstreamUnavailable("no tagged reply during setup")

    async def capabilities(self) -> bytes:
        untagged, _ = await self.command(b"CAPABILITY\r\n")
        names = b""
        for line in untagged:
            if line[:13].upper() == b"* CAPABILITY ":
                names = line_body(line)[13:]
        return names
