"""A TCP relay between the proxy and a real server that kills the proxy at a chosen step.

The relay passes every byte through unchanged. It reads the proxy's command lines to learn the
tag of the first command of the kind it watches (``UID COPY``, the ``UID STORE ... +FLAGS``
that flags the moved messages, the expunge), and then, by the point asked for:

* ``"copy"`` / ``"store"``: SIGKILLs the proxy as soon as the server's tagged OK to that command
  arrives, before the proxy can read it: the server has done the step, the proxy never learns.
* ``"expunge"``: SIGKILLs the proxy right after the expunge command has gone to the server.
* ``"nth"``: SIGKILLs it when the proxy sends its ``count``-th command of any kind (random
  moments of a long MOVE).

Nothing here imitates a server: the server is real, and only the proxy's death is arranged.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import threading
from collections.abc import Callable

from servers import HOST

_TAGGED = re.compile(rb"^(\S+) (OK|NO|BAD)\b", re.IGNORECASE)
_WATCHED = {
    "copy": re.compile(rb"^(\S+) UID COPY ", re.IGNORECASE),
    "store": re.compile(rb"^(\S+) UID STORE \S+ \+FLAGS\.SILENT \(\\Deleted\)", re.IGNORECASE),
    "expunge": re.compile(rb"^(\S+) (?:UID )?EXPUNGE\b", re.IGNORECASE),
}


class KillSwitch:
    """Listens on 127.0.0.1 (:attr:`address`) and relays each connection to ``upstream``."""

    def __init__(self, upstream: tuple[str, int], kill: Callable[[], None]) -> None:
        self._upstream = upstream
        self._kill = kill
        self._point: str | None = None  # disarmed: relay only
        self._count = 0
        self.fired = threading.Event()
        self._listener = socket.create_server((HOST, 0))
        self.address = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def rearm_kill(self, kill: Callable[[], None]) -> None:
        """Kill another process the next time the switch fires (a proxy started after it)."""
        self._kill = kill

    def arm(self, point: str, count: int = 0) -> None:
        """Kill the proxy at ``point`` ("copy", "store", "expunge" or "nth" with ``count``)."""
        self._point, self._count = point, count
        self.fired.clear()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(10)

    def __enter__(self) -> KillSwitch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, proxy_side: socket.socket) -> None:
        server_side = socket.create_connection(self._upstream, 10)
        watched_tag: list[bytes] = []  # the tag whose tagged OK fires "copy"/"store"
        buffers = {proxy_side: b"", server_side: b""}
        peer = {proxy_side: server_side, server_side: proxy_side}
        with contextlib.ExitStack() as stack, selectors.DefaultSelector() as selector:
            stack.enter_context(proxy_side)
            stack.enter_context(server_side)
            for sock in (proxy_side, server_side):
                sock.setblocking(True)
                selector.register(sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(0.2):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffers[sock] += data
                    *lines, buffers[sock] = buffers[sock].split(b"\n")
                    out = b""
                    for line in lines:
                        line += b"\n"
                        if sock is proxy_side:
                            out += line
                            if self._command(line, watched_tag):
                                peer[sock].sendall(out)
                                self._fire()
                                return
                        else:
                            match = _TAGGED.match(line)
                            if watched_tag and match and match.group(1) == watched_tag[0]:
                                peer[sock].sendall(out)  # everything before the OK
                                self._fire()
                                return
                            out += line
                    peer[sock].sendall(out)  # a partial line waits for its end

    def _command(self, line: bytes, watched_tag: list[bytes]) -> bool:
        """Note a command line of the proxy's; whether the proxy dies right after it."""
        point = self._point
        if point is None or self.fired.is_set():
            return False
        if point == "nth":
            if re.match(rb"^imp\d+ ", line):
                self._count -= 1
                return self._count <= 0
            return False
        match = _WATCHED[point].match(line)
        if match is None or watched_tag:
            return False
        if point == "expunge":
            return True
        watched_tag.append(match.group(1))
        return False

    def _fire(self) -> None:
        if not self.fired.is_set():
            self.fired.set()
            self._point = None
            self._kill()
