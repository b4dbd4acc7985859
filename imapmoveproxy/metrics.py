"""Prometheus metrics, and the small HTTP endpoint that serves them with /healthz and /readyz."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .engine.effects import FinishedMove

log = logging.getLogger(__name__)

PREFIX = "imapmoveproxy_"


class Metrics:
    """Every metric the proxy exports, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Called before each scrape: counts kept by the connections (bytes, commands) are added
        # to the counters then, not on every read.
        self.before_scrape: list[Callable[[], None]] = []
        counter, histogram = self._counter, self._histogram
        self.connections = Gauge(
            PREFIX + "connections_open", "Client connections open now", registry=self.registry
        )
        self.connections_total = counter("connections", "Client connections accepted")
        self.rejected = counter(
            "connections_rejected", "Client connections ended before proxying, by reason", "reason"
        )
        self.logins = counter(
            "routed_logins",
            'Logins in routing mode by backend ("" when none was reached) and result (ok, '
            "refused: by the backend or the lookup, unavailable: lookup or backend failed)",
            "backend",
            "result",
        )
        self.backend_moves = counter(
            "backend_moves",
            "Routing mode: MOVE commands by backend and outcome (policy and outcome without the "
            "backend: imapmoveproxy_moves_total)",
            "backend",
            "outcome",
        )
        self.bytes = counter("bytes", "Bytes relayed, by direction", "direction")
        self.bytes_from_client = self.bytes.labels("client_to_upstream")
        self.bytes_from_upstream = self.bytes.labels("upstream_to_client")
        self.commands = counter("commands", "Client commands seen")
        self.moves = counter(
            "moves", "MOVE commands by handling (policy) and outcome", "policy", "outcome"
        )
        self.move_failures = counter(
            "move_failures", "MOVEs that failed after the COPY, by the step that failed", "step"
        )
        self.rollbacks = counter(
            "rollbacks",
            "Failed MOVEs whose copies had to be removed from the target, by result "
            "(done, failed, impossible: no credentials or no COPYUID)",
            "result",
        )
        self.duplicates = counter("duplicates", "Messages a failed MOVE left in both mailboxes")
        self.expunge_retries = counter(
            "expunge_retries",
            "UID EXPUNGEs that answered OK but removed too few messages, flagged and expunged "
            "once more",
        )
        self.copy_flags = counter(
            "copy_flags",
            "Guarded MOVEs whose copies' flags were checked by a second session, by result "
            "(kept by the server's COPY, restored, lost, unknown: could not be checked)",
            "result",
        )
        self.rewritten = counter(
            "responses_rewritten",
            "Upstream responses relayed in their standard form, by kind (expunged: GNU "
            "Mailutils imap4d's '* n EXPUNGED' as '* n EXPUNGE')",
            "kind",
        )
        self.expunged_rewritten = self.rewritten.labels("expunged")
        self.move_seconds = histogram(
            "move_duration_seconds", "Time from a MOVE's start upstream to its tagged reply"
        )
        self.move_lock_wait = histogram(
            "move_lock_wait_seconds",
            "Time a MOVE waited for its mailbox's lock (timeouts not included)",
            (0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.move_lock_errors = counter(
            "move_lock_errors",
            "Commands to the shared MOVE lock service (move_lock) that failed or timed out, "
            "and leases lost before their MOVE ended",
        )
        self.move_lock_timeouts = counter(
            "move_lock_timeouts",
            "MOVEs refused because another MOVE held their mailbox's lock past move_lock_timeout",
        )
        self.upstream_errors = counter(
            "upstream_connect_errors", "Failed connections to the upstream"
        )
        self.upstream_seconds = histogram(
            "upstream_connect_seconds", "Time to connect to the upstream (and set up TLS)"
        )
        self.journal_errors = counter(
            "journal_errors",
            "Journal reads and writes that failed (the MOVE went on without its entry, or was "
            "refused: journal_unavailable)",
        )
        self.journal_recoveries = counter(
            "journal_recoveries",
            "Unfinished MOVE chunks found in the journal at a user's login, by what recovery "
            "did (finished, nothing: never copied, undone: partial copies removed, kept: left "
            "for an operator, unreadable)",
            "outcome",
        )
        self.journal_pending = Gauge(
            PREFIX + "journal_pending_entries",
            "Journal entries of this upstream: MOVEs running now, and unfinished ones",
            registry=self.registry,
        )
        self.journal_oldest = Gauge(
            PREFIX + "journal_oldest_entry_seconds",
            "Age of the oldest journal entry of this upstream (0: none)",
            registry=self.registry,
        )
        for outcome in ("finished", "nothing", "undone", "kept", "unreadable"):
            self.journal_recoveries.labels(outcome)
        # The series alerts watch exist from the start, at 0: the first increment then shows
        # as an increase (deploy/prometheus/alerts.yaml).
        for result in ("done", "failed", "impossible"):
            self.rollbacks.labels(result)
        self.rejected.labels("limit")

    def _counter(self, name: str, text: str, *labels: str) -> Counter:
        return Counter(PREFIX + name, text, labels, registry=self.registry)

    def _histogram(
        self, name: str, text: str, buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS
    ) -> Histogram:
        return Histogram(PREFIX + name, text, buckets=buckets, registry=self.registry)

    def move_done(self, move: FinishedMove, seconds: float | None, backend: str = "") -> None:
        """Count a finished MOVE; ``seconds`` is None for one simply passed to the upstream;
        ``backend``: its backend's name in routing mode."""
        self.moves.labels(move.policy, move.outcome).inc()
        if backend:
            self.backend_moves.labels(backend, move.outcome).inc()
        if move.outcome.endswith("-failed"):
            self.move_failures.labels(move.outcome.removesuffix("-failed")).inc()
        if move.rollback:
            self.rollbacks.labels(move.rollback).inc()
        self.duplicates.inc(move.duplicates)
        self.expunge_retries.inc(move.expunge_retries)
        if move.flags:
            self.copy_flags.labels(move.flags).inc()
        if seconds is not None:
            self.move_seconds.observe(seconds)


Probe = Callable[[], Awaitable[bool]]


async def serve_http(
    listeners: list[trio.SocketListener], metrics: Metrics, alive: Probe, ready: Probe
) -> None:
    """GET /metrics, /healthz (the process answers) and /readyz (able to serve clients)."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
                parts = request.split(b" ", 2)
                path = parts[1] if len(parts) > 1 else b""
                status, body, kind = await _respond(path, metrics, alive, ready)
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                await stream.send_all(head.encode() + body)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)


async def _respond(
    path: bytes, metrics: Metrics, alive: Probe, ready: Probe
) -> tuple[str, bytes, str]:
    if path == b"/metrics":
        for refresh in metrics.before_scrape:
            refresh()
        return "200 OK", generate_latest(metrics.registry), CONTENT_TYPE_LATEST
    for name, probe in ((b"/healthz", alive), (b"/readyz", ready)):
        if path == name:
            if await probe():
                return "200 OK", b"ok\n", "text/plain"
            return "503 Service Unavailable", b"not ready\n", "text/plain"
    return "404 Not Found", b"not found\n", "text/plain"
