"""The least a relay written in trio can add to a round trip: the reference the proxy's latency
is explained against (bench/latency.py).

    python bench/trio_relay.py LISTEN_PORT UPSTREAM_HOST:PORT

One task per direction, each waiting until its socket is readable, reading once and writing
what it read (the proxy's own way of reading and writing a plain socket), and nothing else: no
parsing, no bookkeeping. Whatever this adds over HAProxy is trio's and Python's, not the proxy's.
"""

from __future__ import annotations

import functools
import os
import socket
import sys

import trio


async def _pump(source: trio.socket.SocketType, target: trio.socket.SocketType) -> None:
    read_fd, write_fd = source.fileno(), target.fileno()
    while True:
        await trio.lowlevel.wait_readable(source)
        try:
            data = os.read(read_fd, 65536)
        except BlockingIOError:
            continue
        except OSError:
            return
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(write_fd, view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(target)


def main() -> None:
    port = int(sys.argv[1])
    host, upstream_port = sys.argv[2].rsplit(":", 1)

    async def handle(client: trio.SocketStream) -> None:
        upstream = trio.socket.socket()
        with upstream:
            await upstream.connect((host, int(upstream_port)))
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with trio.open_nursery() as nursery:

                async def one_way(
                    source: trio.socket.SocketType, target: trio.socket.SocketType
                ) -> None:
                    await _pump(source, target)
                    nursery.cancel_scope.cancel()  # either side gone: the connection ends

                nursery.start_soon(one_way, client.socket, upstream)
                nursery.start_soon(one_way, upstream, client.socket)

    trio.run(functools.partial(trio.serve_tcp, handle, port, host="127.0.0.1"))


if __name__ == "__main__":
    main()
