"""The proxy's own commands on the client's upstream connection (the MOVE emulation's and its
ID): one :class:`~..wire.commands.CommandChannel` whose tags (``imp1``, ``imp2``...) no client
command shares, and what it sends is logged."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..wire.commands import CommandChannel
from ..wire.proxyproto import Endpoint
from .output import Output

TAG_PREFIX = b"imp"
ID = "the proxy's ID"  # the owner of the proxy's ID command in the channel's table


def upstream_channel(output: Output, log: logging.LoggerAdapter[logging.Logger]) -> CommandChannel:
    """The channel for the proxy's own commands on the client's upstream connection."""
    return CommandChannel(TAG_PREFIX, _writer(output, log))


def _writer(output: Output, log: logging.LoggerAdapter[logging.Logger]) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        output.to_upstream += data
        log.debug("to upstream: %r", data[:200])

    return write


def send_id(channel: CommandChannel, addresses: tuple[Endpoint, Endpoint]) -> None:
    """Tell the upstream who the client is, before the client's first command (Dovecot
    believes it from addresses in its login_trusted_networks)."""
    channel.send([channel.own([id_command(addresses)], ID)])


def id_command(addresses: tuple[Endpoint, Endpoint]) -> bytes:
    """The proxy's ID command (without its tag), with the client's address and the one it
    connected to."""
    (client_ip, client_port), (local_ip, local_port) = addresses
    fields = (
        f'"x-originating-ip" "{client_ip}" "x-originating-port" "{client_port}" '
        f'"x-connected-ip" "{local_ip}" "x-connected-port" "{local_port}"'
    )
    return b"ID (" + fields.encode() + b")\r\n"
