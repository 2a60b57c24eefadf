"""Closing rows: which UTC midnights are due, open, final or missed. Pure and clock-free.

A closing row for midnight `D` (SPEC section 4) is final by event time: it holds every
event with `ts <= D` that arrived before `D + grace`. Every such event belongs to `D`,
whatever its age: the core reads far back for a snapshot at `D` (members over the
membership horizon, a join for ever, the previous window for retention, 28 days for
stagnation), so "ts <= D" is the rule, not the windows. The worker feeds this module what
it knows (the arrival mark up to which it has read everything, which closing files exist,
which communities got events when) and asks what to write; it does the snapshots and the
I/O itself. Everything here is per source partition, because a partition's closing rows
for one midnight are one file, whoever owns the partition.

Life of a midnight `D` of a partition, with `mark` the time up to which the worker has
read everything that arrived (it only plans while caught up):

- due when `mark >= D`; open while `mark < D + grace`: written, and rewritten whenever
  events with `ts <= D` arrive for some of its communities (the same file is replaced);
- at `mark >= D + grace` it is written one last time and becomes final: later events
  with `ts <= D` are too late for it and leave it unchanged;
- "too late" is per midnight: an event that arrives at or after `D + grace` is too late
  for `D` and in time for every later midnight whose grace has not ended. When it is too
  late for a midnight that is not final yet (the worker was behind, or has not planned
  since that grace ended), the community's row there is frozen before the event is
  applied (`arrived` says which; the worker computes the rows and hands them to `freeze`)
  and written as frozen. The late counter counts an event once per midnight it is too
  late for and that is written final without it: at once for the final ones at or after
  its `ts` that the book knows, at their last write for the others;
- a midnight whose grace ended before this worker took the partition over (`since`) and
  that nobody wrote (the worker was down, or the topics held history before its first
  start) is missed: it is written once from the event-time state, when the worker has
  caught up, and is final at once;
- a midnight older than the backfill range or than what the retained state can compute
  exactly is left alone.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

from streams.config import DAY_MS

R = TypeVar("R")


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
    only these and keep the other rows as last written. Either way the rows frozen for
    the midnight (`ClosingBook.frozen`) are taken as they are. `final`: the file is final.
    """

    partition: int
    midnight: int
    communities: frozenset[str] | None
    final: bool


class Arrival(NamedTuple):
    """What an arrival means for the closing rows: `late`, the (event, midnight) pairs
    it brings too late for final midnights (those for midnights not final yet count when
    they are written final: `done`); `freeze`, the midnights whose row of the community
    must be frozen now, before the events are applied (the worker computes the rows and
    hands them to `freeze`)."""

    late: int
    freeze: tuple[int, ...]


_NOTHING = Arrival(0, ())  # (the usual answer: a recent event, no midnight open)


@dataclass
class _Partition(Generic[R]):
    # Midnights whose grace ends after this were this book's to follow: a too-late event
    # freezes their rows. (Older unwritten ones are missed: written from the state.)
    since: int | None
    # Midnights at or after this one can be computed exactly from the retained state.
    exact_from: int | None = None
    mark: int | None = None  # of the last check or plan
    written: dict[int, Written] = field(default_factory=dict)
    finals: list[int] = field(default_factory=list)  # the FINAL ones in `written`, sorted
    open: set[int] = field(default_factory=set)  # the midnights written OPEN
    pending: set[int] = field(default_factory=set)  # planned, not yet written
    written_here: set[int] = field(default_factory=set)  # by this process: rows cached
    dirty: dict[int, set[str]] = field(default_factory=dict)
    # midnight -> community -> its rows there from before events too late for it came
    # (None until the worker has computed them).
    frozen: dict[int, dict[str, R | None]] = field(default_factory=dict)
    late: dict[int, int] = field(default_factory=dict)  # midnight -> events too late for it


class ClosingBook(Generic[R]):
    """What is written, open and final per partition; what to write next. `R`: the rows
    of one community at one midnight, as the worker keeps them (opaque here). `since`:
    see `take_over` (None: only the midnights written open are followed)."""

    def __init__(self, grace_ms: int, backfill_days: int, since: int | None = None) -> None:
        if grace_ms < 0 or backfill_days < 0:
            raise ValueError("grace and backfill must not be negative")
        self.grace_ms = grace_ms
        self.backfill_days = backfill_days
        self.since = since
        self.partitions: dict[int, _Partition[R]] = {}

    def _part(self, partition: int) -> _Partition[R]:
        book = self.partitions.get(partition)
        if book is None:
            book = self.partitions[partition] = _Partition(self.since)
        return book

    # ---- what the worker tells -------------------------------------------------------

    def take_over(self, t: int) -> None:
        """Partitions this book starts to follow from now on (new ones, after a
        rebalance) are followed from `t`: the midnights whose grace ends later."""
        self.since = t

    def exact_from(self, partition: int, t: int | None) -> None:
        """The partition's state is exact for snapshots at `t` or later (None: always,
        e.g. a fresh start that reads the topics from their beginning)."""
        self._part(partition).exact_from = t

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this process no longer owns (their book starts over when back)."""
        for partition in partitions:
            self.partitions.pop(partition, None)

    def arrived(self, partition: int, community: str, timestamps: list[int],
                oldest: int | None = None, arrival: int | None = None) -> Arrival:
        """Events of one community arrived (`oldest`: the oldest of their times, when
        known; `arrival`: when they reached Kafka, when known). Every midnight at or
        after an event's ts is one it belongs to: the open ones it reaches in time are
        marked for a rewrite of this community's row; where it is too late, the row is
        frozen as it is before the events (see `Arrival`)."""
        book = self.partitions.get(partition) or self._part(partition)
        if oldest is None:
            oldest = min(timestamps)
        late = 0
        finals = book.finals
        if finals and oldest <= finals[-1]:  # (rare: older than the newest final midnight)
            # Final midnights in the backfill range count (one written final in this pass
            # below it stays in `finals` until the next pass prunes it).
            kept = finals[0] if book.mark is None else (
                midnight_at_or_before(book.mark) - self.backfill_days * DAY_MS)
            late = sum(len(finals) - bisect_left(finals, max(ts, kept)) for ts in timestamps)
        midnights = book.open | book.pending if book.pending else book.open
        if arrival is not None and book.since is not None and (
                oldest <= arrival - self.grace_ms > book.since - self.grace_ms):  # (rare)
            midnights = midnights | self._unwritten_past_grace(book, oldest, arrival)
        if not midnights:
            return Arrival(late, ()) if late else _NOTHING
        freeze = []
        for midnight in midnights:
            if midnight < oldest:
                continue
            if arrival is not None and arrival >= midnight + self.grace_ms:
                book.late[midnight] = book.late.get(midnight, 0) + sum(
                    1 for ts in timestamps if ts <= midnight)
                frozen = book.frozen.setdefault(midnight, {})
                if community not in frozen:
                    frozen[community] = None
                    freeze.append(midnight)
            else:
                book.dirty.setdefault(midnight, set()).add(community)
        return Arrival(late, tuple(sorted(freeze)))

    def _unwritten_past_grace(self, book: _Partition[R], oldest: int, arrival: int
                              ) -> set[int]:
        """The midnights this book follows that are not written (or not known to be), may
        still be, and whose grace ended before `arrival`, from `oldest` on."""
        assert book.since is not None
        low = max(midnight_at_or_after(oldest),
                  midnight_at_or_after(book.since - self.grace_ms + 1),
                  self._floor(book, arrival if book.mark is None else book.mark))
        high = midnight_at_or_before(arrival - self.grace_ms)
        return {d for d in range(low, high + 1, DAY_MS) if book.written.get(d) in (
            None, Written.ABSENT)}

    def freeze(self, partition: int, midnight: int, community: str, rows: R) -> None:
        """The community's rows at the midnight as `arrived` asked for them: written as
        they are from now on."""
        frozen = self.partitions[partition].frozen.get(midnight)
        if frozen is not None and community in frozen:  # (not final or forgotten since)
            frozen[community] = rows

    def frozen(self, partition: int, midnight: int) -> dict[str, R]:
        """The frozen rows of the partition at the midnight, by community."""
        found = self._part(partition).frozen.get(midnight, {})
        return {c: rows for c, rows in found.items() if rows is not None}

    def to_check(self, partition: int, mark: int, first_event: int | None) -> list[int]:
        """Midnights in range whose file state is not known yet (ask the sink)."""
        book = self._part(partition)
        book.mark = max(mark, book.mark or mark)
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
        book.mark = max(mark, book.mark or mark)
        self._prune(book)
        tasks = []
        for midnight in self._in_range(partition, mark, first_event):
            written = book.written.get(midnight)
            if written is None or written is Written.FINAL:
                continue  # (unknown: not checked yet)
            final = mark >= midnight + self.grace_ms
            dirty = book.dirty.get(midnight, set())
            if written is Written.ABSENT or midnight not in book.written_here:
                # Missed, or written by an earlier process (whose state we no longer
                # know): all rows.
                tasks.append(Task(partition, midnight, None, final))
            elif dirty or final:
                tasks.append(Task(partition, midnight, frozenset(dirty), final))
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

    def done(self, task: Task) -> int:
        """The task's rows are written; return how many events too late for its midnight
        they were written without, once it is final (so each counts once per midnight)."""
        book = self._part(task.partition)
        book.written_here.add(task.midnight)
        book.pending.discard(task.midnight)  # (its dirty set: arrivals since the plan)
        late = book.late.pop(task.midnight, 0) if task.final else 0
        self._set(book, task.midnight, Written.FINAL if task.final else Written.OPEN)
        return late

    def _set(self, book: _Partition[R], midnight: int, written: Written) -> None:
        if book.written.get(midnight) is Written.FINAL:
            book.finals.remove(midnight)
        book.written[midnight] = written
        if written is Written.OPEN:
            book.open.add(midnight)
            return
        book.open.discard(midnight)
        if written is Written.FINAL:
            insort(book.finals, midnight)
            book.dirty.pop(midnight, None)
            book.frozen.pop(midnight, None)
            book.late.pop(midnight, None)

    def _prune(self, book: _Partition[R]) -> None:
        """Forget what is below the range for good: rows frozen for midnights that will
        not be written (open ones stay until they are final); files older than the
        backfill range (final ones within it still count late events)."""
        assert book.mark is not None
        floor = self._floor(book, book.mark)
        for pending in (book.frozen, book.dirty, book.late):
            for midnight in [d for d in pending if d < floor and d not in book.open]:
                del pending[midnight]
        oldest = midnight_at_or_before(book.mark) - self.backfill_days * DAY_MS
        for midnight in [d for d in book.written if d < oldest and d not in book.open]:
            del book.written[midnight]
        del book.finals[:bisect_left(book.finals, oldest)]

    # ---- ranges ----------------------------------------------------------------------

    def _floor(self, book: _Partition[R], mark: int) -> int:
        """The oldest midnight that may still be written at `mark` or later (but for
        open ones)."""
        floor = midnight_at_or_before(mark) - self.backfill_days * DAY_MS
        if book.exact_from is not None:
            floor = max(floor, midnight_at_or_after(book.exact_from))
        return floor

    def _in_range(self, partition: int, mark: int, first_event: int | None) -> list[int]:
        """The midnights this partition writes, oldest first: from the first at or after
        its first event, not before its exact state, at most `backfill_days` back; up to
        `mark`; and the open ones until they are final."""
        if first_event is None or first_event > mark:
            return []
        book = self._part(partition)
        start = max(self._floor(book, mark), midnight_at_or_after(first_event))
        return [*sorted(d for d in book.open if d < start),
                *range(start, midnight_at_or_before(mark) + 1, DAY_MS)]

    def oldest_needed(self, partition: int, mark: int, first_event: int | None) -> int:
        """The oldest midnight that may still be written: state for it must be kept."""
        written = self._part(partition).written
        return next((d for d in self._in_range(partition, mark, first_event)
                     if written.get(d) is not Written.FINAL), midnight_at_or_before(mark))
