"""The event log of a member process: one JSON line per event in ``$RELY_LOG``."""

from __future__ import annotations

import json
import os
import time
from typing import Any

_fd = os.open(os.environ["RELY_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
MEMBER = os.environ["RELY_MEMBER"]


def emit(event: dict[str, Any]) -> None:
    """Append one JSON line with one write(2) (so that it survives SIGKILL), stamped
    with the member and both clocks."""
    event["m"] = MEMBER
    event["mono"] = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
    event["wall"] = time.time()
    os.write(_fd, (json.dumps(event, separators=(",", ":")) + "\n").encode())
