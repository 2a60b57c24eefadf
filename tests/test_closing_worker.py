"""The worker's closing rows without a broker: an injectable clock, Faust-like messages
and the arrival mark set by hand. The same cases run on the real broker in
tests/test_closing_e2e.py; here each step can look at the clock exactly."""

from __future__ import annotations

import asyncio
import random
import threading
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pyarrow.parquet as pq
from prometheus_client.parser import text_string_to_metric_families

from devkit import generate as gen
from schemas.producer import TOPIC_OF
from sinks.parquet import FINAL_KEY
from streams.app import SnapshotTimer
from streams.config import DAY_MS, MetricConfig, RuntimeConfig
from streams.replay import parse_time
from streams.worker import PulseWorker
from tests.closing_helpers import daily_rows, differences, replayed_daily

NOW_MS = parse_time("2026-11-18T15:00:00Z")
MIDNIGHT = parse_time("2026-11-18T00:00:00Z")
PARTITIONS = 2


class Feeder:
    """Messages for PulseWorker.handle_batch, partitioned by community like Kafka."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def batch(self, events: list[dict], arrival_ms: int = NOW_MS) -> list[Any]:
        out = []
        for e in events:
            partition = zlib.crc32(e["community_id"].encode()) % PARTITIONS
            topic = TOPIC_OF[e["type"]]
            offset = self.offsets.get((topic, partition), 0)
            self.offsets[(topic, partition)] = offset + 1
            out.append(SimpleNamespace(message=SimpleNamespace(
                topic=topic, value=msgspec.json.encode(e), key=e["community_id"].encode(),
                partition=partition, offset=offset, timestamp=arrival_ms / 1000)))
        return out


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def feed(worker: PulseWorker, feeder: Feeder, events: list[dict], arrival_ms: int = NOW_MS
         ) -> None:
    for start in range(0, len(events), 500):
        worker.handle_batch(feeder.batch(events[start:start + 500], arrival_ms))
    ends = {tp: feeder.offsets[tp] for tp in feeder.offsets}
    for _ in range(2):  # everything there at the first check is processed at the second
        worker.observe_offsets(ends, {}, int(worker.clock() * 1000))


def history(seed: int, days: int) -> list[dict]:
    rng = random.Random(seed)
    events = [e for c in gen.plan(6, 200, rng) for e in gen.history(c, NOW_MS, days, rng)]
    rng.shuffle(events)  # shuffled across days: arrival order has nothing to do with ts
    return events


def renamed(events: list[dict], prefix: str) -> list[dict]:
    """The events with ids of their own (the generator numbers every history from 1)."""
    ids = ("event_id", "post_id", "reply_id", "parent_id", "target_id")
    return [{k: prefix + v if k in ids else v for k, v in e.items()} for e in events]


def new_worker(tmp_path: Path, clock: Clock) -> PulseWorker:
    return PulseWorker(MetricConfig(), RuntimeConfig(data_dir=tmp_path / "data"), clock=clock)


def in_range(rows: dict, first: int, last: int) -> dict:
    return {k: v for k, v in rows.items() if first <= k[2] <= last}


def closing_series(worker: PulseWorker) -> dict[tuple[str, str, str], float]:
    """The closing sustainability series /metrics shows: (community, window, ago) -> value."""
    found = {}
    for family in text_string_to_metric_families(worker.metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == "community_pulse_closing_sustainability_score":
                labels = sample.labels
                found[(labels["community"], labels["window"], labels["ago"])] = sample.value
    return found


def final_flags(data_dir: Path, midnight: int) -> set[bytes]:
    folder = data_dir / "snapshots" / f"date={parse_day(midnight)}"
    return {pq.read_schema(f).metadata[FINAL_KEY] for f in folder.glob("*-closing-p*.parquet")}


def parse_day(ms: int) -> str:
    from datetime import UTC, datetime
    return f"{datetime.fromtimestamp(ms / 1000, tz=UTC):%Y-%m-%d}"


def test_shuffled_history_late_events_and_a_restart_equal_replay(tmp_path: Path) -> None:
    clock = Clock(NOW_MS)
    worker, feeder = new_worker(tmp_path, clock), Feeder()
    events = history(5, 20)
    feed(worker, feeder, events)
    assert worker.mark == NOW_MS
    worker.close_midnights()
    backfill_from = MIDNIGHT - RuntimeConfig().closing_backfill_days * DAY_MS
    got = daily_rows(tmp_path / "data")
    assert {k[2] for k in got} == set(range(backfill_from, MIDNIGHT + 1, DAY_MS))
    want = in_range(replayed_daily(events, tmp_path / "replay-1"), backfill_from, MIDNIGHT)
    assert not differences(got, want)
    assert final_flags(tmp_path / "data", MIDNIGHT) == {b"false"}  # within grace
    assert final_flags(tmp_path / "data", MIDNIGHT - DAY_MS) == {b"true"}
    # The trend series: closing values of today's midnight and a week before, as written;
    # withdrawn while the worker catches up, back once it has.
    trend = closing_series(worker)
    assert trend and {ago for _, _, ago in trend} == {"0d", "7d"}
    for (community_id, window, ago), score in trend.items():
        as_of = MIDNIGHT - (7 * DAY_MS if ago == "7d" else 0)
        assert score == got[(community_id, int(window[:-1]), as_of)]["sustainability"]
    worker.observe_offsets(None, {}, NOW_MS)
    assert closing_series(worker) == {}
    feed(worker, feeder, [])
    worker.close_midnights()
    assert closing_series(worker) == trend

    # Late events for yesterday (before today's midnight), within its grace: the same
    # files are rewritten. Events for the day before yesterday are past their grace:
    # counted, that midnight's rows stay, today's include them.
    community = events[0]["community_id"]
    def post(i: int, ts: int) -> dict:
        return {"event_id": f"late-{i}", "type": "post", "community_id": community,
                "user_id": f"late-user-{i}", "ts": ts, "post_id": f"late-{i}"}
    yesterday = [post(i, MIDNIGHT - 3_600_000 * (i + 1)) for i in range(5)]
    too_late = [post(10 + i, MIDNIGHT - DAY_MS - 3_600_000 * (i + 1)) for i in range(3)]
    clock.ms += 3_600_000
    feed(worker, feeder, yesterday + too_late)
    worker.close_midnights()
    assert worker.metrics.closing_late._value.get() == len(too_late)
    got = daily_rows(tmp_path / "data")
    everything = replayed_daily(events + yesterday + too_late, tmp_path / "replay-2")
    before = replayed_daily(events + yesterday, tmp_path / "replay-3")
    assert not differences(in_range(got, MIDNIGHT, MIDNIGHT),
                           in_range(everything, MIDNIGHT, MIDNIGHT))
    assert not differences(in_range(got, backfill_from, MIDNIGHT - DAY_MS),
                           in_range(before, backfill_from, MIDNIGHT - DAY_MS))
    assert got[(community, 7, MIDNIGHT)]["posts"] == everything[(community, 7, MIDNIGHT)][
        "posts"] > before[(community, 7, MIDNIGHT - DAY_MS)]["posts"] - len(too_late)

    # Stopped before the grace of today's midnight ends, down for two days. The state
    # comes back (here: fed again, as recovery does, before anything is known), the
    # closing files are looked at, then the backlog of those days streams in: new days,
    # and three posts for the day before today's midnight that reached Kafka only after
    # its grace (too late: that midnight keeps the rows it had).
    rng = random.Random(9)
    later = renamed([e for c in gen.plan(6, 200, random.Random(5)) for e in
                     gen.history(c, NOW_MS + 2 * DAY_MS, 2, rng) if e["ts"] > NOW_MS], "later-")
    after_grace = [post(20 + i, MIDNIGHT - 3_600_000 * (i + 1)) for i in range(3)]
    clock.ms = NOW_MS + 2 * DAY_MS
    restarted, feeder = new_worker(tmp_path, clock), Feeder()
    feed(restarted, feeder, events + yesterday + too_late)
    restarted.learn_closing_files(clock.ms)
    feed(restarted, feeder, later + after_grace, arrival_ms=clock.ms)
    restarted.close_midnights()
    assert restarted.metrics.closing_late._value.get() == len(after_grace)
    got = daily_rows(tmp_path / "data")
    final = replayed_daily(events + yesterday + too_late + later + after_grace,
                           tmp_path / "replay-4")
    assert not differences(in_range(got, MIDNIGHT + DAY_MS, MIDNIGHT + 2 * DAY_MS),
                           in_range(final, MIDNIGHT + DAY_MS, MIDNIGHT + 2 * DAY_MS))
    # Today's midnight: as before the stop for the community the late posts reached,
    # from the state (nothing after the grace) for the others; final now.
    assert not differences(in_range(got, MIDNIGHT, MIDNIGHT),
                           in_range(everything, MIDNIGHT, MIDNIGHT))
    assert got[(community, 7, MIDNIGHT)]["posts"] < final[(community, 7, MIDNIGHT)]["posts"]
    # What was final before the stop is not rewritten from the state it has now.
    assert not differences(in_range(got, backfill_from, MIDNIGHT - DAY_MS),
                           in_range(before, backfill_from, MIDNIGHT - DAY_MS))
    assert final_flags(tmp_path / "data", MIDNIGHT) == {b"true"}
    assert final_flags(tmp_path / "data", MIDNIGHT + DAY_MS) == {b"true"}


def test_a_hung_closing_write_stalls_only_the_closing_rows(tmp_path: Path) -> None:
    """The snapshot timer goes on (snapshots, gauges, expiry, live rows) while a closing
    file's write hangs; no second pass starts meanwhile; once the disk is back, the
    pending midnights are written."""
    clock = Clock(NOW_MS)
    worker, feeder = new_worker(tmp_path, clock), Feeder()
    events = history(7, 3)
    feed(worker, feeder, events)
    disk_back, hung, closing_writes = threading.Event(), threading.Event(), []
    write_table = worker.writer.write_table

    def hanging_write_table(as_of_ms: int, table: Any, name: str | None = None) -> str:
        if name is not None and "-closing-" in name:
            closing_writes.append(as_of_ms)
            hung.set()
            disk_back.wait()
        return write_table(as_of_ms, table, name)

    worker.writer.write_table = hanging_write_table  # type: ignore[method-assign]
    expiry_cuts: list[int] = []
    expire = worker.core.expire

    def counted_expire(before_ms: int) -> None:
        expiry_cuts.append(before_ms)
        expire(before_ms)

    worker.core.expire = counted_expire  # type: ignore[method-assign]

    async def ticks() -> None:
        try:
            await timeline()
        finally:  # a failed run must not leave the write thread waiting (nor asyncio.run)
            disk_back.set()

    async def timeline() -> None:
        timer = SnapshotTimer(worker)
        await asyncio.wait_for(timer.tick(), 120)
        while not hung.is_set():  # the closing pass reached its first write
            await asyncio.sleep(0.05)
        for _ in range(3):  # the disk hangs: the timer still ticks, an hour apart
            clock.ms += 3_600_000
            cuts_before = len(expiry_cuts)
            await asyncio.wait_for(timer.tick(), 120)
            assert len(expiry_cuts) > cuts_before
            assert worker.metrics.last_snapshot._value.get() == clock.ms / 1000
        assert len(closing_writes) == 1  # no second pass while the first one waits
        assert worker.newest_closing == 0
        disk_back.set()
        assert timer.closing is not None
        await asyncio.wait_for(timer.closing, 120)
        await timer.tick()  # (the next pass: nothing due is left unwritten)
        assert timer.closing is not None
        await asyncio.wait_for(timer.closing, 120)

    asyncio.run(ticks())
    assert worker.newest_closing == MIDNIGHT
    backfill_from = MIDNIGHT - RuntimeConfig().closing_backfill_days * DAY_MS
    assert not differences(daily_rows(tmp_path / "data"), in_range(
        replayed_daily(events, tmp_path / "replay"), backfill_from, MIDNIGHT))
