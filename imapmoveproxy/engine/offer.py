"""What the proxy offers the client beyond the upstream's capabilities.

MOVE wherever the proxy emulates it (the policy of :func:`..move.request.policy_for`), and the
proxy's own STARTTLS (with LOGINDISABLED when TLS is required) on a plain connection when it has
a certificate. Whether a client's MOVE is executed by the proxy follows from the same policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..move.request import policy_for
from ..wire.capabilities import Capabilities

if TYPE_CHECKING:
    from .session import Session


class Offer:
    """The capabilities one session adds, and whether it executes MOVE itself."""

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def executes_move(self) -> bool:
        """Whether a client MOVE is executed by the proxy (not known yet: collected anyway)."""
        caps = self._session.caps
        return caps is None or self._emulates(caps)

    def additions(self, caps: Capabilities) -> list[bytes]:
        """What the proxy adds to the upstream's capability list ``caps``."""
        session = self._session
        settings = session.settings
        added = [b"MOVE"] if self._emulates(caps) else []
        if settings.tls_offered and not session.tls:
            added.append(b"STARTTLS")
            if settings.require_tls:
                added.append(b"LOGINDISABLED")
        return added

    def _emulates(self, caps: Capabilities) -> bool:
        return policy_for(caps, self._session.settings.guarded).emulated
