"""Which backend a user's login goes to: the static table, and nginx's ``auth_http`` protocol.

Pure functions: the table's answer for a user, the request headers of an ``auth_http`` lookup
and what its answer says. An answer can only name a backend the configuration has: the
backends' addresses are the allowed set, and anything else is refused (a compromised lookup
service must not make the proxy an open relay).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

# nginx escapes a login's user and password in its request (ngx_escape_uri, NGX_ESCAPE_MAIL_AUTH):
# "%", space and what is not printable ASCII.
_SAFE = "".join(c for c in string.printable if c not in "% \t\n\r\x0b\x0c")
MAX_WAIT = 60.0  # longest Auth-Wait honoured, seconds


def static_route(table: Mapping[str, str], user: str) -> str | None:
    """The backend ``table`` names for ``user``: the user exactly, else its ``@domain``
    (case-insensitive), else ``*``; None if none."""
    if user in table:
        return table[user]
    _, at, domain = user.rpartition("@")
    if at and "@" + domain.lower() in table:
        return table["@" + domain.lower()]
    return table.get("*")


def lookup_headers(user: bytes, password: bytes, attempt: int, client_ip: str) -> dict[str, str]:
    """The headers of an ``auth_http`` request, as nginx sends them for an IMAP login."""
    return {
        "Auth-Method": "plain",
        "Auth-User": quote(user, safe=_SAFE),
        "Auth-Pass": quote(password, safe=_SAFE),
        "Auth-Protocol": "imap",
        "Auth-Login-Attempt": str(attempt),
        "Client-IP": client_ip,
    }


@dataclass(slots=True, frozen=True)
class Routed:
    """The lookup sends the login to ``backend`` (a configured backend's name), as ``user``
    (None: as the client logged in)."""

    backend: str
    user: bytes | None = None


@dataclass(slots=True, frozen=True)
class Refused:
    """The lookup refused the login: ``reply`` for the client after ``wait`` seconds; ``final``:
    the connection ends after it (nginx's answer without Auth-Wait)."""

    reply: bytes
    wait: float = 0.0
    final: bool = False


UNAVAILABLE = b"NO [UNAVAILABLE] Login service unavailable, try again later."


class BadAnswer(Exception):
    """The lookup's answer cannot be used (told to the log, never guessed at)."""


def lookup_answer(
    headers: Mapping[str, str], backends: Mapping[str, tuple[str, int]]
) -> Routed | Refused:
    """What an ``auth_http`` answer's ``headers`` say, given the allowed ``backends``
    (name: host and port). Raises :class:`BadAnswer` for an answer that names a server
    outside them or cannot be read."""
    status = headers.get("auth-status")
    if status is None:
        raise BadAnswer("no Auth-Status in the answer")
    if status != "OK":
        text = "".join(c for c in status if c.isprintable())[:200] or "Login failed"
        reply = b"NO [AUTHENTICATIONFAILED] " + text.encode("ascii", "replace")
        wait = headers.get("auth-wait")
        if wait is None:
            return Refused(reply, final=True)
        try:
            seconds = float(wait)
        except ValueError:
            raise BadAnswer(f"Auth-Wait {wait[:20]!r} is not a number") from None
        return Refused(reply, min(max(seconds, 0.0), MAX_WAIT))
    server, port = headers.get("auth-server"), headers.get("auth-port")
    if not server or not port or not port.isdigit():
        raise BadAnswer("Auth-Status OK without Auth-Server and Auth-Port")
    where = (server.strip("[]"), int(port))
    names = [name for name, address in backends.items() if address == where]
    if not names:
        raise BadAnswer(f"answer names {server}:{port}, which is not a configured backend")
    user = headers.get("auth-user")
    return Routed(names[0], unquote(user).encode() if user else None)
