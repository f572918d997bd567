"""``asyncconsumer run`` options: command line over environment over the app's code."""

from __future__ import annotations

import pytest

from asyncconsumer import ConfigurationError, ConsumerApp
from asyncconsumer.cli import configure, main


def app() -> ConsumerApp:
    return ConsumerApp(
        bootstrap_servers="code:9092", group_id="code-group", commit_interval=5.0, client_id="c"
    )


def parse(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    import argparse

    from asyncconsumer import cli

    captured: dict[str, object] = {}

    def fake_run(args: argparse.Namespace) -> int:
        captured.update(cli._resolve(args, env))
        return 0

    original = cli._cmd_run
    cli._cmd_run = fake_run
    try:
        assert main(["run", "m:app", *argv]) == 0
    finally:
        cli._cmd_run = original
    return captured


def test_the_command_line_beats_the_environment() -> None:
    env = {
        "ASYNCCONSUMER_GROUP_ID": "env-group",
        "ASYNCCONSUMER_COMMIT_INTERVAL": "0.5",
        "ASYNCCONSUMER_METRICS_PORT": "9100",
        "ASYNCCONSUMER_UNRELATED": "x",
    }
    values = parse(["--group-id", "cli-group", "--max-buffered-records", "64"], env)
    assert values == {
        "group_id": "cli-group",
        "commit_interval": 0.5,
        "metrics_port": 9100,
        "max_buffered_records": 64,
    }


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(SystemExit, match="ASYNCCONSUMER_COMMIT_INTERVAL"):
        parse([], {"ASYNCCONSUMER_COMMIT_INTERVAL": "-1"})
    with pytest.raises(SystemExit):  # argparse: exit code 2
        parse(["--auto-offset-reset", "sometimes"], {})


def test_configure_overrides_the_apps_settings() -> None:
    a = app()
    configure(
        a,
        {
            "bootstrap_servers": "b1:9092, b2:9092",
            "group_id": "g2",
            "auto_offset_reset": "earliest",
            "commit_interval": 0.25,
            "shutdown_timeout": 3.0,
            "drain_timeout": 2.0,
            "client_id": "svc-1",
            "max_buffered_records": 10,
            "metrics_port": 9100,
        },
    )
    s = a.settings
    assert s.bootstrap_servers == ["b1:9092", "b2:9092"]
    assert a.producer.bootstrap_servers == ["b1:9092", "b2:9092"]
    assert (s.group_id, s.auto_offset_reset) == ("g2", "earliest")
    assert (s.commit_interval, s.shutdown_timeout, s.drain_timeout) == (0.25, 3.0, 2.0)
    assert s.kafka_options == {"client_id": "svc-1"}
    assert a.max_buffered_records == 10
    b = app()
    configure(b, {"bootstrap_servers": "one:9092"})
    assert b.settings.bootstrap_servers == "one:9092"
    assert b.settings.group_id == "code-group"  # untouched


def test_configure_validates_like_the_constructor() -> None:
    with pytest.raises(ConfigurationError, match="group_id"):
        configure(app(), {"group_id": ""})


def test_start_at_takes_an_iso_time_with_a_zone() -> None:
    from datetime import UTC, datetime

    import pytest

    from asyncconsumer.cli import _timestamp

    assert _timestamp("2026-11-20T00:00:00Z") == datetime(2026, 11, 20, tzinfo=UTC)
    assert _timestamp("2026-11-20T01:00:00+01:00") == datetime(2026, 11, 20, tzinfo=UTC)
    with pytest.raises(ValueError, match="time zone"):
        _timestamp("2026-11-20T00:00:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        _timestamp("yesterday")


def test_kafka_bootstrap_servers_is_read_when_asyncconsumers_own_is_not_set() -> None:
    # `asyncconsumer broker` prints the first; other Kafka tools (and `make demo`) use the second.
    assert parse([], {"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}) == {"bootstrap_servers": "k:9092"}
    both = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "ASYNCCONSUMER_BOOTSTRAP_SERVERS": "a:9092"}
    assert parse([], both) == {"bootstrap_servers": "a:9092"}
    assert parse(["--bootstrap-servers", "c:9092"], both) == {"bootstrap_servers": "c:9092"}
