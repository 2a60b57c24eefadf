"""streams.closing: which midnights are due, open, final or missed; pure, clock-free."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.closing import (
    Arrival,
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
             mark: int, first_event: int | None, late: list[int] | None = None) -> list[Task]:
    """What the worker does with the book: ask the sink, plan, write, report done (and
    count in `late` the events too late for the midnights written final)."""
    for midnight in book.to_check(partition, mark, first_event):
        book.learn(partition, midnight, sink.get((partition, midnight), Written.ABSENT))
    tasks = book.plan(partition, mark, first_event)
    for task in tasks:
        assert sink.get((partition, task.midnight)) is not Written.FINAL, task
        sink[(partition, task.midnight)] = Written.FINAL if task.final else Written.OPEN
        counted = book.done(task)
        if late is not None:
            late.append(counted)
    return tasks


def test_midnights() -> None:
    assert midnight_at_or_before(D + 5) == D and midnight_at_or_before(D) == D
    assert midnight_at_or_after(D + 5) == D + DAY_MS and midnight_at_or_after(D) == D
    assert is_midnight(D) and not is_midnight(D + 1)


def test_open_rewritten_for_late_events_then_final_once() -> None:
    book, sink = ClosingBook[str](GRACE, 3), Sink()
    first = D - 10 * DAY_MS
    tasks = run_pass(book, sink, 0, D + HOUR, first)
    # Backfill: three days back, the older ones final at once, today's open.
    assert [(t.midnight, t.communities, t.final) for t in tasks] == [
        (D - 3 * DAY_MS, None, True), (D - 2 * DAY_MS, None, True),
        (D - DAY_MS, None, True), (D, None, False)]
    assert run_pass(book, sink, 0, D + 2 * HOUR, first) == []  # nothing new: no write
    # A late event for yesterday (before D), within grace: D's row of that community.
    assert book.arrived(0, "c", [D - HOUR]) == Arrival(0, ())
    assert [(t.midnight, t.communities) for t in run_pass(book, sink, 0, D + 3 * HOUR, first)
            ] == [(D, frozenset({"c"}))]
    # An event after D reaches no closing row yet. Events older than the newest final
    # midnight (D - 1d) are too late for it, once each (and for no older one: those are
    # before their ts), and in time for D: D's row of their community is rewritten.
    assert book.arrived(0, "e", [D + HOUR, D - DAY_MS - HOUR, D - DAY_MS]) == Arrival(2, ())
    assert book.arrived(0, "f", [D - 3 * DAY_MS - HOUR]) == Arrival(3, ())  # (3 finals)
    assert [(t.midnight, t.communities) for t in run_pass(book, sink, 0, D + 4 * HOUR, first)
            ] == [(D, frozenset({"e", "f"}))]
    # The grace ends: written one last time, final; then too late as well.
    book.arrived(0, "d", [D - 2 * HOUR])
    tasks = run_pass(book, sink, 0, D + GRACE, first)
    assert [(t.midnight, t.communities, t.final) for t in tasks] == [
        (D, frozenset({"d"}), True), (D + DAY_MS, None, False)]
    assert book.arrived(0, "d", [D - 2 * HOUR]) == Arrival(1, ())
    assert sink[(0, D)] is Written.FINAL


def test_a_restarted_book_rewrites_open_files_whole_and_leaves_final_ones() -> None:
    sink = {(0, D - DAY_MS): Written.FINAL, (0, D): Written.OPEN}
    book = ClosingBook[str](GRACE, 5)
    tasks = run_pass(book, sink, 0, D + 3 * HOUR, D - 2 * DAY_MS)
    # D - 2d was never written (missed), D - 1d is final, D is open from before: whole.
    assert [(t.midnight, t.communities, t.final) for t in tasks] == [
        (D - 2 * DAY_MS, None, True), (D, None, False)]


def test_events_too_late_for_a_midnight_not_final_yet_freeze_its_row_before_them() -> None:
    # The worker wrote D while open, then fell behind (or was down): events arriving
    # (Kafka time) at or after D + grace while D is not final yet are too late for D. The
    # community's row at D is frozen as it is before them (the worker computes it and
    # hands it to `freeze`), and written so; they count once D is written final.
    book, sink = ClosingBook[str](GRACE, 1), Sink()
    run_pass(book, sink, 0, D + HOUR, D - DAY_MS)
    assert book.arrived(0, "c", [D - HOUR], arrival=D + 2 * HOUR) == Arrival(0, ())
    assert book.arrived(0, "c", [D - 2 * HOUR, D + HOUR], arrival=D + GRACE) == Arrival(0, (D,))
    book.freeze(0, D, "c", "c's rows with D - 1h")
    assert book.arrived(0, "c", [D - 3 * HOUR], arrival=D + GRACE) == Arrival(0, ())  # frozen
    assert book.arrived(0, "d", [D - 3 * HOUR], arrival=D + GRACE + HOUR) == Arrival(0, (D,))
    book.freeze(0, D, "d", "d's rows")
    assert book.frozen(0, D) == {"c": "c's rows with D - 1h", "d": "d's rows"}
    late: list[int] = []
    tasks = run_pass(book, sink, 0, D + GRACE + 2 * HOUR, D - DAY_MS, late)
    assert [(t.midnight, t.communities, t.final) for t in tasks] == [
        (D, frozenset({"c"}), True), (D + DAY_MS, None, False)]
    assert late == [3, 0] and book.frozen(0, D) == {}  # (final: forgotten)
    # A restarted worker learns the open file first, then reads the backlog.
    book, sink = ClosingBook[str](GRACE, 1), {(0, D): Written.OPEN}
    for midnight in book.to_check(0, D + GRACE + HOUR, D - DAY_MS):
        book.learn(0, midnight, sink.get((0, midnight), Written.ABSENT))
    assert book.arrived(0, "c", [D - HOUR], arrival=D + GRACE) == Arrival(0, (D,))
    tasks = book.plan(0, D + GRACE + HOUR, D - DAY_MS)
    assert [(t.midnight, t.communities) for t in tasks] == [(D, None), (D + DAY_MS, None)]


def test_midnights_not_written_yet_are_frozen_too_unless_missed() -> None:
    # A worker that follows the partition since `since` and has not planned since D's
    # grace ended: an event too late for D freezes its row before the event, whether D
    # was written or not (here the partition had no event before D yet). A midnight whose
    # grace ended at or before `since` is missed: written from the state, no freeze.
    book, sink = ClosingBook[str](GRACE, 5, since=D - 3 * DAY_MS), Sink()
    assert run_pass(book, sink, 0, D - DAY_MS - HOUR, D - DAY_MS + HOUR) == []
    assert book.arrived(0, "c", [D - 4 * DAY_MS], arrival=D + GRACE + HOUR) == Arrival(
        0, (D - 3 * DAY_MS, D - 2 * DAY_MS, D - DAY_MS, D))
    for midnight in (D - 3 * DAY_MS, D - 2 * DAY_MS, D - DAY_MS, D):
        book.freeze(0, midnight, "c", "none")
    late: list[int] = []
    tasks = run_pass(book, sink, 0, D + GRACE + 2 * HOUR, D - 4 * DAY_MS, late)
    assert [(t.midnight, t.final) for t in tasks] == [
        (D - 4 * DAY_MS, True), (D - 3 * DAY_MS, True), (D - 2 * DAY_MS, True),
        (D - DAY_MS, True), (D, True), (D + DAY_MS, False)]
    assert late == [0, 1, 1, 1, 1, 0]
    assert book.frozen(0, D - 4 * DAY_MS) == {}


def test_arrivals_while_a_midnight_is_being_written_and_failed_writes_are_not_lost() -> None:
    book, sink = ClosingBook[str](GRACE, 0), Sink()
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
    book, sink = ClosingBook[str](GRACE, 30), Sink()
    assert run_pass(book, sink, 0, D + HOUR, None) == []  # no events at all
    # An event exactly at a midnight counts for that midnight (ts <= as_of).
    assert run_pass(book, sink, 1, D + HOUR, D)[0].midnight == D
    book.exact_from(2, D - DAY_MS + 1)
    assert [t.midnight for t in run_pass(book, sink, 2, D + HOUR, D - 9 * DAY_MS)] == [D]
    assert book.oldest_needed(2, D + HOUR, D - 9 * DAY_MS) == D


def test_forgotten_partitions_start_over() -> None:
    book, sink = ClosingBook[str](GRACE, 1), Sink()
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
    book, sink = ClosingBook[str](grace, backfill), Sink()
    mark, first = D, D - 3 * DAY_MS
    finals: dict[int, int] = {}  # midnight -> times written final
    frozen: dict[int, set[str]] = {}  # the model of communities whose rows are frozen
    pending_late: dict[int, int] = {}  # midnight -> events too late for it, not counted yet
    for advance, arrivals, restart in history:
        if restart:
            book, frozen, pending_late = ClosingBook(grace, backfill), {}, {}
        mark += advance
        part = book.partitions.get(0)
        open_now = set(part.open) if part else set()
        known_finals = list(part.finals) if part else []
        dirty: dict[int, set[str]] = {}
        for c, offset, delay in arrivals:
            ts, arrival = mark + offset, mark + delay
            freeze = []
            for d in sorted(open_now):
                if ts > d:
                    continue
                if arrival >= d + grace:  # too late for d: frozen, counted once final
                    pending_late[d] = pending_late.get(d, 0) + 1
                    if c not in frozen.setdefault(d, set()):
                        frozen[d].add(c)
                        freeze.append(d)
                else:
                    dirty.setdefault(d, set()).add(c)
            late_now = sum(1 for d in known_finals if d >= ts)  # too late for final ones
            assert book.arrived(0, c, [ts], arrival=arrival) == Arrival(late_now, tuple(freeze))
            for d in freeze:
                book.freeze(0, d, c, f"{c} at {d}")
        late: list[int] = []
        for task, counted in zip(run_pass(book, sink, 0, mark, first, late), late,
                                 strict=True):
            assert set(book.frozen(0, task.midnight)) == (
                set() if task.final else frozen.get(task.midnight, set()))
            if task.final:
                finals[task.midnight] = finals.get(task.midnight, 0) + 1
                frozen.pop(task.midnight, None)
                assert counted == pending_late.pop(task.midnight, 0)
            if task.communities is not None:  # exactly the in-time arrivals
                assert task.communities == dirty.get(task.midnight, set())
        lowest = max(midnight_at_or_after(first), midnight_at_or_before(mark) - backfill * DAY_MS)
        for midnight in range(lowest, midnight_at_or_before(mark) + 1, DAY_MS):
            want = Written.FINAL if mark >= midnight + grace else Written.OPEN
            assert sink[(0, midnight)] is want or sink[(0, midnight)] is Written.FINAL
            if want is Written.OPEN:  # open ones stay open until their grace ends
                assert sink[(0, midnight)] is Written.OPEN
        assert all(n == 1 for n in finals.values()), finals
        # (an open file below the backfill range stays in range until final)
        in_range = set(range(lowest, midnight_at_or_before(mark) + 1, DAY_MS)) | {
            d for d in book.partitions[0].open if d < lowest}
        assert all(mark < d + grace for d in in_range if sink[(0, d)] is Written.OPEN)
        assert book.oldest_needed(0, mark, first) == next(
            (d for d in sorted(in_range) if sink.get((0, d)) is not Written.FINAL),
            midnight_at_or_before(mark))
