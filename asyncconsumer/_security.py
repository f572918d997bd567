"""Connection security: :class:`Security`, :class:`TLS` and :class:`SASL`.

One value, given as ``security=`` to :class:`~asyncconsumer.ConsumerApp`,
:class:`~asyncconsumer.Consumer`, :class:`~asyncconsumer.Producer` and the testing
helpers, secures every Kafka client they create (consumer, producer, admin). It
turns into aiokafka's options with :meth:`Security.kafka_options`.

Secrets (the SASL password, the private key's password) are never part of a
``repr()``, and asyncconsumer never logs them or puts them in an error message.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import ConfigurationError

__all__ = [
    "RAW_SECURITY_OPTIONS",
    "SASL",
    "TLS",
    "SaslMechanism",
    "Security",
    "SecurityProtocol",
    "check_security",
    "connection_options",
    "redact_options",
    "split_security_options",
]

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
"""The SASL mechanisms :class:`SASL` speaks (aiokafka's GSSAPI and OAUTHBEARER go
through the raw aiokafka options)."""
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]

SASL_MECHANISMS: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SECURITY_PROTOCOLS: tuple[str, ...] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")

# aiokafka's own security options: `security=` replaces them (giving both is an error).
RAW_SECURITY_OPTIONS = frozenset(
    {
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
    }
)
_SECRET_OPTIONS = frozenset({"sasl_plain_password", "sasl_oauth_token_provider"})
HIDDEN = "***"

_Path = str | os.PathLike[str]


@dataclass(frozen=True, slots=True, repr=False)
class TLS:
    """Encryption, and how the broker (and, for mutual TLS, the client) is authenticated.

    ``cafile``: the CA certificates (PEM) that signed the brokers' certificates
    (default: the system's trust store). ``certfile`` / ``keyfile``: a client
    certificate and its private key (PEM) for mutual TLS (``keyfile`` may be left out
    when ``certfile`` holds both); ``password`` decrypts an encrypted private key.
    ``check_hostname=False`` still verifies the certificate chain but not that it
    names the broker's host. ``context``: a ready :class:`ssl.SSLContext` instead of
    all of these (then give none of them).
    """

    cafile: _Path | None = None
    certfile: _Path | None = None
    keyfile: _Path | None = None
    password: str | None = None
    check_hostname: bool = True
    context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        files = {
            name: value
            for name, value in (
                ("cafile", self.cafile),
                ("certfile", self.certfile),
                ("keyfile", self.keyfile),
                ("password", self.password),
            )
            if value is not None
        }
        if self.context is not None:
            if not isinstance(self.context, ssl.SSLContext):
                raise ConfigurationError(
                    f"TLS(context=...) must be an ssl.SSLContext, not {type(self.context).__name__}"
                )
            if files or not self.check_hostname:
                given = ", ".join([*files, *([] if self.check_hostname else ["check_hostname"])])
                raise ConfigurationError(
                    f"TLS(context=...) is complete: do not also give {given} "
                    "(set them on the SSLContext)"
                )
        for name in ("cafile", "certfile", "keyfile"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike):
                raise ConfigurationError(f"TLS({name}=...) must be a path, not {value!r}")
        if self.keyfile is not None and self.certfile is None:
            raise ConfigurationError("TLS(keyfile=...) needs certfile= (the client certificate)")
        if self.password is not None and self.certfile is None:
            raise ConfigurationError("TLS(password=...) decrypts the key of certfile=: give it")

    def __repr__(self) -> str:
        parts = [
            f"{name}={value!r}"
            for name, value in (
                ("cafile", self.cafile),
                ("certfile", self.certfile),
                ("keyfile", self.keyfile),
                ("context", self.context),
            )
            if value is not None
        ]
        if self.password is not None:
            parts.append(f"password={HIDDEN!r}")
        if not self.check_hostname:
            parts.append("check_hostname=False")
        return f"TLS({', '.join(parts)})"

    @property
    def mutual(self) -> bool:
        """Whether a client certificate is given (files; a ``context`` is not inspected)."""
        return self.certfile is not None

    def ssl_context(self) -> ssl.SSLContext:
        """The :class:`ssl.SSLContext` for the clients (a new one unless ``context``).

        Raises :class:`~asyncconsumer.ConfigurationError` naming the file that is
        missing or unreadable (never its content)."""
        if self.context is not None:
            return self.context
        for name in ("cafile", "certfile", "keyfile"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ConfigurationError(f"TLS {name} {os.fspath(path)!r} is not a file")
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH,
                cafile=None if self.cafile is None else os.fspath(self.cafile),
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"TLS cafile {os.fspath(self.cafile or '')!r} holds no usable CA "
                f"certificate ({_reason(exc)})"
            ) from None
        if not self.check_hostname:
            context.check_hostname = False
        if self.certfile is not None:
            try:
                context.load_cert_chain(
                    os.fspath(self.certfile),
                    None if self.keyfile is None else os.fspath(self.keyfile),
                    password=self.password,
                )
            except (ssl.SSLError, OSError) as exc:
                raise ConfigurationError(
                    f"cannot load the client certificate {os.fspath(self.certfile)!r} "
                    f"with its key ({_reason(exc)})"
                ) from None
        return context


def _reason(exc: BaseException) -> str:
    """An :class:`ssl.SSLError`'s reason without the file content or a password."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason or type(exc).__name__)


@dataclass(frozen=True, slots=True, repr=False)
class SASL:
    """SASL authentication with a user name and password: ``SCRAM-SHA-512`` (the
    default), ``SCRAM-SHA-256`` or ``PLAIN`` (PLAIN sends the password as it is:
    use it over TLS only)."""

    username: str
    password: str
    mechanism: SaslMechanism = "SCRAM-SHA-512"

    def __post_init__(self) -> None:
        if not isinstance(self.username, str) or not self.username:
            raise ConfigurationError("SASL username must be a non-empty string")
        if not isinstance(self.password, str) or not self.password:
            raise ConfigurationError(
                f"SASL password for {self.username!r} must be a non-empty string"
            )
        if self.mechanism not in SASL_MECHANISMS:
            raise ConfigurationError(
                f"SASL mechanism must be one of {', '.join(SASL_MECHANISMS)}, "
                f"not {self.mechanism!r}"
            )

    def __repr__(self) -> str:
        return (
            f"SASL(username={self.username!r}, password={HIDDEN!r}, mechanism={self.mechanism!r})"
        )


_DEFAULT_TLS = TLS()


@dataclass(frozen=True, slots=True)
class Security:
    """How the Kafka clients connect: ``tls`` (default: TLS that trusts the system's
    CAs; ``None`` for no encryption) and ``sasl`` (default: none).

    - ``Security()`` or ``Security(tls=TLS(...))``: ``SSL`` (mutual TLS when the
      ``TLS`` has a client certificate);
    - ``Security(sasl=SASL(...))``: ``SASL_SSL``;
    - ``Security(sasl=SASL(...), tls=None)``: ``SASL_PLAINTEXT``;
    - ``Security(tls=None)``: ``PLAINTEXT``.
    """

    sasl: SASL | None = None
    tls: TLS | None = _DEFAULT_TLS

    def __post_init__(self) -> None:
        if self.sasl is not None and not isinstance(self.sasl, SASL):
            raise ConfigurationError(f"Security(sasl=...) must be a SASL, not {self.sasl!r}")
        if self.tls is not None and not isinstance(self.tls, TLS):
            raise ConfigurationError(f"Security(tls=...) must be a TLS, not {self.tls!r}")

    @property
    def protocol(self) -> SecurityProtocol:
        """aiokafka's ``security_protocol``."""
        if self.sasl is None:
            return "PLAINTEXT" if self.tls is None else "SSL"
        return "SASL_PLAINTEXT" if self.tls is None else "SASL_SSL"

    def kafka_options(self) -> dict[str, Any]:
        """The options for :class:`aiokafka.AIOKafkaConsumer`, ``AIOKafkaProducer`` and
        ``AIOKafkaAdminClient``: ``security_protocol``, ``ssl_context`` and the
        ``sasl_*`` ones. Builds the SSL context (reading the files) on each call."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls is not None:
            options["ssl_context"] = self.tls.ssl_context()
        if self.sasl is not None:
            options["sasl_mechanism"] = self.sasl.mechanism
            options["sasl_plain_username"] = self.sasl.username
            options["sasl_plain_password"] = self.sasl.password
        return options


def split_security_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The raw aiokafka security options among ``options``."""
    return {name: value for name, value in options.items() if name in RAW_SECURITY_OPTIONS}


def check_security(security: Security | None, options: Mapping[str, Any], where: str) -> None:
    """``security=`` and aiokafka's raw security options exclude each other."""
    if security is None:
        return
    if not isinstance(security, Security):
        raise ConfigurationError(f"security= must be an asyncconsumer.Security, not {security!r}")
    raw = sorted(RAW_SECURITY_OPTIONS.intersection(options))
    if raw:
        raise ConfigurationError(
            f"{where}: give security= or aiokafka's own security options "
            f"({', '.join(raw)}), not both"
        )


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the secrets replaced, for a ``repr()``."""
    return {
        name: HIDDEN if name in _SECRET_OPTIONS and value is not None else value
        for name, value in options.items()
    }


def connection_options(security: Security | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """What secures a client: ``security``'s options, else the raw ones in ``options``."""
    if security is not None:
        return security.kafka_options()
    return split_security_options(options)
