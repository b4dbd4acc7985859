"""The upstream's side of a session: every response relayed, except what the proxy must see.

Runs of plain untagged responses are relayed in one piece; a line the proxy must look at (a
response code, a capability list, EXISTS/RECENT, BYE, a continuation, a tagged reply) is looked
at alone. A tagged reply goes to whoever sent its command: the client, the running MOVE, or the
proxy's own ID. A reply nobody can place ends the connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from ..wire import capabilities, responses, specialuse
from ..wire.capabilities import Capabilities
from ..wire.commands import CommandChannel
from ..wire.framing import Framer, Line, LineTooLong
from ..wire.grammar import Tagged, code_name, parse_tagged
from ..wire.proxyproto import Endpoint
from .channel import ID, send_id
from .inflight import CommandsInFlight
from .mailbox import SelectedMailbox
from .output import Output

if TYPE_CHECKING:
    from ..move.rollback import Credentials
    from .client import ClientInput
    from .moves import MoveRunner
    from .offer import Offer
    from .resumes import ResumeRunner
    from .settings import Counters, SessionSettings


class UpstreamHost(Protocol):
    """What the upstream's responses need of their session beyond its parts: the state they
    change (each through a method of the session) and the end of the connection."""

    @property
    def caps(self) -> Capabilities | None: ...

    @property
    def close_reason(self) -> str | None: ...

    def upstream_capabilities(self, caps: Capabilities | None) -> None: ...

    def logged_in(self, credentials: Credentials | None) -> None: ...

    def close(self, reason: str, bye: bytes, level: int = logging.WARNING) -> None: ...


class UpstreamResponses:
    """Routes the upstream's responses of one session."""

    __slots__ = (
        "_addresses",
        "_channel",
        "_client",
        "_counters",
        "_forward_id",
        "_framer",
        "_host",
        "_inflight",
        "_log",
        "_mailbox",
        "_moves",
        "_offer",
        "_output",
        "_relay",
        "_resumes",
        "_special_use",
        "greeted",
        "said_bye",
    )

    def __init__(
        self,
        host: UpstreamHost,
        framer: Framer,
        output: Output,
        channel: CommandChannel,
        inflight: CommandsInFlight,
        mailbox: SelectedMailbox,
        moves: MoveRunner,
        resumes: ResumeRunner,
        client: ClientInput,
        offer: Offer,
        counters: Counters,
        settings: SessionSettings,
        log: logging.LoggerAdapter[logging.Logger],
        addresses: tuple[Endpoint, Endpoint] | None,
    ) -> None:
        self._host = host
        self._framer, self._output, self._channel = framer, output, channel
        self._inflight, self._mailbox, self._moves = inflight, mailbox, moves
        self._resumes = resumes
        self._client, self._offer, self._counters, self._log = client, offer, counters, log
        self._forward_id, self._addresses = settings.forward_id, addresses
        self._special_use = settings.special_use
        self._relay = True  # whether the upstream response being received goes to the client
        self.said_bye = False
        self.greeted = False

    def process(self) -> None:
        host, output, framer = self._host, self._output, self._framer
        channel, mailbox, moves = self._channel, self._mailbox, self._moves
        # Once the connection is ending nothing more is relayed or acted on, except the rest of
        # a response the BYE waits behind.
        while (host.close_reason is None or output.deferred) and not framer.exhausted:
            move = moves.running
            resuming = self._resumes.recovering  # every response is the recovery's
            if move is None and not resuming and self.greeted and not channel.awaiting(ID):
                # Fast path: relay in one piece the run of untagged responses that need no look
                # (a FETCH flood is ~100 bytes a line; one at a time would cost 4 µs each).
                run = framer.plain_run(
                    responses.first_stop_listing
                    if self._offer.adds_special_use(host.caps)
                    else responses.first_stop
                )
                if run:
                    output.relay(run)
                    output.flush_deferred()
                    continue
            if not resuming and (move is None or move.expunges_in_runs):
                # The same for EXPUNGE responses (a big MOVE's, or another session's): relayed
                # in one piece, and counted.
                run = framer.plain_run(responses.first_non_expunge)
                if run:
                    expunged = bytes(run).count(b"\n")
                    mailbox.expunged(expunged)
                    output.relay(run)
                    if move is None:
                        output.flush_deferred()
                    else:
                        move.expunged(expunged)
                    continue
            try:
                event = framer.next_event()
            except LineTooLong:
                host.close("upstream line too long", b"The mail server sent an overlong line.")
                return
            if event is None:
                return
            if type(event) is Line and event.first:
                self._relay = self._response(event.data)
            elif self._relay:
                output.relay(event.data)
            output.flush_deferred()

    def routed(self, reply: bytes) -> bytes:
        """The proxy logged in for the client (routing mode): no greeting comes, and the client
        is to get ``reply``, the login's tagged OK with the backend's capability list, as the
        proxy offers it (returned)."""
        self.greeted = True
        return self._capabilities(reply)

    def _response(self, line: bytes) -> bool:
        """Handle the first line of an upstream response; return whether it goes to the client."""
        host, output, channel, moves = self._host, self._output, self._channel, self._moves
        if not self.greeted:
            self.greeted = True
            if line[:10].upper() == b"* PREAUTH ":
                host.logged_in(None)
            output.to_client += self._capabilities(line)
            caps = host.caps
            addresses = self._addresses
            if self._forward_id and caps and b"ID" in caps.names and addresses:
                send_id(channel, addresses)
            return True
        lead = line[:1]
        if line[:5].upper() == b"* ID " and channel.awaiting(ID):
            return False  # the answer to the proxy's own ID
        if lead == b"*":
            return self._untagged(line)
        if lead == b"+":
            if channel.continue_command():
                return False
            self._client.continued()
            output.to_client += line
            return True
        reply = parse_tagged(line)
        if reply is None:
            return self._misplaced(line, "malformed line")
        move = moves.running
        owner = channel.answered(reply.tag)  # its command leaves the channel's table
        if owner is not None:  # one of the proxy's own commands
            if move is not None and owner is move:
                moves.step(move.on_tagged(reply, host.caps))
            else:
                self._resumes.on_tagged(owner, reply)
            return False  # the proxy's ID, or a command of a MOVE answered already
        if move is not None and move.forwarded(reply.tag):  # the client's MOVE, sent on as it was
            output.to_client += line
            moves.step(move.on_tagged(reply, host.caps))
            return True
        if reply.tag not in self._inflight:
            return self._misplaced(line, "reply to a tag nobody sent")
        self._complete(reply)
        if reply.code is not None:
            name = code_name(reply.code)
            if name in (b"READ-ONLY", b"READ-WRITE"):
                self._mailbox.read_only = name == b"READ-ONLY"
            elif name == b"CAPABILITY":
                line = self._capabilities(line)
        if self._resumes.hold(line):  # a login's OK, while the journal is looked at
            return False
        output.to_client += line
        return True

    def _untagged(self, line: bytes) -> bool:
        mailbox = self._mailbox
        expunged = responses.expunged_number(line)
        if expunged is not None:
            line = b"* " + expunged + b" EXPUNGE\r\n"
            self._counters.expunged_rewritten += 1
        if line[2:5].upper() == b"BYE":
            self.said_bye = True
        if self._resumes.recovering:
            self._resumes.on_untagged(line)
            return False
        if b"[" in line or line[2:13].upper() == b"CAPABILITY ":
            line = self._capabilities(line)
            validity = responses.uidvalidity(line)
            if validity is not None:
                mailbox.uidvalidity = validity
        if line[2:7] in (b"LIST ", b"LSUB ") and self._offer.adds_special_use(self._host.caps):
            line = specialuse.annotate(line, self._special_use)
            if self._offer.selecting is not None and not specialuse.special(line):
                return False  # LIST (SPECIAL-USE): only the special-use mailboxes
        count = responses.count(line)
        if count is not None and count[1]:
            mailbox.exists = count[0]
        elif responses.expunge_number(line) is not None:
            mailbox.expunged(1)
        move = self._moves.running
        if move is not None and not move.on_untagged(line):
            return False
        if count is not None and not count[1]:
            mailbox.recent = count[0]
        self._output.to_client += line
        return True

    def _misplaced(self, line: bytes, what: str) -> bool:
        """A reply the proxy cannot place: everything after it may be out of step, and a MOVE
        built on it could lose mail. End the connection rather than guess."""
        self._log.warning("%s from upstream: %r", what, line[:100])
        self._host.close(f"upstream protocol error ({what})", b"The mail server misbehaved.")
        return False

    def _complete(self, reply: Tagged) -> None:
        completion = self._inflight.complete(reply.tag, reply.status == b"OK")
        if completion.logged_in:  # bound to this very login: one not captured leaves none
            self._host.logged_in(completion.credentials)
        elif completion.selection:
            self._mailbox.selected(completion.mailbox)
        self._client.completed(reply.tag)

    def _capabilities(self, line: bytes) -> bytes:
        new_line, caps = capabilities.rewrite_line(line, self._offer.additions)
        if caps is not None:
            self._host.upstream_capabilities(caps)
        return new_line
