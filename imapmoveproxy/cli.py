"""Command line entry point: ``imapmoveproxy --listen HOST:PORT --upstream HOST:PORT``."""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys

import trio

from . import journal_cli, probe
from .config import ConfigError, from_arguments
from .shell.server import Proxy


class _ConnectionFilter(logging.Filter):
    """Give every record a connection id so the format can always show one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "conn"):
            record.conn = "-"
        return True


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "conn": getattr(record, "conn", "-"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ConnectionFilter())
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(conn)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        return probe.main(argv[1:], os.environ)
    if argv[:1] == ["journal"]:
        return journal_cli.main(argv[1:], os.environ)
    try:
        config, check_only = from_arguments(argv, os.environ)
    except ConfigError as exc:
        print(f"imapmoveproxy: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    try:
        proxy = Proxy(config, reload=lambda: from_arguments(argv, os.environ)[0])
    except (OSError, ssl.SSLError) as exc:  # unreadable or mismatched certificate and key
        key = "tls_cert" if config.tls_cert else "upstream_client_cert"
        print(f"imapmoveproxy: configuration error: {key}: cannot load: {exc}", file=sys.stderr)
        return 2
    if check_only:
        print("imapmoveproxy: configuration OK")
        return 0
    try:
        trio.run(proxy.serve)
    except OSError as exc:
        logging.getLogger("imapmoveproxy").error("cannot listen: %s", exc)
        return 1
    return 0
