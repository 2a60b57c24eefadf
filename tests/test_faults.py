"""Faults injected against the real broker; every time the final snapshot equals `replay`.

The short ones run here (make test); kill -9 at many points and long broker outages are
in tests/test_faults_long.py (make faults). docs/reliability.md lists them all.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devkit.devkafka import LocalKafka
from tests.faults import (
    Stream,
    assert_snapshot_equals_replay,
    committed_through_end,
    fresh_names,
    make_stream,
    owns,
)
from tests.workers import WorkerProcess, produce, wait_for


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    return make_stream(tmp_path_factory.mktemp("stream"))


def test_a_batch_that_raises_half_way_is_not_committed(
        kafka: LocalKafka, stream: Stream, tmp_path: Path) -> None:
    # take_events acks a batch in a `finally`, also when handling it raised; the worker
    # must stop without committing it, and a restart must bring back all of it.
    names = fresh_names()
    names.create_topics(kafka)
    produce(kafka.bootstrap, names.prefix, stream.messages)
    faulty = WorkerProcess(kafka.bootstrap, tmp_path / "faulty", names.prefix, names.app_id,
                           fault="raise-mid-batch:3")
    try:
        wait_for(lambda: faulty.proc.poll() is not None
                 or committed_through_end(kafka.bootstrap, names), 120,
                 "the faulty worker to stop (or to finish)")
    finally:
        faulty.stop()
    assert "injected fault" in faulty.log.read_text()
    worker = WorkerProcess(kafka.bootstrap, tmp_path / "after", names.prefix, names.app_id)
    try:
        wait_for(lambda: committed_through_end(kafka.bootstrap, names), 120,
                 "the restarted worker to commit everything")
        wait_for(lambda: owns(worker, len(stream.communities)), 60, "every community")
        assert_snapshot_equals_replay(worker, stream, tmp_path / "replayed")
    finally:
        worker.stop()


def test_broker_stalled_and_crashed_mid_stream_loses_nothing(
        stream: Stream, tmp_path: Path) -> None:
    # The broker stalls (SIGSTOP) and later dies (kill -9) and comes back while the worker
    # consumes. Then the worker itself is killed -9: whatever it committed must be in the
    # changelog, so a fresh worker rebuilds exactly what replay computes.
    names = fresh_names()
    quarter = len(stream.messages) // 4
    with LocalKafka(run_dir=tmp_path / "kafka") as broker:
        names.create_topics(broker)
        produce(broker.bootstrap, names.prefix, stream.messages[:quarter])
        worker = WorkerProcess(broker.bootstrap, tmp_path / "first", names.prefix,
                               names.app_id)
        try:
            wait_for(lambda: worker.total(worker.scrape(),
                                          "community_pulse_events_processed_total"), 90,
                     "the worker to consume")
            produce(broker.bootstrap, names.prefix, stream.messages[quarter : 2 * quarter])
            broker.pause()
            time.sleep(8)  # the fault's length, not an assertion
            broker.resume()
            produce(broker.bootstrap, names.prefix, stream.messages[2 * quarter : 3 * quarter])
            broker.crash()
            time.sleep(5)
            broker.restart()
            produce(broker.bootstrap, names.prefix, stream.messages[3 * quarter :])
            wait_for(lambda: committed_through_end(broker.bootstrap, names), 240,
                     "the worker to commit everything")
        finally:
            worker.kill()
        restarted = WorkerProcess(broker.bootstrap, tmp_path / "second", names.prefix,
                                  names.app_id)
        try:
            wait_for(lambda: owns(restarted, len(stream.communities)), 120, "every community")
            assert_snapshot_equals_replay(restarted, stream, tmp_path / "replayed")
        finally:
            restarted.stop()
