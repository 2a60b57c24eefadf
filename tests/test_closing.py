"""streams.closing: which midnights are due, open, final or missed; pure, clock-free."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.closing import (
    ClosingBook,
    Task,
    Written,
    is_midnight,
    midnight_at_or_after,
    midnight_at_or_before,
)
from streams.config import DAY_MS

HOUR = 3_600_000
D = 20_000 * DAY_MS  # a midnight
GRACE = 24 * HOUR


Sink = dict[tuple[int, int], Written]  # what a sink holds per (partition, midnight)


def run_pass(book: ClosingBook, sink: Sink, partition: int,
             mark: int, first_event: int | None) -> list[Task]:
    """What the worker does with the book: ask the sink, plan, write, report done."""
    for midnight in book.to_check(partition, mark, first_event):
        book.learn(partition, midnight, sink.get((partition, midnight), Written.ABSENT))
    tasks = book.plan(partition, mark, first_event)
    for task in tasks:
        assert sink.get((partition, task.midnight)) is not Written.FINAL, task
        sink[(partition, task.midnight)] = Written.FINAL if task.final else Written.OPEN
        book.done(task)
    return tasks


def test_midnights() -> None:
    assert midnight_at_or_before(D + 5) == D and midnight_at_or_before(D) == D
    assert midnight_at_or_after(D + 5) == D + DAY_MS and midnight_at_or_after(D) == D
    assert is_midnight(D) and not is_midnight(D + 1)


def test_open_rewritten_for_late_events_then_final_once() -> None:
    book, sink = ClosingBook(GRACE, 3), Sink()
    first = D - 10 * DAY_MS
    tasks = run_pass(book, sink, 0, D + HOUR, first)
    # Backfill: three days back, the older ones final at once, today's open.
    assert [(t.midnight, t.communities, t.final) for t in tasks] == [
        (D - 3 * DAY_MS, None, True), (D - 2 * DAY_MS, None, True),
        (D - DAY_MS, None, True), (D, None, False)]
    assert run_pass(book, sink, 0, D + 2 * HOUR, first) == []  # nothing new: no write
    # A late event for yesterday (before D), within grace: D's row of that community.
    assert book.arrived(0, "c", [D - HOUR]) == 0
    assert [(t.midnight, t.communities) for t in run_pass(book, sink, 0, D + 3 * HOUR, first)
            ] == [(D, frozenset({"c"}))]
    # An event after D reaches no closing row yet; one before D - 1d is too late.
    assert book.arrived(0, "c", [D + HOUR, D - DAY_MS - HOUR, D - DAY_MS]) == 2
    assert run_pass(book, sink, 0, D + 4 * HOUR, first) == []
    # The grace ends: written one last time, final; then too late as well.
    book.arrived(0, "d", [D - 2 * HOUR])
    tasks = run_pass(book, sink, 0, D + GRACE, first)
    assert [(t.midnight, t.communities, t.final) for t in tasks] == [
        (D, frozenset({"d"}), True), (D + DAY_MS, None, False)]
    assert book.arrived(0, "d", [D - 2 * HOUR]) == 1
    assert sink[(0, D)] is Written.FINAL


def test_a_restarted_book_rewrites_open_files_whole_and_leaves_final_ones() -> None:
    sink = {(0, D - DAY_MS): Written.FINAL, (0, D): Written.OPEN}
    book = ClosingBook(GRACE, 5)
    tasks = run_pass(book, sink, 0, D + 3 * HOUR, D - 2 * DAY_MS)
    # D - 2d was never written (missed), D - 1d is final, D is open from before: whole.
    assert [(t.midnight, t.communities, t.final) for t in tasks] == [
        (D - 2 * DAY_MS, None, True), (D, None, False)]


def test_events_that_reach_kafka_after_an_open_midnights_grace_leave_its_rows() -> None:
    # The worker wrote D while open, then fell behind (or was down): events arriving
    # (Kafka time) after D + grace while D is not final yet are too late for D.
    book, sink = ClosingBook(GRACE, 1), Sink()
    run_pass(book, sink, 0, D + HOUR, D - DAY_MS)
    assert book.arrived(0, "c", [D - HOUR], arrival=D + 2 * HOUR) == 0  # in time: dirty
    assert book.arrived(0, "c", [D - 2 * HOUR, D + HOUR], arrival=D + GRACE) == 1
    assert book.arrived(0, "d", [D - 3 * HOUR], arrival=D + GRACE + HOUR) == 1
    tasks = run_pass(book, sink, 0, D + GRACE + 2 * HOUR, D - DAY_MS)
    assert [(t.midnight, t.communities, t.final, t.keep) for t in tasks] == [
        (D, frozenset(), True, frozenset({"c", "d"})), (D + DAY_MS, None, False, frozenset())]
    # A restarted worker learns the open file first, then reads the backlog.
    book, sink = ClosingBook(GRACE, 1), {(0, D): Written.OPEN}
    for midnight in book.to_check(0, D + GRACE + HOUR, D - DAY_MS):
        book.learn(0, midnight, sink.get((0, midnight), Written.ABSENT))
    assert book.arrived(0, "c", [D - HOUR], arrival=D + GRACE) == 1
    tasks = book.plan(0, D + GRACE + HOUR, D - DAY_MS)
    assert [(t.midnight, t.communities, t.keep) for t in tasks] == [
        (D, None, frozenset({"c"})), (D + DAY_MS, None, frozenset())]


def test_arrivals_while_a_midnight_is_being_written_and_failed_writes_are_not_lost() -> None:
    book, sink = ClosingBook(GRACE, 0), Sink()
    for midnight in book.to_check(0, D + HOUR, D - DAY_MS):
        book.learn(0, midnight, Written.ABSENT)
    (task,) = book.plan(0, D + HOUR, D - DAY_MS)  # written whole, rows computed ...
    book.arrived(0, "c", [D - HOUR])  # ... while a late event for D comes in
    book.done(task)
    assert [t.communities for t in book.plan(0, D + 2 * HOUR, D - DAY_MS)] == [
        frozenset({"c"})]
    # That write fails (or a rebalance abandons the pass): planned again, same rows.
    book.retry(Task(0, D, frozenset({"c"}), False))
    book.arrived(0, "d", [D - HOUR])
    assert [t.communities for t in book.plan(0, D + 3 * HOUR, D - DAY_MS)] == [
        frozenset({"c", "d"})]
    assert sink == {}


def test_nothing_before_the_first_event_or_the_exact_state() -> None:
    book, sink = ClosingBook(GRACE, 30), Sink()
    assert run_pass(book, sink, 0, D + HOUR, None) == []  # no events at all
    # An event exactly at a midnight counts for that midnight (ts <= as_of).
    assert run_pass(book, sink, 1, D + HOUR, D)[0].midnight == D
    book.exact_from(2, D - DAY_MS + 1)
    assert [t.midnight for t in run_pass(book, sink, 2, D + HOUR, D - 9 * DAY_MS)] == [D]
    assert book.oldest_needed(2, D + HOUR, D - 9 * DAY_MS) == D


def test_forgotten_partitions_start_over() -> None:
    book, sink = ClosingBook(GRACE, 1), Sink()
    run_pass(book, sink, 0, D + HOUR, D - DAY_MS)
    book.forget([0])
    assert book.partitions == {}
    assert run_pass(book, sink, 0, D + 2 * HOUR, D - DAY_MS) == [Task(0, D, None, False)]


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        ClosingBook(-1, 1)


steps = st.lists(st.tuples(
    st.integers(0, 30 * HOUR),  # how far the mark moves
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(-6 * DAY_MS, 0),
                       st.integers(0, 40 * HOUR)),  # when it reached Kafka, after the mark
             max_size=4),
    st.booleans(),  # restart (a new book over the same sink) before this step
), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(steps, st.integers(0, 4), st.integers(1, 48))
def test_every_midnight_is_final_once_and_open_rows_follow_late_events(
        history: list, backfill: int, grace_hours: int) -> None:
    grace = grace_hours * HOUR
    book, sink = ClosingBook(grace, backfill), Sink()
    mark, first = D, D - 3 * DAY_MS
    finals: dict[int, int] = {}  # midnight -> times written final
    too_late: dict[int, set[str]] = {}  # the model of communities whose rows stay
    for advance, arrivals, restart in history:
        if restart:
            book, too_late = ClosingBook(grace, backfill), {}
        mark += advance
        newest = book.newest_final(0)
        open_now = set(book.partitions[0].open) if 0 in book.partitions else set()
        dirty: dict[int, set[str]] = {}
        late_expected = 0
        for c, offset, delay in arrivals:
            ts, arrival = mark + offset, mark + delay
            if newest is not None and ts <= newest:
                late_expected += 1
                continue
            reached = [d for d in open_now if ts <= d]
            for d in reached:
                (too_late if arrival >= d + grace else dirty).setdefault(d, set()).add(c)
            late_expected += any(arrival >= d + grace for d in reached)
        late = sum(book.arrived(0, c, [mark + offset], arrival=mark + delay)
                   for c, offset, delay in arrivals)
        assert late == late_expected
        for task in run_pass(book, sink, 0, mark, first):
            keep = too_late.get(task.midnight, set()) if task.midnight in open_now else set()
            assert task.keep == keep
            if task.final:
                finals[task.midnight] = finals.get(task.midnight, 0) + 1
                too_late.pop(task.midnight, None)
            if task.communities is not None:  # exactly the in-time arrivals, minus keep
                assert task.communities == dirty.get(task.midnight, set()) - keep
        lowest = max(midnight_at_or_after(first), midnight_at_or_before(mark) - backfill * DAY_MS)
        for midnight in range(lowest, midnight_at_or_before(mark) + 1, DAY_MS):
            want = Written.FINAL if mark >= midnight + grace else Written.OPEN
            assert sink[(0, midnight)] is want or sink[(0, midnight)] is Written.FINAL
            if want is Written.OPEN:  # open ones stay open until their grace ends
                assert sink[(0, midnight)] is Written.OPEN
        assert all(n == 1 for n in finals.values()), finals
        assert book.oldest_needed(0, mark, first) == next(
            (d for d in range(lowest, midnight_at_or_before(mark) + 1, DAY_MS)
             if sink.get((0, d)) is not Written.FINAL), midnight_at_or_before(mark))
