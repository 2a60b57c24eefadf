"""Replay: the streaming computation over event files, without Kafka.

Files are JSON lines (each line one event or a batch array, like a Kafka message) or
Parquet (one event per row). Events pass the same validation as the worker's (DuckDB
checks a JSON-lines file's plain event lines in one parallel scan, Arrow a Parquet
file's rows, `decode_message` takes every other line or row) and reach the same
`PulseCore`, in bulk (`streams.bulk`): in
time order, one snapshot time after another, with the same expiry, so memory stays
bounded on long histories.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import re
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.columnar import events_table, scan_json_lines, scan_parquet
from schemas.events import EVENT_TYPES, Event, Rejection, decode_lines, decode_message
from sinks.network import SteeringSink
from sinks.parquet import SnapshotWriter, rows_to_table
from sinks.steering import goals_table
from streams.bulk import EventColumns, apply_columns
from streams.closing import is_midnight
from streams.config import DAY_MS, MetricConfig
from streams.core import PulseCore
from streams.pipeline import Ingestor, TopicStats
from streams.privacy import Pseudonymiser
from streams.steering import goals as steering_goals
from streams.steering.focus import Manager, managers_of
from streams.steering.network import SteeringSettings, community_inputs

SOURCE = "replay"
Ints = npt.NDArray[np.int64]
DECODE_CHUNK = 4096  # messages per decode call
APPLY_CHUNK = 4_000_000  # events per bulk apply
PARALLEL_FROM = 200_000  # events: below this, one process (forking costs more)
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class ReplayError(ValueError):
    """A bad file or argument; the message is one line."""


def parse_duration(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ReplayError(f"bad duration {text!r}: use e.g. 30m, 6h, 1d, 1w")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_time(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(f"bad time {text!r}: use RFC 3339, e.g. 2026-11-01T00:00:00Z") from None
    if moment.tzinfo is None:
        raise ReplayError(f"time {text!r} needs an offset, e.g. Z or +01:00")
    return int(moment.timestamp() * 1000)


def read_messages(path: Path) -> Iterator[bytes]:
    """Raw messages of one file, as the worker would see them on a topic."""
    check_readable(path)
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise ReplayError(f"{path}: not a readable Parquet file ({exc})") from None
        for batch in table.to_batches():
            yield from map(_row_message, batch.to_pylist())
        return
    with path.open("rb") as lines:
        for line in lines:
            if line.strip():
                yield line.rstrip(b"\r\n")


def check_readable(path: Path) -> None:
    """A one-line error for an input that is not a readable file."""
    if path.is_dir():
        raise ReplayError(f"{path}: is a directory; give the event files in it "
                          f"(e.g. {path}/*.jsonl)")
    if not path.exists():
        raise ReplayError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise ReplayError(f"{path}: not readable (permission denied)")


@dataclass
class InvalidInput:
    """Where the first few invalid messages of the input are, and why (for the report)."""

    limit: int = 5
    found: list[tuple[Path, int, str]] = field(default_factory=list)  # file, place, reason

    def note(self, path: Path, place: int, rejections: Sequence[Rejection]) -> None:
        for rejection in rejections[: self.limit - len(self.found)]:
            self.found.append((path, place, rejection.message))

    @property
    def full(self) -> bool:
        return len(self.found) >= self.limit

    def described(self) -> list[str]:
        """`events.jsonl line 12: bad_json: ...` (`row` for Parquet; 1-based)."""
        lines: dict[Path, dict[int, int]] = {}
        for path in {path for path, _, _ in self.found}:
            lines[path] = _line_numbers(path, [p for f, p, _ in self.found if f == path])
        return [f"{path.name} {'row' if path.suffix == '.parquet' else 'line'} "
                f"{lines[path][place]}: {reason}" for path, place, reason in self.found]


def _line_numbers(path: Path, places: list[int]) -> dict[int, int]:
    """1-based line numbers of messages at these places (blank lines are no messages)."""
    if path.suffix == ".parquet":
        return {place: place + 1 for place in places}
    wanted, found, place = set(places), {}, -1
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                place += 1
                if place in wanted:
                    found[place] = number
                    if len(found) == len(wanted):
                        break
    return found


def _row_message(row: dict[str, Any]) -> bytes:
    """A Parquet row as the JSON message a producer would have sent."""
    return msgspec.json.encode({k: v for k, v in row.items() if v is not None})


def _left_over(path: Path, places: list[int], lines: int) -> Iterator[tuple[int, bytes]]:
    """The messages at these places (ascending) of a file of `lines` messages: from
    Parquet only those rows, from JSON lines by streaming the file."""
    if path.suffix == ".parquet":
        rows = pq.read_table(path).take(places).to_pylist()
        yield from zip(places, map(_row_message, rows), strict=True)
        return
    wanted, read = set(places), 0
    for read, message in enumerate(read_messages(path), start=1):
        if read - 1 in wanted:
            yield read - 1, message
    if read != lines:  # never seen; but rather stop than lose a line
        raise ReplayError(f"{path}: {read} lines, but DuckDB read {lines}")


@dataclass
class ReplayResult:
    stats: TopicStats
    snapshot_times: list[int]
    rows_written: int
    files: list[str]
    goal_rows_written: int = 0
    invalid: InvalidInput = field(default_factory=InvalidInput)


def snapshot_times(first: int, last: int, as_of: int | None, every: int | None) -> list[int]:
    if every is None:
        return [as_of if as_of is not None else last]
    end = as_of if as_of is not None else last
    # From the first multiple of `every` at or after the first event: with 1d, every UTC
    # midnight at which some community has an event at or before it, as the worker's
    # closing rows (streams.closing).
    times = list(range(-(-first // every) * every, end + 1, every))
    if as_of is not None and (not times or times[-1] != as_of):
        times.append(as_of)
    return times


class Progress:
    """Events done, events/s and time left, redrawn in place on a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.start = self.last_draw = time.monotonic()

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last_draw < 0.5):
            return
        self.last_draw = now
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - done) / rate if rate else 0.0
        sys.stderr.write(f"\rreplay: {done:,}/{self.total:,} events  {rate:,.0f} ev/s  "
                         f"{left:,.0f}s left   ")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


@dataclass
class _FileEvents:
    """A file's events as rows (some of them invalid), with which rows to keep and each
    row's place in the file, for ties in time order."""

    table: pa.Table
    ok: npt.NDArray[np.bool_]
    place: Ints


def _read_events(path: Path, ingestor: Ingestor, now_ms: int, invalid: InvalidInput
                 ) -> _FileEvents:
    """Valid events of one file, counted. JSON lines go to DuckDB in one scan, Parquet
    to Arrow; the lines or rows they cannot vouch for (envelopes, unusual times, bad
    input) go through the same per-message decoder as the worker's."""
    allowed = ingestor.topics[SOURCE]
    scan = (scan_parquet if path.suffix == ".parquet" else scan_json_lines)(path, allowed, now_ms)
    events: list[Event] = []
    if scan is None:
        messages, done = read_messages(path), 0
        while chunk := list(islice(messages, DECODE_CHUNK)):
            result = ingestor.decode_lines(SOURCE, chunk, now_ms)
            events.extend(result.events)
            if result.rejections and not invalid.full:  # find them, for the report
                for place, message in enumerate(chunk, start=done):
                    invalid.note(path, place, decode_message(message, allowed, now_ms)[1])
            done += len(chunk)
        return _FileEvents(events_table(events), np.ones(len(events), dtype=np.bool_),
                           np.arange(len(events), dtype=np.int64))
    lines = scan.table.num_rows
    ingestor.stats[SOURCE].consumed += int(scan.ok.sum())
    places: list[int] = []
    redo = np.flatnonzero(~scan.ok).tolist()
    if redo:
        pending: list[tuple[int, bytes]] = []
        for item in _left_over(path, redo, lines):
            pending.append(item)
            if len(pending) == DECODE_CHUNK:
                _decode_apart(ingestor, pending, now_ms, events, places, invalid.note, path)
        _decode_apart(ingestor, pending, now_ms, events, places, invalid.note, path)
    return _FileEvents(
        pa.concat_tables([scan.table, events_table(events)]),
        np.concatenate([scan.ok, np.ones(len(events), dtype=np.bool_)]),
        np.concatenate([np.arange(lines, dtype=np.int64), np.array(places, dtype=np.int64)]))


def _decode_apart(ingestor: Ingestor, pending: list[tuple[int, bytes]], now_ms: int,
                  events: list[Event], places: list[int],
                  note: Callable[[Path, int, Sequence[Rejection]], None], path: Path) -> None:
    """Decode (and count) the lines the scan left over, with their places; in one call
    when they are all valid events of one line each, else line by line. Empties
    `pending`."""
    allowed = ingestor.topics[SOURCE]
    messages = [message for _, message in pending]
    objects = not any(message.lstrip().startswith(b"[") for message in messages)
    decoded, rejections = decode_lines(messages, allowed, now_ms) if objects else ([], [])
    if objects and not rejections and len(decoded) == len(messages):  # one event a line
        ingestor.counted(SOURCE, ingestor.pseudonymised(decoded), [])
        events += decoded
        places += [place for place, _ in pending]
    else:
        for place, message in pending:
            ok, rejections = ingestor.decode(SOURCE, message, None, now_ms)
            note(path, place, rejections)
            events += ok
            places += [place] * len(ok)
    pending.clear()


def read_events(files: Sequence[Path], ingestor: Ingestor, now_ms: int,
                invalid: InvalidInput | None = None) -> tuple[EventColumns, Ints]:
    """The valid events of all files as columns (for cores that take nothing else), in
    file order, and each one's place in the files (see `in_time_order`)."""
    parts, places, offset = [], [], 0
    invalid = invalid if invalid is not None else InvalidInput()
    for path in files:
        part = _read_events(path, ingestor, now_ms, invalid)
        parts.append(part)
        places.append(part.place[part.ok] + offset)
        offset += len(part.place) + 1
    table = pa.concat_tables([part.table for part in parts]) if parts else events_table([])
    events = EventColumns.from_table(table, only_columns=True)
    ok = np.concatenate([part.ok for part in parts] or [np.array([], bool)])
    if not ok.all():
        events = events.take(np.flatnonzero(ok))
    return events, np.concatenate(places or [np.array([], np.int64)])


def in_time_order(events: EventColumns, place: Ints) -> EventColumns:
    """The order events are applied in: by time, ties in file order."""
    if np.all(place[1:] > place[:-1]):  # (no line was decoded apart: file order already)
        return events.take(np.argsort(events.ts, kind="stable"))
    return events.take(np.lexsort((place, events.ts)))


def core_from_files(files: Sequence[Path], config: MetricConfig,
                    managers_of: Mapping[str, Sequence[str]] | None = None,
                    now_ms: int | None = None, pseudonymise: Pseudonymiser | None = None
                    ) -> tuple[PulseCore, TopicStats]:
    """One core holding every valid event of the files (validated, counted and
    pseudonymised as `replay` does), for commands that look at all communities at once."""
    ingestor = Ingestor(PulseCore(config), {SOURCE: frozenset(EVENT_TYPES)})
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    events, place = read_events(files, ingestor, now_ms)
    if pseudonymise is not None:
        events = dataclasses.replace(events, users=pseudonymise.many(events.users))
    core = PulseCore(config, managers_of)
    ordered = in_time_order(events, place)
    stats = ingestor.stats[SOURCE]
    for start in range(0, len(ordered), APPLY_CHUNK):
        stats.duplicates += apply_columns(core, ordered.take(slice(start, start + APPLY_CHUNK)))
    stats.processed = len(ordered) - stats.duplicates
    return core, stats


def replay(
    files: Sequence[Path],
    data_dir: Path | str,
    config: MetricConfig,
    as_of_ms: int | None = None,
    every_ms: int | None = None,
    now_ms: int | None = None,
    show_progress: bool = False,
    jobs: int | None = None,
    pseudonymise: Pseudonymiser | None = None,
    steering: Steering | None = None,
    goals: Sequence[steering_goals.Goal] = (),
    parquet_min_members: int = 0,
) -> ReplayResult:
    """Snapshots of the files' events. `jobs` processes (default: one per CPU, one
    for small inputs) each compute the communities of one partition, as workers of
    one consumer group would; this process writes each snapshot time's rows as one
    file, so the output is the same for any number of jobs. `goals`: also the `goals`
    table, a row per goal and snapshot time. With `steering`, the steering tables of
    merges and focus too, at the steering times (see `Steering`)."""
    ingestor = Ingestor(PulseCore(config), {SOURCE: frozenset(EVENT_TYPES)})
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    for path in files:
        check_readable(path)
    invalid = InvalidInput()
    events, place = read_events(files, ingestor, now_ms, invalid)
    if pseudonymise is not None:  # each distinct user id once, not each event
        events = dataclasses.replace(events, users=pseudonymise.many(events.users))
    stats = ingestor.stats[SOURCE]
    if not len(events):
        return ReplayResult(stats, [], 0, [str(f) for f in files], invalid=invalid)
    newest = int(events.ts.max())
    times = snapshot_times(int(events.ts.min()), newest, as_of_ms, every_ms)
    stamps = np.sort(events.ts) if show_progress else None
    writer = SnapshotWriter(data_dir)
    progress = Progress(len(events), show_progress)
    rows_written = goal_rows_written = 0
    partitions = _Partitions(events, place, config, times, _jobs(jobs, events), steering)
    sink = steering.sink(data_dir, config) if steering is not None else None
    for t, tables in zip(times, partitions, strict=True):  # (strict: runs it to the end)
        table = pa.concat_tables([part[0] for part in tables]).sort_by(
            [("community_id", "ascending"), ("window_days", "ascending")])
        if parquet_min_members:  # small communities left out (parquet_omit_small_communities)
            table = table.filter(pc.greater_equal(table["members"], parquet_min_members))
        writer.write_table(t, table)
        rows_written += table.num_rows
        if sink is not None and len(tables[0]) > 1:  # a steering time
            sketches = pa.concat_tables([part[1] for part in tables])
            counts = pa.concat_tables([part[2] for part in tables])
            sink.write_inputs(sketches, counts)
            sink.write_network(t, table, sketches, counts)
        if goals:
            goal_rows = _goal_rows(goals, t, table)
            writer.tables.write("goals", goals_table(goal_rows))
            goal_rows_written += len(goal_rows)
        if stamps is not None:
            progress.update(int(np.searchsorted(stamps, t, side="right")))
    duplicates = partitions.duplicates
    stats.duplicates += duplicates
    stats.processed += len(events) - duplicates
    stats.newest_event_ms = max(newest, stats.newest_event_ms or 0)
    progress.update(len(events), final=True)
    return ReplayResult(stats, times, rows_written, [str(f) for f in files], goal_rows_written,
                        invalid)


def _goal_rows(goals: Sequence[steering_goals.Goal], t: int, table: pa.Table
               ) -> list[steering_goals.GoalRow]:
    """The goals at t, from the snapshot table of t."""
    named = pa.array(sorted(steering_goals.communities(goals)), pa.string())
    rows = table.filter(pc.is_in(table["community_id"], value_set=named)).to_pylist()
    return steering_goals.evaluate(goals, rows, t)


def _jobs(jobs: int | None, events: EventColumns) -> int:
    """Processes to use: as asked, else one per CPU for inputs worth forking for."""
    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        if len(events) < PARALLEL_FROM:
            jobs = 1
    if "fork" not in mp.get_all_start_methods():
        return 1
    return max(1, min(jobs, len(events.communities)))


@dataclass(frozen=True)
class Steering:
    """Steering tables in a replay (SPEC 5): each partition writes what a worker would
    about its communities (sketches, follow-up counts), and this process the
    network-wide tables from them. At the last snapshot time and at every UTC midnight
    among the snapshot times (the closing moments), not at every time: a sketch costs a
    pass over every member."""

    settings: SteeringSettings
    managers: Sequence[Manager] = ()

    def due(self, t: int, times: list[int]) -> bool:
        return t == times[-1] or t % DAY_MS == 0

    def sink(self, data_dir: Path | str, config: MetricConfig) -> SteeringSink:
        return SteeringSink(data_dir, self.settings, self.managers, config)


def _run_partition(events: EventColumns, place: Ints, config: MetricConfig, times: list[int],
                   steering: Steering | None = None
                   ) -> Generator[tuple[int, list[pa.Table]], None, int]:
    """Snapshot rows of these events' communities per time, and at steering times the
    steering inputs (sketches, follow-up counts); returns the duplicates."""
    events = in_time_order(events, place)
    core = PulseCore(config, managers_of(steering.managers) if steering else None)
    done = duplicates = 0
    for t in times:
        upto = int(np.searchsorted(events.ts, t, side="right"))
        for start in range(done, upto, APPLY_CHUNK):
            chunk = events.take(slice(start, min(upto, start + APPLY_CHUNK)))
            duplicates += apply_columns(core, chunk)
        done = max(done, upto)
        tables = [rows_to_table(core.snapshot(t), closing=is_midnight(t))]
        if steering is not None and steering.due(t, times):
            tables.extend(community_inputs(core.communities.values(), steering.managers, t,
                                           steering.settings))
        yield t, tables
        if t != times[-1]:  # (after the last one, nothing needs the memory back)
            core.expire(t - config.retention_ms)
    # Events after the last snapshot: not shown, but counted.
    return duplicates + apply_columns(core, events.take(slice(done, None)))


class _Partitions:
    """The snapshot tables of every partition, one list per snapshot time; after the
    iteration, `duplicates` holds the partitions' total."""

    def __init__(self, events: EventColumns, place: Ints, config: MetricConfig,
                 times: list[int], jobs: int, steering: Steering | None = None) -> None:
        self.events, self.place = events, place
        self.config, self.times, self.jobs = config, times, jobs
        self.steering = steering
        self.duplicates = 0

    def __iter__(self) -> Iterator[list[list[pa.Table]]]:
        if self.jobs == 1:
            run = _run_partition(self.events, self.place, self.config, self.times,
                                 self.steering)
            while True:
                try:
                    yield [next(run)[1]]
                except StopIteration as finished:
                    self.duplicates = finished.value
                    return
        fork = mp.get_context("fork")
        pipes, children = [], []
        try:
            for part in range(self.jobs):
                receive, send = fork.Pipe(duplex=False)
                child = fork.Process(target=_child, args=(self, part, send), daemon=True)
                child.start()
                send.close()
                pipes.append(receive)
                children.append(child)
            for _ in self.times:
                yield [[pa.ipc.open_stream(table).read_all()
                        for table in _received(pipe, "tables")] for pipe in pipes]
            self.duplicates = sum(_received(pipe, "duplicates") for pipe in pipes)
            for child in children:
                child.join()
        finally:
            for child in children:
                if child.is_alive():
                    child.kill()


def _child(partitions: _Partitions, part: int, send: Connection) -> None:
    """One partition in a forked process: its tables of each snapshot time (Arrow IPC),
    then its duplicate count, or the error that stopped it."""
    try:
        events, place = partitions.events, partitions.place
        mine = np.flatnonzero(events.community % partitions.jobs == part)
        run = _run_partition(events.take(mine), place[mine], partitions.config,
                             partitions.times, partitions.steering)
        while True:
            try:
                _, tables = next(run)
            except StopIteration as finished:
                send.send(("duplicates", finished.value))
                break
            send.send(("tables", [_ipc(table) for table in tables]))
    except BaseException as exc:  # tell the parent, which would otherwise wait for ever
        send.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def _received(pipe: Connection, expected: str) -> Any:
    try:
        kind, value = pipe.recv()
    except EOFError:
        raise ReplayError("a replay partition process ended early") from None
    if kind != expected:
        raise ReplayError(f"replay partition failed: {value}")
    return value
