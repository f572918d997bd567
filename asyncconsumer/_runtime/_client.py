"""The boundary with aiokafka's client: stopping it cleanly, and whether it reaches the cluster.

Stopping: aiokafka 0.14's fetcher ``close()`` cancels its fetch tasks and awaits
them; a task sleeping in its retry backoff (the broker is down) lets that
``CancelledError`` out of ``AIOKafkaConsumer.stop()``, before the connections are
closed. A ``CancelledError`` out of ``stop()`` while our own task is not being
cancelled (``Task.cancelling() == 0``) is that internal one: :func:`stop_client`
finishes the close and returns.

Reachability: every request of the member (fetch, heartbeat, join, commit,
coordinator and metadata look-ups) goes through ``AIOKafkaClient.send``, which
:class:`Reachability` times. The cluster is *unreachable* when requests fail
(connection refused or closed, node not ready, request timed out) or none is
being sent, and no response has arrived for a while. A request waiting for its
answer (a long join) is not a failure: aiokafka's ``request_timeout_ms`` turns a
hung broker into one.

Security failures: aiokafka logs a refused TLS handshake or SASL authentication and
retries (a running client forever; a starting one fails with "Unable to bootstrap",
the cause lost). :mod:`asyncconsumer._aiokafka_compat` records on the aiokafka client
why a connection failed (:func:`classify_connection_failure`); :func:`start_client`
raises :class:`~asyncconsumer.AuthenticationError` from it, and a running member
stops on it (:func:`security_failure`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiokafka.errors as kafka_errors
import anyio
from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient

from .._errors import AuthenticationError

__all__ = [
    "Reachability",
    "SecurityFailure",
    "classify_connection_failure",
    "on_security_failure",
    "record_failure",
    "security_failure",
    "start_client",
    "stop_client",
]

FAILURE_ATTRIBUTE = "_asyncconsumer_security_failure"
CALLBACK_ATTRIBUTE = "_asyncconsumer_on_security_failure"
# How long the final commit may take once the cluster refused a connection for good
# (it may still pass over a connection opened before; a new one cannot).
REFUSED_COMMIT_TIMEOUT = 5.0

log = logging.getLogger("asyncconsumer")


async def stop_client(client: AIOKafkaConsumer) -> None:
    """``client.stop()`` (commits nothing, leaves the group), shielded, in any
    state of the cluster; see the module docstring."""
    with anyio.CancelScope(shield=True):
        try:
            await client.stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            ours = task is not None and task.cancelling() > 0
            await _finish_stop(client)
            if ours:
                raise
            log.debug("aiokafka's fetcher let its own cancellation out of stop(); closed")


async def _finish_stop(client: AIOKafkaConsumer) -> None:
    """What ``stop()`` did not get to: the other fetch tasks and the connections."""
    fetcher = getattr(client, "_fetcher", None)
    pending = [task for task in getattr(fetcher, "_pending_tasks", ()) if not task.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    inner = getattr(client, "_client", None)
    if inner is not None:
        try:
            await inner.close()
        except Exception as exc:
            log.warning("closing the Kafka connections failed: %r", exc)


@dataclass(frozen=True, slots=True)
class SecurityFailure:
    """Why a connection to ``broker`` failed. ``definitive``: retrying cannot help
    (credentials refused, certificate not trusted); otherwise it is most likely a
    mismatch of security protocols but could be a broker going away."""

    broker: str
    cause: str
    definitive: bool

    def error(self) -> AuthenticationError:
        return AuthenticationError(self.broker, self.cause)


# The TLS alerts a broker sends when it refuses the client's certificate (or the lack
# of one: mutual TLS required), by OpenSSL's reason names.
_CLIENT_CERT_REFUSED = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)
# The answer of a listener that does not speak TLS to a ClientHello.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"})
_TLS_PROTOCOLS = ("SSL", "SASL_SSL")


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in found):
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def classify_connection_failure(exc: BaseException, protocol: str) -> tuple[str, bool] | None:
    """Why opening a connection (TCP, TLS, ApiVersions, SASL) failed with ``exc``, if
    it was security: ``(cause in words, definitive)``; ``None`` for anything else
    (refused, timed out). The words never include a secret: SASL errors carry the
    broker's message, TLS errors OpenSSL's reason."""
    chain = _chain(exc)
    for error in chain:
        if isinstance(
            error, kafka_errors.SaslAuthenticationFailed | kafka_errors.AuthenticationFailedError
        ):
            said = (error.args[0] if error.args else "") or ""
            said = f" (the broker says: {said})" if isinstance(said, str) and said else ""
            return f"SASL authentication failed: wrong user name or password{said}", True
        if isinstance(error, kafka_errors.UnsupportedSaslMechanismError):
            return f"the SASL mechanism is not enabled on this listener: {error}", True
        if isinstance(error, kafka_errors.IllegalSaslStateError):
            return "the listener did not expect this SASL exchange: check security_protocol", True
        if isinstance(error, ssl.SSLCertVerificationError):
            return (
                "TLS certificate verify failed: the broker's certificate is not trusted "
                f"({error.verify_message}; check the CA file and the host name)",
                True,
            )
        if isinstance(error, ssl.SSLError):
            reason = str(error.reason or type(error).__name__)
            if reason in _CLIENT_CERT_REFUSED:
                return (
                    "the broker refused the client's TLS certificate, or its absence "
                    f"({reason}; mutual TLS needs certfile and keyfile signed by a CA it trusts)",
                    True,
                )
            if reason in _NOT_TLS:
                return f"the listener does not speak TLS ({reason}): a plaintext port?", True
            return (
                f"the TLS handshake failed ({reason}): the listener may not speak TLS",
                False,
            )
    if any(isinstance(error, asyncio.TimeoutError | ConnectionRefusedError) for error in chain):
        return None
    tls = protocol in _TLS_PROTOCOLS
    closed = (kafka_errors.KafkaConnectionError, *((ConnectionResetError, EOFError) if tls else ()))
    if any(isinstance(error, closed) for error in chain):
        # Opened, then closed by the broker during the TLS handshake, or before it
        # answered ApiVersions or SASL.
        if tls:
            return (
                "the broker closed the connection during the TLS handshake: is this a "
                "TLS listener, and does it want a client certificate?",
                False,
            )
        return (
            "the broker closed the connection during the handshake: the listener "
            f"probably expects TLS or SASL (this client connects with {protocol})",
            False,
        )
    return None


def record_failure(owner: object, broker: str, exc: BaseException, protocol: str) -> None:
    """Note on aiokafka's client ``owner`` why a connection to ``broker`` failed."""
    found = classify_connection_failure(exc, protocol)
    if found is not None:
        failure = SecurityFailure(broker, *found)
        previous: SecurityFailure | None = getattr(owner, FAILURE_ATTRIBUTE, None)
        if previous is None or failure.definitive or not previous.definitive:
            setattr(owner, FAILURE_ATTRIBUTE, failure)
        callback: Callable[[SecurityFailure], None] | None = getattr(
            owner, CALLBACK_ATTRIBUTE, None
        )
        if callback is not None and failure.definitive:
            callback(failure)


def _inner(client: object) -> object:
    if isinstance(client, AIOKafkaClient):
        return client
    # consumer and admin client: _client; producer: client
    return getattr(client, "_client", None) or getattr(client, "client", None)


def on_security_failure(client: object, callback: Callable[[SecurityFailure], None]) -> None:
    """Call ``callback`` when a later connection of the started ``client`` is refused
    for good (aiokafka would retry it forever, logging each try)."""
    inner = _inner(client)
    if inner is not None:
        setattr(inner, CALLBACK_ATTRIBUTE, callback)


def security_failure(client: object, *, definitive: bool = False) -> SecurityFailure | None:
    """The security failure recorded for ``client`` (an aiokafka consumer, producer or
    admin client, or its inner ``AIOKafkaClient``); only definitive ones if asked."""
    inner = _inner(client)
    failure: SecurityFailure | None = getattr(inner, FAILURE_ATTRIBUTE, None)
    if failure is None or (definitive and not failure.definitive):
        return None
    return failure


async def start_client(client: Any) -> None:
    """``await client.start()``, raising :class:`~asyncconsumer.AuthenticationError`
    instead of aiokafka's error when a connection failed for a security reason."""
    try:
        await client.start()
    except Exception as exc:
        failure = security_failure(client)
        if failure is not None:
            raise failure.error() from exc
        raise


class Reachability:
    """Times the answers to the member's Kafka requests; see the module docstring."""

    __slots__ = ("failing", "in_flight", "last_response")

    def __init__(self) -> None:
        self.last_response = time.monotonic()
        self.failing = False
        self.in_flight = 0

    def watch(self, client: AIOKafkaConsumer) -> None:
        """Time every request ``client`` sends (call before ``client.start()``)."""
        inner = getattr(client, "_client", None)
        send: Callable[..., Awaitable[Any]] | None = getattr(inner, "send", None)
        if send is None:  # another aiokafka: no reachability check, never unready for it
            log.debug("cannot watch aiokafka's requests: reachability is not checked")
            return

        @functools.wraps(send)
        async def timed_send(*args: Any, **kwargs: Any) -> Any:
            self.in_flight += 1
            try:
                response = await send(*args, **kwargs)
            except Exception:
                self.failing = True
                raise
            finally:
                self.in_flight -= 1
            self.last_response = time.monotonic()
            self.failing = False
            return response

        inner.send = timed_send  # type: ignore[union-attr]

    def unreachable_for(self) -> float:
        """Seconds since the last response, unless requests are waiting for their
        answers and none failed since that response (then ``0.0``)."""
        if self.in_flight and not self.failing:
            return 0.0
        return time.monotonic() - self.last_response
