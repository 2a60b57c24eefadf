"""Issue 21 (files): a Parquet file of the history that is not whole (zero-length, torn at
any offset, garbage, damaged inside) never stops a reader. The worker's recovery moves a
broken closing file to DATA_DIR/quarantine and writes its rows anew; `compact` skips such
files and says so; `community-pulse sql`, `goals check --data-dir`, `backfill` and the
steering reader still answer. Files are written atomically, so broken ones come from
outside (a copy, an upload, the disk): the defence is at read time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sinks import parquet
from sinks.compact import compact
from sinks.network import SteeringSink
from sinks.parquet import (
    FINAL_KEY,
    SNAPSHOT_SCHEMA,
    SnapshotWriter,
    closing_file_name,
    ensure_catalogue,
    latest_rows,
    read_rows,
    rows_to_table,
)
from streams.config import DAY_MS, MetricConfig, RuntimeConfig
from streams.steering.network import SteeringSettings
from streams.worker import _VALUE_COLUMNS, PulseWorker
from tests.closing_helpers import daily_rows, differences
from tests.test_closing_worker import (
    MIDNIGHT,
    NOW_MS,
    Clock,
    Feeder,
    feed,
    history,
    in_range,
    new_worker,
    replayed_daily,
)
from tests.test_sinks_fail_safe import snapshot_rows

T = MIDNIGHT


@st.composite
def damaged(draw: st.DrawFn, good: bytes) -> tuple[str, bytes]:
    """A kind of damage and the bytes it leaves of a good Parquet file."""
    kind = draw(st.sampled_from(["truncated", "empty", "garbage", "framed", "flipped"]))
    if kind == "truncated":  # a copy or upload cut short, at any offset
        return kind, good[:draw(st.integers(0, len(good) - 1))]
    if kind == "empty":
        return kind, b""
    if kind == "garbage":
        return kind, draw(st.binary(max_size=2000))
    if kind == "framed":  # garbage that starts and ends like Parquet
        return kind, b"PAR1" + draw(st.binary(max_size=2000)) + b"PAR1"
    data = bytearray(good)  # bytes changed in place (the disk): may still parse
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return kind, bytes(data)


def closing_file(data_dir: Path, final: bool) -> tuple[Path, bytes]:
    table = rows_to_table(snapshot_rows(T, members=4) + [
        r for c in range(30) for r in snapshot_rows(T, members=c + 1)], closing=True)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           FINAL_KEY: b"true" if final else b"false"})
    path = Path(SnapshotWriter(data_dir).write_table(T, table, closing_file_name(T, 0)))
    return path, path.read_bytes()


def quarantined(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "quarantine").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def closing_worker(tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[PulseWorker, Path, dict[bool, bytes]]:
    """A worker, where its partition 0 closing file at T goes, and good files' bytes."""
    data_dir = tmp_path_factory.mktemp("closing")
    good = {final: closing_file(data_dir, final)[1] for final in (False, True)}
    path, _ = closing_file(data_dir, False)
    return PulseWorker(MetricConfig(), RuntimeConfig(data_dir=data_dir)), path, good


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(final=st.booleans(), data=st.data())
def test_a_damaged_closing_file_reads_whole_or_goes_to_quarantine(
        closing_worker: tuple[PulseWorker, Path, dict[bool, bytes]], final: bool,
        data: st.DataObject) -> None:
    worker, path, good = closing_worker
    data_dir = worker.runtime.data_dir
    shutil.rmtree(data_dir / "quarantine", ignore_errors=True)
    kind, content = data.draw(damaged(good[final]))
    path.write_bytes(content)
    before = parquet.QUARANTINED["snapshots"]
    found = worker.read_closings([(0, T)], T + DAY_MS)  # what recovery does
    worker.learn_closings(found)  # (raised on some files before: KeyError, TypeError)
    ((_, _, file),) = found
    if file is None:  # moved aside, counted: the closing rows are written anew
        assert not path.exists() and [p.name for p in quarantined(data_dir)] == [path.name]
        assert parquet.QUARANTINED["snapshots"] == before + 1
    else:  # it still reads (a changed value in a page): as a snapshot file, left in place
        assert kind == "flipped" and path.exists() and not quarantined(data_dir)
        is_final, table = file
        assert table is not None and table.schema.names == (
            _VALUE_COLUMNS if is_final else SNAPSHOT_SCHEMA.names)
    if kind in ("truncated", "empty", "garbage", "framed"):
        assert file is None


def test_the_worker_restarts_over_broken_closing_files_and_writes_them_anew(
        tmp_path: Path) -> None:
    clock = Clock(NOW_MS)
    worker, feeder = new_worker(tmp_path, clock), Feeder()
    events = history(5, 6)
    feed(worker, feeder, events)
    worker.close_midnights()
    data = tmp_path / "data"
    # Partition 0 at today's midnight (open: within its grace), yesterday's and the day
    # before's (final): emptied, cut short, overwritten with garbage.
    broken = [data / "snapshots" / f"date={day}" / closing_file_name(midnight, 0)
              for midnight, day in ((MIDNIGHT, "2026-11-18"), (MIDNIGHT - DAY_MS, "2026-11-17"),
                                    (MIDNIGHT - 2 * DAY_MS, "2026-11-16"))]
    for path, damage in zip(broken, ("empty", "torn", "garbage"), strict=True):
        good = path.read_bytes()
        path.write_bytes({"empty": b"", "torn": good[:len(good) * 2 // 3],
                          "garbage": b"\x00garbage" * 100}[damage])

    restarted, feeder = new_worker(tmp_path, clock), Feeder()
    feed(restarted, feeder, events)  # (recovery rebuilds the state, then reads the files)
    restarted.learn_closing_files(clock.ms)
    restarted.close_midnights()
    assert [p.name for p in quarantined(data)] == sorted(p.name for p in broken)
    assert all(path.exists() for path in broken)  # written anew
    backfill_from = MIDNIGHT - RuntimeConfig().closing_backfill_days * DAY_MS
    want = in_range(replayed_daily(events, tmp_path / "replay"), backfill_from, MIDNIGHT)
    assert not differences(daily_rows(data), want)
    assert pq.read_schema(broken[1]).metadata[FINAL_KEY] == b"true"
    moved = {s.labels["table"]: s.value for f in text_string_to_metric_families(
        restarted.metrics.exposition().decode()) for s in f.samples
        if s.name == "community_pulse_quarantined_files_total"}
    assert moved["snapshots"] >= 3 and set(moved) >= {"snapshots", "goals"}


def write_history(data_dir: Path) -> SnapshotWriter:
    writer = SnapshotWriter(data_dir)
    for minute in range(3):
        writer.write(snapshot_rows(T + minute * 60_000, members=3 + minute))
    return writer


def torn_copies(data_dir: Path) -> list[Path]:
    """Broken files beside the good ones: zero-length, torn, garbage, a torn closing file."""
    folder = next((data_dir / "snapshots").glob("date=*"))
    good = next(folder.glob("*.parquet")).read_bytes()
    copies = {"20261118T010000000Z-empty.parquet": b"",
              "20261118T010000000Z-torn.parquet": good[:len(good) // 2],
              "20261118T010000000Z-junk.parquet": b"PAR1" + b"\xff" * 300 + b"PAR1",
              closing_file_name(T, 3): good[:-1]}
    for name, content in copies.items():
        (folder / name).write_bytes(content)
    return [folder / name for name in copies]


def test_compact_skips_broken_files_and_says_so(tmp_path: Path) -> None:
    write_history(tmp_path)
    broken = torn_copies(tmp_path)
    report = compact(tmp_path)
    assert report.files_before == 3 and report.files_after == 1 and report.rows == 6
    assert "4 broken file(s) skipped and moved to DATA_DIR/quarantine/" in str(report)
    assert [p.name for p in quarantined(tmp_path)] == sorted(p.name for p in broken)
    assert len(read_rows(tmp_path)) == 6


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin"})


def test_sql_goals_check_and_backfill_answer_over_broken_files(tmp_path: Path) -> None:
    """The views of pulse.duckdb read every file of a glob: a broken one copied in after
    the catalogue was made failed every query. The first reader that meets it moves it
    aside and asks again."""
    write_history(tmp_path)
    assert ensure_catalogue(tmp_path)
    broken = torn_copies(tmp_path)
    result = cli("sql", "SELECT count(*) AS n FROM snapshots", "--data-dir", str(tmp_path))
    assert result.returncode == 0 and "│ 6 │" in result.stdout.replace(" ", "").replace(
        "│6│", "│ 6 │"), result.stdout + result.stderr
    assert [p.name for p in quarantined(tmp_path)] == sorted(p.name for p in broken)
    torn_copies(tmp_path)
    assert [(r["community_id"], r["members"]) for r in latest_rows(tmp_path, ["c"])] == [
        ("c", 5), ("c", 5)]  # goals check --data-dir
    torn_copies(tmp_path)
    assert len(read_rows(tmp_path)) == 6  # backfill, experts
    assert len(quarantined(tmp_path)) == 12  # (a second copy of a name gets .1, .2)


def test_a_file_damaged_inside_fails_the_query_in_one_line_until_compact_moves_it(
        tmp_path: Path) -> None:
    """Its ends intact, a damaged file passes the cheap check of both ends, and DuckDB's
    error does not name it: the query fails in one line; `compact` reads every file
    whole and moves it aside."""
    write_history(tmp_path)
    assert ensure_catalogue(tmp_path)
    path = next((tmp_path / "snapshots").glob("*/*.parquet"))
    data = bytearray(path.read_bytes())
    data[4:60] = b"\x07" * 56  # the first page header
    path.write_bytes(bytes(data))
    query = ("sql", "SELECT sum(members) FROM snapshots", "--data-dir", str(tmp_path))
    result = cli(*query)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(
        "community-pulse: error: SQL: "), result.stderr
    assert "skipped and moved" in str(compact(tmp_path))
    assert cli(*query).returncode == 0


def test_the_steering_reader_leaves_a_broken_file_out(tmp_path: Path) -> None:
    writer = write_history(tmp_path)
    torn_copies(tmp_path)
    sink = SteeringSink(writer.data_dir, SteeringSettings(), [], MetricConfig())
    newest = sink.read_newest("snapshots", T - 1, T + DAY_MS, SNAPSHOT_SCHEMA)
    assert newest.num_rows == 2 and set(newest["members"].to_pylist()) == {5}
    assert len(quarantined(tmp_path)) == 4


def test_an_io_error_is_not_taken_for_a_broken_file(tmp_path: Path) -> None:
    """Only bytes that were read and do not parse are quarantined: a read that fails (a
    disk or store error) raises, and the file stays where it is."""
    path, _ = closing_file(tmp_path, final=False)

    class Failing:
        def __getattr__(self, name: str) -> object:
            return getattr(writer.fs, name)

        def open_input_file(self, path: str) -> pa.NativeFile:
            raise OSError(5, "Input/output error")

    writer = SnapshotWriter(tmp_path)
    writer.fs = Failing()  # type: ignore[assignment]
    with pytest.raises(OSError, match="Input/output"):
        writer.read_closing(T, 0)
    assert path.exists() and not quarantined(tmp_path)
