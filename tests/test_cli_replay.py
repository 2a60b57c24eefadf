"""The command line, replay and the Parquet/DuckDB outputs, without Kafka."""

from __future__ import annotations

import gc
import random
import subprocess
import sys
from pathlib import Path

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devkit import generate as gen
from sinks.compact import compact
from sinks.parquet import SnapshotWriter, snapshots_glob
from streams import config as config_module
from streams.cli import main
from streams.config import ConfigError, MetricConfig
from streams.replay import parse_time, replay

NOW = "2026-11-18T12:00:00Z"


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    rng = random.Random(3)
    events = [e for c in gen.plan(6, 200, rng) for e in gen.history(c, parse_time(NOW), 30, rng)]
    lines = [msgspec.json.encode(e) for e in gen.messy_order(events, rng)]
    lines.insert(10, b"{broken")
    lines.insert(20, b'{"event_id": "x", "type": "post"}')
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def rows(data_dir: Path) -> list[tuple]:
    with duckdb.connect(str(data_dir / "pulse.duckdb"), read_only=True) as con:
        return con.sql("SELECT * EXCLUDE (date) FROM snapshots "
                       "ORDER BY as_of, community_id, window_days").fetchall()


@pytest.mark.parametrize(
    "args",
    [
        ["bogus"],
        ["replay", "--data-dir", "x"],
        ["replay", "missing.jsonl", "--data-dir", "x"],
        ["replay", "{events}", "--data-dir", "x", "--as-of", "yesterday"],
        ["replay", "{events}", "--data-dir", "x", "--as-of", "2026-11-18T12:00:00"],
        ["replay", "{events}", "--data-dir", "x", "--snapshot-every", "5 minutes"],
        ["replay", "{events}", "--data-dir", "x", "--jobs", "0"],
        ["replay", "{garbage}", "--data-dir", "x"],
        ["generate", "--out", "x.jsonl", "--communities", "0"],
        ["compact", "--data-dir", "/nonexistent"],
        ["--config", "/nonexistent.toml", "replay", "{events}", "--data-dir", "x"],
    ],
)
def test_bad_arguments_and_files_give_one_line_and_nonzero_exit(
    args: list[str], events_file: Path, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    args = [a.format(events=events_file, garbage=garbage) for a in args]
    result = cli(*args)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("community-pulse") and "error:" in result.stderr


def test_replay_as_of_writes_exactly_that_moment_for_every_community_and_window(
    events_file: Path, tmp_path: Path
) -> None:
    result = cli("replay", str(events_file), "--data-dir", str(tmp_path), "--as-of", NOW)
    assert result.returncode == 0, result.stderr
    assert "2 invalid" in result.stdout  # skipped, counted and reported
    got = rows(tmp_path)
    assert {r[1] for r in got} == {parse_time(NOW) / 1000} or {
        r[1].timestamp() for r in got} == {parse_time(NOW) / 1000}
    assert {(r[0], r[2]) for r in got} == {
        (c.community_id, w) for c in gen.plan(6, 200, random.Random(3)) for w in (7, 28)}


def test_replay_command_runs_with_the_tuned_gc_thresholds(
    events_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # CPython's defaults
        assert main(["replay", str(events_file), "--data-dir", str(tmp_path)]) == 0
        assert gc.get_threshold() == config_module.GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)
    assert "replayed" in capsys.readouterr().out


def test_worker_command_starts_the_worker_with_the_tuned_gc_thresholds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What `worker` hands to streams.app.run (the Faust worker itself is tested on
    a real broker elsewhere), and the GC thresholds in force when it starts."""
    import streams.app

    started: list[tuple[object, ...]] = []
    monkeypatch.setattr(streams.app, "run", lambda metrics, runtime, loglevel: started.append(
        (runtime.broker, runtime.partitions, loglevel, gc.get_threshold())))
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # CPython's defaults
        assert main(["worker", "--broker", "127.0.0.1:9", "--partitions", "3"]) == 0
    finally:
        gc.set_threshold(*before)
    assert started == [("kafka://127.0.0.1:9", 3, "warning", config_module.GC_THRESHOLDS)]


def test_replay_reads_parquet_event_files_like_json_lines(
    events_file: Path, tmp_path: Path
) -> None:
    lines = events_file.read_bytes().splitlines()
    good = [msgspec.json.decode(line) for line in lines if line.startswith(b'{"event_id":"')]
    columns = sorted({k for e in good for k in e})
    table = pa.Table.from_pylist([{k: e.get(k) for k in columns} for e in good])
    parquet_file = tmp_path / "events.parquet"
    pq.write_table(table, parquet_file)
    replay([events_file], tmp_path / "a", MetricConfig(), as_of_ms=parse_time(NOW))
    replay([parquet_file], tmp_path / "b", MetricConfig(), as_of_ms=parse_time(NOW))
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


def test_rerunning_the_same_input_adds_no_rows_and_compaction_loses_none(
    events_file: Path, tmp_path: Path
) -> None:
    for _ in range(2):
        replay([events_file], tmp_path, MetricConfig(), as_of_ms=parse_time(NOW),
               every_ms=6 * 3_600_000)
    first = rows(tmp_path)
    keys = [(r[0], r[1], r[2]) for r in first]
    assert len(keys) == len(set(keys))
    files = list(tmp_path.glob("snapshots/*/*.parquet"))
    report = compact(tmp_path)
    assert report.files_after < len(files)
    assert rows(tmp_path) == first
    assert compact(tmp_path).partitions == 0  # nothing left to merge
    assert rows(tmp_path) == first
    assert not list(tmp_path.glob("snapshots/*/.*"))  # no temporary files left behind


def test_duckdb_catalogue_stays_readable_while_a_writer_adds_snapshots(
    events_file: Path, tmp_path: Path
) -> None:
    replay([events_file], tmp_path, MetricConfig(), as_of_ms=parse_time(NOW) - 86_400_000)
    before = len(rows(tmp_path))
    reader = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; "
         f"c = duckdb.connect({str(tmp_path / 'pulse.duckdb')!r}, read_only=True); "
         "print(c.sql('select count(*) from snapshots').fetchall()[0][0], flush=True); "
         "sys.stdin.readline(); "
         "print(c.sql('select count(*) from snapshots').fetchall()[0][0], flush=True)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdin is not None
    assert int(reader.stdout.readline()) == before
    # A new writer process (like a restarted worker) cannot take the catalogue lock ...
    replay([events_file], tmp_path, MetricConfig(), as_of_ms=parse_time(NOW))
    # ... yet its files land, and the reader's open view sees them.
    reader.stdin.write("\n")
    reader.stdin.flush()
    assert int(reader.stdout.readline()) == before * 2
    reader.wait(timeout=30)


def test_snapshot_files_are_hive_partitioned_by_utc_date(tmp_path: Path) -> None:
    replay_dir = tmp_path / "d"
    writer = SnapshotWriter(replay_dir)
    from streams.core import PulseCore

    core = PulseCore(MetricConfig())
    core.state("c1")
    (path,) = writer.write(core.snapshot(parse_time("2026-03-01T23:30:00-02:00")))
    assert "/snapshots/date=2026-03-02/" in path
    counted = duckdb.sql(f"SELECT count(*) FROM read_parquet('{snapshots_glob(replay_dir)}')")
    assert counted is not None and counted.fetchall() == [(2,)]


def test_config_file_and_environment_overrides(tmp_path: Path, monkeypatch) -> None:
    file = tmp_path / "pulse.toml"
    file.write_text('[metrics]\nwindows_days = [1, 7]\nsla_hours = 4\n'
                    'sla_hours_by_community = {"support" = 1.5}\n'
                    '[runtime]\npartitions = 8\n')
    monkeypatch.setenv("PULSE_SLA_HOURS", "6")
    monkeypatch.setenv("PULSE_METRICS_PORT", "9999")
    metrics, runtime = config_module.load(file)
    assert metrics.windows_days == (1, 7)
    assert metrics.sla_hours == 6.0  # environment beats the file
    assert metrics.sla_ms("support") == 5_400_000
    assert runtime.partitions == 8 and runtime.metrics_port == 9999
    file.write_text("[metrics]\nwindow_days = [1]\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        config_module.load(file)
    monkeypatch.setenv("PULSE_TIER_HIGH_SHARE", "0.1")
    with pytest.raises(ConfigError, match="tier"):
        config_module.load(None)


def test_replay_shows_progress_on_a_terminal(events_file: Path, tmp_path: Path) -> None:
    import os
    import pty

    main, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "replay", str(events_file), "--data-dir",
         str(tmp_path), "--snapshot-every", "1d"], stderr=terminal, stdout=subprocess.PIPE)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=120) == 0
    os.close(main)
    text = output.decode()
    assert "events" in text and "ev/s" in text and "left" in text


def _files(data_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data_dir)): p.read_bytes()
            for p in sorted((data_dir / "snapshots").rglob("*.parquet"))}


def test_replay_in_partitions_writes_the_same_files_as_in_one_process(
        events_file: Path, tmp_path: Path) -> None:
    """Each process owns a share of the communities, like workers of one consumer group;
    the parent writes each snapshot time's rows as one file, byte for byte the same."""
    results = {}
    for jobs in (1, 3):
        results[jobs] = replay([events_file], tmp_path / str(jobs), MetricConfig(),
                               as_of_ms=parse_time(NOW), every_ms=86_400_000, jobs=jobs)
    one, three = results[1], results[3]
    assert (one.stats, one.snapshot_times, one.rows_written) == \
        (three.stats, three.snapshot_times, three.rows_written)
    assert one.stats.duplicates > 0 and len(one.snapshot_times) > 20
    assert _files(tmp_path / "1") == _files(tmp_path / "3") != {}
    assert rows(tmp_path / "1") == rows(tmp_path / "3")


def test_a_failing_partition_ends_the_replay_with_its_error(
        events_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.replay as replay_module

    real = replay_module._run_partition

    def failing(events, *args):  # type: ignore[no-untyped-def]
        if 0 in events.community.tolist():  # the partition with the first community
            raise MemoryError("out of memory in this partition")
        return (yield from real(events, *args))

    monkeypatch.setattr(replay_module, "_run_partition", failing)
    with pytest.raises(replay_module.ReplayError, match="MemoryError: out of memory"):
        replay([events_file], tmp_path, MetricConfig(), as_of_ms=parse_time(NOW), jobs=2)
