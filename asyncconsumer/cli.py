"""Command line: ``asyncconsumer broker`` and ``asyncconsumer run module:app``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ._app import ConsumerApp
from ._errors import ConfigurationError
from ._logging import configure_logging
from ._run import run
from ._security import (
    SASL,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    TLS,
    Security,
    split_security_options,
)
from .testing._jars import DEFAULT_VERSION as DEFAULT_KAFKA_VERSION

__all__ = ["ENV_PREFIX", "RUN_OPTIONS", "configure", "load_app", "main"]

ENV_PREFIX = "ASYNCCONSUMER_"


@dataclasses.dataclass(frozen=True)
class Option:
    """A ``run`` option: ``--name`` on the command line, ``ASYNCCONSUMER_NAME`` in the
    environment (the command line wins; both override what the app's code set)."""

    name: str
    parse: Callable[[str], Any]
    help: str
    fallback_env: str | None = None
    """Read when ``ASYNCCONSUMER_NAME`` is not set (a name other tools use)."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def envs(self) -> tuple[str, ...]:
        """The environment variables read, first one first."""
        return (self.env,) if self.fallback_env is None else (self.env, self.fallback_env)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be > 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, not {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"not a port number: {text}")
    return value


def _offset_reset(text: str) -> str:
    if text not in ("earliest", "latest", "none"):
        raise ValueError(f"must be earliest, latest or none, not {text!r}")
    return text


def _timestamp(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from exc
    if when.tzinfo is None:
        raise ValueError(f"give a time zone (e.g. {text}Z or {text}+01:00): {text!r}")
    return when


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.upper() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {text!r}")
        return text.upper()

    return parse


def _path(text: str) -> str:
    if not text:
        raise ValueError("an empty path")
    return text


RUN_OPTIONS = (
    Option(
        "bootstrap_servers",
        str,
        "broker addresses, host:port[,host:port...]",
        fallback_env="KAFKA_BOOTSTRAP_SERVERS",
    ),
    Option("group_id", str, "the consumer group"),
    Option("auto_offset_reset", _offset_reset, "earliest, latest or none"),
    Option("commit_interval", _positive_float, "seconds between commits"),
    Option("shutdown_timeout", _positive_float, "seconds in-flight handlers get at stop"),
    Option("drain_timeout", _positive_float, "seconds in-flight handlers get at a revoke"),
    Option("max_buffered_records", _positive_int, "records buffered per partition"),
    Option("client_id", str, "the Kafka client id"),
    Option(
        "start_at",
        _timestamp,
        "replay from this time on the first assignment (ISO 8601 with a zone, "
        "e.g. 2026-11-20T00:00:00Z)",
    ),
    Option("metrics_port", _port, "serve /metrics, /health/live, /health/ready on this port"),
    Option("metrics_host", str, "address the metrics port listens on (default 0.0.0.0)"),
    Option(
        "security_protocol",
        _choice(SECURITY_PROTOCOLS),
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default: SASL_SSL with a SASL user, "
        "SSL with only TLS files)",
    ),
    Option("ssl_cafile", _path, "CA certificates (PEM) that signed the brokers' certificates"),
    Option("ssl_certfile", _path, "client certificate (PEM) for mutual TLS"),
    Option("ssl_keyfile", _path, "the client certificate's private key (PEM)"),
    Option(
        "sasl_mechanism", _choice(SASL_MECHANISMS), "SCRAM-SHA-512 (default), SCRAM-SHA-256, PLAIN"
    ),
    Option("sasl_username", str, "SASL user name"),
    Option(
        "sasl_password_file",
        _path,
        f"a file holding the SASL password (or set {ENV_PREFIX}SASL_PASSWORD; "
        "never on the command line)",
    ),
)
# Secrets come from the environment (or a file), never from the command line, where
# `ps` shows them.
SECRET_ENVS = {
    "sasl_password": ENV_PREFIX + "SASL_PASSWORD",
    "ssl_key_password": ENV_PREFIX + "SSL_KEY_PASSWORD",
}
SECURITY_OPTIONS = frozenset(
    {
        "security_protocol",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "sasl_mechanism",
        "sasl_username",
        "sasl_password_file",
        *SECRET_ENVS,
    }
)
_SETTINGS = frozenset(
    {
        "bootstrap_servers",
        "group_id",
        "auto_offset_reset",
        "commit_interval",
        "shutdown_timeout",
        "drain_timeout",
    }
)


def _resolve(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """The options given, on the command line or else in the environment."""
    values: dict[str, Any] = {}
    for option in RUN_OPTIONS:
        value = getattr(args, option.name, None)
        name = next((name for name in option.envs if env.get(name)), None)
        if value is None and name is not None:
            try:
                value = option.parse(env[name])
            except ValueError as exc:
                raise SystemExit(f"error: {name}: {exc}") from exc
        if value is not None:
            values[option.name] = value
    for name, variable in SECRET_ENVS.items():
        if env.get(variable):
            values[name] = env[variable]
    return values


def security_from(values: Mapping[str, Any]) -> Security | None:
    """The :class:`~asyncconsumer.Security` the ``run`` options describe (``None`` when
    they name none). Raises :class:`~asyncconsumer.ConfigurationError`."""
    if not SECURITY_OPTIONS & values.keys():
        return None
    sasl_given = [
        n for n in ("sasl_mechanism", "sasl_username", "sasl_password_file") if n in values
    ]
    if "sasl_password" in values:
        sasl_given.append(SECRET_ENVS["sasl_password"])
    tls_given = [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if n in values]
    if "ssl_key_password" in values:
        tls_given.append(SECRET_ENVS["ssl_key_password"])
    protocol = values.get("security_protocol")
    if protocol is None:
        protocol = "SASL_SSL" if sasl_given else "SSL"
    if protocol in ("PLAINTEXT", "SSL") and sasl_given:
        raise ConfigurationError(
            f"security protocol {protocol} has no SASL: {', '.join(sasl_given)} "
            "given (use SASL_SSL or SASL_PLAINTEXT)"
        )
    if protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and tls_given:
        raise ConfigurationError(
            f"security protocol {protocol} has no TLS: {', '.join(tls_given)} given "
            "(use SSL or SASL_SSL)"
        )
    tls = None
    if protocol in ("SSL", "SASL_SSL"):
        tls = TLS(
            cafile=values.get("ssl_cafile"),
            certfile=values.get("ssl_certfile"),
            keyfile=values.get("ssl_keyfile"),
            password=values.get("ssl_key_password"),
        )
    sasl = None
    if protocol in ("SASL_SSL", "SASL_PLAINTEXT"):
        username = values.get("sasl_username")
        if not username:
            raise ConfigurationError(f"security protocol {protocol} needs --sasl-username")
        password = values.get("sasl_password")
        if "sasl_password_file" in values:
            if password is not None:
                raise ConfigurationError(
                    f"give --sasl-password-file or {SECRET_ENVS['sasl_password']}, not both"
                )
            password = _read_secret(values["sasl_password_file"])
        if not password:
            raise ConfigurationError(
                f"security protocol {protocol} needs a password: --sasl-password-file "
                f"or {SECRET_ENVS['sasl_password']}"
            )
        sasl = SASL(username, password, values.get("sasl_mechanism", "SCRAM-SHA-512"))
    return Security(sasl=sasl, tls=tls)


def _read_secret(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigurationError(f"cannot read the password file {path!r}: {reason}") from None
    return text.rstrip("\r\n")


def configure(app: ConsumerApp, values: Mapping[str, Any]) -> None:
    """Apply ``run`` options to ``app`` (validated like the constructor's arguments)."""
    settings = {k: v for k, v in values.items() if k in _SETTINGS}
    if "bootstrap_servers" in settings:
        servers = [s.strip() for s in settings["bootstrap_servers"].split(",") if s.strip()]
        settings["bootstrap_servers"] = servers[0] if len(servers) == 1 else servers
    if "client_id" in values:
        settings["kafka_options"] = {**app.settings.kafka_options, "client_id": values["client_id"]}
    if settings:
        app.settings = dataclasses.replace(app.settings, **settings)
    if "bootstrap_servers" in settings:
        app.producer.bootstrap_servers = app.settings.bootstrap_servers  # same cluster
    if "max_buffered_records" in values:
        app.max_buffered_records = values["max_buffered_records"]
    if "start_at" in values:
        app.start_at = values["start_at"]
    security = security_from(values)
    if security is not None:
        # Replaces whatever secured the app's clients in its code.
        options = app.settings.kafka_options
        kept = {k: v for k, v in options.items() if k not in split_security_options(options)}
        app.settings = dataclasses.replace(app.settings, kafka_options=kept, security=security)
        producer = app.producer
        producer.options = {
            k: v
            for k, v in producer.options.items()
            if k not in split_security_options(producer.options)
        }
        producer.security = security


def load_app(target: str) -> ConsumerApp:
    """Import ``module:attribute`` (like uvicorn) and return the ConsumerApp there.

    Raises ``SystemExit`` with a short message: the module cannot be found, the
    attribute is missing (naming the ConsumerApps the module has) or is something
    else, or importing the module raised (its traceback without our frames)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"error: expected module:attribute, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_part_of(module_name, exc.name):
            raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from None
        raise SystemExit(_import_failed(module_name, exc)) from None
    except Exception as exc:
        raise SystemExit(_import_failed(module_name, exc)) from None
    if not hasattr(module, attr):
        apps = sorted(
            name for name, value in vars(module).items() if isinstance(value, ConsumerApp)
        )
        found = (
            f"; ConsumerApp attributes it has: {', '.join(apps)}"
            if apps
            else "; it has no ConsumerApp attribute"
        )
        raise SystemExit(f"error: module {module_name!r} has no attribute {attr!r}{found}")
    app = getattr(module, attr)
    if not isinstance(app, ConsumerApp):
        raise SystemExit(f"error: {target!r} is not a ConsumerApp (got {type(app).__name__})")
    return app


def _is_part_of(module_name: str, missing: str) -> bool:
    """Whether ``missing`` is ``module_name`` or one of its parent packages."""
    return module_name == missing or module_name.startswith(missing + ".")


def _import_failed(module_name: str, exc: BaseException) -> str:
    """What importing the user's module raised, with the user's frames only."""
    summary = traceback.TracebackException.from_exception(exc)
    _drop_our_frames(summary)
    lines = "".join(summary.format()).rstrip()
    return f"error: importing {module_name!r} raised an exception:\n{lines}"


def _drop_our_frames(summary: traceback.TracebackException | None) -> None:
    seen: set[int] = set()
    while summary is not None and id(summary) not in seen:
        seen.add(id(summary))
        summary.stack = traceback.StackSummary.from_list(
            [frame for frame in summary.stack if not _ours(frame.filename)]
        )
        summary = summary.__cause__ or summary.__context__


def _ours(filename: str) -> bool:
    """Frames of this package and of the import machinery."""
    return filename.startswith(("<frozen importlib", *_OUR_DIRS))


_OUR_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep for path in (__file__, importlib.__file__)
)


def _cmd_run(args: argparse.Namespace) -> int:
    values = _resolve(args, os.environ)
    app = load_app(args.app)
    try:
        configure(app, values)
    except ConfigurationError as exc:
        raise SystemExit(f"error: {exc}") from exc
    port = values.get("metrics_port")
    if port is not None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise SystemExit(
                "error: --metrics-port needs prometheus_client: "
                "pip install 'asyncconsumer[prometheus]'"
            ) from None
    try:
        run(app, metrics_port=port, metrics_host=values.get("metrics_host", "0.0.0.0"))
    except Exception as exc:
        logging.getLogger("asyncconsumer").error(
            "the app stopped on an error: %r", exc, exc_info=exc
        )
        return 1
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    from .testing import ApacheKafka, ApacheKafkaUnavailableError, EmbeddedBroker

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if not args.apache_kafka:
        if args.nodes != 1:
            raise SystemExit("error: --nodes needs --apache-kafka")
        port, note = args.port, ""
        if port is None:
            port = DEFAULT_BROKER_PORT if _port_free(args.host, DEFAULT_BROKER_PORT) else None
            note = "" if port else f" (port {DEFAULT_BROKER_PORT} is in use: took a free one)"
        with EmbeddedBroker(host=args.host, port=port) as broker:
            address = broker.bootstrap_servers
            print(f"embedded Kafka broker (Tansu, in memory) at {address}{note}", flush=True)
            print(f"  export {ENV_PREFIX}BOOTSTRAP_SERVERS={address}", flush=True)
            print("  stop with Ctrl-C; its data is gone when it stops", flush=True)
            stop.wait()
        return 0
    if args.port is not None or args.host != "127.0.0.1":
        raise SystemExit("error: --apache-kafka listens on free 127.0.0.1 ports")
    kafka = ApacheKafka(nodes=args.nodes, version=args.kafka_version)
    print(
        f"starting Apache Kafka {kafka.version} ({args.nodes} node(s)); the first run "
        "downloads its jars with Maven ...",
        flush=True,
    )
    try:
        kafka.start()
    except ApacheKafkaUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"Apache Kafka {kafka.version} at {kafka.bootstrap_servers}", flush=True)
        print(f"  export {ENV_PREFIX}BOOTSTRAP_SERVERS={kafka.bootstrap_servers}", flush=True)
        print(
            f"  logs: {kafka.node_log(0).parent.parent}; stop with Ctrl-C, its data is deleted",
            flush=True,
        )
        stop.wait()
    finally:
        kafka.stop()
    return 0


DEFAULT_BROKER_PORT = 9092


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="asyncconsumer",
        description="Run a ConsumerApp (asyncconsumer run module:app), or the embedded "
        "Kafka broker for development (asyncconsumer broker).",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get(ENV_PREFIX + "LOG_LEVEL", "INFO"),
        help="logging level (default INFO; env ASYNCCONSUMER_LOG_LEVEL)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser(
        "run",
        help="run a ConsumerApp until SIGINT/SIGTERM",
        description="Run a ConsumerApp until SIGINT/SIGTERM (graceful stop; a second "
        "signal cancels in-flight handlers). Exit code 0 after a clean stop, 1 when the "
        "app stopped on an error. Each option can also be set in the environment variable "
        "named in brackets; the command line wins, and both override the app's code.",
    )
    run_p.add_argument(
        "app", help="module:attribute of the ConsumerApp, e.g. myservice.consumers:app"
    )
    for option in RUN_OPTIONS:
        run_p.add_argument(
            option.flag,
            dest=option.name,
            type=_argparse_type(option),
            default=None,
            help=f"{option.help} [{', '.join(option.envs)}]",
        )
    run_p.set_defaults(func=_cmd_run)

    broker_p = sub.add_parser(
        "broker",
        help="run a broker in the foreground: the embedded one, or Apache Kafka",
        description="Run the embedded broker (Tansu, in memory), or with --apache-kafka "
        "Apache Kafka from Maven Central (needs Java 17+ and Maven the first time), in the "
        "foreground until Ctrl-C; prints its address.",
    )
    broker_p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    broker_p.add_argument(
        "--port",
        type=int,
        default=None,
        help="embedded broker: default 9092, or a free port if it is in use",
    )
    broker_p.add_argument(
        "--apache-kafka", action="store_true", help="run Apache Kafka (KRaft) instead"
    )
    broker_p.add_argument(
        "--nodes", type=_positive_int, default=1, help="Apache Kafka nodes (default 1)"
    )
    broker_p.add_argument(
        "--kafka-version",
        default=os.environ.get("ASYNCCONSUMER_KAFKA_VERSION", DEFAULT_KAFKA_VERSION),
        help=f"Apache Kafka version (default {DEFAULT_KAFKA_VERSION})",
    )
    broker_p.set_defaults(func=_cmd_broker)

    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    code: int = args.func(args)
    return code


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse.__name__ = option.name
    return parse


if __name__ == "__main__":
    raise SystemExit(main())
