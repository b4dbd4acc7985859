"""The upstream's side of a session: every response relayed, except what the proxy must see.

Runs of plain untagged responses are relayed in one piece; a line the proxy must look at (a
response code, a capability list, EXISTS/RECENT, BYE, a continuation, a tagged reply) is looked
at alone. A tagged reply goes to whoever sent its command: the client, the running MOVE, or the
proxy's own ID. A reply nobody can place ends the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire import capabilities, responses
from ..wire.framing import Line
from ..wire.grammar import Tagged, code_name, parse_tagged
from .channel import ID, send_id

if TYPE_CHECKING:
    from .session import Session


class UpstreamResponses:
    """Routes the upstream's responses of one session."""

    __slots__ = ("_relay", "_session", "greeted", "said_bye")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._relay = True  # whether the upstream response being received goes to the client
        self.said_bye = False
        self.greeted = False

    def process(self) -> None:
        session = self._session
        output, framer = session.output, session.upstream_framer
        # Once the connection is ending nothing more is relayed or acted on, except the rest of
        # a response the BYE waits behind.
        while (session.close_reason is None or output.deferred) and not framer.exhausted:
            move = session.moves.running
            if move is None and self.greeted and not session.channel.awaiting(ID):
                # Fast path: relay in one piece the run of untagged responses that need no look
                # (a FETCH flood is ~100 bytes a line; one at a time would cost 4 µs each).
                run = framer.plain_run(responses.first_stop)
                if not run:  # the same for EXPUNGE responses: relayed, and counted
                    run = framer.plain_run(responses.first_non_expunge)
                    session.mailbox.expunged(bytes(run).count(b"\n"))
                if run:
                    output.relay(run)
                    output.flush_deferred()
                    continue
            elif move is not None and move.expunges_in_runs:
                # The same for the EXPUNGE responses of a big MOVE: relayed, and counted.
                run = framer.plain_run(responses.first_non_expunge)
                if run:
                    expunged = bytes(run).count(b"\n")
                    move.expunged(expunged)
                    session.mailbox.expunged(expunged)
                    output.relay(run)
                    continue
            event = session.next_event(
                framer, "upstream line too long", b"The mail server sent an overlong line."
            )
            if event is None:
                return
            if type(event) is Line and event.first:
                self._relay = self._response(event.data)
            elif self._relay:
                output.relay(event.data)
            output.flush_deferred()

    def _response(self, line: bytes) -> bool:
        """Handle the first line of an upstream response; return whether it goes to the client."""
        session = self._session
        if not self.greeted:
            self.greeted = True
            session.authenticated = line[:10].upper() == b"* PREAUTH "
            session.output.to_client += self._capabilities(line)
            caps = session.caps
            addresses = session.addresses
            if session.settings.forward_id and caps and b"ID" in caps.names and addresses:
                send_id(session.channel, addresses)
            return True
        lead = line[:1]
        if line[:5].upper() == b"* ID " and session.channel.awaiting(ID):
            return False  # the answer to the proxy's own ID
        if lead == b"*":
            return self._untagged(line)
        if lead == b"+":
            if session.channel.continue_command():
                return False
            session.client.continued()
            session.output.to_client += line
            return True
        reply = parse_tagged(line)
        if reply is None:
            return self._misplaced(line, "malformed line")
        move = session.moves.running
        owner = session.channel.answered(reply.tag)  # its command leaves the channel's table
        if owner is not None:  # one of the proxy's own commands
            if move is not None and owner is move:
                session.moves.step(move.on_tagged(reply, session.caps))
            return False  # the proxy's ID, or a command of a MOVE answered already
        if move is not None and move.forwarded(reply.tag):  # the client's MOVE, sent on as it was
            session.output.to_client += line
            session.moves.step(move.on_tagged(reply, session.caps))
            return True
        if reply.tag not in session.inflight:
            return self._misplaced(line, "reply to a tag nobody sent")
        self._complete(reply)
        if reply.code is not None:
            name = code_name(reply.code)
            if name in (b"READ-ONLY", b"READ-WRITE"):
                session.mailbox.read_only = name == b"READ-ONLY"
            elif name == b"CAPABILITY":
                line = self._capabilities(line)
        session.output.to_client += line
        return True

    def _untagged(self, line: bytes) -> bool:
        session = self._session
        mailbox = session.mailbox
        expunged = responses.expunged_number(line)
        if expunged is not None:
            line = b"* " + expunged + b" EXPUNGE\r\n"
            session.counters.expunged_rewritten += 1
        if line[2:5].upper() == b"BYE":
            self.said_bye = True
        if b"[" in line or line[2:13].upper() == b"CAPABILITY ":
            line = self._capabilities(line)
            validity = responses.uidvalidity(line)
            if validity is not None:
                mailbox.uidvalidity = validity
        count = responses.count(line)
        if count is not None and count[1]:
            mailbox.exists = count[0]
        elif responses.expunge_number(line) is not None:
            mailbox.expunged(1)
        move = session.moves.running
        if move is not None and not move.on_untagged(line):
            return False
        if count is not None and not count[1]:
            mailbox.recent = count[0]
        session.output.to_client += line
        return True

    def _misplaced(self, line: bytes, what: str) -> bool:
        """A reply the proxy cannot place: everything after it may be out of step, and a MOVE
        built on it could lose mail. End the connection rather than guess."""
        session = self._session
        session.log.warning("%s from upstream: %r", what, line[:100])
        session.close(f"upstream protocol error ({what})", b"The mail server misbehaved.")
        return False

    def _complete(self, reply: Tagged) -> None:
        session = self._session
        completion = session.inflight.complete(reply.tag, reply.status == b"OK")
        if completion.logged_in:  # bound to this very login: one not captured leaves none
            session.authenticated = True
            session.credentials = completion.credentials
        elif completion.selection:
            session.mailbox.selected(completion.mailbox)
        session.client.completed(reply.tag)

    def _capabilities(self, line: bytes) -> bytes:
        session = self._session
        new_line, caps = capabilities.rewrite_line(line, session.offer.additions)
        if caps is not None:
            session.caps = caps
        return new_line
