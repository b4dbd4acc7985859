"""The probe's own sessions with the server (directly, or through the proxy's engine): a
:class:`~..wire.conversation.Conversation` on the shell's driver, one command at a time, and
anything the probe did not expect a :class:`ProbeError` whose text the report gives."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import trio

from ..move.request import UpstreamCommand
from ..move.rollback import Credentials
from ..shell.serverlink import ServerClient
from ..shell.tls import UpstreamUnavailable
from ..wire.capabilities import Capabilities
from ..wire.conversation import Conversation, ConversationError
from ..wire.grammar import Tagged, code_name, line_body
from .judge import show


class ProbeError(Exception):
    """A step of the probe failed; the text says which and why."""


# What ends a step of the probe (and goes into the report as its reason).
ERRORS = (ProbeError, UpstreamUnavailable, OSError, trio.TooSlowError, trio.BrokenResourceError)


@dataclass(slots=True)
class Reply:
    tagged: Tagged
    untagged: list[bytes]  # whole responses, literals included, without the final CRLF


class Session:
    """One connection: each send and each read may take ``timeout`` seconds."""

    def __init__(self, stream: trio.abc.Stream, timeout: float, greeting: bytes = b"") -> None:
        self._client = ServerClient(stream, Conversation(b"p"), timeout, greeting)
        self._timeout = timeout

    @property
    def caps(self) -> Capabilities:
        """The server's capabilities, as it last listed them."""
        return self._client.peer.caps

    async def greeting(self) -> bytes:
        try:
            greeting = line_body((await self._client.greeting()).data)
        except ConversationError as exc:
            raise ProbeError(str(exc)) from exc
        if not greeting.upper().startswith(b"* OK"):
            raise ProbeError(f"greeting: {show(greeting)}")
        if not self.caps.names:
            await self.command([b"CAPABILITY\r\n"])
        return greeting

    async def command(self, segments: UpstreamCommand) -> Reply:
        """Send a command (each segment after the first waits for "+") and read its replies."""
        try:
            exchange = await self._client.command(segments)
        except ConversationError as exc:
            raise ProbeError(str(exc)) from exc
        return Reply(exchange.tagged, [line_body(response.data) for response in exchange.untagged])

    async def ok(self, segments: UpstreamCommand) -> Reply:
        """Like :meth:`command`, but anything other than OK is a :class:`ProbeError`."""
        reply = await self.command(segments)
        if reply.tagged.status != b"OK":
            raise ProbeError(f"{show(segments[0])} answered {show(status_text(reply.tagged))}")
        return reply

    async def login(self, user: str, password: str) -> None:
        plain = b"LOGINDISABLED" in self.caps.names  # AUTHENTICATE PLAIN still works then
        credentials = Credentials(user.encode(), user.encode(), password.encode(), plain)
        reply = await self.command(credentials.command(self.caps))
        if reply.tagged.status != b"OK":
            raise ProbeError(f"login as {user!r} failed: {show(status_text(reply.tagged))}")
        if not reply.tagged.code or code_name(reply.tagged.code) != b"CAPABILITY":
            await self.command([b"CAPABILITY\r\n"])

    async def aclose(self) -> None:
        with trio.move_on_after(self._timeout), contextlib.suppress(*ERRORS):
            await self.command([b"LOGOUT\r\n"])
        await self._client.aclose()


def status_text(tagged: Tagged) -> bytes:
    code = b"[" + tagged.code + b"] " if tagged.code else b""
    return tagged.status + b" " + code + tagged.text


def failure(exc: BaseException) -> str:
    """An error of :data:`ERRORS` as the report gives it."""
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    if isinstance(exc, UpstreamUnavailable | OSError):
        return f"cannot connect: {exc}"
    if isinstance(exc, trio.BrokenResourceError):
        return f"the connection broke: {exc.__cause__ or exc}"
    return str(exc)
