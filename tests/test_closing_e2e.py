"""Closing rows on the real broker: a worker started on topics that already hold 30 days of
history, shuffled across days; late events within and beyond the grace period; the worker
stopped for two days (its clock set back with `clock_offset_s`) and restarted, with events
that reached Kafka after a grace period ran out while it was down; two workers
sharing one history through rebalances. After each, the `daily` view equals replay of the
same events (`--snapshot-every 1d` for all midnights, `--as-of` for some), value by value,
with one row per key.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import duckdb
import msgspec
import yaml

from devkit import generate as gen
from devkit.devkafka import LocalKafka
from schemas.events import DEAD_LETTER_TOPIC, DEFAULT_TOPICS
from sinks.parquet import SnapshotWriter, closing_file_name
from streams.closing import midnight_at_or_before
from streams.config import DAY_MS, MetricConfig, RuntimeConfig
from streams.replay import replay
from streams.steering.files import read_goals
from tests import workers
from tests.closing_helpers import Key, daily_rows, differences, live_rows, replayed_daily
from tests.workers import WorkerProcess, wait_for

HOUR = 3_600_000
DOWN_MS = 2 * DAY_MS  # the first worker runs this far in the past, then stops


def produce(kafka: LocalKafka, prefix: str, events: list[dict]) -> None:
    workers.produce(kafka.bootstrap, prefix, gen.to_messages(events, 20))


def renamed(events: list[dict], prefix: str) -> list[dict]:
    ids = ("event_id", "post_id", "reply_id", "parent_id", "target_id")
    return [{k: prefix + v if k in ids else v for k, v in e.items()} for e in events]


def in_range(rows: dict[Key, dict], first: int, last: int) -> dict[Key, dict]:
    return {k: v for k, v in rows.items() if first <= k[2] <= last}


def settled(worker: WorkerProcess, consumed: int, newest_closing_ms: int) -> bool:
    samples = worker.scrape()
    return (worker.total(samples, "community_pulse_events_consumed_total") >= consumed
            and worker.value(samples, "community_pulse_catching_up") == 0
            and worker.value(samples, "community_pulse_closing_timestamp_seconds")
            == newest_closing_ms / 1000)


def test_closing_rows_equal_replay_on_the_real_broker(kafka: LocalKafka, tmp_path: Path
                                                      ) -> None:
    prefix, app_id = f"c{uuid.uuid4().hex[:8]}.", f"pulse-{uuid.uuid4().hex[:8]}"
    kafka.create_topics([prefix + t for t in [*DEFAULT_TOPICS, DEAD_LETTER_TOPIC]])
    now = int(time.time() * 1000)
    then = now - DOWN_MS  # the first worker's clock
    d1, d0 = midnight_at_or_before(then), midnight_at_or_before(now)
    backfill_from = d1 - RuntimeConfig().closing_backfill_days * DAY_MS
    rng = random.Random(15)
    plan = gen.plan(6, 200, rng)
    history = [e for c in plan for e in gen.history(c, then, 30, rng)]
    rng.shuffle(history)  # shuffled across days
    produce(kafka, prefix, history)
    data = tmp_path / "data"
    shifted = {"PULSE_CLOCK_OFFSET_S": str(-DOWN_MS / 1000)}
    worker = WorkerProcess(kafka.bootstrap, data, prefix, app_id, 1.0, shifted)
    try:
        # 1. Started on topics with 30 days of history: every midnight back to the
        # backfill limit, once caught up.
        wait_for(lambda: settled(worker, len(history), d1), 180, "the first backfill")
        got = daily_rows(data)
        assert {k[2] for k in got} == set(range(backfill_from, d1 + 1, DAY_MS))
        replayed = replayed_daily(history, tmp_path / "replay-history")
        assert not differences(got, in_range(replayed, backfill_from, d1))
        # No live rows over a half-read backlog: the first one written already holds
        # the whole history (replay at its as_of gives the same rows).
        first_live = live_rows(data, first=True)
        at = replayed_daily(history, tmp_path / "replay-first-live",
                            as_of_ms=next(iter(first_live))[2], every_day=False, live=True)
        assert first_live and not differences(first_live, at)

        # 2. Late events: for the day before d1 (within d1's grace: d1's rows are
        # rewritten) and for the day before that (past its grace: counted, unchanged).
        community = plan[0].community_id
        def post(i: int, ts: int) -> dict:
            return {"event_id": f"late-{i}", "type": "post", "community_id": community,
                    "user_id": f"late-user-{i}", "ts": ts, "post_id": f"late-{i}"}
        within = [post(i, d1 - (i + 1) * HOUR) for i in range(4)]
        beyond = [post(10 + i, d1 - DAY_MS - (i + 1) * HOUR) for i in range(3)]
        produce(kafka, prefix, within + beyond)
        everything = replayed_daily(history + within + beyond, tmp_path / "replay-late")
        without_beyond = replayed_daily(history + within, tmp_path / "replay-within")
        wait_for(lambda: not differences(in_range(daily_rows(data), d1, d1),
                                         in_range(everything, d1, d1)),
                 120, "the rewritten closing rows of d1")
        samples = worker.scrape()
        assert worker.value(samples, "community_pulse_closing_late_events_total") == len(beyond)
        got = daily_rows(data)
        assert not differences(in_range(got, backfill_from, d1 - DAY_MS),
                               in_range(without_beyond, backfill_from, d1 - DAY_MS))
        assert got[(community, 7, d1)]["posts"] > got[(community, 7, d1 - DAY_MS)]["posts"] - 3
    finally:
        worker.stop()

    # 3. Down for two days; the events of those days arrive meanwhile, and three posts
    # for the day before d1 that reach Kafka only after d1's grace (too late for d1:
    # its rows stay as last written). Restarted with the real clock: state from the
    # changelog, the closing files looked at, then the backlog; the missed midnights are
    # written once caught up, what was final stays as it was.
    later = renamed([e for c in gen.plan(6, 200, random.Random(15)) for e in
                     gen.history(c, now, 3, random.Random(16)) if e["ts"] > then], "later-")
    after_grace = [post(20 + i, d1 - (i + 1) * HOUR) for i in range(3)]
    produce(kafka, prefix, later + after_grace)
    # Two final closing files broken meanwhile (a copy cut short, an empty file): the
    # restart moves them to quarantine and writes their rows anew (issue 21).
    broken_day = d1 - 5 * DAY_MS
    folder = Path(SnapshotWriter(data).tables.folder("snapshots", broken_day))
    broken = sorted(folder.glob("*-closing-p*.parquet"))[:2]
    assert len(broken) == 2
    broken[0].write_bytes(b"")
    broken[1].write_bytes(broken[1].read_bytes()[:random.Random(21).randrange(
        broken[1].stat().st_size)])
    restarted = WorkerProcess(kafka.bootstrap, data, prefix, app_id, 1.0)
    try:
        wait_for(lambda: settled(restarted, len(later) + len(after_grace), d0), 180,
                 "the restarted backfill")
        samples = restarted.scrape()
        assert restarted.value(samples, "community_pulse_closing_late_events_total") == len(
            after_grace)
        assert restarted.value(samples, "community_pulse_quarantined_files_total",
                               table="snapshots") == 2
        assert sorted(p.name for p in (data / "quarantine").rglob("*.parquet")) == [
            p.name for p in broken] and all(p.stat().st_size > 0 for p in broken)
        got = daily_rows(data)
        assert {k[2] for k in got} == set(range(backfill_from, d0 + 1, DAY_MS))
        events = history + within + beyond + later + after_grace
        final = replayed_daily(events, tmp_path / "replay-all")
        assert not differences(in_range(got, d1 + DAY_MS, d0), in_range(final, d1 + DAY_MS, d0))
        assert not differences(in_range(got, d1, d1), in_range(everything, d1, d1))
        assert not differences(in_range(got, backfill_from, d1 - DAY_MS),
                               in_range(without_beyond, backfill_from, d1 - DAY_MS))
        # `replay --as-of` a midnight gives the same rows as the daily snapshots.
        for midnight in (backfill_from, d1 + DAY_MS, d0):
            at = replayed_daily(events if midnight > d1 else history + within,
                                tmp_path / f"replay-at-{midnight}", as_of_ms=midnight,
                                every_day=False)
            assert at and not differences(in_range(got, midnight, midnight), at)
    finally:
        restarted.stop()


def test_late_events_older_than_the_newest_final_midnight_rewrite_the_open_one(
        kafka: LocalKafka, tmp_path: Path) -> None:
    # Issue 22 on the real broker: every fifth event dated 1 to 27 days before the open
    # midnight d is held back and sent once d's first closing rows are written (well
    # within the grace). Each belongs to d (ts <= d, arrived before d + grace): d's rows
    # are rewritten to equal `replay --as-of d` value by value, one row per key, and so
    # are the consumers of closing rows: the goals table at d and the trend series
    # (ago="0d"). The final midnights stay as they were, and the late counter counts
    # each held event once per final midnight at or after its ts.
    prefix, app_id = f"l{uuid.uuid4().hex[:8]}.", f"pulse-{uuid.uuid4().hex[:8]}"
    kafka.create_topics([prefix + t for t in [*DEFAULT_TOPICS, DEAD_LETTER_TOPIC]])
    now = int(time.time() * 1000)
    then = midnight_at_or_before(now - 12 * HOUR) + 12 * HOUR  # the worker's clock: noon
    d = midnight_at_or_before(then)
    rng = random.Random(22)
    plan = gen.plan(6, 200, rng)
    history = [e for c in plan for e in gen.history(c, then, 30, rng)]
    rng.shuffle(history)
    held = [e for e in history if d - 27 * DAY_MS <= e["ts"] <= d - DAY_MS][::5]
    held_ids = {e["event_id"] + e["community_id"] for e in held}
    first = [e for e in history if e["event_id"] + e["community_id"] not in held_ids]
    produce(kafka, prefix, first)
    data = tmp_path / "data"
    goals = goals_file(tmp_path, [c.community_id for c in plan], then)
    worker = WorkerProcess(kafka.bootstrap, data, prefix, app_id, 1.0,
                           {"PULSE_CLOCK_OFFSET_S": str((then - now) / 1000),
                            "PULSE_GOALS_FILE": str(goals)})
    try:
        wait_for(lambda: settled(worker, len(first), d), 180, "the first closing rows of d")
        before = daily_rows(data)
        assert not differences(in_range(before, d, d), replayed_daily(
            first, tmp_path / "replay-first", as_of_ms=d, every_day=False))
        goals_before = {k: v for k, v in goal_rows(data).items() if k[1] == d}
        produce(kafka, prefix, held)
        want = replayed_daily(first + held, tmp_path / "replay-all", as_of_ms=d,
                              every_day=False)
        assert differences(in_range(before, d, d), want)  # (the held events change d)
        wait_for(lambda: not differences(in_range(daily_rows(data), d, d), want), 120,
                 "d's closing rows with the held-back events")
        got = daily_rows(data)
        assert not differences(in_range(got, 0, d - 1), in_range(before, 0, d - 1))
        finals = {k[2] for k in got if k[2] < d}
        late = sum(1 for e in held for midnight in finals if e["ts"] <= midnight)
        assert late > len(held)  # (most are older than more than one final midnight)
        wait_for(lambda: settled(worker, len(first) + len(held), d), 30, "every event read")
        samples = worker.scrape()
        assert worker.value(samples, "community_pulse_closing_late_events_total") == late
        trend = {(labels["community"], int(labels["window"][:-1])): value
                 for labels, value in samples["community_pulse_closing_sustainability_score"]
                 if labels["ago"] == "0d"}
        assert trend and all(score == got[(c, w, d)]["sustainability"]
                             for (c, w), score in trend.items())
        at_d = {k: v for k, v in goal_rows(data).items() if k[1] == d}
        assert at_d and at_d == {k: v for k, v in replayed_goals(
            first + held, goals, tmp_path).items() if k[1] == d} != goals_before
    finally:
        worker.stop()


def closing_files(data: Path) -> dict[str, tuple[int, bytes]]:
    """Every closing file: name -> (modification time ns, content)."""
    return {f.name: (f.stat().st_mtime_ns, f.read_bytes())
            for f in (data / "snapshots").glob("*/*-closing-p*.parquet")}


def owned(worker: WorkerProcess) -> int:
    return int(worker.value(worker.scrape(), "community_pulse_owned_communities") or 0)


def test_closing_rows_survive_rebalances_in_one_shared_history(kafka: LocalKafka,
                                                                tmp_path: Path) -> None:
    # Two workers of one group write into one data dir (as the docs require). When a
    # partition moves, its new owner reads the closing files: final ones stay as they
    # are, open ones are rewritten whole; the history stays equal to replay, one row a key.
    prefix, app_id = f"r{uuid.uuid4().hex[:8]}.", f"pulse-{uuid.uuid4().hex[:8]}"
    kafka.create_topics([prefix + t for t in [*DEFAULT_TOPICS, DEAD_LETTER_TOPIC]])
    now = int(time.time() * 1000)
    d0 = midnight_at_or_before(now)
    rng = random.Random(17)
    plan = gen.plan(8, 200, rng)
    history = [e for c in plan for e in gen.history(c, now, 30, rng)]
    rng.shuffle(history)
    produce(kafka, prefix, history)
    data = tmp_path / "data"
    replayed = replayed_daily(history, tmp_path / "replay")
    # SMART goals (docs/steering.md): the goals table comes with the closing rows; the
    # goal of a community without events comes from the owner of its key's partition.
    goals = goals_file(tmp_path, [c.community_id for c in plan], now)
    env = {"PULSE_GOALS_FILE": str(goals)}
    first = WorkerProcess(kafka.bootstrap, data, prefix, app_id, 1.0, env)
    second = None
    try:
        wait_for(lambda: settled(first, len(history), d0), 180, "the first worker's backfill")
        got = daily_rows(data)
        backfill_from = min(k[2] for k in got)
        assert not differences(got, in_range(replayed, backfill_from, d0))
        before = closing_files(data)
        final = {name for name in before if not name.startswith(f"{_stamp(d0)}-")}
        assert final and len(before) > len(final)  # today's files are still open

        second = WorkerProcess(kafka.bootstrap, data, prefix, app_id, 1.0, env)
        wait_for(lambda: owned(first) and owned(second) and owned(first) + owned(second)
                 == len(plan) and settled(second, 0, d0), 180, "the second worker's share")
        second.stop()
        wait_for(lambda: owned(first) == len(plan), 120, "the survivor to take all back")
        wait_for(lambda: settled(first, len(history), d0), 60, "the survivor to catch up")
        after = closing_files(data)
        assert {name: after[name] for name in final} == {name: before[name] for name in final}
        assert after.keys() == before.keys()
        assert not differences(daily_rows(data), in_range(replayed, backfill_from, d0))
        got_goals = goal_rows(data)
        assert {t for _, t in got_goals} == set(range(backfill_from, d0 + 1, DAY_MS))
        assert got_goals == {k: v for k, v in replayed_goals(history, goals, tmp_path).items()
                             if backfill_from <= k[1] <= d0}
    finally:
        first.stop()
        if second is not None:
            second.stop()


def goals_file(tmp_path: Path, communities: list[str], now: int) -> Path:
    """Goals on three communities, and one on a community without events whose key goes
    to a partition that holds communities (4 partitions, kafka-python's murmur2)."""
    from kafka.partitioner.default import murmur2

    def partition(key: str) -> int:
        return (murmur2(key.encode()) & 0x7FFFFFFF) % 4

    used = {partition(c) for c in communities}
    empty = next(f"quiet-{i}" for i in range(100) if partition(f"quiet-{i}") in used)

    def at(days: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000 + days * 86_400))

    goals = [{"id": f"goal-{c}", "community": c, "metric": metric, "baseline": 0,
              "target": 100, "start": at(-20), "deadline": at(-5), "sustain_until": at(20)}
             for c, metric in zip([*communities[:3], empty],
                                  ("members", "sustainability", "posts", "members"),
                                  strict=True)]
    path = tmp_path / "goals.yml"
    path.write_text(yaml.safe_dump({"goals": goals}))
    return path


def goal_rows(data_dir: Path) -> dict[tuple[str, int], tuple]:
    """The goals view by (goal, as_of); fails on a second row for a key in the files."""
    with duckdb.connect(str(data_dir / "pulse.duckdb"), read_only=True) as con:
        twice = con.sql(f"""SELECT goal_id, as_of, count(*) AS n FROM read_parquet(
                            '{data_dir}/goals/*/*.parquet') GROUP BY ALL HAVING n > 1""")
        assert not twice.fetchall()
        rows = con.sql("SELECT goal_id, epoch_ms(as_of), status, value, expected, progress "
                       "FROM goals WHERE epoch_ms(as_of) % 86400000 = 0").fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def replayed_goals(events: list[dict], goals: Path, tmp_path: Path
                   ) -> dict[tuple[str, int], tuple]:
    source = tmp_path / "replay-goals.jsonl"
    source.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in events))
    replay([source], tmp_path / "replay-goals", MetricConfig(), every_ms=DAY_MS,
           goals=read_goals(goals))
    return goal_rows(tmp_path / "replay-goals")


def _stamp(ms: int) -> str:
    return closing_file_name(ms, 0).split("-closing-")[0]
