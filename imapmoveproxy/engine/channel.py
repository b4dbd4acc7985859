"""The proxy's own commands on the client's upstream connection: their tags and literals."""

from __future__ import annotations

import logging

from ..move.request import UpstreamCommand
from ..wire.proxyproto import Endpoint
from .output import Output

TAG_PREFIX = b"imp"


class UpstreamChannel:
    """Allocates the tags of the proxy's own commands (``imp1``, ``imp2``...: the client's
    tags are never reused for them) and sends their segments: a command with a synchronizing
    literal is sent up to it, and the rest after the server's ``+``."""

    __slots__ = ("_continuation", "_counter", "_log", "_output")

    def __init__(self, output: Output, log: logging.LoggerAdapter[logging.Logger]) -> None:
        self._output = output
        self._log = log
        self._counter = 0
        self._continuation: list[bytes] = []  # segments of our command waiting for "+"

    def new_tag(self) -> bytes:
        self._counter += 1
        return TAG_PREFIX + b"%d" % self._counter

    def send(self, commands: list[UpstreamCommand]) -> None:
        for segments in commands:
            self._output.to_upstream += segments[0]
            self._log.debug("to upstream: %r", segments[0][:200])
            self._continuation = segments[1:]

    def send_id(self, addresses: tuple[Endpoint, Endpoint]) -> bytes:
        """Tell the upstream who the client is, before the client's first command (Dovecot
        believes it from addresses in its login_trusted_networks); return the ID's tag."""
        (client_ip, client_port), (local_ip, local_port) = addresses
        fields = (
            f'"x-originating-ip" "{client_ip}" "x-originating-port" "{client_port}" '
            f'"x-connected-ip" "{local_ip}" "x-connected-port" "{local_port}"'
        )
        tag = self.new_tag()
        self._output.to_upstream += tag + b" ID (" + fields.encode() + b")\r\n"
        return tag

    def continue_command(self) -> bool:
        """A ``+`` came: whether it was for the proxy's own command (then its next segment is
        sent) rather than for the client's."""
        if not self._continuation:
            return False
        self._output.to_upstream += self._continuation.pop(0)
        return True

    def answered(self) -> None:
        """The proxy's command got its tagged reply: no ``+`` is due to it any more."""
        self._continuation = []
