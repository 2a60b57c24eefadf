"""End to end on the real broker: generator -> Kafka -> Faust worker -> Parquet + /metrics.

One module-scoped pipeline run serves several assertions: Parquet rows, /metrics values,
dead letters with reasons, the consumed = processed + duplicates + dead-lettered balance,
replay giving identical snapshots, and a restarted worker recovering its state from
the table changelog.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from kafka import KafkaConsumer

from devkit import generate as gen
from devkit.devkafka import LocalKafka
from schemas.events import DEAD_LETTER_TOPIC, DEFAULT_TOPICS
from streams.config import MetricConfig
from streams.replay import replay
from tests.workers import (
    Samples,
    WorkerProcess,
    comparable,
    parquet_rows,
    produce,
    settled_snapshot,
    wait_for,
)

N_COMMUNITIES = 10

BAD = [
    ("community.posts", b"community-x", b"{not json"),
    ("community.posts", b"community-x", b'{"event_id": "bad-1", "type": "post"}'),
    # a post on the replies topic
    ("community.replies", b"x", b'{"event_id":"bad-2","type":"post","community_id":"x",'
     b'"user_id":"u","ts":1795000000000,"post_id":"p"}'),
    ("community.likes", b"x", b'{"event_id":"bad-3","type":"like","community_id":"x",'
     b'"user_id":"u","ts":"1999-12-31T23:00:00Z","target_id":"p","target_type":"post"}'),
    # key does not match community_id
    ("community.views", b"other", b'{"event_id":"bad-4","type":"view","community_id":"x",'
     b'"user_id":"u","ts":1795000000000,"target_id":"p","target_type":"post"}'),
]
EXPECTED_REASONS = {b"invalid_json", b"missing_field", b"wrong_topic", b"bad_time",
                    b"key_mismatch"}


@dataclass
class Pipeline:
    kafka: LocalKafka
    prefix: str
    app_id: str
    events_file: Path
    n_events: int
    worker: WorkerProcess
    tmp: Path


def _consumed_all(worker: WorkerProcess, expected: int) -> Samples | None:
    samples = worker.scrape()
    done = worker.total(samples, "community_pulse_events_consumed_total") >= expected
    return samples if done else None


@pytest.fixture(scope="module")
def pipeline(kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    tmp = tmp_path_factory.mktemp("e2e")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    app_id = f"pulse-{uuid.uuid4().hex[:8]}"
    rng = random.Random(11)
    communities = gen.plan(N_COMMUNITIES, 300, rng)
    events = gen.messy_order(
        [e for c in communities for e in gen.history(c, int(time.time() * 1000), 35, rng)], rng)
    events_file = tmp / "events.jsonl"
    events_file.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in events))
    half = len(events) // 2
    # Both forms SPEC 1 allows: single events, then batch envelopes.
    messages = [*gen.to_messages(events[:half], 1), *gen.to_messages(events[half:], 40)]
    kafka.create_topics([prefix + t for t in [*DEFAULT_TOPICS, DEAD_LETTER_TOPIC]])
    produce(kafka.bootstrap, prefix, messages[: len(messages) // 2] + BAD)
    worker = WorkerProcess(kafka.bootstrap, tmp / "data", prefix, app_id)
    # The rest arrives while the worker runs.
    wait_for(worker.scrape, 60, "the worker's /metrics")
    produce(kafka.bootstrap, prefix, messages[len(messages) // 2 :])
    wait_for(lambda: _consumed_all(worker, len(events) + len(BAD)), 120, "all events consumed")
    yield Pipeline(kafka, prefix, app_id, events_file, len(events), worker, tmp)
    worker.stop()


def test_parquet_and_metrics_agree(pipeline: Pipeline) -> None:
    worker = pipeline.worker
    as_of, samples = settled_snapshot(worker)
    rows = parquet_rows(worker.data_dir, as_of)
    assert {r["community_id"] for r in rows} == {
        c.community_id for c in gen.plan(N_COMMUNITIES, 300, random.Random(11))}
    assert {r["window_days"] for r in rows} == {7, 28}
    exported = 0
    for row in rows:
        assert row["members"] == sum(row[k] for k in (
            "creators", "conversationalists", "critics", "joiners", "spectators", "inactives"))
        assert not any(isinstance(v, str) and "user-" in v for v in row.values())
        labels = {"community": row["community_id"], "window": f"{row['window_days']}d"}
        members = worker.value(samples, "community_pulse_members", **labels)
        if row["members"] < 5:
            assert members is None  # privacy threshold
            continue
        exported += 1
        assert members == row["members"]
        assert worker.value(samples, "community_pulse_tier", **labels) == (
            ["low", "medium", "high"].index(row["tier"]))
        score = worker.value(samples, "community_pulse_sustainability_score", **labels)
        assert score is not None and math.isclose(score, row["sustainability"])
        assert worker.value(samples, "community_pulse_role_users", role="critic",
                            **labels) == row["critics"]
        assert worker.value(samples, "community_pulse_stagnating",
                            community=row["community_id"]) == float(row["stagnating"])
    assert exported > 0
    assert any(r["stagnating"] for r in rows) and not all(r["stagnating"] for r in rows)


def test_counters_balance_and_duplicates_are_counted(pipeline: Pipeline) -> None:
    samples = pipeline.worker.scrape()
    w = pipeline.worker
    for topic in DEFAULT_TOPICS:
        t = pipeline.prefix + topic
        consumed = w.value(samples, "community_pulse_events_consumed_total", topic=t)
        processed = w.value(samples, "community_pulse_events_processed_total", topic=t)
        duplicates = w.value(samples, "community_pulse_events_duplicates_total", topic=t)
        dead = sum(v for labels, v in samples["community_pulse_events_dead_lettered_total"]
                   if labels["topic"] == t)
        assert consumed == (processed or 0) + (duplicates or 0) + dead, topic
    assert w.total(samples, "community_pulse_events_duplicates_total") > 0
    assert w.total(samples, "community_pulse_events_dead_lettered_total") == len(BAD)
    assert w.total(samples, "community_pulse_events_consumed_total") == pipeline.n_events + len(
        BAD)


def test_bad_input_lands_on_dead_letter_topic_with_reasons(pipeline: Pipeline) -> None:
    consumer = KafkaConsumer(
        pipeline.prefix + DEAD_LETTER_TOPIC, bootstrap_servers=pipeline.kafka.bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=5000)
    found = {}
    for record in consumer:
        found[record.value] = dict(record.headers)
        if len(found) == len(BAD):
            break
    consumer.close()
    assert set(found) == {value for _, _, value in BAD}
    assert {h["reason"] for h in found.values()} == EXPECTED_REASONS
    for headers in found.values():
        assert headers["detail"] and headers["source_topic"].startswith(pipeline.prefix.encode())


def test_replay_gives_identical_snapshots(pipeline: Pipeline) -> None:
    as_of, _ = settled_snapshot(pipeline.worker)
    streamed = parquet_rows(pipeline.worker.data_dir, as_of)
    out = pipeline.tmp / "replayed"
    replay([pipeline.events_file], out, MetricConfig(), as_of_ms=round(as_of * 1000))
    replayed = parquet_rows(out, as_of)
    assert [comparable(r) for r in replayed] == [comparable(r) for r in streamed]


def test_restarted_worker_recovers_state_from_changelog(pipeline: Pipeline) -> None:
    pipeline.worker.stop()
    restarted = WorkerProcess(pipeline.kafka.bootstrap, pipeline.tmp / "after-restart",
                              pipeline.prefix, pipeline.app_id)
    try:
        def owns_all() -> Samples | None:
            samples = restarted.scrape()
            owned = restarted.value(samples, "community_pulse_owned_communities")
            return samples if owned == N_COMMUNITIES else None

        wait_for(owns_all, 90, "the restarted worker to own every community")
        as_of, _ = settled_snapshot(restarted)
        recovered = parquet_rows(restarted.data_dir, as_of)
        out = pipeline.tmp / "replayed-restart"
        replay([pipeline.events_file], out, MetricConfig(), as_of_ms=round(as_of * 1000))
        assert [comparable(r) for r in parquet_rows(out, as_of)] == [
            comparable(r) for r in recovered]
        # The restarted worker consumed nothing new: its state came from the changelog.
        samples = restarted.scrape()
        assert restarted.total(samples, "community_pulse_events_processed_total") == 0
    finally:
        restarted.stop()
