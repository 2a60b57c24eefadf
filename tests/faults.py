"""What every fault test needs: one stream of events (single events and batch envelopes),
and the check that a worker's final snapshot equals `replay` of the same events."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgspec
from kafka import KafkaConsumer, TopicPartition

from devkit import generate as gen
from devkit.devkafka import LocalKafka, LocalKafkaCluster
from schemas.events import DEAD_LETTER_TOPIC, DEFAULT_TOPICS
from streams.config import MetricConfig
from streams.replay import replay
from tests.workers import (
    Samples,
    WorkerProcess,
    comparable,
    parquet_rows,
    settled_snapshot,
    wait_for,
)

Message = tuple[str, bytes, bytes]  # (topic without prefix, key, value)
# Dead members leave the group after 10 s, not 60: a restarted worker gets its partitions
# back soon (tests that kill workers would otherwise wait a minute each time).
FAST_GROUP = {"PULSE_SESSION_TIMEOUT_S": "10"}


@dataclass
class Stream:
    communities: list[str]
    events_file: Path
    messages: list[Message]  # single events first, then envelopes


def make_stream(folder: Path, n_communities: int = 8, users: int = 200, days: int = 30,
                seed: int = 5) -> Stream:
    rng = random.Random(seed)
    communities = gen.plan(n_communities, users, rng)
    events = gen.messy_order(
        [e for c in communities for e in gen.history(c, int(time.time() * 1000), days, rng)],
        rng)
    events_file = folder / "events.jsonl"
    events_file.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in events))
    half = len(events) // 2
    messages = [*gen.to_messages(events[:half], 1), *gen.to_messages(events[half:], 20)]
    return Stream([c.community_id for c in communities], events_file, messages)


@dataclass
class Names:
    prefix: str
    app_id: str

    @property
    def source_topics(self) -> list[str]:
        return [self.prefix + t for t in DEFAULT_TOPICS]

    def create_topics(self, kafka: LocalKafka | LocalKafkaCluster) -> None:
        kafka.create_topics([*self.source_topics, self.prefix + DEAD_LETTER_TOPIC])


def with_bad_messages(messages: list[Message]) -> tuple[list[Message], int]:
    """The messages with gen.BAD_MESSAGES spread evenly over them, and how many those are."""
    bad = [(topic, b"x", value) for topic, value in gen.BAD_MESSAGES]
    messages = list(messages)
    for i, message in enumerate(bad):
        messages.insert((i + 1) * len(messages) // (len(bad) + 1), message)
    return messages, len(bad)


def dead_letters(bootstrap: str, names: Names) -> list[dict[str, bytes]]:
    """The headers of every dead letter written (copies re-sent after a restart too)."""
    consumer = KafkaConsumer(names.prefix + DEAD_LETTER_TOPIC, bootstrap_servers=bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    letters = [dict(record.headers) for record in consumer]
    consumer.close()
    return letters


def fresh_names() -> Names:
    return Names(f"f{uuid.uuid4().hex[:8]}.", f"pulse-{uuid.uuid4().hex[:8]}")


def committed_through_end(bootstrap: str, names: Names) -> bool:
    """Whether the consumer group has committed every message of the source topics."""
    # Never subscribes, so it does not join the group: it only reads its offsets.
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=names.app_id,
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(t, p) for t in names.source_topics
                      for p in consumer.partitions_for_topic(t) or ()]
        ends = consumer.end_offsets(partitions)
        return all(end == 0 or (consumer.committed(tp) or 0) >= end
                   for tp, end in ends.items())
    finally:
        consumer.close()


def owns(worker: WorkerProcess, n: int) -> Samples | None:
    samples = worker.scrape()
    return samples if worker.value(samples, "community_pulse_owned_communities") == n else None


def assert_snapshot_equals_replay(worker: WorkerProcess, stream: Stream, out: Path) -> None:
    """The worker's next snapshot equals `replay --as-of` that moment over all events."""
    as_of, _ = settled_snapshot(worker)
    streamed = parquet_rows(worker.data_dir, as_of)
    replay([stream.events_file], out, MetricConfig(), as_of_ms=round(as_of * 1000))
    replayed = parquet_rows(out, as_of)
    assert {r["community_id"] for r in replayed} == set(stream.communities)
    assert [comparable(r) for r in streamed] == [comparable(r) for r in replayed]


def finish_and_compare(worker: WorkerProcess, bootstrap: str, names: Names, stream: Stream,
                       out: Path, timeout: float = 240) -> None:
    """Wait until everything is committed and every community owned, then compare the
    worker's next snapshot with `replay`."""
    wait_for(lambda: committed_through_end(bootstrap, names), timeout,
             "the worker to commit everything")
    wait_for(lambda: owns(worker, len(stream.communities)), 120, "every community")
    assert_snapshot_equals_replay(worker, stream, out)
