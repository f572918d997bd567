"""The checker on small synthetic logs: it passes a clean run and catches each
kind of failure (so a scenario that passes proves something)."""

from __future__ import annotations

from typing import Any

import pytest

from asyncconsumer._runtime._offsets import encode_completed

from .checker import BrokerSample, Event, check, duplicate_bound, epochs
from .producer import Produced

pytestmark = pytest.mark.chaos_quick

T = "t"


def rec(member: str, partition: int, offset: int, key: str, seq: int, at: float) -> Event:
    return {"ev": "rec", "m": member, "t": T, "p": partition, "o": offset, "k": key,
            "s": seq, "mono": at}  # fmt: skip


def assign(member: str, at: float, *partitions: int) -> Event:
    return {"ev": "assign", "m": member, "parts": [[T, p] for p in partitions], "mono": at}


def commit(member: str, at: float, offsets: dict[int, int], error: str | None = None) -> Event:
    listed = [[T, p, o] for p, o in offsets.items()]
    return {"ev": "commit", "m": member, "offsets": listed, "error": error, "mono": at}


PRODUCED = [
    Produced(T, 0, 0, "a", 0),
    Produced(T, 0, 1, "b", 0),
    Produced(T, 0, 2, "a", 1),
    Produced(T, 0, 3, "b", 1),
]
ENDS = {(T, 0): 4}


def clean() -> dict[str, list[Event]]:
    """m1 handles 0-1 and commits 2, then m2 takes over and handles 2-3, commits 4."""
    return {
        "m1": [
            assign("m1", 0.0, 0),
            rec("m1", 0, 0, "a", 0, 1.0),
            rec("m1", 0, 1, "b", 0, 1.1),
            commit("m1", 1.5, {0: 2}),
            {"ev": "revoke", "m": "m1", "parts": [[T, 0]], "mono": 1.6},
        ],
        "m2": [
            assign("m2", 2.0, 0),
            rec("m2", 0, 2, "a", 1, 2.1),
            rec("m2", 0, 3, "b", 1, 2.2),
            commit("m2", 2.5, {0: 4}),
        ],
    }


def run(members: dict[str, list[Event]], **kw: Any) -> Any:
    return check(PRODUCED, members, {(T, 0): kw.pop("committed", 4)}, ENDS, **kw)


def test_a_clean_run_passes() -> None:
    report = run(clean())
    assert report.problems() == []
    assert (report.produced, report.handled, report.duplicates) == (4, 4, 0)
    assert (report.commits, report.rebalances) == (2, 2)


def test_loss_is_found() -> None:
    members = clean()
    del members["m2"][2]  # offset 3 never handled
    report = run(members)
    assert report.lost == [PRODUCED[3]]
    assert any("lost" in p for p in report.problems())


def test_duplicates_are_counted_and_a_replay_in_a_new_epoch_is_no_order_violation() -> None:
    members = clean()
    # m2 starts again from offset 1: a duplicate, in order within its own epoch.
    members["m2"].insert(1, rec("m2", 0, 1, "b", 0, 2.05))
    report = run(members)
    assert report.duplicates == 1
    assert report.problems() == []


def test_key_order_violation_within_an_epoch_is_found() -> None:
    members = clean()
    members["m2"][1:3] = [rec("m2", 0, 3, "b", 1, 2.1), rec("m2", 0, 2, "a", 1, 2.2)]
    members["m2"].append(rec("m2", 0, 4, "a", 0, 2.3))  # key a: seq 0 after seq 1
    report = run(members, ordering="key")
    assert len(report.order_violations) == 1
    assert "key a" in report.order_violations[0]
    # With partition ordering, the offsets going backwards are violations too.
    assert len(run(members, ordering="partition").order_violations) == 2


def test_a_record_handled_twice_in_one_epoch_is_an_order_violation() -> None:
    members = clean()
    members["m2"].insert(2, rec("m2", 0, 2, "a", 1, 2.15))
    assert run(members, ordering="key").order_violations


def test_none_ordering_allows_any_order_but_not_a_record_twice_in_an_epoch() -> None:
    members = clean()
    members["m2"][1:3] = [rec("m2", 0, 3, "b", 1, 2.1), rec("m2", 0, 2, "a", 1, 2.2)]
    members["m2"].append(rec("m2", 0, 4, "a", 0, 2.3))  # key a: seq 0 after seq 1
    assert run(members, ordering="none").order_violations == []
    members["m2"].append(rec("m2", 0, 3, "b", 1, 2.4))
    assert run(members, ordering="none").order_violations == ["m2 epoch 1 handled t[0]@3 twice"]


def test_a_commit_past_an_unhandled_record_is_unsafe() -> None:
    members = clean()
    members["m1"][3] = commit("m1", 1.5, {0: 3})  # offset 2 not handled yet at 1.5
    report = run(members)
    assert len(report.unsafe_commits) == 1
    assert "offsets [2]" in report.unsafe_commits[0]


def test_a_commit_before_its_records_were_handled_is_unsafe() -> None:
    members = clean()
    members["m1"][3] = commit("m1", 1.05, {0: 2})  # offset 1 handled at 1.1 only
    assert run(members).unsafe_commits


def test_a_failed_commit_is_not_checked_but_counted() -> None:
    members = clean()
    members["m1"].append(commit("m1", 1.7, {0: 4}, error="CommitFailedError: rebalanced"))
    report = run(members)
    assert report.problems() == []
    assert report.failed_commits == 1


def test_lag_is_found() -> None:
    report = run(clean(), committed=2)
    assert report.lag == {(T, 0): 2}
    assert any("lag" in p for p in report.problems())


def test_duplicate_bound_counts_records_above_the_last_commit_in_the_last_epoch() -> None:
    events = [
        assign("m1", 0.0, 0),
        rec("m1", 0, 0, "a", 0, 1.0),
        commit("m1", 1.5, {0: 1}),
        rec("m1", 0, 1, "b", 0, 1.6),
        rec("m1", 0, 2, "a", 1, 1.7),
    ]
    assert duplicate_bound(events) == 2
    assert [epoch for _, epoch in epochs(events)] == [1, 1, 1]


def frozen_m1() -> dict[str, list[Event]]:
    """As clean(), but m1 froze at 1.2 instead of seeing its revocation."""
    members = clean()
    members["m1"] = members["m1"][:3]  # assign, records 0 and 1; no commit, no revoke
    return members


def test_a_late_commit_that_moves_the_offset_backwards_is_found() -> None:
    members = frozen_m1()
    # Thawed, m1 handles the record it had buffered and commits past it, after m2's
    # commit of 4 (at 2.5) was logged: a regression, whenever its answer came.
    members["m1"] += [rec("m1", 0, 2, "a", 1, 2.8), commit("m1", 3.0, {0: 3})]
    report = run(members)
    assert report.commit_regressions == ["m1 committed t[0]@3 after m2's @4"]
    assert any("backwards" in p for p in report.problems())


def test_a_commit_answered_after_a_freeze_is_placed_by_its_request() -> None:
    members = frozen_m1()
    # The commit of 2 was sent before the freeze (m1 handled offset 1 at 1.1) and the
    # broker applied it then; m1 read the answer after its thaw and logged it at 3.0,
    # after m2's commit of 4 (2.5). The logs cannot tell that it went backwards.
    members["m1"].append(commit("m1", 3.0, {0: 2}))
    assert run(members).commit_regressions == []


def test_duplicate_bound_at_a_freeze_uses_the_epoch_of_that_time() -> None:
    events = [
        assign("m1", 0.0, 0),
        rec("m1", 0, 0, "a", 0, 1.0),
        commit("m1", 1.5, {0: 1}),
        rec("m1", 0, 1, "b", 0, 1.6),
        # frozen at 2.0; thawed, it handles one more buffered record, then rejoins
        rec("m1", 0, 2, "a", 1, 9.0),
        {"ev": "revoke", "m": "m1", "parts": [[T, 0]], "mono": 9.1},
        assign("m1", 9.5, 0),
        rec("m1", 0, 3, "b", 1, 9.6),
        commit("m1", 9.7, {0: 4}),  # a later epoch's commit does not shrink the bound
    ]
    assert duplicate_bound(events, at=2.0) == 2
    assert duplicate_bound(events) == 0


def sample(at: float, offset: int, *completed: int) -> BrokerSample:
    metadata = encode_completed(offset, completed) if completed else ""
    return BrokerSample(at, {(T, 0): (offset, metadata)})


def test_broker_samples_of_safe_commits_pass_and_are_counted() -> None:
    samples = [sample(1.6, 2), sample(2.25, 2, 3), sample(2.6, 4), sample(2.7, -1)]
    report = run(clean(), samples=samples)
    assert report.problems() == []
    assert (report.broker_samples, report.broker_checked, report.metadata_checked) == (4, 3, 1)


def test_a_broker_commit_past_an_unhandled_record_is_found() -> None:
    report = run(clean(), samples=[sample(1.05, 2)])  # offset 1 handled at 1.1 only
    assert len(report.broker_violations) == 1
    assert "records below it unhandled, e.g. [1]" in report.broker_violations[0]
    assert any("on the broker" in p for p in report.problems())


def test_commit_metadata_listing_an_unhandled_record_is_found() -> None:
    # committed 2 at 2.15 with offset 3 listed as completed; it was handled at 2.2
    report = run(clean(), samples=[sample(2.15, 2, 3)])
    assert len(report.broker_violations) == 1
    assert "metadata" in report.broker_violations[0]


def test_a_committed_offset_going_back_between_samples_is_found() -> None:
    report = run(clean(), samples=[sample(2.6, 4), sample(2.7, 2)])
    assert report.broker_violations == [f"{T}[0] committed offset went back from 4 to 2 at 2.700"]


def test_records_done_otherwise_are_not_lost_and_count_as_handled_for_commits() -> None:
    members = clean()
    del members["m2"][2]  # offset 3 never handled, but dead-lettered at 2.3
    report = run(members, done={(T, 0, 3): 2.3}, samples=[sample(2.6, 4)])
    assert report.problems() == []
    report = run(members, done={(T, 0, 3): 2.7}, samples=[sample(2.6, 4)])
    assert report.unsafe_commits
    assert report.broker_violations
