"""SPECIAL-USE where the upstream lacks it (RFC 6154): imapmoveproxy/wire/specialuse.py and its
use by the session (engine/upstream.py, engine/offer.py). Driven by tests/driver.py."""

from __future__ import annotations

import pytest
from driver import started

from imapmoveproxy.config import ConfigError, build
from imapmoveproxy.engine.session import SessionSettings
from imapmoveproxy.shell.backends import session_settings
from imapmoveproxy.wire import responses
from imapmoveproxy.wire.specialuse import DEFAULT_NAMES, annotate, names

LEGACY = b"IMAP4rev1 LITERAL+ UIDPLUS IDLE"
NATIVE = LEGACY + b" SPECIAL-USE"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            b'* LIST (\\HasNoChildren) "/" Trash\r\n',
            b'* LIST (\\HasNoChildren \\Trash) "/" Trash\r\n',
        ),
        (b'* LIST () "/" "Sent Items"\r\n', b'* LIST (\\Sent) "/" "Sent Items"\r\n'),
        (b'* LSUB () "." INBOX.Drafts\r\n', b'* LSUB (\\Drafts) "." INBOX.Drafts\r\n'),
        (
            b'* LIST (\\Unmarked) "." "INBOX.spam"\r\n',
            b'* LIST (\\Unmarked \\Junk) "." "INBOX.spam"\r\n',
        ),
        (b'* LIST () "/" "junk e-mail"\r\n', b'* LIST (\\Junk) "/" "junk e-mail"\r\n'),
        (
            b'* LIST () "/" Archive (CHILDINFO ("SUBSCRIBED"))\r\n',
            b'* LIST (\\Archive) "/" Archive (CHILDINFO ("SUBSCRIBED"))\r\n',
        ),
        (
            b'* LIST () "\\\\" "Deleted Messages"\r\n',
            b'* LIST (\\Trash) "\\\\" "Deleted Messages"\r\n',
        ),
    ],
)
def test_usual_names_get_their_attribute(line: bytes, expected: bytes):
    assert annotate(line, DEFAULT_NAMES) == expected


@pytest.mark.parametrize(
    "line",
    [
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n',
        b'* LIST () "/" Trash2\r\n',
        b'* LIST () "/" Work/Trash\r\n',  # only directly under INBOX
        b'* LIST () "/" INBOX.Trash\r\n',  # "." is not this server's delimiter
        b'* LIST (\\Trash) "/" Trash\r\n',  # has it already
        b'* LIST (\\Junk) "/" Trash\r\n',  # has one of its own
        b"* LIST () NIL Trash\r\n".replace(b"Trash", b"Other"),
        b'* LIST () "/" {5}\r\n',  # a literal name: left alone
        b"* OK LIST Trash\r\n",
    ],
)
def test_other_lines_are_untouched(line: bytes):
    assert annotate(line, DEFAULT_NAMES) == line


def test_a_map_replaces_the_default():
    pairs = names({"Trash": ["Papierkorb"]})
    assert (
        annotate(b'* LIST () "/" papierkorb\r\n', pairs) == b'* LIST (\\Trash) "/" papierkorb\r\n'
    )
    assert annotate(b'* LIST () "/" Trash\r\n', pairs) == b'* LIST () "/" Trash\r\n'


def test_the_fast_path_stops_at_listings():
    buf = b'* 1 FETCH (FLAGS ())\r\n* LIST () "/" Trash\r\n* LIST () "/" Sent\r\n'
    assert responses.first_stop(buf, 0) == len(buf)
    assert responses.first_stop_listing(buf, 0) == buf.index(b"* LIST")
    assert responses.first_stop_listing(buf, buf.index(b"* LIST")) == buf.index(b"* LIST")


LISTING = (
    b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
    b'* LIST (\\HasNoChildren) "/" Trash\r\n'
    b'* LIST (\\HasNoChildren) "/" "Sent Messages"\r\n'
    b"l OK List completed\r\n"
)

SPECIAL = (  # LISTING's special-use mailboxes, as the client sees them
    b'* LIST (\\HasNoChildren \\Trash) "/" Trash\r\n'
    b'* LIST (\\HasNoChildren \\Sent) "/" "Sent Messages"\r\n'
)
DONE = b"l OK List completed\r\n"


def test_a_legacy_upstream_gets_the_attributes_and_the_capability():
    s = started(LEGACY)
    s.client(b"c CAPABILITY\r\n")
    s.upstream(b"* CAPABILITY " + LEGACY + b"\r\nc OK done\r\n")
    assert b" SPECIAL-USE" in s.seen()
    assert s.client(b'l LIST "" "*"\r\n') == b'l LIST "" "*"\r\n'
    s.upstream(LISTING)
    assert s.seen() == b'* LIST (\\HasNoChildren) "/" INBOX\r\n' + SPECIAL + DONE
    s.client(b'l LSUB "" "*"\r\n')
    s.upstream(b'* LSUB () "/" Trash\r\nl OK done\r\n')
    assert s.seen() == b'* LSUB (\\Trash) "/" Trash\r\nl OK done\r\n'


def test_an_upstream_with_special_use_is_left_alone():
    s = started(NATIVE)
    s.client(b"c CAPABILITY\r\n")
    s.upstream(b"* CAPABILITY " + NATIVE + b"\r\nc OK done\r\n")
    assert s.seen().count(b"SPECIAL-USE") == 1
    s.client(b'l LIST "" "*"\r\n')
    s.upstream(LISTING)
    assert s.seen() == LISTING


def test_turned_off_nothing_changes():
    s = started(LEGACY, SessionSettings(special_use=()))
    s.client(b"c CAPABILITY\r\n")
    s.upstream(b"* CAPABILITY " + LEGACY + b"\r\nc OK done\r\n")
    assert b"SPECIAL-USE" not in s.seen()
    s.client(b'l LIST "" "*"\r\n')
    s.upstream(LISTING)
    assert s.seen() == LISTING


def test_config_map_and_switch():
    config = build(
        {
            "upstream": "127.0.0.1:143",
            "listen": "127.0.0.1:1143",
            "special_use_map": {"Sent": ["Gesendet"]},
        }
    )
    assert session_settings(config, tls_offered=False).special_use == ((b"GESENDET", b"\\Sent"),)
    off = build({"upstream": "127.0.0.1:143", "listen": "127.0.0.1:1143", "special_use": False})
    assert session_settings(off, tls_offered=False).special_use == ()
    default = build({"upstream": "127.0.0.1:143", "listen": "127.0.0.1:1143"})
    assert session_settings(default, tls_offered=False).special_use == DEFAULT_NAMES
    with pytest.raises(ConfigError):
        build(
            {
                "upstream": "127.0.0.1:143",
                "listen": "127.0.0.1:1143",
                "special_use_map": {"Bin": ["Trash"]},
            }
        )


def test_the_selection_option_becomes_a_plain_list_filtered():
    s = started(LEGACY)  # no LIST-EXTENDED
    assert s.client(b'l LIST (SPECIAL-USE) "" "*"\r\n') == b'l LIST "" "*"\r\n'
    s.upstream(LISTING)
    assert s.seen() == SPECIAL + DONE
    s.client(b'm LIST "" "*"\r\n')  # the next LIST is whole again
    s.upstream(LISTING.replace(b"l OK", b"m OK"))
    assert b"INBOX" in s.seen()


def test_the_return_option_goes_plain_to_an_upstream_without_list_extended():
    s = started(LEGACY)
    assert s.client(b'l LIST "" "*" RETURN (SPECIAL-USE)\r\n') == b'l LIST "" "*"\r\n'
    s.upstream(LISTING)
    assert b"\\Trash" in s.seen()
    s = started(LEGACY + b" LIST-EXTENDED")  # answers it itself: the attributes are added
    line = b'l LIST "" "*" RETURN (SPECIAL-USE)\r\n'
    assert s.client(line) == line
    s.upstream(LISTING)
    assert b"\\Trash" in s.seen()


def test_a_filtered_list_waits_for_the_commands_before_it():
    s = started(LEGACY)
    assert s.client(b'a LSUB "" "*"\r\nl LIST (SPECIAL-USE) "" "*"\r\n') == b'a LSUB "" "*"\r\n'
    assert s.upstream(b'* LSUB () "/" Work\r\na OK done\r\n') == b'l LIST "" "*"\r\n'
    assert s.seen() == b'* LSUB () "/" Work\r\na OK done\r\n'
