"""What the proxy offers the client beyond the upstream's capabilities.

MOVE wherever the proxy emulates it (the policy of :func:`..move.request.policy_for`), the
proxy's own STARTTLS (with LOGINDISABLED when TLS is required) on a plain connection when it has
a certificate, COMPRESS=DEFLATE until it is in use (the command only after login), and
SPECIAL-USE where the upstream has none (the attributes from :mod:`..wire.specialuse`). Whether
a client's MOVE is executed by the proxy follows from the same policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..move.request import policy_for
from ..wire.capabilities import Capabilities

COMPRESS_DEFLATE = b"COMPRESS=DEFLATE"
SPECIAL_USE = b"SPECIAL-USE"

if TYPE_CHECKING:
    from .settings import SessionSettings


class OfferHost(Protocol):
    """What the offer reads of its session: the upstream's capabilities, and whether the
    client's connection is encrypted or compressed."""

    @property
    def caps(self) -> Capabilities | None: ...

    @property
    def tls(self) -> bool: ...

    @property
    def compressed(self) -> bool: ...


class Offer:
    """The capabilities one session adds, and whether it executes MOVE itself."""

    __slots__ = ("_host", "_settings", "selecting")

    def __init__(self, host: OfferHost, settings: SessionSettings) -> None:
        self._host = host
        self._settings = settings
        # The tag of the client's ``LIST (SPECIAL-USE)`` sent on as a plain LIST: its responses
        # keep only the special-use mailboxes. No other command is in flight with it.
        self.selecting: bytes | None = None

    def executes_move(self) -> bool:
        """Whether a client MOVE is executed by the proxy (not known yet: collected anyway)."""
        caps = self._host.caps
        return caps is None or self._emulates(caps)

    def additions(self, caps: Capabilities) -> list[bytes]:
        """What the proxy adds to the upstream's capability list ``caps``."""
        settings, host = self._settings, self._host
        added = [b"MOVE"] if self._emulates(caps) else []
        if settings.tls_offered and not host.tls:
            added.append(b"STARTTLS")
            if settings.require_tls:
                added.append(b"LOGINDISABLED")
        if self.compression_offered():
            added.append(COMPRESS_DEFLATE)
        if self.adds_special_use(caps):
            added.append(SPECIAL_USE)
        return added

    def adds_special_use(self, caps: Capabilities | None) -> bool:
        """Whether the proxy gives LIST/LSUB responses special-use attributes: it has a map, and
        the upstream has no SPECIAL-USE of its own as far as its capabilities are known (Courier
        lists none in its greeting or LOGIN's OK: unknown until the client asks)."""
        return bool(self._settings.special_use) and (caps is None or SPECIAL_USE not in caps.names)

    def compression_offered(self) -> bool:
        """COMPRESS=DEFLATE: on, until it is in use. Listed before login too, though the command
        is valid only after it: servers such as imap4d list no capabilities in LOGIN's OK, and
        clients such as mbsync then go by the list they had before login."""
        return self._settings.compress and not self._host.compressed

    def _emulates(self, caps: Capabilities) -> bool:
        return policy_for(caps, self._settings.guarded).emulated
