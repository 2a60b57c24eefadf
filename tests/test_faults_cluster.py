"""A partition leader that dies or stalls on a real 3-node KRaft cluster, with the worker
writing its changelog (replication 3, min ISR 2) the whole time: leadership moves to
another node, the worker carries on, and its final snapshot equals `replay`."""

from __future__ import annotations

import time
from pathlib import Path

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from devkit.devkafka import LocalKafkaCluster, PartitionState
from tests.faults import (
    FAST_GROUP,
    Names,
    assert_snapshot_equals_replay,
    committed_through_end,
    dead_letters,
    finish_and_compare,
    fresh_names,
    make_stream,
    owns,
    with_bad_messages,
)
from tests.workers import WorkerProcess, produce, wait_for

REPLICATED = {**FAST_GROUP, "PULSE_TOPIC_REPLICATION_FACTOR": "3",
              "PULSE_TOPIC_MIN_INSYNC_REPLICAS": "2"}
EXITED_ON_A_BATCH = "exiting without committing"  # streams/worker.py exit_unclean


def _leaders(cluster: LocalKafkaCluster, topic: str) -> dict[int, PartitionState]:
    return wait_for(lambda: cluster.partitions(topic), 60, f"{topic} to exist")


def _min_insync(cluster: LocalKafkaCluster, topic: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=cluster.live_bootstrap())
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    return str(described["topic"][topic]["min.insync.replicas"]["value"])


def test_changelog_leader_killed_then_stalled_on_a_3_node_cluster_loses_nothing(
        tmp_path: Path) -> None:
    stream = make_stream(tmp_path, seed=14)
    messages, bad = with_bad_messages(stream.messages)
    q = len(messages) // 4
    names: Names = fresh_names()
    changelog = f"{names.app_id}-community-events-changelog"
    timeline: list[str] = []
    t_start = time.monotonic()

    def mark(what: str) -> None:
        timeline.append(f"{time.monotonic() - t_start:6.1f} s {what}")

    def send(part: list) -> None:
        produce(cluster.bootstrap, names.prefix, part, acks="all")

    with LocalKafkaCluster(run_dir=tmp_path / "kafka") as cluster:
        mark("cluster up")
        names.create_topics(cluster)
        send(messages[:q])
        worker = WorkerProcess(cluster.bootstrap, tmp_path / "first", names.prefix,
                               names.app_id, extra_env=REPLICATED)
        try:
            wait_for(lambda: committed_through_end(cluster.bootstrap, names), 120,
                     "the first quarter committed")
            mark("first quarter committed")
            before = _leaders(cluster, changelog)
            assert all(len(s.isr) == 3 for s in before.values())  # the worker made it RF 3
            assert _min_insync(cluster, changelog) == "2"

            # (a) kill -9 the node that leads changelog partition 0 (and source partitions).
            victim = before[0].leader
            led = {p for p, s in before.items() if s.leader == victim}
            sources_led = [(t, p) for t in names.source_topics
                           for p, s in cluster.partitions(t).items() if s.leader == victim]
            assert sources_led, "the victim leads no source partition"
            cluster.node(victim).crash()
            mark(f"node {victim} killed (led changelog {sorted(led)}, "
                 f"{len(sources_led)} source partitions)")
            cluster.wait_for_leader(changelog, 0, not_on=victim)
            mark("changelog leader moved")
            send(messages[q : 2 * q])
            wait_for(lambda: committed_through_end(cluster.bootstrap, names), 180,
                     "the second quarter committed with a node down")
            mark("second quarter committed")
            after = cluster.partitions(changelog)
            assert all(after[p].leader not in (victim, -1) for p in led)
            cluster.node(victim).restart()
            cluster.wait_in_sync([changelog, *names.source_topics])
            mark(f"node {victim} back and in sync")

            # (b) stall (SIGSTOP) a node leading changelog partitions past the broker
            # session timeout: Kafka moves its leaderships to the in-sync replicas, and the
            # worker must write to those while the stalled node stays silent. (Not the
            # group's coordinator: a stalled coordinator holds commits and heartbeats for
            # the consumer's request timeout, see docs/reliability.md.)
            now = cluster.partitions(changelog)
            coordinator = cluster.group_coordinator(names.app_id)
            stalled = next((s.leader for s in now.values()
                            if s.leader not in (coordinator, victim)), -1)
            assert stalled != -1, f"changelog leaders {now}, coordinator {coordinator}"
            stalled_led = {p for p, s in now.items() if s.leader == stalled}
            cluster.node(stalled).pause()
            mark(f"node {stalled} stalled (led changelog {sorted(stalled_led)})")
            for p in stalled_led:
                cluster.wait_for_leader(changelog, p, not_on=stalled)
            mark("its changelog leaderships moved")
            processed = worker.total(worker.scrape(), "community_pulse_events_processed_total")
            produce(cluster.live_bootstrap(), names.prefix, messages[2 * q : 3 * q], acks="all")
            wait_for(lambda: worker.total(worker.scrape(), "community_pulse_events_processed_total")
                     > processed, 150, "the worker to process while a node is stalled")
            mark("the worker processes again")
            moved = cluster.partitions(changelog)
            assert all(moved[p].leader not in (stalled, -1) for p in stalled_led)
            cluster.node(stalled).resume()
            mark(f"node {stalled} resumed")
            send(messages[3 * q :])
            finish_and_compare(worker, cluster.bootstrap, names, stream, tmp_path / "replayed")
            mark("equal to replay")
            samples = worker.scrape()
            retries = worker.total(samples, "community_pulse_kafka_send_retries_total")
            assert worker.proc.poll() is None  # the same process throughout: no crash loop
        finally:
            worker.kill()
        assert EXITED_ON_A_BATCH not in worker.log.read_text()
        # Whatever it committed is in the changelog: a fresh worker rebuilds it exactly.
        restarted = WorkerProcess(cluster.bootstrap, tmp_path / "second", names.prefix,
                                  names.app_id, extra_env=REPLICATED)
        try:
            wait_for(lambda: owns(restarted, len(stream.communities)), 120, "every community")
            assert_snapshot_equals_replay(restarted, stream, tmp_path / "replayed-again")
            mark("rebuilt equal to replay")
        finally:
            restarted.stop()
        letters = dead_letters(cluster.bootstrap, names)
    print("\n" + "\n".join(timeline) + f"\nsend retries {retries}; {len(letters)} dead letters")
    assert len({h["dead_letter_id"] for h in letters}) == bad
