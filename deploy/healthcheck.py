"""Container health check for imapmoveproxy (stdlib only; the image runs it as HEALTHCHECK).

    python healthcheck.py [TARGET] [--timeout SECONDS]

TARGET is what to probe, 127.0.0.1:143 by default:

* ``HOST:PORT`` (IPv6 as ``[::1]:143``): connect to the proxy's IMAP listener and read the
  greeting line. ``* OK`` and ``* BYE`` both mean healthy: the proxy accepted the connection
  and answered (``* BYE [UNAVAILABLE]`` is the proxy saying its upstream is down, which a
  restart of the proxy would not cure). Anything else, or no greeting within the timeout, is
  unhealthy. Each probe is one short client connection, so the proxy opens (and at once
  closes) one upstream connection per probe.
* ``http://HOST:PORT/PATH``: GET it and expect a 2xx status. For the metrics/health endpoint
  the proxy does not have yet; switching the image over is a change of this argument only.

Exit status 0 means healthy, 1 unhealthy (Docker's HEALTHCHECK convention); the reason is
printed on one line.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.request

DEFAULT_TARGET = "127.0.0.1:143"
DEFAULT_TIMEOUT = 5.0
MAX_GREETING = 8192


def split_address(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT or http://..., got {target!r}")
    return host, int(port)


def check_imap(target: str, timeout: float) -> str:
    """Return the greeting line if it is ``* OK`` or ``* BYE``; raise OSError otherwise."""
    with socket.create_connection(split_address(target), timeout=timeout) as sock:
        sock.settimeout(timeout)
        data = b""
        while b"\r\n" not in data and len(data) < MAX_GREETING:
            chunk = sock.recv(MAX_GREETING - len(data))
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0]
    if b"\r\n" not in data or not line.upper().startswith((b"* OK", b"* BYE")):
        raise OSError(f"no IMAP greeting from {target}: {data[:200]!r}")
    return line.decode("utf-8", "replace")


def check_http(url: str, timeout: float) -> str:
    """Return the status line if GET ``url`` answers 2xx; raise OSError otherwise."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        status: int = response.status
    if not 200 <= status < 300:
        raise OSError(f"{url}: HTTP {status}")
    return f"HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="imapmoveproxy container health check")
    parser.add_argument("target", nargs="?", default=DEFAULT_TARGET)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = parser.parse_args(argv)
    target: str = args.target
    try:
        if target.startswith(("http://", "https://")):
            result = check_http(target, args.timeout)
        else:
            result = check_imap(target, args.timeout)
    except (OSError, ValueError) as exc:  # urllib's errors are OSErrors
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(f"healthy: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
