"""Long fault runs against a real broker of their own (`make faults`, ~15 minutes):
kill -9 at 20 random points of a long stream, and broker outages of 60 and 180 seconds
with the worker running. Each ends with the final snapshot equal to `replay`.
Results are recorded in docs/reliability.md.
"""

from __future__ import annotations

import random
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from devkit.devkafka import LocalKafka
from streams.app import LAG_POLL_INTERVAL_S
from tests.faults import (
    FAST_GROUP,
    Names,
    committed_through_end,
    dead_letters,
    finish_and_compare,
    fresh_names,
    make_stream,
    owns,
    with_bad_messages,
)
from tests.workers import Samples, WorkerProcess, produce, wait_for

pytestmark = pytest.mark.faults



def _produce_steadily(bootstrap: str, names: Names, messages: list, per_second: float,
                      done: threading.Event) -> None:
    chunk = max(1, int(per_second / 10))
    for start in range(0, len(messages), chunk):
        produce(bootstrap, names.prefix, messages[start : start + chunk])
        time.sleep(0.1)
    done.set()


def _busy(worker: WorkerProcess, bootstrap: str, names: Names) -> bool:
    """The worker consumes, or there is nothing left to consume."""
    return bool(worker.total(worker.scrape(), "community_pulse_events_consumed_total")
                or committed_through_end(bootstrap, names))


def test_kill_9_at_20_random_points_loses_nothing(tmp_path: Path) -> None:
    stream = make_stream(tmp_path, n_communities=12, users=300, days=35, seed=14)
    messages, bad = with_bad_messages(stream.messages)
    names = fresh_names()
    rng = random.Random(14)
    kills = []
    with LocalKafka(run_dir=tmp_path / "kafka") as broker:
        names.create_topics(broker)
        produced = threading.Event()
        producer = threading.Thread(target=_produce_steadily, daemon=True, args=(
            broker.bootstrap, names, messages, len(messages) / 300, produced))
        producer.start()
        consumed = 0.0
        for i in range(20):
            worker = WorkerProcess(broker.bootstrap, tmp_path / f"w{i}", names.prefix,
                                   names.app_id, extra_env=FAST_GROUP)
            # Once it consumes (after the group has dropped the worker killed before),
            # the kill lands at a random point of its work.
            wait_for(partial(_busy, worker, broker.bootstrap, names), 120,
                     f"worker {i} to consume")
            time.sleep(rng.uniform(0.2, 6.0))
            try:
                consumed = worker.total(worker.scrape(), "community_pulse_events_consumed_total")
            except (AssertionError, OSError):
                consumed = -1
            kills.append(consumed)
            worker.kill()
        producer.join()
        final = WorkerProcess(broker.bootstrap, tmp_path / "final", names.prefix,
                              names.app_id, extra_env=FAST_GROUP)
        try:
            finish_and_compare(final, broker.bootstrap, names, stream, tmp_path / "replayed",
                               timeout=300)
        finally:
            final.stop()
        letters = dead_letters(broker.bootstrap, names)
    print(f"\nkill -9 after consuming (per run, -1: not up yet): {kills}; "
          f"{len(messages)} messages; dead letters {len(letters)} written, "
          f"{len({h['dead_letter_id'] for h in letters})} distinct")
    assert sum(1 for k in kills if k > 0) >= 10  # most kills landed mid-stream
    assert len({h["dead_letter_id"] for h in letters}) == bad


@pytest.mark.parametrize("outage_s", [60, 180])
def test_broker_outage_with_the_worker_running(outage_s: int, tmp_path: Path) -> None:
    stream = make_stream(tmp_path, n_communities=8, users=200, days=30, seed=outage_s)
    names = fresh_names()
    half = len(stream.messages) // 2
    with LocalKafka(run_dir=tmp_path / "kafka") as broker:
        names.create_topics(broker)
        produce(broker.bootstrap, names.prefix, stream.messages[:half])
        worker = WorkerProcess(broker.bootstrap, tmp_path / "data", names.prefix,
                               names.app_id)
        try:
            wait_for(lambda: committed_through_end(broker.bootstrap, names), 120,
                     "the first half committed")
            wait_for(lambda: owns(worker, len(stream.communities)), 60, "every community")
            wait_for(lambda: worker.value(worker.scrape(), "community_pulse_assigned_partitions")
                     == 20, 60, "the lag poll to see the 20 source partitions")
            broker.crash()
            down_at = time.monotonic()
            if outage_s > 90:
                # Past the session timeout the worker stops exporting and writing as if
                # it still owned the communities (PipelineNoConsumers fires on this).
                def cut_off() -> Samples | None:
                    samples = worker.scrape()
                    return None if "community_pulse_members" in samples else samples

                samples = wait_for(cut_off, outage_s - 10, "the worker to notice it is cut off")
                # The session timeout (60 s) counts from the last answer, up to one lag
                # poll (5 s) before the broker went: not much sooner than that.
                assert time.monotonic() - down_at >= 60 - LAG_POLL_INTERVAL_S - 1
                assert worker.value(samples, "community_pulse_assigned_partitions") == 0
            time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
            assert worker.proc.poll() is None  # survived the outage
            broker.restart()
            produce(broker.bootstrap, names.prefix, stream.messages[half:])
            finish_and_compare(worker, broker.bootstrap, names, stream,
                               tmp_path / "replayed", timeout=300)
        finally:
            worker.stop()
