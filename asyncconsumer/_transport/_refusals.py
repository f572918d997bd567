"""Why aiokafka could not open a connection, when it was security: the cause named.

aiokafka handles a refused connection like any other: a starting client fails with
"Unable to bootstrap" (the cause only in an ERROR line), a running one retries forever,
logging each try. :func:`install` wraps ``create_conn`` (as ``aiokafka.client`` calls
it) to classify a failure (:func:`classify_connection_failure`) and note it on the
``AIOKafkaClient`` that was connecting; ``bootstrap()`` and ``_get_conn()`` name that
client in a context variable. :func:`start_checked` turns a failed start with a noted
cause into :class:`~asyncconsumer.AuthenticationError`; :func:`on_security_failure`
calls back when a started client is refused for good (credentials, certificate).

:func:`install` also keeps SASL payloads out of aiokafka's DEBUG lines: it logs every
request and response with its fields, and a ``SaslAuthenticate`` request carries the
SASL exchange (with ``PLAIN``, the password as it is); their ``repr`` shows the size only.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiokafka.client as kafka_client
import aiokafka.errors as kafka_errors
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol import admin as kafka_admin_protocol

from .._errors import AuthenticationError

__all__ = [
    "SecurityFailure",
    "classify_connection_failure",
    "install",
    "on_security_failure",
    "record_failure",
    "redacted_sasl_repr",
    "security_failure",
    "start_checked",
]

FAILURE_ATTRIBUTE = "_asyncconsumer_security_failure"
CALLBACK_ATTRIBUTE = "_asyncconsumer_on_security_failure"


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


async def start_checked(start: Callable[[], Awaitable[None]], client: object) -> None:
    """``await start()`` (``client``'s start), raising
    :class:`~asyncconsumer.AuthenticationError` instead of aiokafka's error when a
    connection failed for a security reason."""
    try:
        await start()
    except Exception as exc:
        failure = security_failure(client)
        if failure is not None:
            raise failure.error() from exc
        raise


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


def install() -> None:
    """Both patches, once (before any client exists)."""
    if getattr(kafka_client.create_conn, "_asyncconsumer_patched", False):
        return
    _install_connection_watch()
    _install_sasl_redaction()
    kafka_client.create_conn._asyncconsumer_patched = True
