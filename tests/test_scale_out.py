"""Two workers in one consumer group split the communities, export each once, and the
survivor takes everything over with the same numbers when the other stops."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import msgspec

from devkit import generate as gen
from devkit.devkafka import LocalKafka
from schemas.events import DEAD_LETTER_TOPIC, DEFAULT_TOPICS, Event
from streams.config import MetricConfig
from streams.core import PulseCore
from tests.workers import Samples, WorkerProcess, produce, wait_for

N = 12


def exported(worker: WorkerProcess, samples: Samples) -> dict[str, float]:
    return {labels["community"]: value
            for labels, value in samples.get("community_pulse_members", [])
            if labels["window"] == "28d"}


def owned(worker: WorkerProcess) -> int:
    return int(worker.value(worker.scrape(), "community_pulse_owned_communities") or 0)


def test_two_workers_share_the_work_and_the_survivor_takes_over(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    prefix, app_id = f"s{uuid.uuid4().hex[:8]}.", f"pulse-{uuid.uuid4().hex[:8]}"
    rng = random.Random(8)
    events = [e for c in gen.plan(N, 500, rng) for e in gen.history(
        c, int(time.time() * 1000), 35, rng)]
    kafka.create_topics([prefix + t for t in [*DEFAULT_TOPICS, DEAD_LETTER_TOPIC]])
    produce(kafka.bootstrap, prefix, gen.to_messages(events, 25))
    core = PulseCore(MetricConfig())
    core.apply(msgspec.convert(e, type=Event) for e in events)

    first = WorkerProcess(kafka.bootstrap, tmp_path / "a", prefix, app_id)
    second = None
    try:
        wait_for(lambda: owned(first) == N, 120, "the first worker to own everything")
        second = WorkerProcess(kafka.bootstrap, tmp_path / "b", prefix, app_id)

        expected = {r.community_id: r.members for r in core.snapshot(int(time.time() * 1000))
                    if r.window_days == 28 and r.members >= 5}

        def split() -> tuple[dict[str, float], dict[str, float]] | None:
            a, b = first.scrape(), second.scrape()
            counts = (first.value(a, "community_pulse_owned_communities") or 0,
                      second.value(b, "community_pulse_owned_communities") or 0)
            in_a, in_b = exported(first, a), exported(second, b)
            settled = all(counts) and sum(counts) == N and set(in_a) | set(in_b) == set(expected)
            return (in_a, in_b) if settled else None

        in_a, in_b = wait_for(split, 120, "a rebalance that splits the communities")
        assert not set(in_a) & set(in_b)  # no community exported twice
        assert {**in_a, **in_b} == expected  # the second worker rebuilt its share exactly

        second.stop()
        wait_for(lambda: owned(first) == N, 120, "the survivor to take everything back")
        wait_for(lambda: exported(first, first.scrape()) == expected, 30,
                 "the survivor to export every community with the same numbers")
    finally:
        first.stop()
        if second is not None:
            second.stop()
