"""The probe's live self-test, in two scratch mailboxes it creates and deletes.

It appends four messages to the first, then, as a client of the proxy's own engine (a
:class:`~..shell.server.Proxy` started in this process on 127.0.0.1), flags the fourth
``\\Deleted`` as a user would and moves the first two into the second mailbox. A fresh direct
session then checks on the server that exactly the moved messages moved, once, and that the
flagged one stayed, flag included; the MOVE's replies are checked for COPYUID (before the
EXPUNGEs) and for untagged responses outside the standard. Last, two direct sessions check that
a second session which appends to the source mailbox and selects it read-write leaves the first
one open (UW-IMAP's mbox format ends it) and that the APPEND carries APPENDUID when UIDPLUS is
advertised. What they found is judged by :mod:`.judge`.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..move.request import astring_segments
from ..shell.server import Proxy
from ..wire import responses
from ..wire.grammar import code_name
from . import judge
from .report import CAVEATS, WORKS, Report
from .session import ERRORS, ProbeError, Session, failure, status_text

_MESSAGES = 4  # appended to the scratch mailbox
_MOVED = (1, 2)  # which of them are moved
_FLAGGED = 4  # which one the "user" flags \Deleted first


@dataclass(slots=True, frozen=True)
class Message:
    uid: int
    subject: str
    flags: frozenset[str]


class SelfTest:
    """The live self-test: scratch mailboxes, a MOVE through the proxy's own engine, checks."""

    def __init__(
        self,
        proxy: Proxy,
        report: Report,
        connect: Callable[[], Awaitable[Session]],
        user: str,
        password: str,
        timeout: float,
    ) -> None:
        self.proxy, self.report = proxy, report
        self._connect = connect  # a direct session with the server
        self._user = user
        self._password = password
        self._timeout = timeout
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

    async def _session(self) -> Session:
        client = await self._connect()
        await client.greeting()
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
            except ERRORS:
                with contextlib.suppress(*ERRORS):
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
        client = Session(await trio.open_tcp_stream(host, port), self._timeout)
        seen: list[bytes] = []
        try:
            await client.greeting()
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
                f"the MOVE through the proxy answered {judge.show(status_text(reply.tagged))}"
            )
        report.add(
            WORKS,
            f"appended {_MESSAGES} messages, flagged one \\Deleted and moved "
            f"{len(_MOVED)} through the proxy: OK ({self._handled()})",
        )
        report.findings += judge.move_replies(reply.untagged, len(uids))
        report.nonstandard += judge.nonstandard(seen)
        report.findings += judge.nonstandard_findings(report.nonstandard)

    def _handled(self) -> str:
        """How the proxy engine says it handled the MOVE (its metrics)."""
        for metric in self.proxy.metrics.moves.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    return f"policy={sample.labels['policy']}, outcome={sample.labels['outcome']}"
        return "passed through"

    async def _verify(self, source: str, target: str) -> None:
        """On the server itself: exactly the moved messages moved, the flagged one stayed."""
        client = await self._session()
        try:
            left = _by_number(await _examine(client, source, self._token))
            arrived = await _examine(client, target, self._token)
        finally:
            await client.aclose()
        self.report.findings += judge.move_result(
            {number: message.flags for number, message in left.items()},
            {_number(message): message.flags for message in arrived},
            _MESSAGES,
            _MOVED,
            _FLAGGED,
        )

    async def _check_sessions(self, source: str) -> None:
        """Two direct sessions on the source: A has it selected read-write while B appends to
        it and then selects it read-write too; A's NOOP then shows whether A survived.
        Behaviours, not server names: UW-IMAP's mbox format ends A (and answers B's APPEND
        without APPENDUID), its mix format and the others keep both."""
        report = self.report
        select = b'SELECT "%s"\r\n' % source.encode()
        first: Session | None = None
        second: Session | None = None
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
        except ERRORS as exc:
            report.add(
                CAVEATS,
                f"could not check whether two sessions can have a mailbox open ({failure(exc)})",
            )
            return
        finally:
            for client in (first, second):
                if client is not None:
                    await client.aclose()
        report.findings += judge.sessions(
            ended,
            code_name(reopened.tagged.code) == b"READ-ONLY",
            uidplus,
            code_name(appended.tagged.code) == b"APPENDUID",
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
        except ERRORS as exc:
            self.report.add(
                CAVEATS,
                f"scratch mailboxes {source}, {target} not deleted "
                f"({failure(exc)}): please delete them",
            )
            return
        if any(r.upper().startswith(b"* LIST ") for r in listed.untagged):
            self.report.add(CAVEATS, f"scratch mailbox still listed after DELETE: {source}")
        else:
            self.report.add(WORKS, "scratch mailboxes deleted")


async def _personal_prefix(client: Session) -> str:
    """Where a new mailbox beside INBOX goes: the personal namespace's prefix (``INBOX.`` on
    Courier), or nothing."""
    if b"NAMESPACE" in client.caps.names:
        reply = await client.ok([b"NAMESPACE\r\n"])
        for response in reply.untagged:
            prefix = responses.personal_namespace(response)
            if prefix is not None:
                return prefix.decode()
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


async def _messages(client: Session, token: str) -> list[Message]:
    """The selected mailbox's probe messages (those of this run's ``token``)."""
    fetch = b"UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n"
    found = []
    for response in (await client.ok([fetch])).untagged:
        uid, flags = responses.fetch_uid(response), responses.flags(response)
        subject = responses.subject(response)
        if uid and flags is not None and subject and token in subject.decode("ascii", "replace"):
            names = frozenset(flag.decode().upper() for flag in flags)
            found.append(Message(uid, subject.decode().strip(), names))
    return found


async def _examine(client: Session, mailbox: str, token: str) -> list[Message]:
    reply = await client.ok([b'EXAMINE "%s"\r\n' % mailbox.encode()])
    exists = [r for r in reply.untagged if r.upper().endswith(b" EXISTS")]
    messages = [] if exists and exists[-1] == b"* 0 EXISTS" else await _messages(client, token)
    await client.ok([b"CLOSE\r\n"])  # read-only: CLOSE expunges nothing
    return messages


def _number(message: Message) -> int:
    return int(message.subject.rsplit(" ", 1)[1])


def _by_number(messages: list[Message]) -> dict[int, Message]:
    return {_number(m): m for m in messages}
