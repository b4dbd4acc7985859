"""TLS on both sides: the proxy's certificate for clients, and verified TLS to the upstream."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import trio

from ..config import Config
from ..wire import responses
from ..wire.conversation import Conversation, ConversationError
from ..wire.grammar import line_body, parse_status
from .serverlink import ServerClient

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
    assert address is not None  # a backend's config
    server_name = config.upstream_server_name or address.host
    stream: trio.abc.Stream = await trio.open_tcp_stream(address.host, address.port)
    if preamble:  # a PROXY protocol header comes before anything else, TLS included
        await stream.send_all(preamble)
    if context is None:
        return stream, b""
    if config.upstream_tls == "implicit":
        return await _handshake(stream, context, server_name), b""
    setup = ServerClient(stream, Conversation(b"setup", config.max_line_length))
    try:
        greeting = (await setup.greeting()).line
        if not greeting.startswith(b"* OK"):
            raise UpstreamUnavailable(f"greeting {line_body(greeting)[:80]!r}")
        if not setup.peer.caps.names:  # not in the greeting
            await setup.command([b"CAPABILITY\r\n"])
        if b"STARTTLS" not in setup.peer.caps.names:
            raise UpstreamUnavailable("the upstream does not offer STARTTLS")
        reply = (await setup.command([b"STARTTLS\r\n"])).tagged
        if reply.status != b"OK":
            raise UpstreamUnavailable(f"STARTTLS refused: {reply.text[:80]!r}")
        tls = await _handshake(stream, context, server_name)
        setup.over(tls)
        listed = (await setup.command([b"CAPABILITY\r\n"])).untagged
    except ConversationError as exc:
        raise UpstreamUnavailable(f"{exc} during setup") from exc
    names = b""  # as the upstream spells them
    for response in listed:
        if responses.is_capability(response.line):
            names = line_body(response.line)[13:]
    _, _, text = parse_status(greeting, 2)
    return tls, b"* OK [CAPABILITY " + names + b"] " + text + b"\r\n"


async def _handshake(stream: trio.abc.Stream, context: ssl.SSLContext, name: str) -> trio.SSLStream:
    tls = trio.SSLStream(stream, context, server_hostname=name)
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        raise UpstreamUnavailable(f"TLS handshake failed: {exc.__cause__ or exc}") from exc
    return tls
