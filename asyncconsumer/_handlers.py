"""Handler registry: which handler gets which topic, and what the app subscribes to."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

from ._codecs import CodecSpec, resolve_codec
from ._errors import ConfigurationError
from ._message import Decoder, make_decoder
from ._runtime._lanes import Handler

__all__ = ["HandlerRegistry", "HandlerSpec"]


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    fn: Handler
    name: str
    topics: tuple[str, ...]
    pattern: re.Pattern[str] | None
    decode: Decoder


def handler_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class HandlerRegistry:
    """Maps topics to handlers. Exact topic names win over patterns; a topic
    matched by two patterns is an error (reported when it is assigned)."""

    def __init__(self) -> None:
        self._by_topic: dict[str, HandlerSpec] = {}
        self._patterns: list[HandlerSpec] = []
        self._resolved: dict[str, HandlerSpec] = {}

    def __bool__(self) -> bool:
        return bool(self._by_topic or self._patterns)

    def add(
        self,
        fn: Any,
        topics: tuple[str, ...],
        pattern: str | re.Pattern[str] | None,
        key_codec: CodecSpec | None,
        value_codec: CodecSpec | None,
    ) -> HandlerSpec:
        name = handler_name(fn)
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(
                f"handler {name} must be a coroutine function (async def), not {fn!r}"
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
            if any(
                p.pattern is not None and p.pattern.pattern == compiled.pattern
                for p in self._patterns
            ):
                raise ConfigurationError(
                    f"pattern {compiled.pattern!r} already has a handler; one handler per topic"
                )
        decode = make_decoder(
            resolve_codec(key_codec, what="key_codec"),
            resolve_codec(value_codec, what="value_codec"),
        )
        spec = HandlerSpec(fn=fn, name=name, topics=topics, pattern=compiled, decode=decode)
        if compiled is None:
            for topic in topics:
                self._by_topic[topic] = spec
        else:
            self._patterns.append(spec)
        self._resolved.clear()
        return spec

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

    def subscription(self) -> tuple[list[str], str | None]:
        """``(topics, None)`` when every handler names its topics, else ``([], pattern)``
        with one regex that matches the union (aiokafka subscribes to one or the other)."""
        topics = sorted(self._by_topic)
        if not self._patterns:
            return topics, None
        parts = [f"(?:{s.pattern.pattern})" for s in self._patterns if s.pattern is not None]
        parts += [f"(?:{re.escape(t)})$" for t in topics]
        return [], "|".join(parts)
