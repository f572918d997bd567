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
- **Long polls behind unconsumed records.** aiokafka sends one fetch at a time to a
  broker, and none for a partition whose fetched records were not consumed yet; once
  those have waited 0.1 s (its prefetch backoff), it fetches the broker's other
  partitions without it. If those are caught up, that fetch is a long poll of
  ``fetch_max_wait_ms`` (500 ms by default), and when the records left behind are
  consumed meanwhile, their partition's next fetch waits for the long poll to end: a
  partition with a backlog stalls once per fetch response, behind partitions with
  nothing to read (the engine holds records back when a lane is full, so this is
  common). The patch makes fetches wait at most :data:`HELD_FETCH_WAIT_MS` while
  any fetched record is unconsumed, and ``fetch_max_wait_ms`` otherwise.
"""

from __future__ import annotations

from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.commit import OffsetFetchRequest

__all__ = ["HELD_FETCH_WAIT_MS", "check_offset_fetch", "fetch_wait_ms", "install"]

# The longest a fetch waits for data while fetched records are left unconsumed:
# what a partition whose records were held back may wait for its next fetch.
HELD_FETCH_WAIT_MS = 50

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


def fetch_wait_ms(configured: int, unconsumed: bool) -> int:
    """How long the next fetch may wait for data (see the module docstring)."""
    return min(configured, HELD_FETCH_WAIT_MS) if unconsumed else configured


def install() -> None:
    """Patch aiokafka's GroupCoordinator and Fetcher once (see the module docstring)."""
    original = GroupCoordinator._send_req
    if getattr(original, "_asyncconsumer_patched", False):
        return
    _install_fetch_wait()

    async def _send_req(self: GroupCoordinator, request: Any) -> Any:
        response = await original(self, request)
        if isinstance(request, OffsetFetchRequest):
            check_offset_fetch(self, response)
        return response

    _send_req._asyncconsumer_patched = True  # type: ignore[attr-defined]
    GroupCoordinator._send_req = _send_req


def _install_fetch_wait() -> None:
    original = Fetcher._get_actions_per_node

    def _get_actions_per_node(self: Fetcher, assignment: Any) -> Any:
        # Called by the fetch routine each time before it builds the fetch requests,
        # which read _fetch_max_wait_ms (aiokafka 0.12-0.14).
        configured = self.__dict__.setdefault(
            "_asyncconsumer_fetch_max_wait_ms", self._fetch_max_wait_ms
        )
        self._fetch_max_wait_ms = fetch_wait_ms(configured, bool(self._records))
        return original(self, assignment)

    Fetcher._get_actions_per_node = _get_actions_per_node
