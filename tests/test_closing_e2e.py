"""Closing rows on the real broker: a worker started on topics that already hold 30 days of
history, shuffled across days; late events within and beyond the grace period; the worker
stopped for two days (its clock set back with `clock_offset_s`) and restarted. After each,
its `daily` view equals replay of the same events (`--snapshot-every 1d` for all
midnights, `--as-of` for some), value by value, with one row per key.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

from kafka import KafkaProducer

from devkit import generate as gen
from devkit.devkafka import LocalKafka
from schemas.events import DEAD_LETTER_TOPIC, DEFAULT_TOPICS
from streams.closing import midnight_at_or_before
from streams.config import DAY_MS, RuntimeConfig
from tests.closing_helpers import Key, daily_rows, differences, live_rows, replayed_daily
from tests.workers import WorkerProcess, wait_for

HOUR = 3_600_000
DOWN_MS = 2 * DAY_MS  # the first worker runs this far in the past, then stops


def produce(kafka: LocalKafka, prefix: str, events: list[dict]) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=10)
    for topic, key, value in gen.to_messages(events, 20):
        producer.send(prefix + topic, key=key, value=value)
    producer.flush()
    producer.close()


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

    # 3. Down for two days; the events of those days arrive meanwhile. Restarted with
    # the real clock: state from the changelog, then the backlog; the missed midnights
    # are written once caught up, what was final stays as it was.
    later = renamed([e for c in gen.plan(6, 200, random.Random(15)) for e in
                     gen.history(c, now, 3, random.Random(16)) if e["ts"] > then], "later-")
    produce(kafka, prefix, later)
    restarted = WorkerProcess(kafka.bootstrap, data, prefix, app_id, 1.0)
    try:
        wait_for(lambda: settled(restarted, len(later), d0), 180, "the restarted backfill")
        got = daily_rows(data)
        assert {k[2] for k in got} == set(range(backfill_from, d0 + 1, DAY_MS))
        events = history + within + beyond + later
        final = replayed_daily(events, tmp_path / "replay-all")
        assert not differences(in_range(got, d1, d0), in_range(final, d1, d0))
        assert not differences(in_range(got, backfill_from, d1 - DAY_MS),
                               in_range(without_beyond, backfill_from, d1 - DAY_MS))
        # `replay --as-of` a midnight gives the same rows as the daily snapshots.
        for midnight in (backfill_from, d1, d0):
            at = replayed_daily(events if midnight >= d1 else history + within,
                                tmp_path / f"replay-at-{midnight}", as_of_ms=midnight,
                                every_day=False)
            assert at and not differences(in_range(got, midnight, midnight), at)
    finally:
        restarted.stop()
