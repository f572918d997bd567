"""Command line: ``asyncconsumer broker`` and ``asyncconsumer run module:app``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._app import ConsumerApp
from ._errors import ConfigurationError
from ._run import run
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

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


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


RUN_OPTIONS = (
    Option("bootstrap_servers", str, "broker addresses, host:port[,host:port...]"),
    Option("group_id", str, "the consumer group"),
    Option("auto_offset_reset", _offset_reset, "earliest, latest or none"),
    Option("commit_interval", _positive_float, "seconds between commits"),
    Option("shutdown_timeout", _positive_float, "seconds in-flight handlers get at stop"),
    Option("drain_timeout", _positive_float, "seconds in-flight handlers get at a revoke"),
    Option("max_buffered_records", _positive_int, "records buffered per partition"),
    Option("client_id", str, "the Kafka client id"),
    Option("metrics_port", _port, "serve /metrics, /health/live, /health/ready on this port"),
    Option("metrics_host", str, "address the metrics port listens on (default 0.0.0.0)"),
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
        if value is None and env.get(option.env):
            try:
                value = option.parse(env[option.env])
            except ValueError as exc:
                raise SystemExit(f"error: {option.env}: {exc}") from exc
        if value is not None:
            values[option.name] = value
    return values


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


def load_app(target: str) -> ConsumerApp:
    """Import ``module:attribute`` (like uvicorn) and return the ConsumerApp there."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"error: expected module:attribute, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"error: cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, ConsumerApp):
        raise SystemExit(f"error: {target!r} is not a ConsumerApp (got {type(app).__name__})")
    return app


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
        with EmbeddedBroker(host=args.host, port=args.port) as broker:
            print(
                f"embedded Kafka broker (Tansu, in memory) at {broker.bootstrap_servers}",
                flush=True,
            )
            print(f"  export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
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
        print(f"  export KAFKA_BOOTSTRAP_SERVERS={kafka.bootstrap_servers}", flush=True)
        print(
            f"  logs: {kafka.node_log(0).parent.parent}; stop with Ctrl-C, its data is deleted",
            flush=True,
        )
        stop.wait()
    finally:
        kafka.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asyncconsumer", description=__doc__)
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
            help=f"{option.help} [{option.env}]",
        )
    run_p.set_defaults(func=_cmd_run)

    broker_p = sub.add_parser(
        "broker",
        help="run a broker in the foreground: the embedded one, or Apache Kafka",
        description="Run the embedded broker (Tansu, in memory), or with --apache-kafka "
        "Apache Kafka from Maven Central (needs Java 17+ and Maven the first time), in the "
        "foreground until Ctrl-C; prints its address.",
    )
    broker_p.add_argument("--host", default="127.0.0.1")
    broker_p.add_argument("--port", type=int, default=None, help="default: a free port")
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
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
