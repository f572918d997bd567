"""Settings shared by ConsumerApp and Consumer, and the consumer client they build."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import ConfigurationError
from ._security import Security, check_security, redact_options
from ._transport import ConsumerClient, Transport, transport_for
from ._transport._aiokafka import CONSUMER_OPTIONS

__all__ = ["REFUSED_COMMIT_TIMEOUT", "ConsumerSettings", "OffsetReset"]

# How long the final commit may take once the cluster refused a connection for good
# (AuthenticationError): it may still pass over a connection opened before; a new one
# cannot be had, so waiting for commit_timeout would only delay the stop.
REFUSED_COMMIT_TIMEOUT = 5.0

OffsetReset = Literal["earliest", "latest", "none"]

# Options the framework owns: passing them would silently break its guarantees.
_OWNED = {
    "enable_auto_commit": "asyncconsumer commits processed offsets itself; "
    "aiokafka's auto-commit would commit records that were fetched but not processed",
    "auto_commit_interval_ms": "use commit_interval= (seconds)",
    "key_deserializer": "use key_codec=",
    "value_deserializer": "use value_codec=",
    "loop": "the running event loop is used",
}
_KAFKA_OPTIONS = CONSUMER_OPTIONS


@dataclass(frozen=True, slots=True, repr=False)
class ConsumerSettings:
    """Validated consumer settings. ``kafka_options`` go to aiokafka unchanged;
    ``security`` adds aiokafka's security options (it excludes the raw ones)."""

    bootstrap_servers: str | list[str]
    group_id: str | None = None
    auto_offset_reset: OffsetReset = "latest"
    commit_interval: float = 5.0
    shutdown_timeout: float = 30.0
    drain_timeout: float | None = None
    kafka_options: dict[str, Any] = field(default_factory=dict)
    security: Security | None = None

    def __repr__(self) -> str:
        # Never a password: the raw aiokafka options may hold one.
        return (
            f"ConsumerSettings(bootstrap_servers={self.bootstrap_servers!r}, "
            f"group_id={self.group_id!r}, auto_offset_reset={self.auto_offset_reset!r}, "
            f"commit_interval={self.commit_interval!r}, "
            f"shutdown_timeout={self.shutdown_timeout!r}, drain_timeout={self.drain_timeout!r}, "
            f"kafka_options={redact_options(self.kafka_options)!r}, security={self.security!r})"
        )

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ConfigurationError("bootstrap_servers is required")
        if self.group_id is not None and not (isinstance(self.group_id, str) and self.group_id):
            raise ConfigurationError(f"group_id must be a non-empty string, not {self.group_id!r}")
        if self.auto_offset_reset not in ("earliest", "latest", "none"):
            raise ConfigurationError(
                f"auto_offset_reset must be 'earliest', 'latest' or 'none', "
                f"not {self.auto_offset_reset!r}"
            )
        for name, value in (
            ("commit_interval", self.commit_interval),
            ("shutdown_timeout", self.shutdown_timeout),
        ):
            if not value > 0:
                raise ConfigurationError(f"{name} must be > 0 seconds, not {value!r}")
        if self.drain_timeout is not None and not self.drain_timeout > 0:
            raise ConfigurationError(
                f"drain_timeout must be > 0 seconds, not {self.drain_timeout!r}"
            )
        for name in self.kafka_options:
            if name in _OWNED:
                raise ConfigurationError(f"option {name!r} is not accepted: {_OWNED[name]}")
            if name not in _KAFKA_OPTIONS:
                raise ConfigurationError(
                    f"unknown Kafka consumer option {name!r} "
                    "(see aiokafka.AIOKafkaConsumer for the accepted names)"
                )
        check_security(self.security, self.kafka_options, "the consumer")

    @property
    def rebalance_drain_timeout(self) -> float:
        """How long a revoke waits for in-flight records before cancelling them.

        Defaults to 80 % of the group's rebalance timeout (aiokafka's
        ``rebalance_timeout_ms``, else ``session_timeout_ms``), so that the member
        rejoins before the coordinator gives up on it; never more than
        ``shutdown_timeout``.
        """
        if self.drain_timeout is not None:
            return self.drain_timeout
        ms: float = self.kafka_options.get("rebalance_timeout_ms") or self.kafka_options.get(
            "session_timeout_ms", 10_000
        )
        return min(self.shutdown_timeout, 0.8 * ms / 1000)

    @property
    def commit_timeout(self) -> float:
        """Seconds before a commit is given up (aiokafka's ``request_timeout_ms``)."""
        ms: float = self.kafka_options.get("request_timeout_ms", 40_000)
        return ms / 1000

    def build_client(self, transport: Transport | None = None) -> ConsumerClient:
        """Create (not start) the consumer client: aiokafka's, or the ``transport``'s
        (by default the one ``bootstrap_servers`` selects). Must run inside the event loop."""
        if transport is None:
            transport = transport_for(self.bootstrap_servers)
        secured = self.security.kafka_options() if self.security is not None else {}
        return transport.consumer(
            group_id=self.group_id,
            auto_offset_reset=self.auto_offset_reset,
            options={**self.kafka_options, **secured},
        )
