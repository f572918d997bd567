"""Handler registry: which handler gets which topic, and what the app subscribes to."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Literal, cast

from ._codecs import CodecSpec, resolve_codec
from ._errors import ConfigurationError
from ._message import Decoder, make_decoder
from ._retry import DELIVERIES, FAILURE_POLICIES, NO_RETRY, Delivery, FailurePolicy, Retry
from ._runtime._pipeline import DLQ_SUFFIX, Handler
from ._threads import DEFAULT_MAX_THREADS, ThreadLimit
from ._typed import typed_value_codec

__all__ = ["BatchSettings", "HandlerOptions", "HandlerRegistry", "HandlerSpec", "Ordering"]


Ordering = Literal["partition", "key", "none"]
ORDERINGS = ("partition", "key", "none")


@dataclass(frozen=True, slots=True)
class BatchSettings:
    max_records: int
    max_wait: float


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    fn: Handler
    name: str
    topics: tuple[str, ...]
    pattern: re.Pattern[str] | None
    decode: Decoder | None  # None: the raw record is the message
    ordering: Ordering = "partition"
    concurrency: int = 1
    batch: BatchSettings | None = None
    retry: Retry = NO_RETRY
    on_failure: FailurePolicy = "stop"
    dead_letter_topic: str | None = None
    delivery: Delivery = "at_least_once"
    publish_to: str | None = None


@dataclass(frozen=True, slots=True)
class HandlerOptions:
    """What a handler does with failures and results, as registered."""

    retry: Retry | None = None
    on_failure: str = "stop"
    dead_letter_topic: str | None = None
    delivery: str = "at_least_once"
    publish_to: str | None = None

    def check(self, name: str) -> None:
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise ConfigurationError(f"handler {name}: retry must be a Retry, not {self.retry!r}")
        if self.on_failure not in FAILURE_POLICIES:
            raise ConfigurationError(
                f"handler {name}: on_failure must be 'stop', 'dead_letter' or 'skip', "
                f"not {self.on_failure!r}"
            )
        if self.dead_letter_topic is not None:
            if self.on_failure != "dead_letter":
                raise ConfigurationError(
                    f"handler {name}: dead_letter_topic needs on_failure='dead_letter'"
                )
            _check_topic_name(name, "dead_letter_topic", self.dead_letter_topic)
        if self.delivery not in DELIVERIES:
            raise ConfigurationError(
                f"handler {name}: delivery must be 'at_least_once', 'at_most_once' or "
                "'exactly_once', "
                f"not {self.delivery!r}"
            )
        if self.publish_to is not None:
            _check_topic_name(name, "publish_to", self.publish_to)


def _check_topic_name(name: str, what: str, topic: object) -> None:
    if not isinstance(topic, str) or not topic:
        raise ConfigurationError(f"handler {name}: {what} must be a topic name, not {topic!r}")


def check_mode(
    name: str, ordering: str, concurrency: int | None, batch: BatchSettings | None
) -> tuple[Ordering, int]:
    """Validate ordering and concurrency; return them with defaults applied."""
    if ordering not in ORDERINGS:
        raise ConfigurationError(
            f"handler {name}: ordering must be 'partition', 'key' or 'none', not {ordering!r}"
        )
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise ConfigurationError(
            f"handler {name}: concurrency must be an int >= 1, not {concurrency!r}"
        )
    if ordering == "partition":
        if concurrency not in (None, 1):
            raise ConfigurationError(
                f"handler {name}: ordering='partition' runs one record at a time per "
                "partition; use ordering='key' or 'none' for concurrency"
            )
        return "partition", 1
    if batch is not None:
        raise ConfigurationError(f"batch handler {name}: batches are handled per partition")
    return cast(Ordering, ordering), DEFAULT_CONCURRENCY if concurrency is None else concurrency


DEFAULT_CONCURRENCY = 100


def handler_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class HandlerRegistry:
    """Maps topics to handlers. Exact topic names win over patterns; a topic
    matched by two patterns is an error (reported when it is assigned)."""

    def __init__(self, *, max_threads: int = DEFAULT_MAX_THREADS) -> None:
        self._by_topic: dict[str, HandlerSpec] = {}
        self._patterns: list[HandlerSpec] = []
        self._resolved: dict[str, HandlerSpec] = {}
        self.threads = ThreadLimit(max_threads)  # bounds the threads of ``def`` handlers

    def __bool__(self) -> bool:
        return bool(self._by_topic or self._patterns)

    def add(
        self,
        fn: Any,
        topics: tuple[str, ...],
        pattern: str | re.Pattern[str] | None,
        key_codec: CodecSpec | None,
        value_codec: CodecSpec | None,
        *,
        ordering: str = "partition",
        concurrency: int | None = None,
        batch: BatchSettings | None = None,
        options: HandlerOptions | None = None,
    ) -> HandlerSpec:
        name = handler_name(fn)
        if not callable(fn):
            raise ConfigurationError(f"handler {name} must be a function, not {fn!r}")
        mode, workers = check_mode(name, ordering, concurrency, batch)
        options = options or HandlerOptions()
        options.check(name)
        if options.dead_letter_topic in topics or options.publish_to in topics:
            raise ConfigurationError(
                f"handler {name}: publishing failures or results to a topic it consumes "
                "would feed them back to it"
            )
        if batch is not None:
            if not isinstance(batch.max_records, int) or batch.max_records < 1:
                raise ConfigurationError(
                    f"batch handler {name}: max_records must be an int >= 1, "
                    f"not {batch.max_records!r}"
                )
            if not batch.max_wait >= 0:
                raise ConfigurationError(
                    f"batch handler {name}: max_wait must be >= 0 seconds, not {batch.max_wait!r}"
                )
        if bool(topics) == (pattern is not None):
            raise ConfigurationError(
                f"handler {name}: give topic names or pattern=, exactly one of the two"
            )
        for topic in topics:
            if not isinstance(topic, str) or not topic:
                raise ConfigurationError(f"handler {name}: invalid topic name {topic!r}")
            if topic in self._by_topic or topics.count(topic) > 1:
                other = self._by_topic[topic].name if topic in self._by_topic else name
                raise ConfigurationError(
                    f"topic {topic!r} already has a handler ({other}); one handler per topic"
                )
        compiled: re.Pattern[str] | None = None
        if pattern is not None:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ConfigurationError(
                    f"handler {name}: invalid pattern {pattern!r}: {exc}"
                ) from exc
            for target in (options.dead_letter_topic, options.publish_to):
                if target is not None and compiled.match(target):
                    raise ConfigurationError(
                        f"handler {name}: its pattern matches {target!r}, where it publishes "
                        "failures or results: that would feed them back to it"
                    )
            if options.on_failure == "dead_letter" and options.dead_letter_topic is None:
                # Its dead letters go to <topic>.DLQ, which the pattern may match:
                # such topics are left out of its subscription.
                compiled = re.compile(
                    rf"(?!.*{re.escape(DLQ_SUFFIX)}\Z)(?:{compiled.pattern})", compiled.flags
                )
            if any(
                p.pattern is not None and p.pattern.pattern == compiled.pattern
                for p in self._patterns
            ):
                raise ConfigurationError(
                    f"pattern {compiled.pattern!r} already has a handler; one handler per topic"
                )
        value_codec = typed_value_codec(fn, value_codec, batch=batch is not None)
        if not inspect.iscoroutinefunction(fn):
            fn = self.threads.wrap(fn)  # plain ``def``: runs in a worker thread
        decode = make_decoder(
            resolve_codec(key_codec, what="key_codec"),
            resolve_codec(value_codec, what="value_codec"),
        )
        spec = HandlerSpec(
            fn=fn,
            name=name,
            topics=topics,
            pattern=compiled,
            decode=decode,
            ordering=mode,
            concurrency=workers,
            batch=batch,
            retry=options.retry or NO_RETRY,
            on_failure=cast(FailurePolicy, options.on_failure),
            dead_letter_topic=options.dead_letter_topic,
            delivery=cast(Delivery, options.delivery),
            publish_to=options.publish_to,
        )
        if compiled is None:
            for topic in topics:
                self._by_topic[topic] = spec
        else:
            self._patterns.append(spec)
        self._resolved.clear()
        return spec

    def specs(self) -> list[HandlerSpec]:
        """Every registered handler, once, in registration order."""
        unique = {id(spec): spec for spec in [*self._by_topic.values(), *self._patterns]}
        return list(unique.values())

    def resolve(self, topic: str) -> HandlerSpec:
        """The handler for ``topic``; patterns match like :func:`re.match`."""
        spec = self._resolved.get(topic) or self._by_topic.get(topic)
        if spec is not None:
            return spec
        matches = [s for s in self._patterns if s.pattern is not None and s.pattern.match(topic)]
        if not matches:
            raise ConfigurationError(f"no handler for topic {topic!r}")
        if len(matches) > 1:
            names = ", ".join(s.name for s in matches)
            raise ConfigurationError(
                f"topic {topic!r} matches the patterns of several handlers: {names}"
            )
        self._resolved[topic] = matches[0]
        return matches[0]

    def check_in_order(self, what: str) -> None:
        """Refuse handlers that complete records out of order (``key`` / ``none``)."""
        for spec in [*self._by_topic.values(), *self._patterns]:
            if spec.batch is None and spec.ordering != "partition":
                raise ConfigurationError(
                    f"handler {spec.name}: {what} needs records completed in offset order "
                    f"(ordering='partition' or a batch handler), not ordering={spec.ordering!r}"
                )

    def subscription(self) -> tuple[list[str], str | None]:
        """``(topics, None)`` when every handler names its topics, else ``([], pattern)``
        with one regex that matches the union (aiokafka subscribes to one or the other)."""
        topics = sorted(self._by_topic)
        if not self._patterns:
            return topics, None
        parts = [f"(?:{s.pattern.pattern})" for s in self._patterns if s.pattern is not None]
        parts += [f"(?:{re.escape(t)})$" for t in topics]
        return [], "|".join(parts)
