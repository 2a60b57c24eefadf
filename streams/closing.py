"""Closing rows: which UTC midnights are due, open, final or missed. Pure and clock-free.

A closing row for midnight `D` (SPEC section 4) is final by event time: it holds every
event with `ts <= D` that arrived before `D + grace`. The worker feeds this module what it
knows (the arrival mark up to which it has read everything, which closing files exist,
which communities got events for which midnights) and asks what to write; it does the
snapshots and the I/O itself. Everything here is per source partition, because a
partition's closing rows for one midnight are one file, whoever owns the partition.

Life of a midnight `D` of a partition, with `mark` the time up to which the worker has
read everything that arrived (it only plans while caught up):

- due when `mark >= D`; open while `mark < D + grace`: written, and rewritten whenever
  events with `ts <= D` arrive for some of its communities (the same file is replaced);
- at `mark >= D + grace` it is written one last time and becomes final: later events
  with `ts <= D` are counted as too late and leave it unchanged. Events that reach Kafka
  after `D + grace` while the worker is still behind (so `D` is not final yet) are too
  late as well: the rows of their communities stay as last written;
- a midnight whose grace ran out while nobody wrote it (the worker was down or behind,
  or the topics held history before the worker's first start) is missed: it is written
  once from the event-time state, when the worker has caught up, and is final at once;
- a midnight older than what the retained state can compute exactly is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from streams.config import DAY_MS


def midnight_at_or_before(t: int) -> int:
    return t - t % DAY_MS


def midnight_at_or_after(t: int) -> int:
    """The first midnight at or after t: the first one a community with an event at t
    has a closing row for (as in replay's daily snapshots)."""
    return -(-t // DAY_MS) * DAY_MS


def is_midnight(t: int) -> bool:
    return t % DAY_MS == 0


class Written(Enum):
    """What the sink holds for a (partition, midnight)."""

    ABSENT = "absent"
    OPEN = "open"  # written while within grace; may be rewritten
    FINAL = "final"


@dataclass(frozen=True)
class Task:
    """Write the closing rows of `partition` at `midnight`.

    `communities` None: compute every community of the partition; otherwise recompute
    only these and keep the other rows as last written. `keep`: communities whose rows
    stay as last written in any case (events after the grace reached them). `final`:
    the file is final.
    """

    partition: int
    midnight: int
    communities: frozenset[str] | None
    final: bool
    keep: frozenset[str] = frozenset()


@dataclass
class _Partition:
    # Midnights at or after this one can be computed exactly from the retained state.
    exact_from: int | None = None
    written: dict[int, Written] = field(default_factory=dict)
    open: set[int] = field(default_factory=set)  # the midnights written OPEN
    pending: set[int] = field(default_factory=set)  # planned, not yet written
    written_here: set[int] = field(default_factory=set)  # by this process: rows cached
    dirty: dict[int, set[str]] = field(default_factory=dict)
    # Open midnights whose grace ended before some of their events arrived (the worker
    # was behind or down then): those communities' rows stay as they were written.
    too_late: dict[int, set[str]] = field(default_factory=dict)
    newest_final: int | None = None


class ClosingBook:
    """What is written, open and final per partition; what to write next."""

    def __init__(self, grace_ms: int, backfill_days: int) -> None:
        if grace_ms < 0 or backfill_days < 0:
            raise ValueError("grace and backfill must not be negative")
        self.grace_ms = grace_ms
        self.backfill_days = backfill_days
        self.partitions: dict[int, _Partition] = {}

    def _part(self, partition: int) -> _Partition:
        book = self.partitions.get(partition)
        if book is None:
            book = self.partitions[partition] = _Partition()
        return book

    # ---- what the worker tells -------------------------------------------------------

    def exact_from(self, partition: int, t: int | None) -> None:
        """The partition's state is exact for snapshots at `t` or later (None: always,
        e.g. a fresh start that reads the topics from their beginning)."""
        self._part(partition).exact_from = t

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this process no longer owns (their book starts over when back)."""
        for partition in partitions:
            self.partitions.pop(partition, None)

    def arrived(self, partition: int, community: str, timestamps: list[int],
                oldest: int | None = None, arrival: int | None = None) -> int:
        """Events of one community arrived (`oldest`: the oldest of their times, when
        known; `arrival`: when they reached Kafka, when known); return how many came too
        late (after the grace of a midnight at or after their ts). The open midnights
        they reach in time are marked for a rewrite of this community's row; those they
        reach too late (an open midnight's grace ended while the worker was behind) keep
        its row as written."""
        book = self.partitions.get(partition) or self._part(partition)
        if oldest is None:
            oldest = min(timestamps)
        late, newest_final, in_time = 0, book.newest_final, timestamps
        if newest_final is not None and oldest <= newest_final:  # (rare: a loop only then)
            in_time = [ts for ts in timestamps if ts > newest_final]
            late = len(timestamps) - len(in_time)
            if not in_time:
                return late
            oldest = min(in_time)
        too_late_for = None
        # (Midnights being written count too: their rows may be computed already.)
        for midnight in book.open | book.pending if book.pending else book.open:
            if midnight < oldest:
                continue
            if arrival is not None and arrival >= midnight + self.grace_ms:
                book.too_late.setdefault(midnight, set()).add(community)
                too_late_for = max(midnight, too_late_for or midnight)
            else:
                book.dirty.setdefault(midnight, set()).add(community)
        if too_late_for is not None:
            late += sum(1 for ts in in_time if ts <= too_late_for)
        return late

    def to_check(self, partition: int, mark: int, first_event: int | None) -> list[int]:
        """Midnights in range whose file state is not known yet (ask the sink)."""
        book = self._part(partition)
        return [d for d in self._in_range(partition, mark, first_event)
                if d not in book.written]

    def learn(self, partition: int, midnight: int, written: Written) -> None:
        """What the sink holds for a midnight (from `to_check`)."""
        book = self._part(partition)
        self._set(book, midnight, written)

    # ---- what to write ---------------------------------------------------------------

    def plan(self, partition: int, mark: int, first_event: int | None) -> list[Task]:
        """The writes due at `mark` (call `to_check`/`learn` first), oldest first. Each
        task is pending until `done` or `retry`: arrivals meanwhile mark its midnight
        dirty again."""
        book = self._part(partition)
        tasks = []
        for midnight in self._in_range(partition, mark, first_event):
            written = book.written.get(midnight)
            if written is None or written is Written.FINAL:
                continue  # (unknown: not checked yet)
            final = mark >= midnight + self.grace_ms
            keep = frozenset(book.too_late.get(midnight, ()))
            dirty = book.dirty.get(midnight, set()) - keep
            if written is Written.ABSENT or midnight not in book.written_here:
                # Missed, or written by an earlier process (whose state we no longer
                # know): all rows, but those that later arrivals reached stay.
                tasks.append(Task(partition, midnight, None, final, keep))
            elif dirty or final:
                tasks.append(Task(partition, midnight, frozenset(dirty), final, keep))
            else:
                continue
            book.dirty.pop(midnight, None)
            book.pending.add(midnight)
        return tasks

    def retry(self, task: Task) -> None:
        """The task's rows were not written (a failed write, a rebalance): its midnight
        is planned again, with the communities it was to recompute."""
        book = self.partitions.get(task.partition)
        if book is None:
            return  # no longer ours
        book.pending.discard(task.midnight)
        if task.communities:
            book.dirty.setdefault(task.midnight, set()).update(task.communities)

    def done(self, task: Task) -> None:
        """The task's rows are written."""
        book = self._part(task.partition)
        book.written_here.add(task.midnight)
        book.pending.discard(task.midnight)  # (its dirty set: arrivals since the plan)
        self._set(book, task.midnight, Written.FINAL if task.final else Written.OPEN)

    def _set(self, book: _Partition, midnight: int, written: Written) -> None:
        book.written[midnight] = written
        if written is Written.OPEN:
            book.open.add(midnight)
            return
        book.open.discard(midnight)
        if written is Written.FINAL:
            book.dirty.pop(midnight, None)
            book.too_late.pop(midnight, None)
            if book.newest_final is None or midnight > book.newest_final:
                book.newest_final = midnight

    # ---- ranges ----------------------------------------------------------------------

    def _in_range(self, partition: int, mark: int, first_event: int | None) -> range:
        """The midnights this partition writes: from the first at or after its first
        event, not before its exact state, at most `backfill_days` back; up to `mark`."""
        newest = midnight_at_or_before(mark)
        if first_event is None or first_event > mark:
            return range(0)
        start = max(newest - self.backfill_days * DAY_MS, midnight_at_or_after(first_event))
        exact_from = self._part(partition).exact_from
        if exact_from is not None:
            start = max(start, midnight_at_or_after(exact_from))
        return range(start, newest + 1, DAY_MS)

    def oldest_needed(self, partition: int, mark: int, first_event: int | None) -> int:
        """The oldest midnight that may still be written: state for it must be kept."""
        written = self._part(partition).written
        return next((d for d in self._in_range(partition, mark, first_event)
                     if written.get(d) is not Written.FINAL), midnight_at_or_before(mark))

    def newest_final(self, partition: int) -> int | None:
        return self._part(partition).newest_final
