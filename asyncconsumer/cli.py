"""Command line: ``asyncconsumer broker`` and ``asyncconsumer run module:app``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from ._app import ConsumerApp
from ._run import run

__all__ = ["load_app", "main"]


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
    app = load_app(args.app)
    try:
        run(app)
    except Exception as exc:
        logging.getLogger("asyncconsumer").error(
            "the app stopped on an error: %r", exc, exc_info=exc
        )
        return 1
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    from .testing import EmbeddedBroker

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with EmbeddedBroker(host=args.host, port=args.port) as broker:
        print(f"embedded Kafka broker (Tansu, in memory) at {broker.bootstrap_servers}", flush=True)
        print(f"  export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
        print("  stop with Ctrl-C; its data is gone when it stops", flush=True)
        stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asyncconsumer", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="run a ConsumerApp until SIGINT/SIGTERM")
    run_p.add_argument(
        "app", help="module:attribute of the ConsumerApp, e.g. myservice.consumers:app"
    )
    run_p.set_defaults(func=_cmd_run)

    broker_p = sub.add_parser("broker", help="run the embedded broker in the foreground")
    broker_p.add_argument("--host", default="127.0.0.1")
    broker_p.add_argument("--port", type=int, default=None, help="default: a free port")
    broker_p.set_defaults(func=_cmd_broker)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
