"""Apache Kafka from Maven Central: real KRaft nodes in subprocesses, no Docker.

Each node is one ``java ... kafka.Kafka server.properties`` process acting as broker
and controller, with a freshly formatted data directory under the system's
temporary directory and two free loopback ports (client and controller). What is
guaranteed about clean-up:

- :meth:`ApacheKafka.stop` (also on leaving ``async with`` by an exception or a
  cancellation, which is shielded) stops every node (SIGTERM, then SIGKILL after a
  timeout) and removes the data directory;
- at interpreter exit (``atexit``) running clusters are stopped the same way;
- on Linux, a node gets SIGKILL when the Python process dies, however it dies
  (``PR_SET_PDEATHSIG``; nodes are spawned from one long-lived thread, so the
  thread that called ``start`` may end). A data directory left by a killed process
  is removed by the next ``ApacheKafka`` start on the machine.
"""

from __future__ import annotations

import atexit
import base64
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import anyio

from .._security import SASL, TLS, SaslMechanism, Security
from ._broker import create_topic
from ._jars import DEFAULT_VERSION, ApacheKafkaUnavailableError, check_java, resolve_jars
from ._tls import CertificateFiles, make_certificates

__all__ = [
    "QUICK_JVM_OPTIONS",
    "ApacheKafka",
    "ApacheKafkaUnavailableError",
    "BrokerSecurity",
    "cluster_id",
    "node_properties",
    "security_properties",
]

log = logging.getLogger("asyncconsumer.testing")

HOST = "127.0.0.1"
DIR_PREFIX = "asyncconsumer-kafka-"
HEAP = ("-Xms256m", "-Xmx512m")
# The JVM options of test and development nodes: the client JIT only (C1) and the serial
# collector. A node then starts in about a third of the time and half the CPU (a 3-node
# cluster: 18 s of CPU instead of 35 s, measured on a loaded 2-core VM), which is what a
# test suite waits on; its throughput is lower, which tests do not reach. Benchmarks pass
# ``jvm_options=()`` for the JVM's defaults (C2, G1).
QUICK_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
PORT_ATTEMPTS = 3


def cluster_id() -> str:
    """A random cluster id as ``kafka-storage random-uuid`` makes one: 16 bytes in
    unpadded URL-safe base64 (22 characters), never starting with ``-``."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def node_properties(
    index: int,
    ports: Sequence[tuple[int, int]],
    log_dir: str | os.PathLike[str],
    extra_listeners: Mapping[str, tuple[int, str]] | None = None,
) -> dict[str, str]:
    """``server.properties`` of node ``index`` (node id ``index + 1``) of a cluster
    whose nodes listen on ``ports`` (``(client, controller)`` each); every node is
    broker and controller. Settings are Kafka's defaults except what makes tests
    fast and a small cluster consistent: replication of the internal topics and the
    default replication factor equal to the node count (min ISR 2 from 3 nodes), no
    initial rebalance delay, session timeouts down to 1 s, a small cleaner buffer,
    share-group heartbeats every second and record locks down to 1 s.

    ``extra_listeners``: more PLAINTEXT listeners of this node, by name, each
    ``(port, advertised "host:port")``; clients that bootstrap through one of them
    are given the advertised addresses of that listener on every node."""
    nodes = len(ports)
    port, controller_port = ports[index]
    extra = dict(extra_listeners or {})
    listeners = [f"PLAINTEXT://{HOST}:{port}", f"CONTROLLER://{HOST}:{controller_port}"]
    listeners += [f"{name}://{HOST}:{own}" for name, (own, _) in extra.items()]
    advertised = [f"PLAINTEXT://{HOST}:{port}"]
    advertised += [f"{name}://{address}" for name, (_, address) in extra.items()]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    protocols += [f"{name}:PLAINTEXT" for name in extra]
    replicas = str(nodes)
    min_isr = "2" if nodes >= 3 else "1"
    voters = ",".join(f"{i + 1}@{HOST}:{c}" for i, (_, c) in enumerate(ports))
    props = {
        "process.roles": "broker,controller",
        "node.id": str(index + 1),
        "controller.quorum.voters": voters,
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": ",".join(protocols),
        "log.dirs": str(log_dir),
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "share.coordinator.state.topic.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        "group.consumer.min.session.timeout.ms": "1000",
        "group.consumer.min.heartbeat.interval.ms": "500",
        "log.cleaner.dedupe.buffer.size": "2097152",
        # Share groups (KIP-932) are on by default from Kafka 4.2 (feature share.version=1
        # at format time). Test settings: heartbeats every second (an assignment reaches
        # a member in about a second, not 5), a member that stops heartbeating is gone
        # after 6 s, and a group may set acquisition locks down to 1 s
        # (group config share.record.lock.duration.ms; the default stays 30 s).
        "group.share.min.heartbeat.interval.ms": "500",
        "group.share.heartbeat.interval.ms": "1000",
        "group.share.min.session.timeout.ms": "1000",
        "group.share.session.timeout.ms": "6000",
        "group.share.min.record.lock.duration.ms": "1000",
        "auto.create.topics.enable": "true",
    }
    if nodes > 1:
        # A dead node is fenced (its partitions move) after 3 s instead of 9 s.
        props["broker.heartbeat.interval.ms"] = "500"
        props["broker.session.timeout.ms"] = "3000"
    return props


SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
# What kafka-storage's --add-scram and a JAAS line can carry without quoting.
_PLAIN_TEXT = re.compile(r"^[A-Za-z0-9._~!@#$%^&*()+\-]+$")


@dataclass(frozen=True, repr=False)
class BrokerSecurity:
    """The secured listeners of an :class:`ApacheKafka` node, beside its plaintext one:

    - ``SASL_SSL``: TLS with a throw-away CA's broker certificate (valid for
      ``127.0.0.1`` and ``localhost``), then SASL ``SCRAM-SHA-512``, ``SCRAM-SHA-256``
      (users created when the node is formatted) or ``PLAIN``, for every one of
      ``users`` (name: password);
    - ``SSL`` with client authentication required (mutual TLS): a client certificate
      signed by the same CA (see :attr:`ApacheKafka.certificates`).

    There is no authorizer: every authenticated user may do everything. For tests and
    local trials only. User names and passwords are limited to letters, digits and
    ``._~!@#$%^&*()+-``.
    """

    users: Mapping[str, str] = field(default_factory=lambda: {"alice": "alice-secret"})

    def __post_init__(self) -> None:
        if not self.users:
            raise ValueError("BrokerSecurity needs at least one user")
        for name, password in self.users.items():
            if not _PLAIN_TEXT.match(name) or not _PLAIN_TEXT.match(password):
                raise ValueError(
                    f"BrokerSecurity user {name!r}: names and passwords may hold letters, "
                    "digits and ._~!@#$%^&*()+- only"
                )

    def __repr__(self) -> str:
        return f"BrokerSecurity(users={sorted(self.users)!r})"  # names, never passwords

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create the SCRAM users."""
        return [
            argument
            for name, password in self.users.items()
            for mechanism in SCRAM_MECHANISMS
            for argument in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
        ]


def security_properties(
    base: Mapping[str, str],
    sasl_port: int,
    ssl_port: int,
    security: BrokerSecurity,
    certificates: CertificateFiles,
) -> dict[str, str]:
    """What a node with :class:`BrokerSecurity` adds to its :func:`node_properties`
    (``base``): the ``SASL_SSL`` and ``SSL`` (mutual TLS) listeners, beside the others."""
    plain_users = " ".join(f'user_{name}="{password}"' for name, password in security.users.items())
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    secured = f"SASL_SSL://{HOST}:{sasl_port},SSL://{HOST}:{ssl_port}"
    props = {
        "listeners": f"{base['listeners']},{secured}",
        "advertised.listeners": f"{base['advertised.listeners']},{secured}",
        "listener.security.protocol.map": (
            f"{base['listener.security.protocol.map']},SASL_SSL:SASL_SSL,SSL:SSL"
        ),
        "sasl.enabled.mechanisms": ",".join([*SCRAM_MECHANISMS, "PLAIN"]),
        "listener.name.sasl_ssl.plain.sasl.jaas.config": (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(certificates.broker_file),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(certificates.ca_file),
        "listener.name.ssl.ssl.client.auth": "required",
    }
    for mechanism in SCRAM_MECHANISMS:
        props[f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"] = scram
    return props


def _escape(value: str) -> str:
    """A ``.properties`` value as Java reads it back (backslashes are escapes)."""
    return value.replace("\\", "\\\\")


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale_dirs() -> None:
    """Remove data directories whose creating process is gone (it was killed)."""
    for path in Path(tempfile.gettempdir()).glob(DIR_PREFIX + "*"):
        match = re.match(re.escape(DIR_PREFIX) + r"(\d+)-", path.name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


# -- spawning: one long-lived thread, so PR_SET_PDEATHSIG ties nodes to the process --

_spawn_queue: queue.SimpleQueue[
    tuple[Callable[[], subprocess.Popen[bytes]], concurrent.futures.Future[subprocess.Popen[bytes]]]
] = queue.SimpleQueue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _death_signal() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # in the child, between fork and exec
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec


def _spawn_loop() -> None:
    while True:
        make, future = _spawn_queue.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(make())
            except BaseException as exc:
                future.set_exception(exc)


def _spawn(command: list[str], out: IO[bytes]) -> subprocess.Popen[bytes]:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(
                target=_spawn_loop, daemon=True, name="asyncconsumer-kafka-spawner"
            )
            _spawner.start()
    future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
    preexec = _death_signal()

    def make() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C to the terminal goes to Python, not here
            preexec_fn=preexec,
        )

    _spawn_queue.put((make, future))
    return future.result()


_running: set[ApacheKafka] = set()  # strong: a forgotten cluster is still stopped at exit


@atexit.register
def _stop_all_at_exit() -> None:
    for cluster in list(_running):
        cluster.stop(grace=5.0)


@dataclass
class _Node:
    index: int
    port: int
    controller_port: int
    directory: Path
    sasl_port: int | None = None
    ssl_port: int | None = None
    extra_ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    out: IO[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "kafka.log"

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"

    def reap(self, grace: float) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL (blocking)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.out is not None:
            self.out.close()
            self.out = None


class ApacheKafka:
    """Apache Kafka (KRaft; ``nodes`` combined broker+controller processes) on free
    loopback ports, for tests and local development.

    ::

        async with ApacheKafka() as kafka:            # or nodes=3 for fail-over tests
            await kafka.create_topic("orders", partitions=4)
            app = ConsumerApp(bootstrap_servers=kafka.bootstrap_servers, group_id="g")

    The jars are resolved with Maven the first time (see ``_jars``). ``properties``
    override or add broker settings on every node. ``extra_listeners`` adds named
    PLAINTEXT listeners to every node, each advertised at the addresses given (one
    per node, in node order): a client that bootstraps through a listener is given
    that listener's advertised addresses of every node, so a proxy in front of the
    cluster lists its own ports there (:meth:`listener_address` gives the port each
    node really listens on, for the proxy to forward to). ``jvm_options`` go to every Java
    process after the heap settings (default :data:`QUICK_JVM_OPTIONS`: quick starts,
    little CPU; ``()`` for the JVM's defaults). ``start()``/``stop()`` (or
    ``with``) block, for scripts. Raises :class:`ApacheKafkaUnavailableError` when
    Java or Maven is missing or too old, resolution fails, or a node does not start.

    ``security`` (a :class:`BrokerSecurity`) adds a ``SASL_SSL`` listener (SCRAM and
    PLAIN users) and a mutual-TLS ``SSL`` listener to every node, with throw-away
    certificates; :attr:`sasl_ssl_bootstrap_servers`, :attr:`ssl_bootstrap_servers`,
    :attr:`certificates`, :meth:`sasl_security` and :meth:`mtls_security` are what a
    client needs for them::

        async with ApacheKafka(security=BrokerSecurity(users={"alice": "pw"})) as kafka:
            app = ConsumerApp(
                bootstrap_servers=kafka.sasl_ssl_bootstrap_servers,
                security=kafka.sasl_security("alice"),
                group_id="g",
            )
    """

    def __init__(
        self,
        nodes: int = 1,
        version: str = DEFAULT_VERSION,
        *,
        properties: Mapping[str, str] | None = None,
        startup_timeout: float = 120.0,
        log_level: str = "WARN",
        jvm_options: Sequence[str] = QUICK_JVM_OPTIONS,
        security: BrokerSecurity | None = None,
        extra_listeners: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"nodes must be >= 1, not {nodes}")
        self.extra_listeners = {
            name: list(addresses) for name, addresses in (extra_listeners or {}).items()
        }
        for name, addresses in self.extra_listeners.items():
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name) or name in ("PLAINTEXT", "CONTROLLER"):
                raise ValueError(
                    f"extra listener name {name!r}: upper-case letters, digits and _, "
                    "other than PLAINTEXT and CONTROLLER"
                )
            if len(addresses) != nodes:
                raise ValueError(
                    f"extra listener {name!r} needs one advertised address per node "
                    f"({nodes}), got {len(addresses)}"
                )
        self.nodes = nodes
        self.version = version
        self.properties = dict(properties or {})
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.jvm_options = tuple(jvm_options)
        self.security = security
        self._certificates: CertificateFiles | None = None
        self.start_seconds: float | None = None  # how long the last start took, jars excluded
        self._nodes: list[_Node] = []
        self._base: Path | None = None
        self._command: list[str] = []

    # -- addresses ----------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """Every node's ``host:port``, comma-separated."""
        if not self._nodes:
            raise RuntimeError("Apache Kafka is not running")
        return ",".join(node.address for node in self._nodes)

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        """Every node's ``SASL_SSL`` listener (``security=`` only), comma-separated."""
        return ",".join(f"{HOST}:{self._secured(node).sasl_port}" for node in self._running())

    @property
    def ssl_bootstrap_servers(self) -> str:
        """Every node's mutual-TLS ``SSL`` listener (``security=`` only), comma-separated."""
        return ",".join(f"{HOST}:{self._secured(node).ssl_port}" for node in self._running())

    @property
    def certificates(self) -> CertificateFiles:
        """The CA, broker and client certificate files (``security=`` only): PEM files
        under the cluster's directory, deleted when it stops."""
        if self._certificates is None:
            raise RuntimeError("this ApacheKafka has no security= (or is not running)")
        return self._certificates

    def sasl_security(
        self, username: str | None = None, mechanism: SaslMechanism = "SCRAM-SHA-512"
    ) -> Security:
        """A :class:`~asyncconsumer.Security` for the ``SASL_SSL`` listener: user
        ``username`` (default: the first one) with its password, over TLS that trusts
        the throw-away CA."""
        if self.security is None:
            raise RuntimeError("this ApacheKafka has no security=")
        name = username if username is not None else next(iter(self.security.users))
        if name not in self.security.users:
            raise KeyError(f"no user {name!r} in this ApacheKafka's BrokerSecurity")
        return Security(
            sasl=SASL(name, self.security.users[name], mechanism),
            tls=TLS(cafile=self.certificates.ca_file),
        )

    def mtls_security(self) -> Security:
        """A :class:`~asyncconsumer.Security` for the mutual-TLS ``SSL`` listener: the
        client certificate and key, trusting the throw-away CA."""
        files = self.certificates
        return Security(
            tls=TLS(
                cafile=files.ca_file, certfile=files.client_cert_file, keyfile=files.client_key_file
            )
        )

    def _running(self) -> list[_Node]:
        if not self._nodes:
            raise RuntimeError("Apache Kafka is not running")
        return self._nodes

    def _secured(self, node: _Node) -> _Node:
        if node.sasl_port is None:
            raise RuntimeError("this ApacheKafka has no security=")
        return node

    def node_address(self, index: int) -> str:
        """Node ``index``'s ``host:port`` (its node id is ``index + 1``)."""
        return self._node(index).address

    def listener_address(self, name: str, index: int) -> str:
        """The ``host:port`` node ``index`` listens on for the extra listener ``name``
        (not the advertised address: where a proxy forwards to)."""
        node = self._node(index)
        if name not in node.extra_ports:
            raise KeyError(f"no extra listener {name!r} (extra_listeners=...)")
        return f"{HOST}:{node.extra_ports[name]}"

    def node_log(self, index: int) -> Path:
        """The file that keeps node ``index``'s output (while the cluster runs)."""
        return self._node(index).log_path

    def _node(self, index: int) -> _Node:
        if not self._nodes:
            raise RuntimeError("Apache Kafka is not running")
        return self._nodes[index]

    # -- start ----------------------------------------------------------------------

    def _prepare(self) -> list[list[str]]:
        """Jars, Java, directories, ports, properties; the format commands to run."""
        jars = resolve_jars(self.version)
        java = check_java()
        _sweep_stale_dirs()
        self._base = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
        log4j = self._base / "log4j2.properties"
        log4j.write_bytes(
            resources.files("asyncconsumer.testing")
            .joinpath("kafka/log4j2.properties")
            .read_bytes()
        )
        jvm = [
            java,
            *HEAP,
            *self.jvm_options,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.log.level={self.log_level}",
            "-cp",
            f"{jars}{os.sep}*",
        ]
        names = list(self.extra_listeners)
        secured = 0 if self.security is None else 2
        per_node = 2 + len(names) + secured
        ports = _free_ports(per_node * self.nodes)
        pairs = [(ports[per_node * i], ports[per_node * i + 1]) for i in range(self.nodes)]
        if self.security is not None:
            self._certificates = make_certificates(self._base / "tls")
        cid = cluster_id()
        formats = []
        self._nodes = []
        for index, (port, controller_port) in enumerate(pairs):
            directory = self._base / f"node-{index + 1}"
            (directory / "data").mkdir(parents=True)
            own = {name: ports[per_node * index + 2 + i] for i, name in enumerate(names)}
            extra = {name: (own[name], self.extra_listeners[name][index]) for name in names}
            props = node_properties(index, pairs, directory / "data", extra)
            node = _Node(index, port, controller_port, directory, extra_ports=own)
            scram: list[str] = []
            if self.security is not None:
                assert self._certificates is not None
                first = per_node * index + 2 + len(names)
                node.sasl_port, node.ssl_port = ports[first], ports[first + 1]
                props.update(
                    security_properties(
                        props, node.sasl_port, node.ssl_port, self.security, self._certificates
                    )
                )
                scram = self.security.scram_arguments()
            props.update(self.properties)
            config = directory / "server.properties"
            config.write_text("".join(f"{k}={_escape(v)}\n" for k, v in props.items()))
            config.chmod(0o600)  # it may hold passwords (PLAIN users)
            self._nodes.append(node)
            formats.append(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", cid, "-c", str(config), *scram]
            )
        self._command = [*jvm, "kafka.Kafka"]
        return formats

    def _format(self, commands: list[list[str]]) -> None:
        procs = [
            subprocess.Popen(
                c, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            for c in commands
        ]
        for command, proc in zip(commands, procs, strict=True):
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                text = out.decode(errors="replace").strip()
                shown = (
                    command[: command.index("--add-scram")] if "--add-scram" in command else command
                )
                raise ApacheKafkaUnavailableError(
                    f"formatting a Kafka data directory failed ({' '.join(shown)}):\n{text}"
                )

    def _launch(self, node: _Node) -> None:
        node.out = open(node.log_path, "ab")  # noqa: SIM115 -- closed by _Node.reap
        config = str(node.directory / "server.properties")
        node.proc = _spawn([*self._command, config], node.out)

    def _check(self, nodes: Sequence[_Node], started: float) -> bool:
        """Whether every node listens; raises if one exited or the time is up."""
        for node in nodes:
            assert node.proc is not None
            code = node.proc.poll()
            if code is not None:
                raise ApacheKafkaUnavailableError(
                    f"Apache Kafka node {node.index} ({node.address}) exited with code {code} "
                    f"while starting; the end of its output ({node.log_path}):\n{node.tail()}"
                )
        # Every client listener, not only PLAINTEXT: the secured ones open a moment
        # later, and a test that connected to one right after the start was refused.
        if all(
            _accepts(port)
            for node in nodes
            for port in (node.port, node.sasl_port, node.ssl_port, *node.extra_ports.values())
            if port is not None
        ):
            return True
        if time.monotonic() - started > self.startup_timeout:
            tails = "\n".join(f"-- node {n.index}:\n{n.tail(15)}" for n in nodes)
            raise ApacheKafkaUnavailableError(
                f"Apache Kafka did not listen within {self.startup_timeout:.0f}s:\n{tails}"
            )
        return False

    def _port_taken(self, exc: ApacheKafkaUnavailableError) -> bool:
        """Whether a start failed only because another process took a port we picked
        (between choosing it and Java binding it): then a retry picks new ones."""
        ours = not {"listeners", "controller.quorum.voters"} & self.properties.keys()
        return ours and "Address already in use" in str(exc)

    def start(self) -> None:
        """Resolve, format and start every node; return once all listen (blocking)."""
        if self._nodes:
            raise RuntimeError("Apache Kafka is already running")
        for attempt in range(PORT_ATTEMPTS):
            try:
                formats = self._prepare()
                started = time.monotonic()
                self._format(formats)
                for node in self._nodes:
                    self._launch(node)
                _running.add(self)
                while not self._check(self._nodes, started):
                    time.sleep(0.1)
            except ApacheKafkaUnavailableError as exc:
                self.stop(grace=5.0)
                if attempt + 1 == PORT_ATTEMPTS or not self._port_taken(exc):
                    raise
                continue
            except BaseException:
                self.stop(grace=5.0)
                raise
            self.start_seconds = time.monotonic() - started
            log.info("Apache Kafka %s at %s", self.version, self.bootstrap_servers)
            return

    async def astart(self) -> None:
        """:meth:`start` without blocking the event loop; a cancellation stops what started."""
        if self._nodes:
            raise RuntimeError("Apache Kafka is already running")
        for attempt in range(PORT_ATTEMPTS):
            try:
                formats = await anyio.to_thread.run_sync(self._prepare)
                started = time.monotonic()
                await anyio.to_thread.run_sync(self._format, formats)
                for node in self._nodes:
                    self._launch(node)
                _running.add(self)
                while not self._check(self._nodes, started):  # noqa: ASYNC110 -- polls a port
                    await anyio.sleep(0.1)
            except ApacheKafkaUnavailableError as exc:
                await self.astop(grace=5.0)
                if attempt + 1 == PORT_ATTEMPTS or not self._port_taken(exc):
                    raise
                continue
            except BaseException:
                await self.astop(grace=5.0)  # shielded
                raise
            self.start_seconds = time.monotonic() - started
            log.info("Apache Kafka %s at %s", self.version, self.bootstrap_servers)
            return

    # -- stop -------------------------------------------------------------------------

    def stop(self, grace: float = 10.0) -> None:
        """Stop every node (SIGTERM, SIGKILL after ``grace`` s) and delete the data."""
        _running.discard(self)
        for node in self._nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()  # all at once: they shut down in parallel
        for node in self._nodes:
            node.reap(grace)
        self._nodes = []
        self._certificates = None
        base, self._base = self._base, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)

    async def astop(self, grace: float = 10.0) -> None:
        """:meth:`stop` without blocking the event loop (shielded from cancellation)."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop, grace)

    # -- faults -----------------------------------------------------------------------

    async def stop_node(self, index: int, grace: float = 30.0) -> None:
        """Stop node ``index`` gracefully (SIGTERM; SIGKILL after ``grace`` s); its data stays."""
        await anyio.to_thread.run_sync(self._node(index).reap, grace)

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index`` (a crash); its data stays."""
        node = self._node(index)
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait()
        node.reap(0)

    async def start_node(self, index: int) -> None:
        """Start a stopped node again, with its data and its ports; return once it listens."""
        node = self._node(index)
        if node.proc is not None:
            raise RuntimeError(f"node {index} is running")
        self._launch(node)
        started = time.monotonic()
        while not self._check([node], started):  # noqa: ASYNC110 -- polls a port
            await anyio.sleep(0.1)

    def running(self, index: int) -> bool:
        """Whether node ``index``'s process is alive."""
        proc = self._node(index).proc
        return proc is not None and proc.poll() is None

    # -- topics -----------------------------------------------------------------------

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        replication_factor: int | None = None,
        exist_ok: bool = False,
    ) -> None:
        """Create a topic; replicated on every node unless ``replication_factor`` says less."""
        await create_topic(
            self.bootstrap_servers,
            name,
            partitions,
            replication_factor=replication_factor or self.nodes,
            exist_ok=exist_ok,
        )

    # -- context managers -------------------------------------------------------------

    def __enter__(self) -> ApacheKafka:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def __aenter__(self) -> ApacheKafka:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()
