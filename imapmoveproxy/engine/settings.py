"""A session's settings and its counts: plain data that every part of the session may be given
(kept apart from :mod:`.session`, so that no part imports the session)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..wire.specialuse import DEFAULT_NAMES, Names


@dataclass(slots=True, frozen=True)
class SessionSettings:
    max_line: int = 65536  # longest command line accepted from the client
    # Upstream lines are long when they list many messages (SEARCH of 100,000 UIDs is ~600 KB).
    max_upstream_line: int = 16 * 1024 * 1024
    max_mailbox_literal: int = 4096  # longest mailbox name a MOVE may carry as a literal
    max_set_bytes: int = 8192  # longest UID set the proxy puts in one upstream command
    guarded: bool = False  # emulate MOVE without UIDPLUS too (the "guarded" policy)
    tls_offered: bool = False  # the proxy has a certificate: STARTTLS on plain connections
    require_tls: bool = False  # no LOGIN/AUTHENTICATE before TLS
    forward_id: bool = False  # tell an upstream with ID the client's address (x-originating-ip)
    compress: bool = True  # offer COMPRESS=DEFLATE to clients once logged in (RFC 4978)
    # Mailbox names and the special-use attribute LIST/LSUB give them where the upstream has no
    # SPECIAL-USE (RFC 6154); empty: none, and SPECIAL-USE is not offered.
    special_use: Names = DEFAULT_NAMES
    chunk_size: int = 1000  # most messages one COPY of a MOVE takes (0: no limit)
    # Credentials for the second session that removes the copies of a failed MOVE: "client"
    # (those of the client's LOGIN or AUTHENTICATE PLAIN), "master" (rollback_master's, for the
    # client's user) or "off".
    rollback: str = "client"
    rollback_master: tuple[bytes, bytes] = (b"", b"")  # (login, password)
    # Bytes the session lets wait for either peer before it stops reading client commands: the
    # caller stops reading from a side whose output it has not been able to deliver (backpressure).
    backlog: int = 256 * 1024
    journal: bool = False  # MOVEs are recorded, and finished at the user's next login


@dataclass(slots=True)
class Counters:
    bytes_from_client: int = 0
    bytes_from_upstream: int = 0
    commands: int = 0
    moves: dict[str, int] = field(default_factory=dict)
    expunged_rewritten: int = 0  # imap4d's "* n EXPUNGED" relayed as "* n EXPUNGE"
