"""ShareConsumer and share_handler settings are checked before anything runs."""

from __future__ import annotations

import pytest

from asyncconsumer import ConfigurationError, ConsumerApp, ShareConsumer, ShareMessage


def test_share_consumer_checks_its_settings() -> None:
    with pytest.raises(ConfigurationError, match="topic"):
        ShareConsumer(bootstrap_servers="127.0.0.1:9092", group_id="g")
    with pytest.raises(ConfigurationError, match="group_id"):
        ShareConsumer("t", bootstrap_servers="127.0.0.1:9092", group_id="")
    with pytest.raises(ConfigurationError, match="auto_offset_reset"):
        ShareConsumer("t", bootstrap_servers="x", group_id="g", auto_offset_reset="none")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="acquire_mode"):
        ShareConsumer("t", bootstrap_servers="x", group_id="g", acquire_mode="all")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_records"):
        ShareConsumer("t", bootstrap_servers="x", group_id="g", max_records=0)


def test_share_handler_checks_its_settings() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g")

    async def work(msg: ShareMessage) -> None: ...

    with pytest.raises(ConfigurationError, match="concurrency"):
        app.share_handler("t", concurrency=0)(work)
    with pytest.raises(ConfigurationError, match="on_failure"):
        app.share_handler("t", on_failure="ignore")(work)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="topic"):
        app.share_handler()(work)
    with pytest.raises(ConfigurationError, match="coroutine"):
        app.share_handler("t")(lambda msg: None)


def test_share_message_repr_and_tp() -> None:
    msg = ShareMessage("t", 1, 5, b"k", b"v", [], 0, 2)
    assert msg.tp == ("t", 1)
    assert "delivery 2" in repr(msg)


def test_share_groups_need_a_real_broker() -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        ShareConsumer("t", bootstrap_servers="memory://x", group_id="g")
