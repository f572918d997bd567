"""A TCP proxy between members and brokers that cuts them apart on command.

One :class:`Proxy` listens on one loopback port per Kafka node and forwards each
connection to that node's upstream address. The cluster advertises the proxy's ports
on a listener of their own (``ApacheKafka(extra_listeners=...)``), so a client that
bootstraps through the proxy is told the proxy's ports for every node (metadata,
coordinator look-ups) and all of its traffic goes through it; other clients use the
cluster's own listener directly.

- :meth:`Proxy.blackhole`: stop forwarding in both directions while every socket stays
  open, as a network partition does: requests and answers wait (in the proxy and the
  kernel's buffers), new connections are accepted but not connected upstream;
- :meth:`Proxy.heal`: forward again; what waited is delivered (late, as TCP
  retransmissions are after a partition heals);
- :meth:`Proxy.reset`: abort every open connection (a TCP RST to both ends).

The proxy runs its own asyncio event loop in a daemon thread, so that scenarios,
which are synchronous, drive it with plain calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

HOST = "127.0.0.1"
CHUNK = 65536


class Proxy:
    """Loopback TCP proxy: port ``i`` forwards to ``upstreams[i]`` (set them before
    the first connection; see :meth:`set_upstreams`)."""

    def __init__(self, ports: int) -> None:
        self.count = ports
        self.ports: list[int] = []
        self.upstreams: list[tuple[str, int] | None] = [None] * ports
        self.connections = 0  # accepted since the start
        self.forwarded = 0  # bytes forwarded, both directions
        self._open = asyncio.Event()
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.Server] = []
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    # -- life -------------------------------------------------------------------------

    def start(self) -> Proxy:
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name="rely-proxy", daemon=True
        )
        self._thread.start()
        ready.result(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def addresses(self) -> list[str]:
        """The proxy's ``host:port`` per node: what the cluster advertises for it."""
        return [f"{HOST}:{port}" for port in self.ports]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(self.addresses)

    def set_upstreams(self, addresses: Sequence[str]) -> None:
        """Where each port forwards to (``host:port`` per node)."""
        if len(addresses) != self.count:
            raise ValueError(f"{self.count} upstream addresses needed, got {len(addresses)}")
        for i, address in enumerate(addresses):
            host, port = address.rsplit(":", 1)
            self.upstreams[i] = (host, int(port))

    # -- faults -----------------------------------------------------------------------

    @property
    def blackholed(self) -> bool:
        return not self._open.is_set()

    def blackhole(self) -> None:
        """Stop forwarding (both directions, every connection); sockets stay open."""
        self._call(self._open.clear)

    def heal(self) -> None:
        """Forward again, and what waited."""
        self._call(self._open.set)

    def reset(self) -> int:
        """Abort every open connection with a RST to both ends; how many there were."""
        done: Future[int] = Future()

        def abort_all() -> None:
            count = 0
            for client, upstream in list(self._conns):
                count += 1
                for writer in (client, upstream):
                    if writer is not None:
                        _abort(writer)
            self._conns.clear()
            done.set_result(count)

        self._call(abort_all)
        return done.result(10)

    def open_connections(self) -> int:
        return len(self._conns)

    def _call(self, fn: Any) -> None:
        assert self._loop is not None, "the proxy is not started"
        self._loop.call_soon_threadsafe(fn)

    # -- the loop -----------------------------------------------------------------------

    def _main(self, ready: Future[None]) -> None:
        asyncio.run(self._serve(ready))

    async def _serve(self, ready: Future[None]) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            self._open.set()
            for index in range(self.count):
                server = await asyncio.start_server(
                    functools.partial(self._connection, index), HOST, 0
                )
                self._servers.append(server)
                self.ports.append(server.sockets[0].getsockname()[1])
        except BaseException as exc:
            ready.set_exception(exc)
            raise
        ready.set_result(None)
        await self._stopped.wait()
        for server in self._servers:
            server.close()
        for client, upstream in list(self._conns):
            for writer in (client, upstream):
                if writer is not None:
                    _abort(writer)

    async def _connection(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        entry: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._conns.add(entry)
        try:
            await self._open.wait()  # a partition: the connection is not made upstream
            target = self.upstreams[index]
            if target is None:
                raise ConnectionError(f"no upstream for proxy port {index}")
            up_reader, up_writer = await asyncio.open_connection(*target)
        except (OSError, ConnectionError):
            self._conns.discard(entry)
            _abort(writer)
            return
        self._conns.discard(entry)
        entry = (writer, up_writer)
        self._conns.add(entry)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._conns.discard(entry)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy until EOF; while blackholed, hold the data (and so stop reading)."""
        try:
            while True:
                data = await reader.read(CHUNK)
                await self._open.wait()
                if not data:
                    break
                self.forwarded += len(data)  # before the peer can see it
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, ConnectionError):
            _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
