"""The aiokafka work-around: OffsetFetch request-level errors are raised, not read
as "no committed offset" (the broker side is in tests/integration/test_apache_kafka.py)."""

from __future__ import annotations

import aiokafka.errors as kafka_errors
import pytest
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.commit import OffsetFetchResponse_v3

import asyncconsumer  # noqa: F401 -- installs the patch
from asyncconsumer._aiokafka_compat import HELD_FETCH_WAIT_MS, check_offset_fetch, install


class Coordinator:
    dead = False

    def coordinator_dead(self) -> None:
        self.dead = True


def response(error_code: int, topics: list[object] | None = None) -> object:
    return OffsetFetchResponse_v3(throttle_time_ms=0, topics=topics or [], error_code=error_code)


def test_load_in_progress_is_raised_and_retriable() -> None:
    coordinator = Coordinator()
    with pytest.raises(kafka_errors.GroupLoadInProgressError) as info:
        check_offset_fetch(coordinator, response(14))
    assert info.value.retriable  # aiokafka's fetch_committed_offsets loop retries it
    assert not coordinator.dead


def test_not_coordinator_marks_the_coordinator_dead() -> None:
    coordinator = Coordinator()
    with pytest.raises(kafka_errors.NotCoordinatorForGroupError):
        check_offset_fetch(coordinator, response(16))
    assert coordinator.dead


def test_a_good_response_passes() -> None:
    coordinator = Coordinator()
    check_offset_fetch(coordinator, response(0, [("t", [(0, 4, "", 0)])]))
    assert not coordinator.dead


def test_installed_once() -> None:
    patched = GroupCoordinator._send_req
    assert getattr(patched, "_asyncconsumer_patched", False)
    install()
    assert GroupCoordinator._send_req is patched


def test_fetches_wait_briefly_while_fetched_records_are_unconsumed() -> None:
    """The patched fetcher (the attributes it relies on are aiokafka's: this fails if
    an aiokafka release renames them) long-polls only when nothing is left unconsumed;
    the broker-side effect is in tests/integration/test_fetching.py."""

    class NoPartitions:
        tps = ()

    fetcher = Fetcher.__new__(Fetcher)
    fetcher._fetch_max_wait_ms = 500
    fetcher._fetcher_timeout = 0.2
    fetcher._records = {}
    fetcher._get_actions_per_node(NoPartitions())
    assert fetcher._fetch_max_wait_ms == 500
    fetcher._records = {"a partition": "its unconsumed records"}
    fetcher._get_actions_per_node(NoPartitions())
    assert fetcher._fetch_max_wait_ms == HELD_FETCH_WAIT_MS
    fetcher._records = {}
    fetcher._get_actions_per_node(NoPartitions())
    assert fetcher._fetch_max_wait_ms == 500
