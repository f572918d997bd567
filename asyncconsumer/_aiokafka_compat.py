"""Work-arounds for aiokafka defects that real Apache Kafka brings out.

``install()`` is idempotent and called when ``asyncconsumer`` is imported. What it
changes, in aiokafka 0.12-0.14 (checked against Apache Kafka 4.3):

- **OffsetFetch request-level errors.** From version 2 the OffsetFetch response
  carries a request-level ``error_code`` (with no partitions) for
  ``COORDINATOR_LOAD_IN_PROGRESS`` and ``NOT_COORDINATOR``; aiokafka reads only the
  per-partition codes, so it takes "the coordinator is loading" (right after a
  broker restart or a coordinator move) for "no committed offset", and the consumer
  falls back to ``auto_offset_reset``: records run again (``earliest``) or are
  skipped (``latest``). The patch raises the request-level error, so aiokafka's
  own retry loop (``fetch_committed_offsets``) retries it, as the Java client does.
"""

from __future__ import annotations

from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.commit import OffsetFetchRequest

__all__ = ["check_offset_fetch", "install"]

_COORDINATOR_MOVED = (
    kafka_errors.NotCoordinatorForGroupError,
    kafka_errors.GroupCoordinatorNotAvailableError,
)


def check_offset_fetch(coordinator: Any, response: Any) -> None:
    """Raise an OffsetFetch response's request-level error (marking the coordinator
    dead when it moved), as aiokafka does for the per-partition ones."""
    code = getattr(response, "error_code", 0)
    if code:
        error_type = kafka_errors.for_code(code)
        if issubclass(error_type, _COORDINATOR_MOVED):
            coordinator.coordinator_dead()
        raise error_type()


def install() -> None:
    """Patch aiokafka's GroupCoordinator once (see the module docstring)."""
    original = GroupCoordinator._send_req
    if getattr(original, "_asyncconsumer_patched", False):
        return

    async def _send_req(self: GroupCoordinator, request: Any) -> Any:
        response = await original(self, request)
        if isinstance(request, OffsetFetchRequest):
            check_offset_fetch(self, response)
        return response

    _send_req._asyncconsumer_patched = True  # type: ignore[attr-defined]
    GroupCoordinator._send_req = _send_req
