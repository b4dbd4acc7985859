"""Command line entry point: ``imapmoveproxy --listen HOST:PORT --upstream HOST:PORT``."""

from __future__ import annotations

import logging
import ssl
import sys

import trio

from .config import ConfigError, from_arguments
from .server import Proxy


class _ConnectionFilter(logging.Filter):
    """Give every record a connection id so the format can always show one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "conn"):
            record.conn = "-"
        return True


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ConnectionFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(conn)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main(argv: list[str] | None = None) -> int:
    try:
        config = from_arguments(argv)
    except ConfigError as exc:
        print(f"imapmoveproxy: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        proxy = Proxy(config)
    except (OSError, ssl.SSLError) as exc:  # unreadable or mismatched certificate and key
        key = "tls_cert" if config.tls_cert else "upstream_client_cert"
        print(f"imapmoveproxy: configuration error: {key}: cannot load: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(proxy.serve)
    except OSError as exc:
        logging.getLogger("imapmoveproxy").error("cannot listen: %s", exc)
        return 1
    return 0
