"""``imapmoveproxy probe``: will the proxy work in front of this server?

The probe connects to the upstream exactly as the proxy would (the same TLS and PROXY protocol
settings, from the same flags, environment variables and config file) and reports what the
server offers that matters to the proxy and which MOVE policy the proxy would use.

Given a user (``--user``, with the password in ``--password-file`` or the environment variable
``IMAP_PROBE_PASSWORD``, never on the command line), it also runs a live self-test that touches
nothing but two scratch mailboxes it creates and deletes: it appends four messages to the first,
then, as a client of the proxy's own engine (a :class:`~imapmoveproxy.server.Proxy` started in
this process on 127.0.0.1), flags the fourth ``\\Deleted`` as a user would and moves the first
two into the second mailbox. A fresh direct session then checks on the server that exactly the
moved messages moved, once, and that the flagged one stayed, flag included; the MOVE's replies
are checked for COPYUID (before the EXPUNGEs) and for untagged responses outside the standard.
Last, two direct sessions check that a second session which appends to the source mailbox and
selects it read-write leaves the first one open (UW-IMAP's mbox format ends it) and that the
APPEND carries APPENDUID when UIDPLUS is advertised.

Exit status: 0 works, 1 works with caveats, 2 will not work (or the command line was wrong).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .config import Config, ConfigError, add_upstream_arguments, build, merged_values
from .move.request import Policy, UpstreamCommand, astring_segments, policy_for
from .move.rollback import Credentials
from .shell.server import Proxy
from .shell.tls import UpstreamUnavailable
from .wire import capabilities
from .wire.capabilities import Capabilities
from .wire.framing import Framer, Line
from .wire.grammar import Tagged, code_name, line_body, parse_tagged

PASSWORD_VARIABLE = "IMAP_PROBE_PASSWORD"
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
WORKS, CAVEATS, FAILS = 0, 1, 2
VERDICTS = {WORKS: "works", CAVEATS: "works with caveats", FAILS: "will not work"}
POLICIES = {
    Policy.NATIVE: "the server has MOVE: the proxy passes it through",
    Policy.UIDPLUS: "the proxy emulates MOVE with COPY, UID STORE and UID EXPUNGE",
    Policy.GUARDED: "the proxy emulates MOVE around a plain EXPUNGE (no UIDPLUS; see the "
    "README on the race that remains)",
    Policy.REFUSED: 'no UIDPLUS: the proxy does not offer MOVE (no_uidplus = "refuse"); '
    "--no-uidplus guarded would emulate it",
}
# Client-side settings the in-process proxy does without: it listens on 127.0.0.1 port 0 only.
_CLIENT_SIDE = (
    "listen",
    "listen_tls",
    "metrics",
    "tls_cert",
    "tls_key",
    "require_tls",
    "proxy_protocol",
    "proxy_protocol_trusted",
)
# Untagged responses of IMAP4rev1/rev2 and the extensions a client may meet here.
_STANDARD = frozenset(
    b"OK NO BAD BYE PREAUTH CAPABILITY LIST LSUB STATUS SEARCH ESEARCH FLAGS ENABLED ID "
    b"NAMESPACE MYRIGHTS ACL LISTRIGHTS QUOTA QUOTAROOT VANISHED SORT THREAD METADATA".split()
)
_STANDARD_NUMBERED = frozenset((b"EXISTS", b"RECENT", b"EXPUNGE", b"FETCH"))
_NAMESPACE_RE = re.compile(rb'\* NAMESPACE \(\("((?:[^"\\]|\\.)*)" (?:"((?:[^"\\]|\\.)*)"|NIL)')
_LIST_DELIMITER_RE = re.compile(rb'\* LIST \([^)]*\) (?:"((?:[^"\\]|\\.)*)"|NIL)', re.IGNORECASE)
_UID_RE = re.compile(rb"[( ]UID (\d+)", re.IGNORECASE)
_FLAGS_RE = re.compile(rb"[( ]FLAGS \(([^)]*)\)", re.IGNORECASE)
_SUBJECT_RE = re.compile(rb"Subject: ([^\r\n]*)", re.IGNORECASE)
_EXPUNGE_RE = re.compile(rb"\* \d+ EXPUNGE$|\* VANISHED ", re.IGNORECASE)
_MESSAGES = 4  # appended to the scratch mailbox
_MOVED = (1, 2)  # which of them are moved
_FLAGGED = 4  # which one the "user" flags \Deleted first
_MAX_EVENTS = 100_000


class ProbeError(Exception):
    """A step of the probe failed; the text says which and why."""


# What ends a step of the probe (and goes into the report as its reason).
_ERRORS = (ProbeError, UpstreamUnavailable, OSError, trio.TooSlowError, trio.BrokenResourceError)


@dataclass(slots=True)
class Finding:
    level: int  # WORKS (a check passed), CAVEATS or FAILS
    text: str


@dataclass(slots=True)
class Report:
    server: str
    upstream_tls: str
    greeting: str = ""
    capabilities: dict[str, bool] = field(default_factory=dict)
    capabilities_from: str = ""  # "before login" or "after login"
    policy: str = ""
    policy_text: str = ""
    self_test: bool = False
    mailboxes: list[str] = field(default_factory=list)
    nonstandard: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: int, text: str) -> None:
        self.findings.append(Finding(level, text))

    @property
    def status(self) -> int:
        return max((finding.level for finding in self.findings), default=WORKS)

    def as_json(self) -> str:
        data = dataclasses.asdict(self)
        data["verdict"] = VERDICTS[self.status]
        data["exit_status"] = self.status
        return json.dumps(data, indent=2)

    def as_text(self) -> str:
        lines = [f"server       {self.server} (upstream_tls = {self.upstream_tls})"]
        if self.greeting:
            shown = self.greeting if len(self.greeting) <= 100 else self.greeting[:97] + "..."
            lines.append(f"greeting     {shown}")
        if self.capabilities:
            lines.append(f"capabilities ({self.capabilities_from})")
            for name, offered in self.capabilities.items():
                lines.append(f"  {name:<11}{'yes' if offered else 'no'}")
        if self.policy:
            lines.append(f"MOVE policy  {self.policy}: {self.policy_text}")
        if self.mailboxes:
            lines.append(f"self-test    in scratch mailboxes {', '.join(self.mailboxes)}")
        marks = {WORKS: "ok", CAVEATS: "caveat", FAILS: "FAIL"}
        lines.extend(f"  {marks[f.level]:<7}{f.text}" for f in self.findings)
        lines.append(f"verdict: {VERDICTS[self.status]} (exit status {self.status})")
        return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Reply:
    tagged: Tagged
    untagged: list[bytes]  # whole responses, literals included, without the final CRLF


class Client:
    """A minimal IMAP client for the probe's own sessions: one command at a time."""

    def __init__(self, stream: trio.abc.Stream, timeout: float, greeting: bytes = b"") -> None:
        self._stream = stream
        self._timeout = timeout
        self._framer = Framer(1024 * 1024)
        self._framer.feed(greeting)
        self._tags = itertools.count(1)
        self.caps = Capabilities(frozenset())

    async def greeting(self) -> bytes:
        greeting = await self._response()
        if not greeting.upper().startswith(b"* OK"):
            raise ProbeError(f"greeting: {_show(greeting)}")
        self._learn(greeting)
        if not self.caps.names:
            await self.command([b"CAPABILITY\r\n"])
        return greeting

    async def command(self, segments: UpstreamCommand) -> Reply:
        """Send a command (each segment after the first waits for "+") and read its replies."""
        tag = b"p%d" % next(self._tags)
        untagged: list[bytes] = []
        await self._send(tag + b" " + segments[0])
        for segment in segments[1:]:
            response = await self._response()
            while not response.startswith(b"+"):
                if response.startswith(tag + b" "):
                    return self._finish(response, untagged)
                untagged.append(response)
                response = await self._response()
            await self._send(segment)
        for _ in range(_MAX_EVENTS):
            response = await self._response()
            if response.startswith(tag + b" "):
                return self._finish(response, untagged)
            self._learn(response)
            untagged.append(response)
        raise ProbeError(f"no tagged reply to {_show(segments[0])}")

    async def ok(self, segments: UpstreamCommand) -> Reply:
        """Like :meth:`command`, but anything other than OK is a :class:`ProbeError`."""
        reply = await self.command(segments)
        if reply.tagged.status != b"OK":
            raise ProbeError(f"{_show(segments[0])} answered {_show(_status_text(reply.tagged))}")
        return reply

    async def login(self, user: str, password: str) -> None:
        plain = b"LOGINDISABLED" in self.caps.names  # AUTHENTICATE PLAIN still works then
        credentials = Credentials(user.encode(), user.encode(), password.encode(), plain)
        reply = await self.command(credentials.command(self.caps))
        if reply.tagged.status != b"OK":
            raise ProbeError(f"login as {user!r} failed: {_show(_status_text(reply.tagged))}")
        if not reply.tagged.code or code_name(reply.tagged.code) != b"CAPABILITY":
            await self.command([b"CAPABILITY\r\n"])

    async def aclose(self) -> None:
        with trio.move_on_after(self._timeout), contextlib.suppress(*_ERRORS):
            await self.command([b"LOGOUT\r\n"])
        await trio.aclose_forcefully(self._stream)

    def _finish(self, response: bytes, untagged: list[bytes]) -> Reply:
        self._learn(response)
        tagged = parse_tagged(response)
        if tagged is None:
            raise ProbeError(f"malformed tagged reply {_show(response)}")
        return Reply(tagged, untagged)

    def _learn(self, response: bytes) -> None:
        span = capabilities.find_list(response)
        if span is not None:
            self.caps = Capabilities.parse(response[span[0] : span[1]])

    async def _send(self, data: bytes) -> None:
        with trio.fail_after(self._timeout):
            await self._stream.send_all(data)

    async def _response(self) -> bytes:
        parts: list[bytes] = []
        for _ in range(_MAX_EVENTS):
            event = self._framer.next_event()
            if event is None:
                with trio.fail_after(self._timeout):
                    data = await self._stream.receive_some(65536)
                if not data:
                    raise ProbeError("the connection was closed")
                self._framer.feed(data)
            elif isinstance(event, Line):
                parts.append(event.data)
                if event.literal is None:
                    return line_body(b"".join(parts))
            else:
                parts.append(bytes(event.data))
        raise ProbeError("response too long")


@dataclass(slots=True, frozen=True)
class Message:
    uid: int
    subject: str
    flags: frozenset[str]


class Probe:
    """One run: the capability check, and the self-test if a user was given."""

    def __init__(self, config: Config, user: str | None, password: str, timeout: float) -> None:
        self.config = config
        self.proxy = Proxy(config)
        self.report = Report(str(config.upstream), config.upstream_tls)
        self._user = user
        self.password = password
        self.timeout = timeout

    async def run(self) -> Report:
        try:
            await self._run()
        except _ERRORS as exc:
            self.report.add(FAILS, _failure(exc))
        return self.report

    async def _run(self) -> None:
        client = await self.connect()
        report = self.report
        try:
            report.greeting = (await client.greeting()).decode("ascii", "replace")
            self._describe(client.caps, "before login")
            self._judge_tls(client.caps)
            if self._user is not None:
                await client.login(self._user, self.password)
                self._describe(client.caps, "after login")
        finally:
            await client.aclose()
        policy = self._judge_policy(client.caps)
        if self._user is None:
            report.add(
                WORKS,
                f"capabilities only: add --user and {PASSWORD_VARIABLE} or "
                "--password-file for a live self-test",
            )
        elif policy is Policy.REFUSED:
            report.add(CAVEATS, "self-test skipped: the proxy would not offer MOVE")
        else:
            await SelfTest(self, self._user).run()

    async def connect(self) -> Client:
        """A direct session with the upstream, opened the way the proxy opens one."""
        loopback = ("127.0.0.1", 0)
        with trio.fail_after(self.config.connect_timeout):
            stream, greeting = await self.proxy.open_upstream((loopback, loopback))
        return Client(stream, self.timeout, greeting)

    def _describe(self, caps: Capabilities, when: str) -> None:
        """Fill in the capabilities that matter and the policy they call for."""
        report = self.report
        report.capabilities_from = when
        for feature in FEATURES:
            name = feature.upper().encode()
            if feature == "COMPRESS":
                report.capabilities[feature] = any(n.startswith(b"COMPRESS=") for n in caps.names)
            else:
                report.capabilities[feature] = name in caps.names
        if self.config.upstream_tls == "starttls":
            report.capabilities["STARTTLS"] = True  # negotiated before the list was read
        policy = policy_for(caps, self.config.no_uidplus == "guarded")
        report.policy, report.policy_text = policy.value, POLICIES[policy]

    def _judge_tls(self, caps: Capabilities) -> None:
        """What the list before login says about the proxy's connection to the server."""
        if self.config.upstream_tls != "none":
            return
        if b"LOGINDISABLED" in caps.names:
            self.report.add(
                CAVEATS,
                "the server refuses LOGIN without TLS (LOGINDISABLED): clients must "
                'AUTHENTICATE; consider upstream_tls = "starttls"',
            )
        elif b"STARTTLS" in caps.names:
            self.report.add(
                CAVEATS,
                "the server offers STARTTLS but the proxy would talk plaintext "
                'to it: consider upstream_tls = "starttls"',
            )

    def _judge_policy(self, caps: Capabilities) -> Policy:
        policy = policy_for(caps, self.config.no_uidplus == "guarded")
        if policy is Policy.REFUSED:
            self.report.add(
                FAILS,
                "no UIDPLUS: the proxy would not offer MOVE with no_uidplus = "
                '"refuse"; try --no-uidplus guarded',
            )
        elif policy is Policy.GUARDED:
            self.report.add(
                CAVEATS,
                "no UIDPLUS: the guarded policy can expunge a message another "
                "session flags \\Deleted at the same moment (README: the race that remains)",
            )
        return policy


class SelfTest:
    """The live self-test: scratch mailboxes, a MOVE through the proxy's own engine, checks."""

    def __init__(self, probe: Probe, user: str) -> None:
        self.config, self.proxy, self.report = probe.config, probe.proxy, probe.report
        self._connect = probe.connect
        self._user = user
        self._password = probe.password
        self._timeout = probe.timeout
        self._token = secrets.token_hex(4)

    async def run(self) -> None:
        report = self.report
        report.self_test = True
        source = target = ""
        try:
            source, target = await self._prepare()
            report.mailboxes = [source, target]
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(self.proxy.serve)
                try:
                    await self._move_through_proxy(listeners[0], source, target)
                finally:
                    nursery.cancel_scope.cancel()
            await self._verify(source, target)
            await self._check_sessions(source)
        finally:
            if source:
                await self._clean_up(source, target)

    async def _session(self) -> Client:
        client = await self._connect()
        await client.greeting()
        assert self._user is not None
        await client.login(self._user, self._password)
        return client

    async def _prepare(self) -> tuple[str, str]:
        """Create the scratch mailboxes (beside INBOX, in the personal namespace) and append
        the messages; return the mailboxes' names."""
        client = await self._session()
        try:
            prefix = await _personal_prefix(client)
            source = f"{prefix}imapmoveproxy-probe-{self._token}"
            target = source + "-target"
            created: list[str] = []
            try:
                for mailbox in (source, target):
                    await client.ok([b'CREATE "%s"\r\n' % mailbox.encode()])
                    created.append(mailbox)
                for number in range(1, _MESSAGES + 1):
                    message = _message(self._token, number)
                    append = b'APPEND "%s" ' % source.encode()
                    await client.ok(astring_segments(append, [message], client.caps))
            except _ERRORS:
                with contextlib.suppress(*_ERRORS):
                    for mailbox in reversed(created):
                        await client.command([b'DELETE "%s"\r\n' % mailbox.encode()])
                raise
            return source, target
        finally:
            await client.aclose()

    async def _move_through_proxy(
        self, listener: trio.SocketListener, source: str, target: str
    ) -> None:
        report = self.report
        host, port = listener.socket.getsockname()[:2]
        client = Client(await trio.open_tcp_stream(host, port), self._timeout)
        seen: list[bytes] = []
        try:
            await client.greeting()
            assert self._user is not None
            await client.login(self._user, self._password)
            if b"MOVE" not in client.caps.names:
                raise ProbeError("the proxy does not advertise MOVE after login")
            seen += (await client.ok([b'SELECT "%s"\r\n' % source.encode()])).untagged
            by_number = _by_number(await _messages(client, self._token))
            if sorted(by_number) != list(range(1, _MESSAGES + 1)):
                raise ProbeError(f"the scratch mailbox holds {sorted(by_number)}, not 1 to 4")
            flag = b"UID STORE %d +FLAGS (\\Deleted)\r\n" % by_number[_FLAGGED].uid
            seen += (await client.ok([flag])).untagged
            uids = [by_number[number].uid for number in _MOVED]
            move = b'UID MOVE %s "%s"\r\n' % (b",".join(b"%d" % u for u in uids), target.encode())
            reply = await client.command([move])
        finally:
            await client.aclose()
        seen += reply.untagged
        if reply.tagged.status != b"OK":
            raise ProbeError(
                f"the MOVE through the proxy answered {_show(_status_text(reply.tagged))}"
            )
        report.add(
            WORKS,
            f"appended {_MESSAGES} messages, flagged one \\Deleted and moved "
            f"{len(_MOVED)} through the proxy: OK ({self._handled()})",
        )
        self._judge_move_replies(reply.untagged, uids)
        self._judge_untagged(seen)

    def _handled(self) -> str:
        """How the proxy engine says it handled the MOVE (its metrics)."""
        for metric in self.proxy.metrics.moves.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    return f"policy={sample.labels['policy']}, outcome={sample.labels['outcome']}"
        return "passed through"

    def _judge_move_replies(self, untagged: list[bytes], uids: list[int]) -> None:
        report = self.report
        copyuid = [i for i, r in enumerate(untagged) if r.upper().startswith(b"* OK [COPYUID ")]
        expunges = [i for i, r in enumerate(untagged) if _EXPUNGE_RE.match(r)]
        if not copyuid:
            report.add(
                CAVEATS,
                "no COPYUID in the MOVE's replies: clients cannot learn the moved "
                "messages' new UIDs, and the copies of a MOVE that fails after its COPY cannot "
                "be removed (they stay as duplicates)",
            )
        elif expunges and expunges[0] < copyuid[0]:
            report.add(FAILS, "COPYUID came after an EXPUNGE (RFC 6851 asks for it before)")
        else:
            report.add(WORKS, "COPYUID sent before the EXPUNGEs")
        leaked = [r for r in untagged if b"FETCH" in r.upper() and b"\\DELETED" in r.upper()]
        if leaked:
            report.add(
                FAILS, f"the emulation's \\Deleted flags reached the client: {_show(leaked[0])}"
            )
        if len(expunges) != len(uids) and not any(
            r.upper().startswith(b"* VANISHED ") for r in untagged
        ):
            report.add(
                CAVEATS,
                f"{len(expunges)} standard EXPUNGE responses for {len(uids)} moved messages: "
                "clients may go on showing moved messages until they select the mailbox again",
            )

    def _judge_untagged(self, responses: list[bytes]) -> None:
        report = self.report
        for response in responses:
            if not _standard(response):
                text = response.decode("ascii", "replace")
                if text not in report.nonstandard:
                    report.nonstandard.append(text)
        for text in report.nonstandard:
            report.add(
                CAVEATS, f"non-standard untagged response {text!r}: strict clients may reject it"
            )
        if not report.nonstandard:
            report.add(WORKS, "every untagged response was standard")

    async def _verify(self, source: str, target: str) -> None:
        """On the server itself: exactly the moved messages moved, the flagged one stayed."""
        report = self.report
        client = await self._session()
        try:
            left = _by_number(await _examine(client, source, self._token))
            arrived = await _examine(client, target, self._token)
        finally:
            await client.aclose()
        stayed = sorted(set(range(1, _MESSAGES + 1)) - set(_MOVED))
        numbers = sorted(_number(m) for m in arrived)
        if sorted(left) != stayed or numbers != list(_MOVED):
            report.add(
                FAILS,
                f"wrong messages moved: the source holds {sorted(left)} (expected "
                f"{stayed}), the target {numbers} (expected {list(_MOVED)})",
            )
            return
        report.add(WORKS, "exactly the moved messages left the source and are in the target once")
        if "\\DELETED" not in left[_FLAGGED].flags:
            report.add(FAILS, "the message the user had flagged \\Deleted lost its flag")
        elif any("\\DELETED" in m.flags for m in arrived) or any(
            "\\DELETED" in left[n].flags for n in stayed if n != _FLAGGED
        ):
            report.add(FAILS, "\\Deleted flags the user did not set were left behind")
        else:
            report.add(WORKS, "the message flagged \\Deleted stayed, flag kept; no other flag set")

    async def _check_sessions(self, source: str) -> None:
        """Two direct sessions on the source: A has it selected read-write while B appends to
        it and then selects it read-write too; A's NOOP then shows whether A survived.
        Behaviours, not server names: UW-IMAP's mbox format ends A (and answers B's APPEND
        without APPENDUID), its mix format and the others keep both."""
        report = self.report
        select = b'SELECT "%s"\r\n' % source.encode()
        first: Client | None = None
        second: Client | None = None
        try:
            with trio.fail_after(4 * self._timeout):
                first = await self._session()
                await first.ok([select])
                second = await self._session()
                append = b'APPEND "%s" ' % source.encode()
                message = _message(self._token, _MESSAGES + 1)
                appended = await second.ok(astring_segments(append, [message], second.caps))
                uidplus = b"UIDPLUS" in second.caps.names
                reopened = await second.ok([select])
                try:
                    await first.command([b"NOOP\r\n"])
                    ended = False
                except (ProbeError, trio.BrokenResourceError):  # a BYE, or just closed
                    ended = True
        except _ERRORS as exc:
            report.add(
                CAVEATS,
                f"could not check whether two sessions can have a mailbox open ({_failure(exc)})",
            )
            return
        finally:
            for client in (first, second):
                if client is not None:
                    await client.aclose()
        if ended:
            report.add(
                CAVEATS,
                "a second session that opens a mailbox read-write ends the session that had "
                "it open (mbox locking, as UW-IMAP's mbox format does; seen on a new mailbox): "
                "clients that open one mailbox in several connections lose all but the newest; "
                "the proxy passes the server's BYE on",
            )
        elif code_name(reopened.tagged.code) == b"READ-ONLY":
            report.add(
                CAVEATS,
                "a second session gets a mailbox only read-only while another session has it "
                "open: MOVE fails in it, and so do flag changes",
            )
        else:
            report.add(WORKS, "several sessions can have a mailbox open read-write")
        if uidplus and code_name(appended.tagged.code) != b"APPENDUID":
            report.add(
                CAVEATS,
                "an APPEND to a mailbox another session has open gets no APPENDUID although "
                "UIDPLUS is advertised: sync clients such as mbsync fail on it, with or "
                "without the proxy",
            )

    async def _clean_up(self, source: str, target: str) -> None:
        try:
            client = await self._session()
            try:
                for mailbox in (target, source):
                    await client.ok([b'DELETE "%s"\r\n' % mailbox.encode()])
                listed = await client.ok([b'LIST "" "%s*"\r\n' % source.encode()])
            finally:
                await client.aclose()
        except _ERRORS as exc:
            self.report.add(
                CAVEATS,
                f"scratch mailboxes {source}, {target} not deleted "
                f"({_failure(exc)}): please delete them",
            )
            return
        if any(r.upper().startswith(b"* LIST ") for r in listed.untagged):
            self.report.add(CAVEATS, f"scratch mailbox still listed after DELETE: {source}")
        else:
            self.report.add(WORKS, "scratch mailboxes deleted")


async def _personal_prefix(client: Client) -> str:
    """Where a new mailbox beside INBOX goes: the personal namespace's prefix (``INBOX.`` on
    Courier), or nothing."""
    if b"NAMESPACE" in client.caps.names:
        reply = await client.ok([b"NAMESPACE\r\n"])
        for response in reply.untagged:
            match = _NAMESPACE_RE.match(response)
            if match:
                return match.group(1).decode()
    return ""


def _message(token: str, number: int) -> bytes:
    return (
        f"From: imapmoveproxy probe <probe@imapmoveproxy.invalid>\r\n"
        f"To: probe@imapmoveproxy.invalid\r\n"
        f"Subject: imapmoveproxy probe {token} {number}\r\n"
        f"Message-ID: <probe-{token}-{number}@imapmoveproxy.invalid>\r\n"
        f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        f"\r\n"
        f"A scratch message of imapmoveproxy probe; delete it if the probe left it behind.\r\n"
    ).encode()


async def _messages(client: Client, token: str) -> list[Message]:
    """The selected mailbox's probe messages (those of this run's ``token``)."""
    fetch = b"UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n"
    found = []
    for response in (await client.ok([fetch])).untagged:
        uid, flags, subject = (r.search(response) for r in (_UID_RE, _FLAGS_RE, _SUBJECT_RE))
        if uid and flags and subject and token in subject.group(1).decode("ascii", "replace"):
            names = frozenset(flags.group(1).decode().upper().split())
            found.append(Message(int(uid.group(1)), subject.group(1).decode().strip(), names))
    return found


async def _examine(client: Client, mailbox: str, token: str) -> list[Message]:
    reply = await client.ok([b'EXAMINE "%s"\r\n' % mailbox.encode()])
    exists = [r for r in reply.untagged if r.upper().endswith(b" EXISTS")]
    messages = [] if exists and exists[-1] == b"* 0 EXISTS" else await _messages(client, token)
    await client.ok([b"CLOSE\r\n"])  # read-only: CLOSE expunges nothing
    return messages


def _number(message: Message) -> int:
    return int(message.subject.rsplit(" ", 1)[1])


def _by_number(messages: list[Message]) -> dict[int, Message]:
    return {_number(m): m for m in messages}


def _standard(response: bytes) -> bool:
    words = response.split(b" ", 3)
    if len(words) < 2 or words[0] != b"*":
        return True  # a continuation request, or nothing the client would parse as untagged
    if words[1].isdigit():
        return len(words) > 2 and words[2].upper() in _STANDARD_NUMBERED
    return words[1].upper() in _STANDARD


def _status_text(tagged: Tagged) -> bytes:
    code = b"[" + tagged.code + b"] " if tagged.code else b""
    return tagged.status + b" " + code + tagged.text


def _show(data: bytes) -> str:
    return repr(line_body(data)[:200].decode("ascii", "replace"))


def _failure(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    if isinstance(exc, UpstreamUnavailable | OSError):
        return f"cannot connect: {exc}"
    if isinstance(exc, trio.BrokenResourceError):
        return f"the connection broke: {exc.__cause__ or exc}"
    return str(exc)


# ---------------------------------------------------------------------- command line


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imapmoveproxy probe",
        allow_abbrev=False,  # "--password x" must not pass for --password-file
        description="Check whether imapmoveproxy will work in front of an IMAP server: what it "
        "offers, which MOVE policy the proxy would use and, with --user, a live self-test in "
        "scratch mailboxes it creates and deletes. Exit status: 0 works, 1 works with caveats, "
        "2 will not work.",
    )
    add_upstream_arguments(parser)
    add = parser.add_argument
    add("--user", help="log in as USER and run the self-test")
    add(
        "--password-file",
        type=Path,
        help=f"file holding USER's password (or set {PASSWORD_VARIABLE})",
    )
    add("--timeout", type=float, default=30.0, help="seconds to wait for each reply")
    add("--json", action="store_true", help="print the report as JSON")
    add(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="log verbosity of the proxy engine the self-test runs",
    )
    return parser


def probe_config(args: dict[str, object], environ: Mapping[str, str]) -> Config:
    """The proxy's configuration for the upstream, listening on 127.0.0.1 port 0 only."""
    values = merged_values(args, environ)
    for key in _CLIENT_SIDE:
        values.pop(key, None)
    values["listen"] = "127.0.0.1:0"
    return build(values)


def _password(path: Path | None, environ: Mapping[str, str]) -> str | None:
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"--password-file: cannot read {path}: {exc.strerror}") from exc
        return text.splitlines()[0] if text else ""
    return environ.get(PASSWORD_VARIABLE)


def main(argv: list[str], environ: Mapping[str, str] = os.environ) -> int:
    args = vars(argument_parser().parse_args(argv))
    as_json, user, timeout = args.pop("json"), args.pop("user"), args.pop("timeout")
    logging.basicConfig(level=args.pop("log_level").upper(), stream=sys.stderr)
    try:
        password = _password(args.pop("password_file"), environ)
        if user is not None and password is None:
            raise ConfigError(f"--user needs --password-file or {PASSWORD_VARIABLE}")
        config = probe_config(args, environ)
        probe = Probe(config, user, password or "", timeout)
    except (ConfigError, OSError) as exc:
        print(f"imapmoveproxy probe: configuration error: {exc}", file=sys.stderr)
        return FAILS
    report = trio.run(probe.run)
    print(report.as_json() if as_json else report.as_text(), end="" if not as_json else "\n")
    return report.status
