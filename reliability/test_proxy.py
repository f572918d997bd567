"""The proxy on a loopback echo server: it forwards, a blackhole holds the traffic
with the connection open, a heal delivers what waited, a reset aborts connections."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from .proxy import Proxy

pytestmark = pytest.mark.chaos_quick


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with Proxy(2) as proxy:
        port = server.server_address[1]
        proxy.set_upstreams([f"127.0.0.1:{port}"] * 2)
        yield proxy
    server.shutdown()
    server.server_close()


def _connect(proxy: Proxy, index: int = 0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.ports[index]), timeout=5)
    sock.settimeout(5)
    return sock


def _settle(proxy: Proxy) -> None:
    time.sleep(0.2)  # the proxy's thread applies a command asynchronously


def test_it_forwards_on_every_port(proxy: Proxy) -> None:
    for index in range(2):
        with _connect(proxy, index) as sock:
            sock.sendall(b"hello")
            assert sock.recv(100) == b"hello"
    assert proxy.connections == 2
    assert proxy.forwarded >= 20


def test_a_blackhole_holds_traffic_with_the_socket_open_and_a_heal_delivers_it(
    proxy: Proxy,
) -> None:
    with _connect(proxy) as sock:
        sock.sendall(b"before")
        assert sock.recv(100) == b"before"
        proxy.blackhole()
        _settle(proxy)
        sock.sendall(b"during")
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # no answer, and no EOF or reset either
        late = _connect(proxy)  # a new connection is accepted, but goes nowhere
        late.sendall(b"late")
        late.settimeout(1.0)
        with pytest.raises(TimeoutError):
            late.recv(100)
        proxy.heal()
        sock.settimeout(5)
        late.settimeout(5)
        assert sock.recv(100) == b"during"
        assert late.recv(100) == b"late"
        late.close()


def test_a_reset_aborts_open_connections(proxy: Proxy) -> None:
    with _connect(proxy) as sock:
        sock.sendall(b"x")
        assert sock.recv(10) == b"x"
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    with _connect(proxy) as sock:  # new connections work
        sock.sendall(b"z")
        assert sock.recv(10) == b"z"
