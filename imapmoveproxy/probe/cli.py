"""``imapmoveproxy probe``'s command line, and one run: the capability check, then the
self-test if a user was given."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import trio

from ..config import Config, ConfigError, add_upstream_arguments, build, merged_values
from ..move.request import Policy
from ..shell.server import Proxy
from ..wire.capabilities import Capabilities
from . import judge
from .report import CAVEATS, FAILS, WORKS, Report
from .selftest import SelfTest
from .session import ERRORS, Session, failure

PASSWORD_VARIABLE = "IMAP_PROBE_PASSWORD"
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
        except ERRORS as exc:
            self.report.add(FAILS, failure(exc))
        return self.report

    async def _run(self) -> None:
        client = await self.connect()
        report = self.report
        try:
            report.greeting = (await client.greeting()).decode("ascii", "replace")
            self._describe(client.caps, "before login")
            report.findings += judge.tls(client.caps, self.config.upstream_tls)
            if self._user is not None:
                await client.login(self._user, self.password)
                self._describe(client.caps, "after login")
        finally:
            await client.aclose()
        policy = judge.policy(client.caps, self.config.no_uidplus)
        report.findings += judge.policy_findings(policy)
        if self._user is None:
            report.add(
                WORKS,
                f"capabilities only: add --user and {PASSWORD_VARIABLE} or "
                "--password-file for a live self-test",
            )
        elif policy is Policy.REFUSED:
            report.add(CAVEATS, "self-test skipped: the proxy would not offer MOVE")
        else:
            await SelfTest(
                self.proxy, report, self.connect, self._user, self.password, self.timeout
            ).run()

    async def connect(self) -> Session:
        """A direct session with the upstream, opened the way the proxy opens one."""
        loopback = ("127.0.0.1", 0)
        with trio.fail_after(self.config.connect_timeout):
            stream, greeting = await self.proxy.backends[""].open((loopback, loopback))
        return Session(stream, self.timeout, greeting)

    def _describe(self, caps: Capabilities, when: str) -> None:
        """Fill in the capabilities that matter and the policy they call for."""
        report = self.report
        report.capabilities_from = when
        report.capabilities = judge.features(caps, self.config.upstream_tls)
        policy = judge.policy(caps, self.config.no_uidplus)
        report.policy, report.policy_text = policy.value, judge.POLICIES[policy]


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
    parser.add_argument("--backend", help="with backends configured: the one to probe")
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


def probe_configs(args: dict[str, object], environ: Mapping[str, str]) -> dict[str, Config]:
    """The proxy's configuration for each upstream to probe, listening on 127.0.0.1 port 0
    only: the one upstream (named ""), or the backends of routing mode (``--backend``: one)."""
    backend = args.pop("backend")
    values = merged_values(args, environ)
    for key in _CLIENT_SIDE:
        values.pop(key, None)
    values["listen"] = "127.0.0.1:0"
    config = build(values)
    if not config.backends:
        if backend is not None:
            raise ConfigError("--backend: only with backends in the configuration")
        return {"": config}
    if backend is None:
        return dict(config.backends)
    if backend not in config.backends:
        raise ConfigError(f"--backend: not a backend: one of {', '.join(config.backends)}")
    return {str(backend): config.backends[str(backend)]}


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
        configs = probe_configs(args, environ)
        probes = {
            name: Probe(config, user, password or "", timeout) for name, config in configs.items()
        }
    except (ConfigError, OSError) as exc:
        print(f"imapmoveproxy probe: configuration error: {exc}", file=sys.stderr)
        return FAILS
    status = 0
    for name, probe in probes.items():  # routing mode: each backend in turn
        report = trio.run(probe.run)
        if as_json:  # each backend's report, one after the other
            data = {"backend": name, **json.loads(report.as_json())} if name else None
            print(json.dumps(data, indent=2) if data else report.as_json())
        else:
            print(f"backend {name}:\n" if name else "", report.as_text(), sep="", end="")
        status = max(status, report.status)
    return status
