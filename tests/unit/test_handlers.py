import re
from types import SimpleNamespace
from typing import Any

import pytest

from asyncconsumer import ConfigurationError, ConsumerApp, Message, TopicPartition
from asyncconsumer._handlers import HandlerRegistry


def app() -> ConsumerApp:
    return ConsumerApp(bootstrap_servers="127.0.0.1:9", group_id="g")


async def noop(msg: Message[Any]) -> None: ...


async def other(msg: Message[Any]) -> None: ...


def test_handler_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="must be a function"):
        app().handler("t")("not a function")  # type: ignore[type-var]


def test_rebalance_hooks_must_be_coroutine_functions() -> None:
    def hook(partitions: list[TopicPartition]) -> None: ...

    with pytest.raises(ConfigurationError, match="async def"):
        app().on_assign(hook)  # type: ignore[type-var]


def test_two_handlers_for_one_topic_is_an_error() -> None:
    a = app()
    a.handler("orders", "payments")(noop)
    with pytest.raises(ConfigurationError, match="'payments' already has a handler"):
        a.handler("payments")(other)
    a.handler(pattern=r"^x")(noop)
    with pytest.raises(ConfigurationError, match="one handler per topic"):
        a.handler(pattern=r"^x")(other)


@pytest.mark.parametrize(
    ("topics", "pattern", "match"),
    [
        ((), None, "exactly one"),
        (("t",), "^t", "exactly one"),
        ((), "(", "invalid pattern"),
        (("",), None, "invalid topic name"),
    ],
)
def test_handler_needs_topics_or_a_valid_pattern(
    topics: tuple[str, ...], pattern: str | None, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        app().handler(*topics, pattern=pattern)(noop)


def test_unknown_codec_is_rejected_at_registration() -> None:
    with pytest.raises(ConfigurationError, match="unknown key_codec 'protobuf'"):
        app().handler("t", key_codec="protobuf")(noop)  # type: ignore[arg-type]


def test_resolution_exact_names_win_over_patterns() -> None:
    registry = HandlerRegistry()
    exact = registry.add(noop, ("audit.login",), None, "bytes", "bytes")
    by_pattern = registry.add(other, (), r"audit\.", "bytes", "json")
    assert registry.resolve("audit.login") is exact
    assert registry.resolve("audit.logout") is by_pattern
    with pytest.raises(ConfigurationError, match="no handler for topic 'billing'"):
        registry.resolve("billing")


def test_topic_matching_two_patterns_is_an_error_naming_both() -> None:
    registry = HandlerRegistry()
    registry.add(noop, (), r"a\.", None, None)
    registry.add(other, (), r"a\.b", None, None)
    with pytest.raises(ConfigurationError, match=r"several handlers.*noop.*other"):
        registry.resolve("a.b.c")


def test_subscription_is_topics_or_one_union_pattern() -> None:
    registry = HandlerRegistry()
    registry.add(noop, ("b.x", "a"), None, None, None)
    assert registry.subscription() == (["a", "b.x"], None)
    registry.add(other, (), r"audit\..*", None, None)
    topics, pattern = registry.subscription()
    assert topics == []
    assert pattern is not None
    union = re.compile(pattern)
    for name in ("a", "b.x", "audit.login"):
        assert union.match(name), name
    for name in ("ab", "bxx", "b-x", "billing"):  # names are matched exactly, dots literally
        assert not union.match(name), name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ordering": "random"}, "ordering must be"),
        ({"ordering": "partition", "concurrency": 4}, "use ordering='key' or 'none'"),
        ({"ordering": "key", "concurrency": 0}, "concurrency must be an int >= 1"),
    ],
)
def test_invalid_ordering_or_concurrency(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        app().handler("t", **kwargs)(noop)


def test_concurrency_defaults() -> None:
    registry = HandlerRegistry()
    assert registry.add(noop, ("a",), None, None, None).concurrency == 1
    keyed = registry.add(other, ("b",), None, None, None, ordering="key")
    assert (keyed.ordering, keyed.concurrency) == ("key", 100)


def test_batch_handler_validation() -> None:
    async def batch(msgs: list[Message[Any]]) -> None: ...

    with pytest.raises(ConfigurationError, match="max_records must be an int >= 1"):
        app().batch_handler("t", max_records=0)(batch)
    with pytest.raises(ConfigurationError, match="max_wait must be >= 0"):
        app().batch_handler("t", max_wait=-1)(batch)


async def _dlq_noop(msg: Message[Any]) -> None: ...


def test_a_pattern_handler_does_not_consume_its_own_dead_letters() -> None:
    a = app()
    a.handler(pattern=r"orders.*", on_failure="dead_letter")(_dlq_noop)
    a.handler("payments")(noop)
    _, pattern = a._registry.subscription()
    assert pattern is not None
    assert re.match(pattern, "orders.eu")
    assert re.match(pattern, "payments")
    assert not re.match(pattern, "orders.eu.DLQ")  # its default dead-letter topic
    with pytest.raises(ConfigurationError, match="no handler"):
        a._registry.resolve("orders.eu.DLQ")
    # A pattern that does not dead-letter still matches .DLQ topics (e.g. a DLQ reader).
    b = app()
    b.handler(pattern=r"orders.*")(noop)
    assert b._registry.resolve("orders.eu.DLQ").name.endswith("noop")


def test_a_pattern_that_matches_its_own_output_topic_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="feed them back"):
        app().handler(
            pattern=r"orders.*", on_failure="dead_letter", dead_letter_topic="orders-failed"
        )(noop)
    with pytest.raises(ConfigurationError, match="feed them back"):
        app().handler(pattern=r"orders.*", publish_to="orders.enriched")(noop)
    app().handler(pattern=r"orders.*", publish_to="enriched.orders")(noop)  # fine


@pytest.mark.parametrize("ordering", ["partition", "key", "none"])
def test_exactly_once_works_with_every_ordering(ordering: str) -> None:
    app().handler("t", ordering=ordering, delivery="exactly_once")(noop)  # type: ignore[arg-type]
    app().batch_handler("t", delivery="exactly_once")(noop)


def test_the_transactional_id_belongs_to_exactly_once() -> None:
    with pytest.raises(ConfigurationError, match=r"transactional_id.*exactly_once"):
        ConsumerApp(
            bootstrap_servers="127.0.0.1:9",
            group_id="g",
            producer_options={"transactional_id": "mine"},
        )


async def test_inside_a_transaction_the_apps_producer_sends_through_it() -> None:
    from asyncconsumer._producer import TRANSACTION, Producer

    producer = Producer("127.0.0.1:9")
    transactional = Producer.transactional(producer, "asyncconsumer.g.t.0")
    assert transactional.options["transactional_id"] == "asyncconsumer.g.t.0"
    assert transactional.options["enable_idempotence"] is True
    routed: Any = SimpleNamespace(client=object())
    token = TRANSACTION.set(routed)
    try:
        assert producer.client is routed.client
    finally:
        TRANSACTION.reset(token)
    with pytest.raises(Exception, match="not started"):
        _ = producer.client
