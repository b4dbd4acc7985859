"""HAProxy's PROXY protocol, versions 1 and 2 (HAProxy's doc/proxy-protocol.txt), sans-IO.

A load balancer in front of the proxy prepends a header naming the real client; the proxy
reads it (only from trusted addresses) and can send a v2 header of its own to the upstream.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included
V2_MAX = 16 + 4096  # header plus an address block and TLVs; longer ones are refused

Endpoint = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(slots=True, frozen=True)
class ProxyHeader:
    """Source and destination of the proxied connection; None for LOCAL or UNKNOWN (the load
    balancer's own health checks), when the connection's own addresses apply."""

    source: Endpoint | None
    destination: Endpoint | None


def parse(data: bytes) -> tuple[ProxyHeader, int] | None:
    """The header at the start of ``data`` and its length, or None if more bytes are needed."""
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data:
        raise ProxyHeaderError("no PROXY protocol header")
    return None


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or not (data.startswith(b"PROXY ") or b"PROXY ".startswith(data)):
            raise ProxyHeaderError("PROXY v1 line too long or malformed")
        return None
    words = data[:end].split(b" ")
    if words[0] != b"PROXY" or len(words) < 2:
        raise ProxyHeaderError("malformed PROXY v1 line")
    if words[1] == b"UNKNOWN":
        return ProxyHeader(None, None), end + 2
    if words[1] not in (b"TCP4", b"TCP6") or len(words) != 6:
        raise ProxyHeaderError("malformed PROXY v1 line")
    try:
        source = (_address(words[2], words[1]), _port(words[4]))
        destination = (_address(words[3], words[1]), _port(words[5]))
    except ValueError as exc:
        raise ProxyHeaderError(f"malformed PROXY v1 address: {exc}") from exc
    return ProxyHeader(source, destination), end + 2


def _address(text: bytes, family: bytes) -> str:
    address = ipaddress.ip_address(text.decode("ascii"))
    if (address.version == 4) != (family == b"TCP4"):
        raise ValueError("address family mismatch")
    return str(address)


def _port(text: bytes) -> int:
    if not text.isdigit() or int(text) > 65535 or (len(text) > 1 and text[:1] == b"0"):
        raise ValueError(f"bad port {text!r}")
    return int(text)


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < 16:
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyHeaderError("no PROXY protocol header")
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("no PROXY protocol header")
    version_command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if version_command >> 4 != 2 or version_command & 0xF > 1:
        raise ProxyHeaderError("unsupported PROXY v2 version or command")
    if 16 + length > V2_MAX:
        raise ProxyHeaderError("PROXY v2 header too long")
    if len(data) < 16 + length:
        return None
    block = data[16 : 16 + length]
    if version_command & 0xF == 0 or family >> 4 not in (1, 2) or family & 0xF != 1:
        return ProxyHeader(None, None), 16 + length  # LOCAL, or not TCP over IPv4/IPv6
    size, kind = (4, socket.AF_INET) if family >> 4 == 1 else (16, socket.AF_INET6)
    if len(block) < 2 * size + 4:
        raise ProxyHeaderError("PROXY v2 address block too short")
    source_port, destination_port = struct.unpack("!HH", block[2 * size : 2 * size + 4])
    source = (socket.inet_ntop(kind, block[:size]), source_port)
    destination = (socket.inet_ntop(kind, block[size : 2 * size]), destination_port)
    return ProxyHeader(source, destination), 16 + length


def build_v2(source: Endpoint, destination: Endpoint) -> bytes:
    """A PROXY v2 header (command PROXY, TCP) naming ``source`` as the client."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:  # mixed families: say the IPv4 one as IPv4-mapped IPv6
        src, dst = _as_v6(src), _as_v6(dst)
    family = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(block)) + block


# A PROXY v2 header with command LOCAL: a connection the proxy opens on its own behalf (a health
# check, the journal's recovery without a client), no addresses.
V2_LOCAL = V2_SIGNATURE + bytes([0x20, 0x00]) + b"\0\0"


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
