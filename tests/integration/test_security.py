"""TLS and SASL to Apache Kafka: an app, its producer and an ``async for`` Consumer over
SASL_SSL and mutual TLS; refused connections fail fast and name their cause; no
secret in logs, errors, reprs, statistics, health or metrics.

One secured Apache Kafka node for the module (``ApacheKafka(security=...)``): a
plaintext, a SASL_SSL (SCRAM-SHA-512/256, PLAIN) and a mutual-TLS listener.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest
from anyio.abc import TaskStatus

from asyncconsumer import (
    SASL,
    TLS,
    AuthenticationError,
    Consumer,
    ConsumerApp,
    ConsumerStoppedError,
    Message,
    Producer,
    Security,
    ShareConsumer,
    ShareMessage,
    TopicPartition,
)
from asyncconsumer._http import serve_probes
from asyncconsumer.metrics import CONTENT_TYPE, instrument
from asyncconsumer.testing import ApacheKafka, BrokerSecurity, create_topic
from asyncconsumer.testing._jars import find_tools

from .conftest import committed_offsets, unique, wait_until
from .services import free_port

pytestmark = pytest.mark.apache_kafka

PASSWORD = "Pw-4b1d7e-s3cr3t"  # what the leak checks look for
WRONG_PASSWORD = "Wr0ng-9f7c2a-guess"  # a secret too: a typo of the real one would be
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
# A refused connection must fail well within this (it takes well under a second).
FAIL_WITHIN = 20.0


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    missing = find_tools()
    if missing is not None:
        pytest.skip(f"needs Apache Kafka from Maven: {missing}")
    users = {"alice": PASSWORD, "bob": "bob-" + PASSWORD}  # bob is removed by a test
    with ApacheKafka(security=BrokerSecurity(users=users)) as cluster:
        yield cluster


async def secured_topic(kafka: ApacheKafka, prefix: str, partitions: int = 2) -> str:
    name = unique(prefix)
    # The admin client over SASL_SSL: create_topic takes security= too.
    await create_topic(
        kafka.sasl_ssl_bootstrap_servers, name, partitions, security=kafka.sasl_security()
    )
    return name


async def consume(
    bootstrap: str,
    security: Security,
    topic: str,
    count: int,
    timeout: float = 60.0,
    **kafka_options: Any,
) -> list[Message[bytes]]:
    """``count`` records of ``topic``, read by an ``async for`` Consumer in a group."""
    found: list[Message[bytes]] = []
    with anyio.fail_after(timeout):
        async with Consumer(
            topic,
            bootstrap_servers=bootstrap,
            security=security,
            group_id=unique("g-read"),
            auto_offset_reset="earliest",
            **kafka_options,
        ) as consumer:
            async for msg in consumer:
                found.append(msg)
                if len(found) == count:
                    break
    return found


async def app_scenario(kafka: ApacheKafka, bootstrap: str, security: Security) -> None:
    """An app with a handler that publishes, and one that dead-letters, on ``bootstrap``
    only: records flow, published and dead-lettered records arrive (the producer was
    secured too), read back by an ``async for`` Consumer on the same listener."""
    orders, out = await secured_topic(kafka, "sec-orders"), await secured_topic(kafka, "sec-out")
    risky = await secured_topic(kafka, "sec-risky", 1)
    await create_topic(kafka.bootstrap_servers, f"{risky}.DLQ", 1)  # the plaintext admin
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        security=security,
        group_id=unique("g-sec"),
        auto_offset_reset="earliest",
        commit_interval=0.2,
    )
    handled: list[bytes] = []

    @app.handler(orders, publish_to=out)
    async def enrich(msg: Message[bytes]) -> bytes:
        handled.append(msg.value)
        return msg.value + b"-enriched"

    @app.handler(risky, on_failure="dead_letter")
    async def fragile(msg: Message[bytes]) -> None:
        if msg.value.startswith(b"bad"):
            raise ValueError("a bad record")
        handled.append(msg.value)

    producer = Producer(bootstrap, security=security)
    await producer.start()
    try:
        for i in range(20):
            await producer.send(orders, f"o{i}", key=f"k{i % 3}")
        for value in ("good-1", "bad-1", "good-2", "bad-2"):
            await producer.send(risky, value)
        await producer.client.flush()
    finally:
        await producer.stop()
    async with app:
        await wait_until(lambda: len(handled) == 22, 60, "22 records handled")
    published = await consume(bootstrap, security, out, 20)
    assert sorted(m.value for m in published) == sorted(
        f"o{i}-enriched".encode() for i in range(20)
    )
    dead = await consume(bootstrap, security, f"{risky}.DLQ", 2)
    assert sorted(m.value for m in dead) == [b"bad-1", b"bad-2"]


async def test_an_app_and_a_consumer_over_sasl_ssl(kafka: ApacheKafka) -> None:
    await app_scenario(kafka, kafka.sasl_ssl_bootstrap_servers, kafka.sasl_security())


async def test_an_app_and_a_consumer_over_mutual_tls(kafka: ApacheKafka) -> None:
    await app_scenario(kafka, kafka.ssl_bootstrap_servers, kafka.mtls_security())


async def test_share_handlers_and_share_consumers_over_sasl_ssl_and_mutual_tls(
    kafka: ApacheKafka,
) -> None:
    """An app with both kinds of handlers over SASL_SSL: the share handler's connections
    are secured with the app's ``security`` too; a ShareConsumer over mutual TLS."""
    orders, jobs = await secured_topic(kafka, "sec-mixed"), await secured_topic(kafka, "sec-jobs")
    bootstrap, security = kafka.sasl_ssl_bootstrap_servers, kafka.sasl_security()
    producer = Producer(bootstrap, security=security)
    await producer.start()
    try:
        for i in range(10):
            await producer.send(orders, f"o{i}")
            await producer.send(jobs, f"j{i}")
        await producer.client.flush()
    finally:
        await producer.stop()
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        security=security,
        group_id=unique("g-sec-mixed"),
        auto_offset_reset="earliest",
    )
    handled: list[bytes] = []

    @app.handler(orders)
    async def handle(msg: Message[bytes]) -> None:
        handled.append(msg.value)

    @app.share_handler(jobs, group_id=unique("s-sec-mixed"), auto_offset_reset="earliest")
    async def run_job(msg: ShareMessage) -> None:
        handled.append(msg.value)

    with anyio.fail_after(60):
        async with app:
            await wait_until(lambda: len(handled) == 20, 45, "20 records handled")
    assert sorted(handled) == sorted(
        [b"o%d" % i for i in range(10)] + [b"j%d" % i for i in range(10)]
    )
    async with ShareConsumer(
        orders,
        bootstrap_servers=kafka.ssl_bootstrap_servers,
        security=kafka.mtls_security(),
        group_id=unique("s-sec-mtls"),
        auto_offset_reset="earliest",
    ) as consumer:
        values: list[bytes] = []
        with anyio.fail_after(30):
            async for msg in consumer:
                values.append(msg.value)
                if len(values) == 10:
                    break
    assert sorted(values) == sorted(b"o%d" % i for i in range(10))


async def test_exactly_once_over_sasl_ssl(kafka: ApacheKafka) -> None:
    """``delivery="exactly_once"`` creates a transactional producer per partition: it
    connects through the secured listener like the app's own producer."""
    source, out = (
        await secured_topic(kafka, "sec-eos-in"),
        await secured_topic(kafka, "sec-eos-out"),
    )
    bootstrap, security = kafka.sasl_ssl_bootstrap_servers, kafka.sasl_security()
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        security=security,
        group_id=unique("g-eos"),
        auto_offset_reset="earliest",
        commit_interval=0.2,
    )
    handled: list[bytes] = []

    @app.handler(source, publish_to=out, delivery="exactly_once")
    async def copy(msg: Message[bytes]) -> bytes:
        handled.append(msg.value)
        return msg.value

    async with app:
        for i in range(10):
            await app.producer.send(source, f"e{i}", key=f"k{i}")
        await wait_until(lambda: len(handled) == 10, 60, "10 records handled")
    published = await consume(bootstrap, security, out, 10, isolation_level="read_committed")
    assert sorted(m.value for m in published) == sorted(f"e{i}".encode() for i in range(10))


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
async def test_the_other_sasl_mechanisms(kafka: ApacheKafka, mechanism: Any) -> None:
    topic = await secured_topic(kafka, "sec-mech", 1)
    security = kafka.sasl_security(mechanism=mechanism)
    producer = Producer(kafka.sasl_ssl_bootstrap_servers, security=security)
    await producer.start()
    try:
        await producer.send_and_wait(topic, mechanism)
    finally:
        await producer.stop()
    (msg,) = await consume(kafka.sasl_ssl_bootstrap_servers, security, topic, 1)
    assert msg.value == mechanism.encode()


# -- refused connections ---------------------------------------------------------------------


def refused_cases(kafka: ApacheKafka) -> dict[str, tuple[str, Security | None, str]]:
    """name -> (bootstrap, security, a phrase the error must contain)."""
    files = kafka.certificates
    trusted = TLS(cafile=files.ca_file)
    return {
        "wrong password": (
            kafka.sasl_ssl_bootstrap_servers,
            Security(sasl=SASL("alice", WRONG_PASSWORD), tls=trusted),
            "SASL authentication failed",
        ),
        "unknown user": (
            kafka.sasl_ssl_bootstrap_servers,
            Security(sasl=SASL("mallory", WRONG_PASSWORD), tls=trusted),
            "SASL authentication failed",
        ),
        "untrusted CA": (
            kafka.sasl_ssl_bootstrap_servers,
            Security(sasl=SASL("alice", PASSWORD), tls=TLS(cafile=files.untrusted_ca_file)),
            "certificate verify failed",
        ),
        "plaintext client on the TLS port": (
            kafka.sasl_ssl_bootstrap_servers,
            None,
            "closed the connection during the handshake",
        ),
        "no client certificate on the mutual-TLS port": (
            kafka.ssl_bootstrap_servers,
            Security(tls=trusted),
            "refused the client's TLS certificate",
        ),
        "TLS client on the plaintext port": (
            kafka.bootstrap_servers,
            Security(tls=trusted),
            "closed the connection during the TLS handshake",
        ),
    }


CASES = [
    "wrong password",
    "unknown user",
    "untrusted CA",
    "plaintext client on the TLS port",
    "no client certificate on the mutual-TLS port",
    "TLS client on the plaintext port",
]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("case", CASES)
async def test_a_refused_connection_fails_the_app_fast_naming_its_cause(
    kafka: ApacheKafka, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap, security, phrase = refused_cases(kafka)[case]
    app = ConsumerApp(bootstrap_servers=bootstrap, security=security, group_id=unique("g-refused"))

    @app.handler(unique("sec-never"))
    async def never(msg: Message[bytes]) -> None:
        raise AssertionError("no record can arrive")

    started = time.monotonic()
    with caplog.at_level(logging.INFO), pytest.raises(AuthenticationError) as caught:
        with anyio.fail_after(FAIL_WITHIN):
            await app.run()
    elapsed = time.monotonic() - started
    error = caught.value
    assert phrase in str(error), str(error)
    assert error.broker == bootstrap.split(",")[0]
    assert app.state == "failed"
    assert app.error is error
    health = app.health()
    assert not health.ready
    assert not health.live
    # No retry storm: aiokafka's own line for the refused connection, not one per retry.
    assert len(errors_logged(caplog)) <= 3, errors_logged(caplog)
    assert elapsed < FAIL_WITHIN

    # The readiness probe of a failed app answers 503, with the cause in its JSON.
    async with anyio.create_task_group() as tg:
        port = await tg.start(
            lambda task_status: serve_probes(
                app,
                "127.0.0.1",
                0,
                render_metrics=lambda: (b"", CONTENT_TYPE),
                task_status=task_status,
            )
        )
        async with httpx.AsyncClient() as client:
            ready = await client.get(f"http://127.0.0.1:{port}/health/ready")
        tg.cancel_scope.cancel()
    assert ready.status_code == 503
    assert phrase in ready.json()["error"]


@pytest.mark.parametrize("case", ["wrong password", "untrusted CA"])
async def test_a_refused_connection_fails_an_async_for_consumer(
    kafka: ApacheKafka, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap, security, phrase = refused_cases(kafka)[case]
    consumer = Consumer(
        unique("sec-never"), bootstrap_servers=bootstrap, security=security, group_id="g"
    )
    with caplog.at_level(logging.INFO), anyio.fail_after(FAIL_WITHIN):
        with pytest.raises(AuthenticationError, match=phrase):
            await consumer.start()
        with pytest.raises(ConsumerStoppedError):
            await consumer.getmany()
    assert len(errors_logged(caplog)) <= 3, errors_logged(caplog)


@pytest.mark.parametrize("case", CASES)
async def test_a_refused_connection_fails_a_share_consumer(
    kafka: ApacheKafka, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap, security, phrase = refused_cases(kafka)[case]
    consumer = ShareConsumer(
        unique("sec-never"), bootstrap_servers=bootstrap, security=security, group_id="s"
    )
    with (
        caplog.at_level(logging.INFO),
        anyio.fail_after(FAIL_WITHIN),
        pytest.raises(AuthenticationError, match=phrase),
    ):
        await consumer.start()
    assert len(errors_logged(caplog)) <= 3, errors_logged(caplog)


async def test_a_running_app_stops_when_its_credentials_are_revoked(
    kafka: ApacheKafka, caplog: pytest.LogCaptureFixture
) -> None:
    """A user removed while the app runs: its connections keep working until they are
    dropped (here by hand, as a broker restart does); the new ones are refused for
    good, and the app stops on AuthenticationError instead of retrying forever."""
    topic = await secured_topic(kafka, "sec-revoked", 1)
    app = ConsumerApp(
        bootstrap_servers=kafka.sasl_ssl_bootstrap_servers,
        security=kafka.sasl_security("bob"),
        group_id=unique("g-revoked"),
        auto_offset_reset="earliest",
        commit_interval=0.2,
    )
    handled: list[bytes] = []

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        handled.append(msg.value)

    async def run(*, task_status: TaskStatus[None]) -> None:
        with contextlib.suppress(AuthenticationError):  # app.error has it
            await app.run(task_status=task_status)

    with caplog.at_level(logging.INFO):
        async with anyio.create_task_group() as tg:
            await tg.start(run)
            await app.producer.send_and_wait(topic, b"before")
            await wait_until(lambda: handled == [b"before"], 60, "the first record")
            await delete_scram_user(kafka, "bob")
            engine = app._engine
            assert engine is not None
            assert engine.client is not None
            caplog.clear()
            started = time.monotonic()
            consumer, producer = cast(Any, engine.client), cast(Any, app.producer.client)
            for client in (consumer._client, producer.client):  # aiokafka's AIOKafkaClients
                for conn in list(client._conns.values()):
                    conn.close()
            with anyio.fail_after(FAIL_WITHIN):
                while app.state != "failed":
                    await anyio.sleep(0.05)
            elapsed = time.monotonic() - started
    assert isinstance(app.error, AuthenticationError)
    assert "SASL authentication failed" in str(app.error)
    assert elapsed < FAIL_WITHIN
    assert not app.health().ready
    # aiokafka logs each failed try (every retry_backoff_ms) until the client is stopped:
    # 8 lines on a quiet machine, 16 under load; an endless stream without the fix.
    assert len(errors_logged(caplog)) <= 30, errors_logged(caplog)


async def delete_scram_user(kafka: ApacheKafka, name: str) -> None:
    """``kafka-configs --alter --delete-config SCRAM-SHA-512 --entity-type users``
    (the mechanism the test uses; one per request)."""
    java = kafka._command[:-1]  # the node's JVM and class path, without its main class
    await anyio.run_process(
        [
            *java,
            "kafka.admin.ConfigCommand",
            "--bootstrap-server",
            kafka.bootstrap_servers,
            "--alter",
            "--delete-config",
            "SCRAM-SHA-512",
            "--entity-type",
            "users",
            "--entity-name",
            name,
        ]
    )
    await anyio.sleep(1.0)  # the change reaches the broker through the metadata log


# -- the command line ---------------------------------------------------------------------


def cli_command(kafka: ApacheKafka, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "asyncconsumer",
        "run",
        "examples.orders_app:app",
        "--bootstrap-servers",
        kafka.sasl_ssl_bootstrap_servers,
        "--ssl-cafile",
        str(kafka.certificates.ca_file),
        "--sasl-username",
        "alice",
        *extra,
    ]


async def test_the_cli_exits_1_on_a_wrong_password(kafka: ApacheKafka) -> None:
    env = {**ENV, "ASYNCCONSUMER_SASL_PASSWORD": WRONG_PASSWORD, "ASYNCCONSUMER_GROUP_ID": "g"}
    started = time.monotonic()
    with anyio.fail_after(60):
        result = await anyio.run_process(
            cli_command(kafka, "--metrics-port", str(free_port())),
            cwd=ROOT,
            env=env,
            check=False,
            stderr=subprocess.STDOUT,
        )
    output = result.stdout.decode()
    assert result.returncode == 1, output
    assert "AuthenticationError" in output, output
    assert "SASL authentication failed" in output, output
    assert WRONG_PASSWORD not in output
    error_lines = [line for line in output.splitlines() if " ERROR " in line]
    assert len(error_lines) <= 3, error_lines
    # Start-up (Python, imports, the TLS handshake) plus the refusal: not a retry loop.
    assert time.monotonic() - started < 30


async def test_the_cli_consumes_with_a_password_file_and_stops_cleanly(
    kafka: ApacheKafka, tmp_path: Path
) -> None:
    orders = await secured_topic(kafka, "sec-cli-orders", 1)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    producer = Producer(kafka.sasl_ssl_bootstrap_servers, security=kafka.sasl_security())
    await producer.start()
    try:
        for i in range(5):
            await producer.send(orders, {"amount": i}, key=f"c{i}")
        await producer.client.flush()
    finally:
        await producer.stop()
    group = unique("g-cli-sec")
    env = {**ENV, "ASYNCCONSUMER_GROUP_ID": group, "EXAMPLE_ORDERS_TOPIC": orders}
    async with await anyio.open_process(
        cli_command(
            kafka,
            "--sasl-password-file",
            str(password_file),
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--commit-interval",
            "0.2",
        ),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as proc:
        tp = TopicPartition(orders, 0)
        with anyio.fail_after(60):  # the group's offsets, read over the plaintext listener
            while (await committed_offsets(kafka.bootstrap_servers, group, [tp]))[tp] != 5:
                assert proc.returncode is None, "the app exited early"
                await anyio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            code = await proc.wait()
        assert proc.stdout is not None
        output = b"".join([chunk async for chunk in proc.stdout]).decode()
    assert code == 0, output
    assert PASSWORD not in output


# -- secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_no_secret_in_logs_errors_reprs_statistics_health_or_metrics(
    kafka: ApacheKafka, mechanism: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A run with a known password at DEBUG (aiokafka logs every request then: PLAIN's
    SASL bytes hold the password as it is), then one refused for a wrong password:
    neither password is anywhere asyncconsumer or aiokafka put text."""
    topic = await secured_topic(kafka, "sec-leak", 1)
    # Created before: a dead letter to a topic created on the fly may wait for its leader.
    await create_topic(kafka.bootstrap_servers, f"{topic}.DLQ", 1)
    security = kafka.sasl_security(mechanism=mechanism)
    seen: list[str] = [repr(security), str(security), repr(security.sasl)]
    app = ConsumerApp(
        bootstrap_servers=kafka.sasl_ssl_bootstrap_servers,
        security=security,
        group_id=unique("g-leak"),
        auto_offset_reset="earliest",
        commit_interval=0.2,
    )
    metrics = instrument(app)
    handled: list[bytes] = []

    @app.handler(topic, on_failure="dead_letter")
    async def handle(msg: Message[bytes]) -> None:
        if msg.value == b"bad":
            raise ValueError("bad")
        handled.append(msg.value)

    with caplog.at_level(logging.DEBUG):
        async with app:
            await app.producer.send_and_wait(topic, b"good")
            await app.producer.send_and_wait(topic, b"bad")
            await wait_until(lambda: handled == [b"good"], 60, "the good record")
            await wait_until(
                lambda: app.statistics().topics[topic].dead_lettered == 1, 30, "a dead letter"
            )
            seen += [
                repr(app.statistics()),
                json.dumps(app.health().as_dict()),
                metrics.render().decode(),
                repr(app.settings),
                repr(app.producer),
            ]
        wrong = Security(sasl=SASL("alice", WRONG_PASSWORD, mechanism), tls=security.tls)
        refused = ConsumerApp(
            bootstrap_servers=kafka.sasl_ssl_bootstrap_servers, security=wrong, group_id="g"
        )
        refused.handler(topic)(handle)
        with pytest.raises(AuthenticationError) as caught:
            await refused.run()
        error = caught.value
        seen += [
            str(error),
            repr(error),
            repr(error.__cause__),
            json.dumps(refused.health().as_dict()),
        ]
        seen += [repr(wrong), repr(refused.settings)]
        # The raw aiokafka options keep working, and are not shown either.
        raw = ConsumerApp(
            bootstrap_servers=kafka.sasl_ssl_bootstrap_servers,
            group_id="g",
            **security.kafka_options(),
        )
        seen += [repr(raw.settings), repr(raw.producer)]
    assert any("sasl" in r.getMessage().lower() for r in caplog.records if r.levelno == 10)
    seen += [caplog.text, *(r.getMessage() for r in caplog.records)]
    for text in seen:
        assert PASSWORD not in text
        assert WRONG_PASSWORD not in text
