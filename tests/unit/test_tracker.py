import random

import pytest

from asyncconsumer._runtime._offsets import (
    METADATA_MAX_CHARS,
    CompletionTracker,
    PartitionOffsets,
    decode_completed,
    encode_completed,
)


def test_commit_offset_never_passes_a_gap() -> None:
    offsets = PartitionOffsets()
    tracker = CompletionTracker(offsets)
    for o in range(10, 16):
        tracker.receive(o)
    for o in (11, 12, 14):
        tracker.complete(o)
    assert offsets.completed == -1  # 10 is still running
    assert offsets.above == {11, 12, 14}
    tracker.complete(10)
    assert offsets.completed == 13  # 13 is the lowest not completed
    assert offsets.above == {14}
    tracker.complete(13)
    tracker.complete(15)
    assert offsets.completed == 16
    assert offsets.above == set()


def test_offsets_with_holes_compacted_topic() -> None:
    offsets = PartitionOffsets()
    tracker = CompletionTracker(offsets)
    for o in (3, 7, 8, 20):
        tracker.receive(o)
    tracker.complete(8)
    tracker.complete(3)
    assert offsets.completed == 7  # the lowest received, not completed
    tracker.complete(7)
    assert offsets.completed == 20
    tracker.complete(20)
    assert offsets.completed == 21


def test_random_completion_order_matches_a_simple_model() -> None:
    rng = random.Random(7)
    offsets = PartitionOffsets()
    tracker = CompletionTracker(offsets)
    received = list(range(100, 400))
    for o in received:
        tracker.receive(o)
    order = received[:]
    rng.shuffle(order)
    done: set[int] = set()
    for o in order:
        tracker.complete(o)
        done.add(o)
        lowest_open = next((r for r in received if r not in done), None)
        expected = lowest_open if lowest_open is not None else 400
        if expected == received[0]:
            assert offsets.completed == -1
        else:
            assert offsets.completed == expected
    assert offsets.completed == 400


def test_metadata_round_trip() -> None:
    completed = {105, 106, 190, 1100}
    text = encode_completed(100, completed)
    assert text.startswith("ac1:")
    assert decode_completed(100, text) == completed
    assert encode_completed(100, []) == ""
    assert decode_completed(100, "") == set()


@pytest.mark.parametrize("metadata", ["someone else's", "ac1:!!!not-base64", "ac1:AAAA"])
def test_foreign_or_corrupt_metadata_is_ignored(metadata: str) -> None:
    assert decode_completed(5, metadata) == set()


def test_metadata_stays_bounded_and_keeps_the_lowest_offsets() -> None:
    rng = random.Random(1)
    completed = set(rng.sample(range(1, 2_000_000), 200_000))  # incompressible
    text = encode_completed(0, completed)
    assert 0 < len(text) <= METADATA_MAX_CHARS
    kept = decode_completed(0, text)
    assert kept
    assert kept <= completed
    # What is left out is the highest offsets: they merely run again.
    assert max(kept) < min(completed - kept)
