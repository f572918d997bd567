"""``Security``, ``TLS``, ``SASL``; the CLI's security options; how a refused connection
is classified; secrets kept out of reprs and aiokafka's DEBUG log lines."""

from __future__ import annotations

import argparse
import asyncio
import ssl
from pathlib import Path
from typing import Any, cast

import aiokafka.errors as kafka_errors
import pytest
from aiokafka.protocol.admin import SaslAuthenticateRequest_v1, SaslAuthenticateResponse_v1

from asyncconsumer import (
    SASL,
    TLS,
    AuthenticationError,
    ConfigurationError,
    Consumer,
    ConsumerApp,
    Producer,
    Security,
)
from asyncconsumer._transport._refusals import (
    classify_connection_failure,
    on_security_failure,
    record_failure,
    security_failure,
)
from asyncconsumer.cli import configure, security_from
from asyncconsumer.testing import BrokerSecurity, make_certificates
from asyncconsumer.testing._apache import node_properties, security_properties

SECRET = "s3cr3t-Pw"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_certificates(tmp_path_factory.mktemp("tls"))


# -- value objects --------------------------------------------------------------------------


def test_the_protocol_follows_from_what_is_given() -> None:
    sasl = SASL("alice", SECRET)
    assert Security().protocol == "SSL"
    assert Security(sasl=sasl).protocol == "SASL_SSL"
    assert Security(sasl=sasl, tls=None).protocol == "SASL_PLAINTEXT"
    assert Security(tls=None).protocol == "PLAINTEXT"
    assert sasl.mechanism == "SCRAM-SHA-512"


def test_kafka_options_for_sasl_ssl(certs) -> None:  # type: ignore[no-untyped-def]
    options = Security(
        sasl=SASL("alice", SECRET, "PLAIN"), tls=TLS(cafile=certs.ca_file)
    ).kafka_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == ("PLAIN", "alice")
    assert options["sasl_plain_password"] == SECRET


def test_mutual_tls_loads_the_client_certificate(certs) -> None:  # type: ignore[no-untyped-def]
    tls = TLS(cafile=certs.ca_file, certfile=certs.client_cert_file, keyfile=certs.client_key_file)
    assert tls.mutual
    assert Security(tls=tls).kafka_options().keys() == {"security_protocol", "ssl_context"}
    relaxed = TLS(cafile=certs.ca_file, check_hostname=False).ssl_context()
    assert not relaxed.check_hostname
    assert relaxed.verify_mode == ssl.CERT_REQUIRED  # the chain is still verified


def test_a_given_context_is_used_as_it_is() -> None:
    context = ssl.create_default_context()
    assert Security(tls=TLS(context=context)).kafka_options()["ssl_context"] is context
    with pytest.raises(ConfigurationError, match="do not also give cafile"):
        TLS(context=context, cafile="ca.pem")


def test_repr_never_shows_a_password() -> None:
    security = Security(
        sasl=SASL("alice", SECRET),
        tls=TLS(cafile="ca.pem", certfile="c.pem", keyfile="k.pem", password=SECRET),
    )
    for text in (repr(security), str(security), repr(security.sasl), repr(security.tls)):
        assert SECRET not in text
    assert "username='alice'" in repr(security)
    assert "password='***'" in repr(security.sasl)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SASL("", SECRET), "username"),
        (lambda: SASL("alice", ""), "password"),
        (lambda: SASL("alice", SECRET, "GSSAPI"), "mechanism"),  # type: ignore[arg-type]
        (lambda: TLS(keyfile="k.pem"), "needs certfile"),
        (lambda: TLS(password=SECRET), "certfile"),
        (lambda: TLS(cafile=42), "must be a path"),  # type: ignore[arg-type]
        (lambda: Security(sasl="alice"), "must be a SASL"),  # type: ignore[arg-type]
    ],
)
def test_bad_values_are_refused_when_built(make, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match=message) as caught:
        make()
    assert SECRET not in str(caught.value)


def test_missing_or_bad_files_are_named(tmp_path: Path, certs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match=r"cafile '/nowhere/ca\.pem' is not a file"):
        TLS(cafile="/nowhere/ca.pem").ssl_context()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match="no usable CA"):
        TLS(cafile=garbage).ssl_context()
    with pytest.raises(ConfigurationError, match="cannot load the client certificate") as caught:
        TLS(certfile=certs.client_cert_file, keyfile=certs.ca_file, password=SECRET).ssl_context()
    assert SECRET not in str(caught.value)


# -- where security= goes ---------------------------------------------------------------------


def test_security_and_raw_options_exclude_each_other() -> None:
    security = Security(sasl=SASL("alice", SECRET))
    with pytest.raises(ConfigurationError, match="not both"):
        ConsumerApp(
            bootstrap_servers="b:9092", group_id="g", security=security, sasl_mechanism="PLAIN"
        )
    with pytest.raises(ConfigurationError, match="not both"):
        Consumer("t", bootstrap_servers="b:9092", group_id="g", security=security, ssl_context=None)
    with pytest.raises(ConfigurationError, match="not both"):
        ConsumerApp(
            bootstrap_servers="b:9092",
            group_id="g",
            security=security,
            producer_options={"security_protocol": "SSL"},
        )
    with pytest.raises(ConfigurationError, match=r"must be an asyncconsumer\.Security"):
        Producer("b:9092", security="SASL_SSL")  # type: ignore[arg-type]


def test_the_apps_producer_gets_the_apps_security() -> None:
    security = Security(sasl=SASL("alice", SECRET))
    app = ConsumerApp(bootstrap_servers="b:9092", group_id="g", security=security)
    assert app.settings.security is security
    assert app.producer.security is security
    # delivery="exactly_once": one transactional producer per partition, secured alike.
    assert Producer.transactional(app.producer, "t-1").security is security
    # aiokafka's raw options secure the producer too, unless it has its own.
    raw = ConsumerApp(
        bootstrap_servers="b:9092",
        group_id="g",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_plain_username="alice",
        sasl_plain_password=SECRET,
        client_id="not-security",
    )
    assert raw.producer.options["sasl_plain_password"] == SECRET
    assert "client_id" not in raw.producer.options
    assert SECRET not in repr(raw.settings)
    assert SECRET not in repr(raw.producer)
    own = ConsumerApp(
        bootstrap_servers="b:9092",
        group_id="g",
        security_protocol="SASL_SSL",
        producer_options={"security_protocol": "SSL"},
    )
    assert own.producer.options["security_protocol"] == "SSL"


async def test_the_built_client_carries_the_security() -> None:
    app = ConsumerApp(
        bootstrap_servers="b:9092", group_id="g", security=Security(sasl=SASL("alice", SECRET))
    )
    client = app.settings.build_client()
    try:
        inner = cast(Any, client)._client
        assert inner._security_protocol == "SASL_SSL"
        assert inner._sasl_plain_username == "alice"
        assert inner._sasl_mechanism == "SCRAM-SHA-512"
    finally:
        await client.stop()


# -- the command line --------------------------------------------------------------------------


def test_no_security_option_means_the_apps_own() -> None:
    assert security_from({"group_id": "g"}) is None


def test_sasl_ssl_from_options_and_a_password_file(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text(SECRET + "\n")
    security = security_from(
        {"ssl_cafile": "ca.pem", "sasl_username": "alice", "sasl_password_file": str(password)}
    )
    assert security == Security(sasl=SASL("alice", SECRET), tls=TLS(cafile="ca.pem"))


def test_the_password_from_the_environment() -> None:
    from asyncconsumer import cli

    captured: dict[str, object] = {}
    env = {
        "ASYNCCONSUMER_SASL_USERNAME": "alice",
        "ASYNCCONSUMER_SASL_PASSWORD": SECRET,
        "ASYNCCONSUMER_SASL_MECHANISM": "scram-sha-256",
        "ASYNCCONSUMER_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    }

    def fake_run(args: argparse.Namespace) -> int:
        captured.update(cli._resolve(args, env))
        return 0

    original = cli._cmd_run
    cli._cmd_run = fake_run
    try:
        assert cli.main(["run", "m:app"]) == 0
    finally:
        cli._cmd_run = original
    assert security_from(captured) == Security(
        sasl=SASL("alice", SECRET, "SCRAM-SHA-256"), tls=None
    )


def test_there_is_no_password_option() -> None:
    from asyncconsumer import cli

    with pytest.raises(SystemExit):
        cli.main(["run", "m:app", "--sasl-password", SECRET])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"security_protocol": "SSL", "sasl_username": "alice"}, "has no SASL"),
        ({"security_protocol": "SASL_PLAINTEXT", "ssl_cafile": "ca.pem"}, "has no TLS"),
        ({"sasl_username": "alice"}, "needs a password"),
        ({"sasl_password": SECRET}, "needs --sasl-username"),
        (
            {"sasl_username": "a", "sasl_password": SECRET, "sasl_password_file": "/x"},
            "not both",
        ),
        ({"sasl_username": "a", "sasl_password_file": "/nowhere/pw"}, "cannot read the password"),
    ],
)
def test_inconsistent_security_options_are_refused(values, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match=message) as caught:
        security_from(values)
    assert SECRET not in str(caught.value)


def test_cli_security_replaces_the_apps_code() -> None:
    app = ConsumerApp(
        bootstrap_servers="b:9092",
        group_id="g",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_plain_username="old",
        sasl_plain_password="old-password",
        client_id="kept",
    )
    configure(app, {"ssl_cafile": "ca.pem"})
    assert app.settings.security == Security(tls=TLS(cafile="ca.pem"))
    assert app.settings.kafka_options == {"client_id": "kept"}
    assert app.producer.security == app.settings.security
    assert "sasl_plain_password" not in app.producer.options


# -- refused connections ----------------------------------------------------------------------


def closed_after(cause: BaseException | None) -> kafka_errors.KafkaConnectionError:
    error = kafka_errors.KafkaConnectionError("Connection at h:1 closed")
    error.__cause__ = cause
    return error


def cert_error() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    return error


def ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, reason)
    error.reason = reason
    return error


@pytest.mark.parametrize(
    ("error", "protocol", "phrase", "definitive"),
    [
        (
            kafka_errors.SaslAuthenticationFailed("invalid credentials"),
            "SASL_SSL",
            "SASL authentication failed",
            True,
        ),
        (kafka_errors.UnsupportedSaslMechanismError("PLAIN only"), "SASL_SSL", "not enabled", True),
        (cert_error(), "SSL", "certificate verify failed", True),
        (
            closed_after(ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED")),
            "SSL",
            "refused the client",
            True,
        ),
        (ssl_error("WRONG_VERSION_NUMBER"), "SSL", "does not speak TLS", True),
        (ssl_error("UNEXPECTED_EOF_WHILE_READING"), "SSL", "TLS handshake failed", False),
        (
            closed_after(asyncio.IncompleteReadError(b"", 4)),
            "PLAINTEXT",
            "during the handshake",
            False,
        ),
        (ConnectionResetError(), "SSL", "during the TLS handshake", False),
    ],
)
def test_security_failures_are_named(error, protocol, phrase, definitive) -> None:  # type: ignore[no-untyped-def]
    found = classify_connection_failure(error, protocol)
    assert found is not None
    cause, is_definitive = found
    assert phrase in cause
    assert is_definitive is definitive


@pytest.mark.parametrize(
    ("error", "protocol"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "SASL_SSL"),
        (TimeoutError(), "SSL"),
        (closed_after(TimeoutError()), "PLAINTEXT"),
        (ConnectionResetError(), "PLAINTEXT"),  # a plaintext broker going away
        (kafka_errors.NodeNotReadyError("not ready"), "PLAINTEXT"),
    ],
)
def test_other_failures_are_not_security(error, protocol) -> None:  # type: ignore[no-untyped-def]
    assert classify_connection_failure(error, protocol) is None


def test_a_recorded_failure_is_raised_and_reported() -> None:
    class Inner:
        pass

    class Client:
        def __init__(self) -> None:
            self._client = Inner()

    client = Client()
    reported: list[str] = []
    on_security_failure(client, lambda failure: reported.append(failure.cause))
    record_failure(client._client, "h:1", closed_after(None), "PLAINTEXT")
    failure = security_failure(client)
    assert failure is not None
    assert not failure.definitive
    assert security_failure(client, definitive=True) is None
    assert reported == []  # the callback is for failures retrying cannot cure
    record_failure(client._client, "h:2", kafka_errors.SaslAuthenticationFailed("no"), "SASL_SSL")
    failure = security_failure(client, definitive=True)
    assert failure is not None
    error = failure.error()
    assert isinstance(error, AuthenticationError)
    assert error.broker == "h:2"
    assert str(error).startswith("cannot connect to the Kafka broker h:2: SASL authentication")
    assert len(reported) == 1
    # A later, vaguer failure does not hide the definitive one.
    record_failure(client._client, "h:3", closed_after(None), "PLAINTEXT")
    assert security_failure(client) == failure


def test_sasl_bytes_are_not_in_aiokafkas_debug_lines() -> None:
    payload = f"\0alice\0{SECRET}".encode()
    request = SaslAuthenticateRequest_v1(payload)
    response = SaslAuthenticateResponse_v1(0, None, payload, 0)
    for text in (repr(request), repr(response)):
        assert SECRET not in text
        assert f"<{len(payload)} bytes, not shown>" in text


# -- the test broker's security --------------------------------------------------------------


def test_broker_security_repr_and_scram_arguments(tmp_path: Path, certs) -> None:  # type: ignore[no-untyped-def]
    security = BrokerSecurity(users={"alice": SECRET})
    assert SECRET not in repr(security)
    assert security.scram_arguments() == [
        "--add-scram",
        f"SCRAM-SHA-512=[name=alice,password={SECRET}]",
        "--add-scram",
        f"SCRAM-SHA-256=[name=alice,password={SECRET}]",
    ]
    props = security_properties(node_properties(0, [(1, 2)], "/data"), 3, 4, security, certs)
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:1,CONTROLLER://127.0.0.1:2,SASL_SSL://127.0.0.1:3,SSL://127.0.0.1:4"
    )
    assert props["listener.name.ssl.ssl.client.auth"] == "required"
    assert f'user_alice="{SECRET}"' in props["listener.name.sasl_ssl.plain.sasl.jaas.config"]
    with pytest.raises(ValueError, match="may hold letters"):
        BrokerSecurity(users={"alice": "with,comma"})


def test_the_test_certificates_verify(certs) -> None:  # type: ignore[no-untyped-def]
    from cryptography import x509

    broker = x509.load_pem_x509_certificates(certs.broker_file.read_bytes())[0]
    ca = x509.load_pem_x509_certificate(certs.ca_file.read_bytes())
    broker.verify_directly_issued_by(ca)
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    stranger = x509.load_pem_x509_certificate(certs.untrusted_ca_file.read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        broker.verify_directly_issued_by(stranger)
