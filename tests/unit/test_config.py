from typing import Any

import pytest

from asyncconsumer import ConfigurationError, Consumer, ConsumerApp, TopicPartition
from asyncconsumer._config import ConsumerSettings

BOOT = "127.0.0.1:9"


def test_app_needs_a_group_id() -> None:
    with pytest.raises(ConfigurationError, match="group_id"):
        ConsumerApp(bootstrap_servers=BOOT, group_id="")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"enable_auto_commit": True}, "commits processed offsets itself"),
        ({"value_deserializer": bytes}, "value_codec"),
        ({"max_pol_records": 10}, "unknown Kafka consumer option 'max_pol_records'"),
        ({"auto_offset_reset": "newest"}, "auto_offset_reset"),
        ({"commit_interval": 0}, "commit_interval"),
        ({"shutdown_timeout": -1}, "shutdown_timeout"),
        ({"max_buffered_records": 0}, "max_buffered_records"),
    ],
)
def test_invalid_app_settings_are_rejected_up_front(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ConsumerApp(bootstrap_servers=BOOT, group_id="g", **options)


def test_kafka_options_pass_through() -> None:
    app = ConsumerApp(
        bootstrap_servers=BOOT,
        group_id="g",
        max_poll_records=50,
        isolation_level="read_committed",
        session_timeout_ms=20_000,
    )
    assert app.settings.kafka_options == {
        "max_poll_records": 50,
        "isolation_level": "read_committed",
        "session_timeout_ms": 20_000,
    }


def test_rebalance_drain_timeout_fits_in_the_rebalance_timeout() -> None:
    assert ConsumerSettings(BOOT).rebalance_drain_timeout == pytest.approx(8.0)
    settings = ConsumerSettings(
        BOOT, kafka_options={"rebalance_timeout_ms": 60_000}, shutdown_timeout=20
    )
    assert settings.rebalance_drain_timeout == 20  # never more than shutdown_timeout
    assert ConsumerSettings(BOOT, drain_timeout=3).rebalance_drain_timeout == 3


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {"group_id": "g"}, "exactly one"),
        (("t",), {"group_id": "g", "pattern": "^t"}, "got topics and pattern="),
        (("t",), {"partitions": [TopicPartition("t", 0)]}, "got topics and partitions="),
        (("t",), {}, "needs a group_id"),
        ((), {"pattern": "^a"}, "needs a group_id"),
        ((), {"pattern": "(", "group_id": "g"}, "invalid pattern"),
        ((), {"partitions": []}, "non-empty list"),
        ((), {"partitions": [("t", 0)]}, "TopicPartition"),
        (("t",), {"group_id": "g", "value_codec": "avro"}, "unknown value_codec"),
    ],
)
def test_consumer_modes_are_mutually_exclusive_and_validated(
    args: tuple[str, ...], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Consumer(*args, bootstrap_servers=BOOT, **kwargs)


def test_consumer_rebalance_hooks_need_a_group() -> None:
    async def hook(partitions: list[TopicPartition]) -> None: ...

    with pytest.raises(ConfigurationError, match="group membership"):
        Consumer(partitions=[TopicPartition("t", 0)], bootstrap_servers=BOOT, on_assign=hook)


def test_manual_assignment_needs_no_group() -> None:
    Consumer(partitions=[TopicPartition("t", 0)], bootstrap_servers=BOOT)


def test_max_threads_bounds_def_handlers_and_is_checked() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g", max_threads=3)
    assert app._registry.threads.limiter().total_tokens == 3
    with pytest.raises(ConfigurationError):
        ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g", max_threads=0)
