"""`make soak`: 10 minutes at a steady rate with a fast event clock (a day every 2 s, so
the 90-day retention fills in 3 minutes and expiry runs at every snapshot). The worker's
RSS and the changelog's size on disk must be flat after warm-up, and nothing is lost.
Results are recorded in docs/reliability.md."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from devkit.devkafka import LocalKafka
from schemas.producer import envelopes
from tests.faults import committed_through_end, fresh_names
from tests.workers import WorkerProcess, wait_for

pytestmark = pytest.mark.soak

SOAK_S = float(os.environ.get("PULSE_SOAK_SECONDS", 600))
SPEED = 43_200.0  # event seconds per wall second: one day every 2 s
RATE = 200  # events per wall second
WARM_UP_S = 240  # retention (90 event days = 180 s) full, and a minute more
# Segments roll and the cleaner compacts within seconds, so deleted deltas leave the disk.
FAST_COMPACTION = {"log.roll.ms": "20000", "log.cleaner.backoff.ms": "2000",
                   "log.cleaner.min.cleanable.ratio": "0.01",
                   "log.cleaner.delete.retention.ms": "5000",
                   "log.segment.delete.delay.ms": "1000"}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _changelog_mb(broker: LocalKafka, app_id: str) -> float:
    """Bytes of the changelog's log segments (not its preallocated 10 MB index files)."""
    assert broker.dir is not None
    folders = (broker.dir / "data").glob(f"{app_id}-community-events-changelog-*")
    return sum(f.stat().st_size for d in folders for f in d.glob("*.log")) / 2**20


def _events(clock: float, rng: random.Random, n: int) -> list[dict]:
    now = int(clock * 1000)
    events = []
    for _ in range(n):
        community = f"c{rng.randrange(20)}"
        user = f"u{rng.randrange(400)}"
        ts = now - rng.randrange(3_600_000)
        eid = f"{now}-{rng.getrandbits(40)}"
        kind = rng.choices(("post", "reply", "like", "join"), (3, 4, 6, 1))[0]
        event = {"event_id": eid, "type": kind, "community_id": community, "user_id": user,
                 "ts": ts}
        if kind == "post":
            event["post_id"] = eid
        elif kind == "reply":
            event |= {"post_id": f"p{rng.randrange(50)}", "reply_id": eid,
                      "parent_id": f"p{rng.randrange(50)}", "parent_type": "post"}
        elif kind == "like":
            event |= {"target_id": f"p{rng.randrange(50)}", "target_type": "post"}
        events.append(event)
    return events


def test_soak_rss_and_changelog_stay_flat(tmp_path: Path) -> None:
    names = fresh_names()
    anchor = time.time()
    samples: list[tuple[float, float, float]] = []  # (wall s, RSS MB, changelog MB)
    with LocalKafka(run_dir=tmp_path / "kafka", extra_config=FAST_COMPACTION) as broker:
        names.create_topics(broker)
        worker = WorkerProcess(broker.bootstrap, tmp_path / "data", names.prefix,
                               names.app_id, fault=f"fast-clock:{anchor}:{SPEED}")
        stop = threading.Event()
        produced = [0]

        def steady() -> None:
            rng = random.Random(8)
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
            next_at = time.monotonic()
            while not stop.is_set():
                clock = anchor + (time.time() - anchor) * SPEED
                batch = _events(clock, rng, RATE // 10)
                for topic, key, value in envelopes(batch, 5, names.prefix):
                    producer.send(topic, key=key, value=value)
                producer.flush()
                produced[0] += len(batch)
                next_at += 0.1
                time.sleep(max(0.0, next_at - time.monotonic()))
            producer.close()

        producer = threading.Thread(target=steady, daemon=True)
        try:
            wait_for(worker.scrape, 60, "the worker's /metrics")
            started = time.monotonic()
            producer.start()
            while time.monotonic() - started < SOAK_S:
                time.sleep(30)
                samples.append((time.monotonic() - started, _rss_mb(worker.proc.pid),
                                _changelog_mb(broker, names.app_id)))
                print(f"soak {samples[-1][0]:5.0f} s: RSS {samples[-1][1]:6.1f} MB, "
                      f"changelog {samples[-1][2]:6.2f} MB, {produced[0]:,} events",
                      flush=True)
            stop.set()
            producer.join()
            wait_for(lambda: committed_through_end(broker.bootstrap, names), 300,
                     "the worker to commit everything")
            assert worker.proc.poll() is None
        finally:
            stop.set()
            worker.stop()
    warm = [s for s in samples if s[0] >= WARM_UP_S]
    assert len(warm) >= 2, "soak too short for a verdict"
    first, last = warm[0], warm[-1]
    print(f"after warm-up: RSS {first[1]:.1f} -> {last[1]:.1f} MB, changelog "
          f"{first[2]:.2f} -> {last[2]:.2f} MB over {last[0] - first[0]:.0f} s")
    assert last[1] <= first[1] * 1.25 + 10
    assert last[2] <= first[2] * 1.5 + 1
