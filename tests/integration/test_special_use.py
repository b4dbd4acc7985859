"""SPECIAL-USE (RFC 6154) in front of real servers that lack it (Dovecot with MOVE hidden, whose
mailboxes have no special_use; imap4d; Courier, whose folders live under "INBOX."), and none of
it in front of Cyrus and of a Dovecot whose mailboxes have special_use, which have their own.
What the client sees of CAPABILITY, LIST, LSUB and the LIST-EXTENDED forms.

Each test of the legacy servers fails without the proxy's SPECIAL-USE: the server's LIST and LSUB
responses carry no special-use attribute and its capabilities do not name SPECIAL-USE.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _serve
from harness import RawClient, running_proxy
from servers import DovecotServer, ImapServer


@dataclasses.dataclass(frozen=True)
class Upstream:
    fixture: str
    proxy_args: tuple[str, ...] = ()
    prefix: str = ""  # the personal namespace's prefix (Courier: "INBOX.")


# Dovecot whose mailboxes have special_use set: it lists SPECIAL-USE and the attributes itself.
DOVECOT_SPECIAL_USE = """namespace inbox {
  mailbox Trash {
    special_use = \\Trash
  }
  mailbox "Sent Messages" {
    special_use = \\Sent
  }
}
"""


@pytest.fixture(scope="module")
def dovecot_special_use(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServer]:
    root = tmp_path_factory.mktemp("dovecot-special-use")
    yield from _serve(
        lambda: DovecotServer(
            root, variant="native", name="dovecot-special-use", extra_config=DOVECOT_SPECIAL_USE
        )
    )


LEGACY = {
    "dovecot-legacy": Upstream("dovecot_legacy"),
    "imap4d": Upstream("imap4d", ("--no-uidplus", "guarded")),
    "courier": Upstream("courier", prefix="INBOX."),
}
EXPECTED = {
    "Trash": b"\\Trash",
    "Sent Messages": b"\\Sent",
    "Drafts": b"\\Drafts",
    "spam": b"\\Junk",
}
OTHER = "Work"


def _attributes(replies: list[bytes], kind: bytes) -> dict[bytes, set[bytes]]:
    """Mailbox name (unquoted) to its attributes, upper-cased, from LIST or LSUB responses."""
    found = {}
    for reply in replies:
        match = re.match(rb'\* %s \(([^)]*)\) (?:NIL|"[^"]*") "?([^"\r]*)"?\r\n' % kind, reply)
        if match:
            found[match.group(2)] = {a.upper() for a in match.group(1).split()}
    return found


def _create(client: RawClient, names: list[str]) -> None:
    for name in names:
        replies = client.command(b"c", b'CREATE "%s"' % name.encode())
        assert replies[-1].startswith(b"c OK"), replies
        replies = client.command(b"s", b'SUBSCRIBE "%s"' % name.encode())
        assert replies[-1].startswith(b"s OK"), replies


@pytest.mark.parametrize("name", list(LEGACY))
def test_list_and_lsub_name_the_special_use_mailboxes(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
):
    upstream = LEGACY[name]
    server: ImapServer = request.getfixturevalue(upstream.fixture)
    user = server.new_user()
    names = [upstream.prefix + n for n in [*EXPECTED, OTHER]]
    with (
        running_proxy(server.address, tmp_path / "proxy.log", *upstream.proxy_args) as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(user, server.password)
        _create(client, names)
        for command, kind in ((b'LIST "" "*"', b"LIST"), (b'LSUB "" "*"', b"LSUB")):
            replies = client.command(b"l", command)
            assert replies[-1].startswith(b"l OK"), replies
            listed = _attributes(replies, kind)
            for mailbox, attribute in EXPECTED.items():
                assert attribute.upper() in listed[(upstream.prefix + mailbox).encode()]
            other = listed[(upstream.prefix + OTHER).encode()]
            assert not other & {a.upper() for a in EXPECTED.values()}, replies
        # asked after LIST: Courier lists no capabilities before, and the proxy annotates anyway
        caps = client.command(b"k", b"CAPABILITY")
        assert b"SPECIAL-USE" in caps[0].upper().split(), caps
        client.logout()


@pytest.mark.parametrize("name", list(LEGACY))
def test_the_list_extended_forms_name_them_too(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
):
    """``LIST (SPECIAL-USE)`` lists only them, ``RETURN (SPECIAL-USE)`` every mailbox with them,
    on servers without LIST-EXTENDED (imap4d, Courier) or without SPECIAL-USE (Dovecot)."""
    upstream = LEGACY[name]
    server: ImapServer = request.getfixturevalue(upstream.fixture)
    user = server.new_user()
    special = {(upstream.prefix + n).encode(): a.upper() for n, a in EXPECTED.items()}
    with (
        running_proxy(server.address, tmp_path / "proxy.log", *upstream.proxy_args) as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(user, server.password)
        _create(client, [upstream.prefix + n for n in [*EXPECTED, OTHER]])
        selected = client.command(b"l", b'LIST (SPECIAL-USE) "" "*"')
        assert selected[-1].startswith(b"l OK"), selected
        listed = _attributes(selected, b"LIST")
        assert set(listed) == set(special), selected
        assert all(special[mailbox] in listed[mailbox] for mailbox in special), selected
        returned = client.command(b"r", b'LIST "" "*" RETURN (SPECIAL-USE)')
        assert returned[-1].startswith(b"r OK"), returned
        listed = _attributes(returned, b"LIST")
        assert (upstream.prefix + OTHER).encode() in listed, returned
        assert all(special[mailbox] in listed[mailbox] for mailbox in special), returned
        client.logout()


LISTINGS = (
    b'LIST "" "*"',
    b'LSUB "" "*"',
    b'LIST (SPECIAL-USE) "" "*"',
    b'LIST "" "*" RETURN (SPECIAL-USE)',
)


def _listed(client: RawClient, command: bytes) -> list[bytes]:
    """The untagged responses to ``command`` (Cyrus's tagged OK names how long it took)."""
    replies = client.command(b"l", command)
    assert replies[-1].startswith(b"l OK"), replies
    return replies[:-1]


@pytest.mark.parametrize("fixture", ["cyrus_native", "cyrus_legacy", "dovecot_special_use"])
def test_an_upstream_with_special_use_is_left_alone(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
):
    server: ImapServer = request.getfixturevalue(fixture)
    user = server.new_user()
    with RawClient(server.address, oracle=False) as direct:
        direct.login(user, server.password)
        _create(direct, [*EXPECTED, OTHER])
        caps = direct.command(b"k", b"CAPABILITY")
        assert b"SPECIAL-USE" in caps[0].upper().split(), caps
        expected = [_listed(direct, c) for c in LISTINGS]
        direct.logout()
    with (
        running_proxy(server.address, tmp_path / "proxy.log") as proxy,
        RawClient(proxy.address) as client,
    ):
        client.login(user, server.password)
        caps = client.command(b"k", b"CAPABILITY")
        assert caps[0].upper().split().count(b"SPECIAL-USE") == 1, caps
        assert [_listed(client, c) for c in LISTINGS] == expected
        client.logout()
