"""Faults injected against the real broker; every time the final snapshot equals `replay`.

The short ones run here (make test); kill -9 at many points and long broker outages are
in tests/test_faults_long.py (make faults). docs/reliability.md lists them all.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, KafkaAdminClient
from kafka.partitioner.default import murmur2

from devkit import generate as gen
from devkit.devkafka import LocalKafka
from schemas.events import DEAD_LETTER_TOPIC
from tests.faults import (
    FAST_GROUP,
    Names,
    Stream,
    assert_snapshot_equals_replay,
    committed_through_end,
    finish_and_compare,
    fresh_names,
    make_stream,
    owns,
)
from tests.workers import WorkerProcess, produce, settled_snapshot, wait_for


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    return make_stream(tmp_path_factory.mktemp("stream"))


def _stopped_half_way(kafka: LocalKafka, stream: Stream, tmp_path: Path) -> Names:
    """All messages produced, and a worker that died half-way through its third batch:
    a changelog to recover from, the batch not committed."""
    names = fresh_names()
    names.create_topics(kafka)
    produce(kafka.bootstrap, names.prefix, stream.messages)
    faulty = WorkerProcess(kafka.bootstrap, tmp_path / "faulty", names.prefix, names.app_id,
                           fault="crash-mid-batch:3", extra_env=FAST_GROUP)
    try:
        wait_for(lambda: faulty.proc.poll() is not None
                 or committed_through_end(kafka.bootstrap, names), 120,
                 "the faulty worker to stop (or to finish)")
    finally:
        faulty.stop()
    assert "injected crash" in faulty.log.read_text()
    return names


def test_a_batch_cut_short_by_a_crash_is_not_committed(
        kafka: LocalKafka, stream: Stream, tmp_path: Path) -> None:
    # The worker dies half-way through a batch: a restart must bring back all of it.
    names = _stopped_half_way(kafka, stream, tmp_path)
    worker = WorkerProcess(kafka.bootstrap, tmp_path / "after", names.prefix, names.app_id,
                           extra_env=FAST_GROUP)
    try:
        finish_and_compare(worker, kafka.bootstrap, names, stream, tmp_path / "replayed")
    finally:
        worker.stop()


def test_a_core_update_that_raises_half_way_is_rebuilt_and_nothing_is_lost(
        kafka: LocalKafka, stream: Stream, tmp_path: Path) -> None:
    # A bug raises half-way through the core update of a batch (once): the worker goes
    # on, rebuilds the communities it touched from the changelog, applies the batch
    # message by message, and ends where replay does, with nothing dead-lettered.
    names = fresh_names()
    names.create_topics(kafka)
    produce(kafka.bootstrap, names.prefix, stream.messages)
    worker = WorkerProcess(kafka.bootstrap, tmp_path / "data", names.prefix, names.app_id,
                           fault="raise-mid-batch:3", extra_env=FAST_GROUP)
    try:
        finish_and_compare(worker, kafka.bootstrap, names, stream, tmp_path / "replayed")
        assert worker.proc.poll() is None
        log = worker.log.read_text()
        assert "rebuilding its communities" in log and "exiting without committing" not in log
        assert worker.total(worker.scrape(), "community_pulse_events_dead_lettered_total") == 0
    finally:
        worker.stop()


def test_records_fetched_while_recovery_seeks_are_not_dropped(
        kafka: LocalKafka, stream: Stream, tmp_path: Path) -> None:
    # At the end of a recovery Faust resumes the source partitions, awaits the seek to the
    # committed offsets, then resumes flow control, which empties the stream buffers. Flow
    # is on already (recovery turned it on to read the changelog), so what the fetcher
    # delivers during the seek would be dropped after aiokafka and Faust counted it as
    # read: never re-read, lost or committed past. slow-seek answers late, once 100
    # fetched records wait in the buffers (a loaded broker): before the fix, every run.
    names = _stopped_half_way(kafka, stream, tmp_path)
    worker = WorkerProcess(kafka.bootstrap, tmp_path / "after", names.prefix, names.app_id,
                           extra_env=FAST_GROUP, fault="slow-seek:8")
    try:
        finish_and_compare(worker, kafka.bootstrap, names, stream, tmp_path / "replayed",
                           timeout=120)
    finally:
        worker.stop()


def test_a_worker_frozen_past_its_session_timeout_rejoins_and_loses_nothing(
        kafka: LocalKafka, stream: Stream, tmp_path: Path) -> None:
    # A starved machine can stop a worker for longer than its session timeout: the group
    # drops it, and when it runs again it rejoins in a new generation of the same process
    # (all partitions revoked, assigned back, recovered from its table) with a backlog in
    # flight: the Faust path where records are skipped, dropped or seeked back.
    names = fresh_names()
    names.create_topics(kafka)
    third = len(stream.messages) // 3
    produce(kafka.bootstrap, names.prefix, stream.messages[:third])
    worker = WorkerProcess(kafka.bootstrap, tmp_path / "data", names.prefix, names.app_id,
                           extra_env=FAST_GROUP)
    try:
        wait_for(lambda: worker.total(worker.scrape(), "community_pulse_events_consumed_total"),
                 90, "the worker to consume")
        worker.freeze()
        produce(kafka.bootstrap, names.prefix, stream.messages[third:])
        time.sleep(13)  # past the 10 s session timeout: the fault's length, not an assertion
        worker.thaw()
        finish_and_compare(worker, kafka.bootstrap, names, stream, tmp_path / "replayed")
        assert worker.log.read_text().count("Successfully synced group") >= 2  # it rejoined
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
                               names.app_id, extra_env=FAST_GROUP)
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
                                  names.app_id, extra_env=FAST_GROUP)
        try:
            wait_for(lambda: owns(restarted, len(stream.communities)), 120, "every community")
            assert_snapshot_equals_replay(restarted, stream, tmp_path / "replayed")
        finally:
            restarted.stop()


def _long(prefix: str, i: int, size: int) -> str:
    return f"{prefix}{i}-".ljust(size, "x")


def test_big_records_are_split_or_bounded_and_nothing_crashes(
        kafka: LocalKafka, tmp_path: Path) -> None:
    # Three records over the producer's 1,000,000-byte limit, each of which crashed the
    # worker at every restart: a 2,000-event delta with long ids, the membership carry
    # of 12,000 joins older than the 90-day horizon (written when old deltas expire),
    # and the dead letter of an oversized message. A restart after kill -9 rebuilds it.
    names = fresh_names()
    names.create_topics(kafka)
    posts_topic = names.prefix + "community.posts"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    admin.alter_configs([ConfigResource("TOPIC", posts_topic,  # let the oversized one in
                                        configs={"max.message.bytes": "3000000"})])
    admin.close()
    now = int(time.time() * 1000)
    community = _long("c-", 0, 256)
    posts = [{"event_id": _long("e", i, 128), "type": "post", "community_id": community,
              "user_id": _long("u", i % 50, 256), "ts": now - 3_600_000 - i,
              "post_id": _long("p", i, 256)} for i in range(2000)]
    old = now - 100 * 86_400_000
    joins = [{"event_id": f"join-{i}", "type": "join", "community_id": "old-members",
              "user_id": _long("member-", i, 100), "ts": old + i} for i in range(12_000)]
    events_file = tmp_path / "events.jsonl"
    events_file.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in posts + joins))
    oversized = b'{"padding": "' + b"x" * 1_500_000 + b'"}'
    produce(kafka.bootstrap, names.prefix,
            [*gen.to_messages(posts, 100), *gen.to_messages(joins, 500),
             ("community.posts", b"x", oversized)], max_request_size=4_000_000)
    stream = Stream([community, "old-members"], events_file, [])
    worker = WorkerProcess(kafka.bootstrap, tmp_path / "first", names.prefix, names.app_id,
                           extra_env=FAST_GROUP)
    try:
        wait_for(lambda: committed_through_end(kafka.bootstrap, names), 120,
                 "the worker to commit everything")
        samples = settled_snapshot(worker)[1]  # expiry (and the carry) ran by then
        assert worker.value(samples, "community_pulse_events_dead_lettered_total",
                            topic=posts_topic, reason="oversized") == 1
        assert_snapshot_equals_replay(worker, stream, tmp_path / "replayed")
    finally:
        worker.kill()
    dead = KafkaConsumer(names.prefix + DEAD_LETTER_TOPIC, bootstrap_servers=kafka.bootstrap,
                         auto_offset_reset="earliest", consumer_timeout_ms=5000)
    (letter,) = list(dead)
    dead.close()
    headers = dict(letter.headers)
    assert letter.value == oversized[:65536] and headers["reason"] == b"oversized"
    assert headers["original_size"] == str(len(oversized)).encode()
    assert headers["original_sha256"] == hashlib.sha256(oversized).hexdigest().encode()
    changelog = KafkaConsumer(f"{names.app_id}-community-events-changelog",
                              bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest",
                              consumer_timeout_ms=5000)
    carry_pieces = {r.key for r in changelog if b"\x1fcarry#" in r.key and r.value}
    changelog.close()
    assert len(carry_pieces) >= 2  # the carry did not fit one record
    restarted = WorkerProcess(kafka.bootstrap, tmp_path / "second", names.prefix, names.app_id,
                              extra_env=FAST_GROUP)
    try:
        wait_for(lambda: owns(restarted, 2), 90, "both communities back from the changelog")
        assert_snapshot_equals_replay(restarted, stream, tmp_path / "replayed-again")
    finally:
        restarted.stop()


def test_messages_on_the_wrong_partition_are_dead_lettered_and_redriven(
        kafka: LocalKafka, stream: Stream, tmp_path: Path) -> None:
    # A producer with another partitioner puts one community's messages on partitions
    # that are not murmur2(key) % 4: another worker would count that community too.
    names = fresh_names()
    names.create_topics(kafka)
    misplaced_community = stream.communities[0].encode()
    placed = [m for m in stream.messages if m[1] != misplaced_community]
    misplaced = [m for m in stream.messages if m[1] == misplaced_community]
    produce(kafka.bootstrap, names.prefix, placed)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    for topic, key, value in misplaced:
        right = (murmur2(key) & 0x7FFFFFFF) % 4
        producer.send(names.prefix + topic, key=key, value=value, partition=(right + 1) % 4)
    producer.flush()
    producer.close()
    worker = WorkerProcess(kafka.bootstrap, tmp_path / "data", names.prefix, names.app_id)
    try:
        wait_for(lambda: committed_through_end(kafka.bootstrap, names), 120,
                 "the worker to commit everything")
        samples = worker.scrape()
        assert sum(v for labels, v in samples["community_pulse_events_dead_lettered_total"]
                   if labels["reason"] == "wrong_partition") == len(misplaced)
        wait_for(lambda: owns(worker, len(stream.communities) - 1), 30, "the others")
        redriven = subprocess.run(
            [sys.executable, "-m", "streams.cli", "redrive", "--broker", kafka.bootstrap],
            env={**os.environ, "PULSE_TOPIC_PREFIX": names.prefix,
                 "PULSE_APP_ID": names.app_id},
            capture_output=True, text=True, timeout=120)
        assert redriven.returncode == 0, redriven.stderr
        assert redriven.stdout.startswith(f"redrove {len(misplaced)} dead letter(s)")
        finish_and_compare(worker, kafka.bootstrap, names, stream, tmp_path / "replayed")
    finally:
        worker.stop()
