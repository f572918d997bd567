from typing import Any

import anyio
import pytest
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import OffsetAndMetadata

from asyncconsumer import CommitError, TopicPartition
from asyncconsumer._runtime._offsets import OffsetBook

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeClient:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.commits: list[dict[TopicPartition, OffsetAndMetadata]] = []
        self._coordinator = self

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.error is not None:
            raise self.error
        self.commits.append(offsets)

    async def commit_offsets(self, assignment: Any, offsets: Any) -> None:
        self.commits.append(offsets)


def test_only_processed_and_changed_offsets_are_uncommitted() -> None:
    book = OffsetBook()
    book.track(A).completed = 5
    book.track(B)  # nothing processed yet
    assert book.uncommitted() == {A: OffsetAndMetadata(5, "")}
    book.track(A).committed = 5
    assert book.uncommitted() == {}
    book.track(A).completed = 2  # a seek backwards is committed too
    assert book.uncommitted([A, B]) == {A: OffsetAndMetadata(2, "")}


async def test_commit_records_what_the_broker_accepted() -> None:
    book, client = OffsetBook(), FakeClient()
    book.track(A).completed = 3
    book.track(B).completed = 9
    assert await book.commit(client, [A]) == {A: 3}
    assert await book.commit(client) == {B: 9}
    assert await book.commit(client) == {}
    assert len(client.commits) == 2


async def test_refused_commit_raises_commit_error_and_stays_pending() -> None:
    book, client = OffsetBook(), FakeClient(CommitFailedError("rebalanced"))
    book.track(A).completed = 3
    with pytest.raises(CommitError, match="rebalanced"):
        await book.commit(client)
    assert book.uncommitted() == {A: OffsetAndMetadata(3, "")}


async def test_revoke_commit_survives_a_replaced_pattern_subscription() -> None:
    book = OffsetBook()
    book.track(A).completed = 4
    with pytest.raises(CommitError):
        await book.commit(FakeClient(IllegalStateError("No partitions assigned")))
    client = FakeClient(IllegalStateError("No partitions assigned"))
    assert await book.commit(client, revoking=True) == {A: 4}


def test_forget() -> None:
    book = OffsetBook()
    book.track(A).completed = 1
    book.forget([A, B])
    assert book.get(A) is None
    assert book.uncommitted() == {}


async def test_a_commit_that_hangs_is_given_up_as_a_commit_error() -> None:
    class Hanging(FakeClient):
        async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
            await anyio.sleep(60)  # aiokafka retries retriable errors without end

    book = OffsetBook(commit_timeout=0.05)
    book.track(A).completed = 1
    with anyio.fail_after(5), pytest.raises(CommitError, match="did not complete"):
        await book.commit(Hanging())
    assert book.uncommitted() == {A: OffsetAndMetadata(1, "")}
