"""Work-arounds for aiokafka defects that real Apache Kafka brings out.

``install()`` is idempotent and called when ``asyncconsumer`` is imported. What it
changes, in aiokafka 0.12-0.14 (checked against Apache Kafka 4.3):

- **OffsetFetch request-level errors.** From version 2 the OffsetFetch response
  carries a request-level ``error_code`` (with no partitions) for
  ``COORDINATOR_LOAD_IN_PROGRESS`` and ``NOT_COORDINATOR``; aiokafka reads only the
  per-partition codes, so it takes "the coordinator is loading" (right after a
  broker restart or a coordinator move) for "no committed offset", and the consumer
  falls back to ``auto_offset_reset``: records run again (``earliest``) or are
  skipped (``latest``). The patch raises the request-level error, so aiokafka's
  own retry loop (``fetch_committed_offsets``) retries it, as the Java client does.
- **Long polls behind unconsumed records.** aiokafka sends one fetch at a time to a
  broker, and none for a partition whose fetched records were not consumed yet; once
  those have waited 0.1 s (its prefetch backoff), it fetches the broker's other
  partitions without it. If those are caught up, that fetch is a long poll of
  ``fetch_max_wait_ms`` (500 ms by default), and when the records left behind are
  consumed meanwhile, their partition's next fetch waits for the long poll to end: a
  partition with a backlog stalls once per fetch response, behind partitions with
  nothing to read (the engine holds records back when a lane is full, so this is
  common). The patch makes fetches wait at most :data:`HELD_FETCH_WAIT_MS` while
  any fetched record is unconsumed, and ``fetch_max_wait_ms`` otherwise.
- **Why a connection failed.** aiokafka logs a refused TLS handshake or SASL
  authentication and retries, or fails a start with "Unable to bootstrap", the cause
  lost. The patch of ``create_conn`` (as ``aiokafka.client`` calls it) records the
  cause on the ``AIOKafkaClient`` that was connecting (see
  ``_runtime._client.record_failure``), so that asyncconsumer raises
  :class:`~asyncconsumer.AuthenticationError` naming it, instead of retrying.
- **SASL payloads in DEBUG logs.** aiokafka logs every request and response at DEBUG
  with its fields; a ``SaslAuthenticate`` request carries the SASL exchange (with
  ``PLAIN``, the password as it is). The patch shows its size only.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import aiokafka.client as kafka_client
import aiokafka.errors as kafka_errors
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol import admin as kafka_admin_protocol
from aiokafka.protocol.commit import OffsetFetchRequest

from ._runtime._client import record_failure

__all__ = ["HELD_FETCH_WAIT_MS", "check_offset_fetch", "fetch_wait_ms", "install"]

# The longest a fetch waits for data while fetched records are left unconsumed:
# what a partition whose records were held back may wait for its next fetch.
HELD_FETCH_WAIT_MS = 50

_COORDINATOR_MOVED = (
    kafka_errors.NotCoordinatorForGroupError,
    kafka_errors.GroupCoordinatorNotAvailableError,
)


def check_offset_fetch(coordinator: Any, response: Any) -> None:
    """Raise an OffsetFetch response's request-level error (marking the coordinator
    dead when it moved), as aiokafka does for the per-partition ones."""
    code = getattr(response, "error_code", 0)
    if code:
        error_type = kafka_errors.for_code(code)
        if issubclass(error_type, _COORDINATOR_MOVED):
            coordinator.coordinator_dead()
        raise error_type()


def fetch_wait_ms(configured: int, unconsumed: bool) -> int:
    """How long the next fetch may wait for data (see the module docstring)."""
    return min(configured, HELD_FETCH_WAIT_MS) if unconsumed else configured


def install() -> None:
    """Patch aiokafka's GroupCoordinator and Fetcher once (see the module docstring)."""
    original = GroupCoordinator._send_req
    if getattr(original, "_asyncconsumer_patched", False):
        return
    _install_fetch_wait()

    async def _send_req(self: GroupCoordinator, request: Any) -> Any:
        response = await original(self, request)
        if isinstance(request, OffsetFetchRequest):
            check_offset_fetch(self, response)
        return response

    _send_req._asyncconsumer_patched = True  # type: ignore[attr-defined]
    GroupCoordinator._send_req = _send_req
    _install_connection_watch()
    _install_sasl_redaction()


def _install_fetch_wait() -> None:
    original = Fetcher._get_actions_per_node

    def _get_actions_per_node(self: Fetcher, assignment: Any) -> Any:
        # Called by the fetch routine each time before it builds the fetch requests,
        # which read _fetch_max_wait_ms (aiokafka 0.12-0.14).
        configured = self.__dict__.setdefault(
            "_asyncconsumer_fetch_max_wait_ms", self._fetch_max_wait_ms
        )
        self._fetch_max_wait_ms = fetch_wait_ms(configured, bool(self._records))
        return original(self, assignment)

    Fetcher._get_actions_per_node = _get_actions_per_node


# The AIOKafkaClient whose bootstrap() or _get_conn() is running in this task.
_CONNECTING: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "asyncconsumer_connecting", default=None
)


def _install_connection_watch() -> None:
    original_create: Callable[..., Awaitable[Any]] = kafka_client.create_conn

    @functools.wraps(original_create)
    async def create_conn(host: str, port: int, **kwargs: Any) -> Any:
        try:
            return await original_create(host, port, **kwargs)
        except Exception as exc:
            owner = _CONNECTING.get()
            if owner is not None:
                protocol = str(kwargs.get("security_protocol", "PLAINTEXT"))
                record_failure(owner, f"{host}:{port}", exc, protocol)
            raise

    kafka_client.create_conn = create_conn
    client_class = kafka_client.AIOKafkaClient
    for name in ("bootstrap", "_get_conn"):
        setattr(client_class, name, _connecting(getattr(client_class, name)))


def _connecting(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _CONNECTING.set(self)
        try:
            return await method(self, *args, **kwargs)
        finally:
            _CONNECTING.reset(token)

    return wrapper


def redacted_sasl_repr(struct: Any) -> str:
    """A SaslAuthenticate request's or response's ``repr`` without the SASL bytes."""
    shown = []
    for name in struct.SCHEMA.names:
        value = struct.__dict__.get(name)
        if name == "sasl_auth_bytes":
            shown.append(f"{name}=<{len(value or b'')} bytes, not shown>")
        else:
            shown.append(f"{name}={value!r}")
    return f"{type(struct).__name__}({', '.join(shown)})"


def _install_sasl_redaction() -> None:
    for name in dir(kafka_admin_protocol):
        if name.startswith(("SaslAuthenticateRequest_v", "SaslAuthenticateResponse_v")):
            getattr(kafka_admin_protocol, name).__repr__ = redacted_sasl_repr
