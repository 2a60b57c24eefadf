"""Sinks fail safe: a failing disk keeps and retries the rows, leaves no temporary files,
and neither torn files nor compaction can hide or break a snapshot."""

from __future__ import annotations

import errno
import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Event
from sinks import parquet
from sinks.compact import compact
from sinks.parquet import SinkQueue, SnapshotWriter, ensure_catalogue, read_rows
from streams.config import DAY_MS, MetricConfig
from streams.core import PulseCore, SnapshotRow
from tests.workers import wait_for

T = 1_795_000_000_000


def snapshot_rows(as_of: int = T, members: int = 3) -> list[SnapshotRow]:
    core = PulseCore(MetricConfig())
    core.apply([Event(f"j{i}", "join", "c", f"u{i}", as_of - 1000) for i in range(members)])
    return core.snapshot(as_of)


def view_rows(data_dir: Path) -> list[tuple]:
    with duckdb.connect(str(data_dir / "pulse.duckdb"), read_only=True) as con:
        return con.sql("SELECT community_id, window_days, epoch_ms(as_of), members "
                       "FROM snapshots ORDER BY ALL").fetchall()


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parquet.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        SnapshotWriter(tmp_path).write(snapshot_rows())
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_rows_are_kept_and_retried_with_backoff_until_the_disk_takes_them(
        tmp_path: Path, monkeypatch) -> None:
    now = [0.0]
    failing = [True]
    errors: list[int] = []
    writer = SnapshotWriter(tmp_path)

    def write(rows):  # type: ignore[no-untyped-def]
        if failing[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return writer.write(rows)

    queue = SinkQueue(write, on_error=lambda: errors.append(1), first_backoff_s=10,
                      clock=lambda: now[0])
    first, second = snapshot_rows(T), snapshot_rows(T + 60_000, members=4)
    done = queue.submit(first)
    assert done is not None
    done.result()
    assert errors == [1] and queue.pending_rows == len(first)
    assert queue.submit(second) is None  # not due yet: kept, not tried
    now[0] = 11.0
    queue.submit([]).result()  # type: ignore[union-attr]  # due: retried, fails again
    assert errors == [1, 1] and queue.pending_rows == len(first) + len(second)
    failing[0] = False
    now[0] = 21.0
    assert queue.submit([]) is None  # the backoff doubled: 20 s
    now[0] = 32.0
    queue.submit([]).result()  # type: ignore[union-attr]
    assert queue.pending_rows == 0
    assert [(r.as_of_ms, r.members) for r in read_rows(tmp_path)] == [
        (T, 3), (T, 3), (T + 60_000, 4), (T + 60_000, 4)]


def test_a_hung_write_blocks_only_the_sink_thread(tmp_path: Path) -> None:
    release = threading.Event()
    written: list[int] = []

    def hanging(rows):  # type: ignore[no-untyped-def]
        release.wait()
        written.append(len(rows))

    queue = SinkQueue(hanging)
    started = time.monotonic()
    queue.submit(snapshot_rows())
    assert queue.submit(snapshot_rows(T + 1)) is None  # queued behind the hung one
    assert time.monotonic() - started < 60  # returned: the caller was never blocked
    release.set()
    wait_for(lambda: len(written) == 2, 30, "both batches written once the disk is back")


def test_torn_and_empty_files_never_break_the_snapshots_view(tmp_path: Path) -> None:
    SnapshotWriter(tmp_path).write(snapshot_rows())
    (good,) = tmp_path.glob("snapshots/*/*.parquet")
    (good.parent / "20261118T000000000Z-empty.parquet").write_bytes(b"")
    (good.parent / "20261118T000000000Z-torn.parquet").write_bytes(good.read_bytes()[:100])
    stale = good.parent / ".20261118T000000000Z-x.parquet.tmp"
    stale.write_bytes(b"PAR1")
    os.utime(stale, (time.time() - 7200,) * 2)  # a crashed write's, two hours ago
    (good.parent / ".20261118T000000000Z-y.parquet.tmp").write_bytes(b"PAR1")  # under way
    ensure_catalogue(tmp_path)
    assert view_rows(tmp_path) == [("c", 7, T, 3), ("c", 28, T, 3)]
    assert sorted(p.name for p in (tmp_path / "quarantine").rglob("*")
                  if p.is_file()) == [".20261118T000000000Z-x.parquet.tmp",
                                      "20261118T000000000Z-empty.parquet",
                                      "20261118T000000000Z-torn.parquet"]
    assert (good.parent / ".20261118T000000000Z-y.parquet.tmp").exists()


def test_a_snapshot_rewritten_after_compaction_wins_over_the_compacted_copy(
        tmp_path: Path) -> None:
    writer = SnapshotWriter(tmp_path)
    writer.write(snapshot_rows(T, members=3))
    writer.write(snapshot_rows(T + 60_000, members=3))
    assert compact(tmp_path).partitions == 1
    rewritten = [replace(row, members=9) for row in snapshot_rows(T, members=3)]
    writer.write(rewritten)  # e.g. a closing row rewritten for a late event
    ensure_catalogue(tmp_path)
    assert view_rows(tmp_path) == [("c", 7, T, 9), ("c", 7, T + 60_000, 3),
                                   ("c", 28, T, 9), ("c", 28, T + 60_000, 3)]
    compact(tmp_path)  # and the next compaction keeps the rewrite too
    assert view_rows(tmp_path) == [("c", 7, T, 9), ("c", 7, T + 60_000, 3),
                                   ("c", 28, T, 9), ("c", 28, T + 60_000, 3)]


# ---- the queue's memory bound (issue 21) ---------------------------------------------


def active_core(communities: int, as_of: int = T) -> PulseCore:
    """A core with a community each of members, posts and replies."""
    core = PulseCore(MetricConfig())
    core.apply([event for c in range(communities) for i in range(4) for event in (
        Event(f"j{c}-{i}", "join", f"community-{c:05d}", f"u{i}", as_of - DAY_MS * (i + 1)),
        Event(f"p{c}-{i}", "post", f"community-{c:05d}", f"u{i}", as_of - 3_600_000 * (i + 1),
              post_id=f"p{c}-{i}"),
        Event(f"r{c}-{i}", "reply", f"community-{c:05d}", f"u{i + 1}",
              as_of - 1_800_000 * (i + 1), post_id=f"p{c}-{i}", reply_id=f"r{c}-{i}",
              parent_id=f"p{c}-{i}", parent_type="post"))])
    return core


def held_per_row(make: Callable[[], list[list[SnapshotRow]]]) -> float:
    """Memory the rows `make` returns hold, per row (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        batches = make()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held / sum(map(len, batches))


def test_the_row_estimate_covers_what_queued_rows_hold() -> None:
    """ROW_BYTES is an upper bound of a queued row's memory (measured, not assumed): of
    rows from the core, and of the largest row there can be (every number its own
    object), which it does not overstate, so the bound in MiB means what it says."""
    core = active_core(100)  # (built before tracing: the state is not the queue's)
    core.snapshot(T)
    typical = held_per_row(lambda: [core.snapshot(T + i * 10_000) for i in range(5)])
    values: list[dict[str, Any]] = [
        {f.name: ("c" if f.name == "community_id" else "high" if f.name == "tier"
                  else True if "bool" in str(f.type)
                  else 1e6 + i + k if "float" in str(f.type) else 2**40 + i + k)
         for k, f in enumerate(fields(SnapshotRow))} for i in range(1000)]
    def fresh(row: dict[str, Any]) -> dict[str, Any]:  # every number a new object
        return {k: v if isinstance(v, str | bool) else v + 1 for k, v in row.items()}

    largest = held_per_row(lambda: [[SnapshotRow(**fresh(row)) for row in values]])
    assert typical < largest <= parquet.ROW_BYTES <= 1.02 * largest, (typical, largest)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 400), min_size=1, max_size=40),
       bound_rows=st.integers(1, 2000))
def test_a_failing_sink_keeps_the_newest_rows_within_the_byte_bound(
        sizes: list[int], bound_rows: int) -> None:
    """Rows pile up while the disk fails: the estimate never exceeds the bound (but for
    the newest batch alone, which is always kept); the oldest batches go first, each
    counted in the dropped rows; the order of what is kept is the order of arrival."""
    dropped: list[int] = []
    failures: list[int] = []

    def disk_full(rows: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    queue = SinkQueue(disk_full, on_error=lambda: failures.append(1), on_drop=dropped.append,
                      max_bytes=bound_rows * parquet.ROW_BYTES, first_backoff_s=0)
    batches = [[object()] * size for size in sizes]  # (rows by identity: only counted)
    newest = 0
    for batch in batches:
        attempt = queue.submit(batch)  # type: ignore[arg-type]
        if attempt is not None:
            attempt.result()  # failed: kept
        newest = len(batch) or newest
        assert queue.pending_bytes <= max(bound_rows, newest) * parquet.ROW_BYTES
        assert queue.pending_bytes == queue.pending_rows * parquet.ROW_BYTES
    assert sum(dropped) + queue.pending_rows == sum(sizes)
    kept = list(queue._pending)
    non_empty = [b for b in batches if b]
    assert kept == non_empty[len(non_empty) - len(kept):]  # the newest, in order
    assert failures or not any(sizes)


def test_the_batch_being_written_is_never_dropped(tmp_path: Path) -> None:
    """While a write hangs, later batches are dropped past the bound, never the one being
    written (it is in the write's hands: dropping it would free nothing and miscount)."""
    release, written = threading.Event(), []

    def hanging(rows):  # type: ignore[no-untyped-def]
        release.wait()
        written.append(rows)

    first = snapshot_rows(T)
    queue = SinkQueue(hanging, max_bytes=3 * parquet.ROW_BYTES)
    queue.submit(first)
    wait_for(lambda: queue._writing is first, 30, "the write to start")
    later = [snapshot_rows(T + i) for i in range(1, 4)]
    for batch in later:
        queue.submit(batch)
    assert list(queue._pending) == [first, later[-1]]
    release.set()
    wait_for(lambda: len(written) == 2, 30, "both batches written")
    assert written == [first, later[-1]] and queue.pending_rows == 0


def test_a_query_that_meets_a_file_replaced_while_read_is_asked_again(tmp_path: Path) -> None:
    # DuckDB reads a Parquet file more than once per query; a closing file the worker
    # replaces in between fails the query with "TProtocolException: Invalid data"
    # (reproduced with bench-like closing files replaced in a loop: about half of the
    # queries failed). The files are whole, so read_history asks again, a few times.
    SnapshotWriter(tmp_path).write(snapshot_rows())
    calls = 0

    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise duckdb.InvalidInputException("TProtocolException: Invalid data")
        return 7

    assert parquet.read_history(tmp_path, flaky) == 7 and calls == 3
    assert not (tmp_path / "quarantine").exists()  # (whole files stay where they are)

    def always() -> int:
        raise duckdb.InvalidInputException("TProtocolException: Invalid data")

    with pytest.raises(duckdb.InvalidInputException):
        parquet.read_history(tmp_path, always)
