"""Records of the internal topics that the Kafka client skipped are found and counted.

Two workers once stopped short of the end of a backlog: records of the ``resolve``
topic written just before a rebalance were never handed to any stage
(``streams.runtime.read_offsets`` says how that was found). A worker now notes where
each partition's next batch should start, and counts what a batch skips.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.runtime.read_offsets import ReadOffsets
from streams.runtime.state_log import StateLog


def test_batches_that_follow_each_other_skip_nothing() -> None:
    offsets = ReadOffsets()
    assert offsets.read("resolve", 0, 5, 9, committed=5) == 0
    assert offsets.read("resolve", 0, 10, 10) == 0
    assert offsets.read("clusters", 0, 0, 3) == 0  # another topic's partition 0
    assert offsets.skipped == 0


def test_a_batch_past_the_last_one_counts_what_it_skipped() -> None:
    offsets = ReadOffsets()
    offsets.read("resolve", 2, 0, 16, committed=None)
    assert offsets.read("resolve", 2, 21, 30) == 4
    assert offsets.skipped == 4


def test_the_first_batch_after_an_assignment_is_judged_against_the_committed_offset() -> None:
    offsets = ReadOffsets()
    assert offsets.read("resolve", 1, 21, 25, committed=18) == 3
    offsets.forget("resolve", 1)  # revoked; assigned again: Faust sought to 26
    assert offsets.read("resolve", 1, 26, 30, committed=26) == 0
    offsets.forget("resolve", 1)
    assert offsets.read("resolve", 1, 40, 41, committed=None) == 0  # unknown: not judged
    assert offsets.skipped == 3


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=30))
def test_records_read_again_never_count_and_every_hole_counts_once(
    steps: list[tuple[int, int]],
) -> None:
    """Batches that go back (a seek to the committed offset, records read again) or
    overlap skip nothing; an offset counts once, if a later one was handed over before
    it (read later after a seek back, it was still skipped when it should have come)."""
    offsets = ReadOffsets()
    handed: set[int] = set()
    passed: set[int] = set()  # offsets a later one overtook before they came
    pos = 0
    for back, size in steps:
        first = max(0, pos - back) if back <= 2 else pos + back - 2  # back, or a hole
        last = first + size
        offsets.read("resolve", 0, first, last, committed=0 if not handed else None)
        passed.update(o for o in range(first) if o not in handed)
        handed.update(range(first, last + 1))
        pos = max(pos, last + 1)
    assert offsets.skipped == len(passed)


def test_a_batch_past_skipped_records_is_held_back_and_the_partition_sought_back() -> None:
    """The worker seeks back to the first record skipped and holds back what comes
    before it (stale records fetched earlier), seeking again now and then, for
    ``wait_s``; then it takes what comes and counts the loss."""
    offsets = ReadOffsets(wait_s=10.0)
    offsets.read("clusters", 3, 0, 17, committed=0)
    assert offsets.behind("clusters", 3, 21, now=100.0) == (True, 18)
    assert offsets.behind("clusters", 3, 25, now=100.5) == (True, None)
    assert offsets.behind("clusters", 3, 30, now=101.6) == (True, 18)  # again, a second on
    assert offsets.behind("clusters", 3, 2, now=101.7) == (False, None)  # read again: fine
    assert offsets.behind("clusters", 3, 18, now=101.8) == (False, None)
    assert offsets.read("clusters", 3, 18, 40) == 0
    assert (offsets.skipped, offsets.seeks) == (0, 2)
    assert offsets.behind("clusters", 3, 45, now=200.0) == (True, 41)
    assert offsets.behind("clusters", 3, 50, now=200.5) == (True, None)
    # 41..44 never come: lost, and read on from 45, the first held back (not from 50)
    assert offsets.behind("clusters", 3, 52, now=211.0) == (True, 45)
    assert offsets.skipped == 4
    assert offsets.behind("clusters", 3, 45, now=211.5) == (False, None)
    assert offsets.read("clusters", 3, 45, 60) == 0
    assert offsets.skipped == 4
    offsets.forget("clusters", 3)
    assert offsets.behind("clusters", 3, 60, now=300.0, committed=None) == (False, None)


def test_a_partition_given_back_in_the_same_rebalance_is_judged_from_where_it_stood() -> None:
    """A rebalance revokes every partition, then assigns: one that comes back was read by
    nobody meanwhile, so a batch past where this worker stood skipped records, whatever
    offset Faust committed. One that went elsewhere is judged afresh next time."""
    offsets = ReadOffsets()
    for p in (1, 2):
        offsets.read("resolve", p, 0, 16, committed=0)
        offsets.forget("resolve", p)
    offsets.assigned("clusters", [1, 2])  # another topic: nothing of resolve's
    offsets.assigned("resolve", [2])
    assert offsets.behind("resolve", 2, 21, now=0.0, committed=21) == (True, 17)
    assert offsets.behind("resolve", 1, 40, now=0.0, committed=40) == (False, None)
    offsets.forget("resolve", 1)
    offsets.assigned("resolve", [1])  # back later: where it stood then is long gone
    assert offsets.behind("resolve", 1, 90, now=1.0, committed=90) == (False, None)


class _Table(dict[bytes, bytes]):
    name = "resolve-log"


def test_a_partition_taken_over_is_judged_from_where_its_log_says_the_last_owner_stood() -> None:
    """Faust commits past records its client skipped; a worker that took the partition
    over starts there and never saw them (the stream then waits for ever for what they
    carried). Each state-log key says where its writer's stage stood in the input topic,
    so the new owner seeks back to the first record the last owner's stage never had."""
    table = _Table()
    first = ReadOffsets()
    log = StateLog(table, compact_bytes=1 << 20, position=lambda p: first.position("resolve", p))
    first.read("resolve", 1, 0, 16, committed=0)
    log.append(1, b'{"p": {"p1": "b-1"}}')
    log.flush()
    # its client skipped 17..20 and Faust committed 21; then partition 1 moved
    second = ReadOffsets()
    assert StateLog(table, compact_bytes=1 << 20).logged_position(1) == 17
    second.resume("resolve", 1, log.logged_position(1))
    assert second.behind("resolve", 1, 21, now=0.0, committed=21) == (True, 17)
    assert second.behind("resolve", 1, 17, now=0.5) == (False, None)
    assert second.read("resolve", 1, 17, 30) == 0 and second.skipped == 0
    # a log behind the committed offset (batches that changed nothing it logs): read again
    third = ReadOffsets()
    third.resume("resolve", 1, 17)
    assert third.behind("resolve", 1, 12, now=0.0, committed=12) == (False, None)


def test_an_older_version_s_log_or_an_unread_partition_leaves_the_committed_offset() -> None:
    table = _Table({b"1:00000000000000000001": b"[]", b"1:00000000000000000002:x": b"[]"})
    log = StateLog(table, compact_bytes=1 << 20, position=lambda p: None)
    log.append(1, b"[]")
    log.flush()
    assert log.logged_position(1) is None and all(
        k.count(b":") == 1 or k.endswith(b"x") for k in table
    )
    offsets = ReadOffsets()
    offsets.resume("resolve", 1, log.logged_position(1))
    assert not offsets.knows("resolve", 1)
    assert offsets.behind("resolve", 1, 40, now=0.0, committed=40) == (False, None)


def test_keys_with_a_position_sort_with_those_without_by_stamp() -> None:
    """A log written by an older version and then by this one reads back in write order."""
    at: dict[int, int] = {}
    log = StateLog(_Table(), compact_bytes=1 << 20, position=at.get)
    for i in range(12):
        if i == 6:
            at[0] = 5
        log.append(0, b"[%d]" % i)
        log.flush()
    assert log.read(0) == [b"[%d]" % i for i in range(12)]
