from collections.abc import Mapping

import anyio
import pytest
from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata

from asyncconsumer import CommitError, TopicPartition
from asyncconsumer._runtime._offsets import OffsetBook
from asyncconsumer._transport._memory import MemoryConsumer
from asyncconsumer.testing import MemoryKafka

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


def member(kafka: MemoryKafka, *tps: TopicPartition) -> MemoryConsumer:
    """A member of group "g" that owns ``tps`` (assigned by hand)."""
    kafka.create_topic("t", 2)
    client = MemoryConsumer(kafka, group_id="g", auto_offset_reset="earliest")
    client.assign(tps)
    return client


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
    kafka = MemoryKafka()
    book, client = OffsetBook(), member(kafka, A, B)
    book.track(A).completed = 3
    book.track(B).completed = 9
    assert await book.commit(client, [A]) == {A: 3}
    assert (kafka.committed("g", A), kafka.committed("g", B)) == (3, None)
    assert await book.commit(client) == {B: 9}
    assert await book.commit(client) == {}  # nothing new: no request
    assert (kafka.committed("g", A), kafka.committed("g", B)) == (3, 9)


async def test_refused_commit_raises_commit_error_and_stays_pending() -> None:
    kafka = MemoryKafka()
    book, client = OffsetBook(), member(kafka, A)
    kafka.fail_next_commit(CommitFailedError("rebalanced"))
    book.track(A).completed = 3
    with pytest.raises(CommitError, match="rebalanced"):
        await book.commit(client)
    assert book.uncommitted() == {A: OffsetAndMetadata(3, "")}
    assert kafka.committed("g", A) is None


async def test_a_revoke_commit_is_let_through_for_partitions_the_client_no_longer_lists() -> None:
    kafka = MemoryKafka()
    book, client = OffsetBook(), member(kafka)  # owns nothing any more, as it believes
    book.track(A).completed = 4
    with pytest.raises(CommitError, match="not assigned"):
        await book.commit(client)
    assert await book.commit(client, revoking=True) == {A: 4}
    assert kafka.committed("g", A) == 4


def test_forget() -> None:
    book = OffsetBook()
    book.track(A).completed = 1
    book.forget([A, B])
    assert book.get(A) is None
    assert book.uncommitted() == {}


async def test_a_commit_that_hangs_is_given_up_as_a_commit_error() -> None:
    class Hanging(MemoryConsumer):
        async def commit(
            self, offsets: Mapping[TopicPartition, OffsetAndMetadata], *, revoking: bool = False
        ) -> None:
            await anyio.sleep(60)  # aiokafka retries retriable errors without end

    book = OffsetBook(commit_timeout=0.05)
    book.track(A).completed = 1
    with anyio.fail_after(5), pytest.raises(CommitError, match="did not complete"):
        await book.commit(Hanging(MemoryKafka(), group_id="g", auto_offset_reset="earliest"))
    assert book.uncommitted() == {A: OffsetAndMetadata(1, "")}
