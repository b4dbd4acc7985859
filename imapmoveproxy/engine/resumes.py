"""At login, the journal's unfinished MOVEs of the user are finished before the client hears
that its login succeeded (:mod:`..move.resume`).

When the server accepts a LOGIN or AUTHENTICATE of a user the proxy can name, and a journal is
on, the tagged OK is held back and :class:`.effects.LookupJournal` queued. The caller reads the
user's entries, takes each source mailbox's MOVE lock, and hands the entries over
(:meth:`ResumeRunner.entries`); with none, the OK goes to the client at once. Otherwise a
:class:`~..move.resume.Resume` runs on the client's own upstream connection: its commands under
the proxy's tags, every upstream response meanwhile its own. Then the OK goes on, and the
verdicts (:attr:`ResumeRunner.verdicts`) tell the caller which entries to remove.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from ..journal.entry import Entry
from ..move.request import UpstreamCommand
from ..move.resume import Resume, Verdict
from ..wire.capabilities import Capabilities
from ..wire.commands import CommandChannel
from ..wire.grammar import Tagged
from .effects import Effect, LookupJournal
from .output import Output

if TYPE_CHECKING:
    from .settings import SessionSettings

CAPABILITY = "the capabilities a recovery needs"  # owner of its CAPABILITY command


class ResumeHost(Protocol):
    @property
    def caps(self) -> Capabilities | None: ...

    def queue(self, effect: Effect) -> None: ...


class ResumeRunner:
    """The login reply held back, and the recovery running before it goes on."""

    __slots__ = (
        "_channel", "_entries", "_host", "_log", "_output", "_settings", "_user", "held",
        "running", "verdicts",
    )  # fmt: skip

    def __init__(
        self,
        host: ResumeHost,
        settings: SessionSettings,
        output: Output,
        channel: CommandChannel,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._host, self._settings, self._output = host, settings, output
        self._channel, self._log = channel, log
        self._user: bytes | None = None  # logged in: its login's reply is to be held
        self._entries: list[Entry] = []  # waiting for the upstream's capabilities
        self.held: bytes | None = None  # the login's tagged OK, for the client afterwards
        self.running: Resume | None = None
        self.verdicts: list[Verdict] = []

    @property
    def busy(self) -> bool:
        """The client's login reply is held: its session waits."""
        return self.held is not None

    def logged_in(self, user: bytes | None) -> None:
        """The server accepted a login of ``user`` (None: not known): its reply comes next."""
        self._user = user if self._settings.journal else None

    def hold(self, reply: bytes) -> bool:
        """Whether the login's tagged OK ``reply`` waits for the journal's entries."""
        user, self._user = self._user, None
        if user is None:
            return False
        self.held = reply
        self._host.queue(LookupJournal(user))
        return True

    def entries(self, entries: list[Entry]) -> None:
        """The user's unfinished entries, their locks held (none: the login's OK goes on)."""
        self.verdicts = []
        if not entries:
            self._release()
            return
        if self._host.caps is None:  # they change with the login; the OK may not list them
            self._entries = entries
            self._channel.send([self._channel.own([b"CAPABILITY\r\n"], CAPABILITY)])
            return
        self._start(entries)

    def on_tagged(self, owner: object, reply: Tagged) -> bool:
        """Whether ``reply`` (to a command of ``owner``'s) was the recovery's."""
        if owner == CAPABILITY:
            entries, self._entries = self._entries, []
            self._start(entries)
            return True
        running = self.running
        if running is None or owner is not running:
            return False
        self._send(running.on_tagged(reply))
        return True

    def _start(self, entries: list[Entry]) -> None:
        caps = self._host.caps or Capabilities(frozenset())
        self.running = Resume(entries, caps, self._settings.max_set_bytes)
        self._send(self.running.start())

    def _send(self, commands: list[UpstreamCommand]) -> None:
        running = self.running
        assert running is not None
        if commands:
            channel = self._channel
            channel.send([channel.own(command, running) for command in commands])
            return
        if running.done:
            self.verdicts, self.running = running.verdicts, None
            self._release()

    def _release(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            self._output.reply(held)
