"""The mail servers the proxy forwards to: one ``upstream``, or the ``backends`` of routing mode.

A :class:`Backend` is one server with its own settings (a whole :class:`..config.Config`): how
to reach it (address, TLS and its verification, the PROXY header), what its sessions need (the
MOVE policy, the rollback's credentials), and its name in logs, metrics and MOVE lock keys.
"""

from __future__ import annotations

import ssl

import trio

from ..config import Address, Config
from ..engine.settings import SessionSettings
from ..wire import specialuse
from ..wire.proxyproto import V2_LOCAL, Endpoint, build_v2
from .tls import open_upstream, upstream_context


def session_settings(config: Config, *, tls_offered: bool) -> SessionSettings:
    """What each connection's session needs of the configuration."""
    return SessionSettings(
        max_line=config.max_line_length,
        max_mailbox_literal=config.max_mailbox_literal,
        max_set_bytes=config.max_set_bytes,
        guarded=config.no_uidplus == "guarded",
        tls_offered=tls_offered,
        require_tls=config.require_tls,
        forward_id=config.upstream_id and not config.upstream_proxy_protocol,
        compress=config.compress,
        special_use=specialuse.names(config.special_use_map) if config.special_use else (),
        chunk_size=config.move_chunk_size,
        rollback=config.rollback,
        journal=config.journal_location != "off",
        rollback_master=(
            (config.rollback_master_user or "").encode(),
            (config.rollback_master_password or "").encode(),
        ),
    )


class Backend:
    """One mail server and how the proxy talks to it (``name``: "" for the single upstream)."""

    __slots__ = (
        "_tls",
        "address",
        "config",
        "journal_namespace",
        "lock_prefix",
        "name",
        "settings",
    )

    def __init__(self, name: str, config: Config, *, tls_offered: bool) -> None:
        assert config.upstream is not None
        self.name = name
        self.config = config
        self.address: Address = config.upstream
        self._tls: ssl.SSLContext | None = upstream_context(config)
        self.settings = session_settings(config, tls_offered=tls_offered)
        # MOVE locks are per backend: two servers' mailboxes may share a UIDVALIDITY. The key
        # is the one a proxy with this backend as its one upstream uses (locks.py).
        self.lock_prefix = f"{self.address}:".encode() if name else b""
        # Journal entries belong to the server's address, as a single upstream's do.
        self.journal_namespace = str(self.address)

    def __str__(self) -> str:
        return f"{self.name}@{self.address}" if self.name else str(self.address)

    async def open(
        self, addresses: tuple[Endpoint, Endpoint] | None
    ) -> tuple[trio.abc.Stream, bytes]:
        """A new connection for the client at ``addresses`` (None: for the proxy itself), with
        the PROXY header if configured; the greeting, if it has been read already."""
        preamble = b""
        if self.config.upstream_proxy_protocol:
            preamble = V2_LOCAL if addresses is None else build_v2(*addresses)
        return await open_upstream(self.config, self._tls, preamble)


def backends(config: Config, *, tls_offered: bool) -> dict[str, Backend]:
    """The configured backends by name; without routes, the one upstream, named ""."""
    if not config.backends:
        return {"": Backend("", config, tls_offered=tls_offered)}
    return {
        name: Backend(name, backend, tls_offered=tls_offered)
        for name, backend in config.backends.items()
    }
