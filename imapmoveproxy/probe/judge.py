"""What the probe concludes, from what it saw: capabilities in, findings out.

Pure: no connection, no clock. The CLI (:mod:`.cli`) and the self-test (:mod:`.selftest`)
gather what the server said and did; these functions judge it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..move.request import Policy, policy_for
from ..wire import responses
from ..wire.capabilities import Capabilities
from ..wire.grammar import line_body
from .report import CAVEATS, FAILS, WORKS, Finding

# What the report lists, in this order (COMPRESS stands for any COMPRESS=<algorithm>).
FEATURES = (
    "MOVE",
    "IMAP4rev2",
    "UIDPLUS",
    "LITERAL+",
    "ACL",
    "QRESYNC",
    "CONDSTORE",
    "ESEARCH",
    "ID",
    "COMPRESS",
    "STARTTLS",
)
POLICIES = {
    Policy.NATIVE: "the server has MOVE: the proxy passes it through",
    Policy.UIDPLUS: "the proxy emulates MOVE with COPY, UID STORE and UID EXPUNGE",
    Policy.GUARDED: "the proxy emulates MOVE around a plain EXPUNGE (no UIDPLUS; see the "
    "README on the race that remains)",
    Policy.REFUSED: 'no UIDPLUS: the proxy does not offer MOVE (no_uidplus = "refuse"); '
    "--no-uidplus guarded would emulate it",
}
# Untagged responses of IMAP4rev1/rev2 and the extensions a client may meet here.
_STANDARD = frozenset(
    b"OK NO BAD BYE PREAUTH CAPABILITY LIST LSUB STATUS SEARCH ESEARCH FLAGS ENABLED ID "
    b"NAMESPACE MYRIGHTS ACL LISTRIGHTS QUOTA QUOTAROOT VANISHED SORT THREAD METADATA".split()
)
_STANDARD_NUMBERED = frozenset((b"EXISTS", b"RECENT", b"EXPUNGE", b"FETCH"))


def features(caps: Capabilities, upstream_tls: str) -> dict[str, bool]:
    """Which of :data:`FEATURES` the server offers (STARTTLS: also when it was negotiated
    before the list was read)."""
    offered = {}
    for feature in FEATURES:
        if feature == "COMPRESS":
            offered[feature] = any(name.startswith(b"COMPRESS=") for name in caps.names)
        else:
            offered[feature] = feature.upper().encode() in caps.names
    if upstream_tls == "starttls":
        offered["STARTTLS"] = True
    return offered


def policy(caps: Capabilities, no_uidplus: str) -> Policy:
    """The MOVE policy the proxy would use."""
    return policy_for(caps, no_uidplus == "guarded")


def tls(caps: Capabilities, upstream_tls: str) -> list[Finding]:
    """What the list before login says about the proxy's connection to the server."""
    if upstream_tls != "none":
        return []
    if b"LOGINDISABLED" in caps.names:
        return [
            Finding(
                CAVEATS,
                "the server refuses LOGIN without TLS (LOGINDISABLED): clients must "
                'AUTHENTICATE; consider upstream_tls = "starttls"',
            )
        ]
    if b"STARTTLS" in caps.names:
        return [
            Finding(
                CAVEATS,
                "the server offers STARTTLS but the proxy would talk plaintext "
                'to it: consider upstream_tls = "starttls"',
            )
        ]
    return []


def policy_findings(chosen: Policy) -> list[Finding]:
    """What the policy means for the proxy in front of this server."""
    if chosen is Policy.REFUSED:
        return [
            Finding(
                FAILS,
                "no UIDPLUS: the proxy would not offer MOVE with no_uidplus = "
                '"refuse"; try --no-uidplus guarded',
            )
        ]
    if chosen is Policy.GUARDED:
        return [
            Finding(
                CAVEATS,
                "no UIDPLUS: the guarded policy can expunge a message another "
                "session flags \\Deleted at the same moment (README: the race that remains)",
            )
        ]
    return []


def move_replies(untagged: Sequence[bytes], moved: int) -> list[Finding]:
    """The untagged responses a MOVE of ``moved`` messages through the proxy got (each
    without its terminator): COPYUID before the EXPUNGEs, no \\Deleted flags, an EXPUNGE per
    message."""
    copyuid = [i for i, r in enumerate(untagged) if r.upper().startswith(b"* OK [COPYUID ")]
    expunges = [i for i, r in enumerate(untagged) if responses.removes(r)]
    found = []
    if not copyuid:
        found.append(
            Finding(
                CAVEATS,
                "no COPYUID in the MOVE's replies: clients cannot learn the moved "
                "messages' new UIDs, and the copies of a MOVE that fails after its COPY cannot "
                "be removed (they stay as duplicates)",
            )
        )
    elif expunges and expunges[0] < copyuid[0]:
        found.append(Finding(FAILS, "COPYUID came after an EXPUNGE (RFC 6851 asks for it before)"))
    else:
        found.append(Finding(WORKS, "COPYUID sent before the EXPUNGEs"))
    leaked = [r for r in untagged if b"FETCH" in r.upper() and b"\\DELETED" in r.upper()]
    if leaked:
        found.append(
            Finding(FAILS, f"the emulation's \\Deleted flags reached the client: {show(leaked[0])}")
        )
    if len(expunges) != moved and not any(r.upper().startswith(b"* VANISHED ") for r in untagged):
        found.append(
            Finding(
                CAVEATS,
                f"{len(expunges)} standard EXPUNGE responses for {moved} moved messages: "
                "clients may go on showing moved messages until they select the mailbox again",
            )
        )
    return found


def nonstandard(untagged: Sequence[bytes]) -> list[str]:
    """The untagged responses (without their terminators) outside the standards, once each."""
    found: list[str] = []
    for response in untagged:
        if not _standard(response):
            text = response.decode("ascii", "replace")
            if text not in found:
                found.append(text)
    return found


def nonstandard_findings(texts: Sequence[str]) -> list[Finding]:
    found = [
        Finding(CAVEATS, f"non-standard untagged response {text!r}: strict clients may reject it")
        for text in texts
    ]
    return found or [Finding(WORKS, "every untagged response was standard")]


def move_result(
    left: Mapping[int, frozenset[str]],
    arrived: Mapping[int, frozenset[str]],
    messages: int,
    moved: Sequence[int],
    flagged: int,
) -> list[Finding]:
    """After a MOVE of the messages numbered ``moved`` of ``messages``, the one numbered
    ``flagged`` flagged \\Deleted by the user first: whether exactly those moved, and the
    flags. ``left`` and ``arrived`` give the flags (upper-cased) of the messages in the source
    and the target by number."""
    stayed = sorted(set(range(1, messages + 1)) - set(moved))
    numbers = sorted(arrived)
    if sorted(left) != stayed or numbers != list(moved):
        return [
            Finding(
                FAILS,
                f"wrong messages moved: the source holds {sorted(left)} (expected "
                f"{stayed}), the target {numbers} (expected {list(moved)})",
            )
        ]
    found = [
        Finding(WORKS, "exactly the moved messages left the source and are in the target once")
    ]
    if "\\DELETED" not in left[flagged]:
        found.append(Finding(FAILS, "the message the user had flagged \\Deleted lost its flag"))
    elif any("\\DELETED" in flags for flags in arrived.values()) or any(
        "\\DELETED" in left[n] for n in stayed if n != flagged
    ):
        found.append(Finding(FAILS, "\\Deleted flags the user did not set were left behind"))
    else:
        found.append(
            Finding(WORKS, "the message flagged \\Deleted stayed, flag kept; no other flag set")
        )
    return found


def sessions(ended: bool, read_only: bool, uidplus: bool, appenduid: bool) -> list[Finding]:
    """Two sessions on one mailbox: whether the second one's read-write SELECT ``ended`` the
    first, or got it only ``read_only``; whether its APPEND got APPENDUID where the server
    advertises ``uidplus``."""
    found = []
    if ended:
        found.append(
            Finding(
                CAVEATS,
                "a second session that opens a mailbox read-write ends the session that had "
                "it open (mbox locking, as UW-IMAP's mbox format does; seen on a new mailbox): "
                "clients that open one mailbox in several connections lose all but the newest; "
                "the proxy passes the server's BYE on",
            )
        )
    elif read_only:
        found.append(
            Finding(
                CAVEATS,
                "a second session gets a mailbox only read-only while another session has it "
                "open: MOVE fails in it, and so do flag changes",
            )
        )
    else:
        found.append(Finding(WORKS, "several sessions can have a mailbox open read-write"))
    if uidplus and not appenduid:
        found.append(
            Finding(
                CAVEATS,
                "an APPEND to a mailbox another session has open gets no APPENDUID although "
                "UIDPLUS is advertised: sync clients such as mbsync fail on it, with or "
                "without the proxy",
            )
        )
    return found


def show(data: bytes) -> str:
    """A response (or command) as a report quotes it."""
    return repr(line_body(data)[:200].decode("ascii", "replace"))


def _standard(response: bytes) -> bool:
    words = response.split(b" ", 3)
    if len(words) < 2 or words[0] != b"*":
        return True  # a continuation request, or nothing the client would parse as untagged
    if words[1].isdigit():
        return len(words) > 2 and words[2].upper() in _STANDARD_NUMBERED
    return words[1].upper() in _STANDARD
