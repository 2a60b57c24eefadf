"""A changelog partition's leader that dies or stalls on a real 3-node KRaft cluster, with
the worker writing its changelog (replication 3, min ISR 2) the whole time: leadership
moves to an in-sync replica, the worker carries on in the same process, and its final
snapshot, and that of a fresh worker rebuilt from the changelog after a kill -9, equal
`replay`. The stalled leader takes 2-3 minutes more (request timeouts), so it runs in
`make faults`; docs/reliability.md has the figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError

from devkit.devkafka import LocalKafkaCluster, PartitionState
from tests.faults import (
    FAST_GROUP,
    Message,
    Names,
    Stream,
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
EXITED_ON_A_BATCH = "exiting without committing"  # streams/delivery.py exit_unclean
PROCESSED = "community_pulse_events_processed_total"


@dataclass
class Run:
    cluster: LocalKafkaCluster
    names: Names
    stream: Stream
    quarters: list[list[Message]]  # the stream (bad messages spread in) in four parts
    bad: int
    worker: WorkerProcess
    started: float = field(default_factory=time.monotonic)
    timeline: list[str] = field(default_factory=list)

    @property
    def changelog(self) -> str:
        return f"{self.names.app_id}-community-events-changelog"

    def send(self, part: list[Message]) -> None:
        # acks=all: a leader stalled or killed right after answering acks=1 may take
        # messages with it that the comparison then expects.
        produce(self.cluster.live_bootstrap(), self.names.prefix, part, acks="all")

    def mark(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.started:6.1f} s  {what}")

    def processed(self) -> float:
        return self.worker.total(self.worker.scrape(), PROCESSED)

    def wait_committed(self, what: str, timeout: float = 180) -> None:
        def committed() -> bool:
            try:
                return committed_through_end(self.cluster.live_bootstrap(), self.names)
            except KafkaError:  # a node just resumed may time a lookup out: ask again
                return False

        wait_for(committed, timeout, what)
        self.mark(what)


def _min_insync(cluster: LocalKafkaCluster, topic: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=cluster.live_bootstrap())
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    return str(described["topic"][topic]["min.insync.replicas"]["value"])


@contextmanager
def _replicated_run(tmp_path: Path, seed: int) -> Iterator[Run]:
    """A 3-node cluster, the source topics at replication 3 (min ISR 2), and a worker
    that has committed the first quarter of the stream into its replicated changelog.
    On leaving: the checks every fault here must pass (see `_finish`)."""
    stream = make_stream(tmp_path, seed=seed)
    messages, bad = with_bad_messages(stream.messages)
    q = len(messages) // 4
    quarters = [messages[:q], messages[q : 2 * q], messages[2 * q : 3 * q], messages[3 * q :]]
    names = fresh_names()
    with LocalKafkaCluster(run_dir=tmp_path / "kafka") as cluster:
        names.create_topics(cluster)
        produce(cluster.bootstrap, names.prefix, quarters[0], acks="all")
        worker = WorkerProcess(cluster.bootstrap, tmp_path / "first", names.prefix,
                               names.app_id, extra_env=REPLICATED)
        run = Run(cluster, names, stream, quarters, bad, worker)
        try:
            run.mark("cluster up, worker started")
            run.wait_committed("first quarter committed")
            leaders = wait_for(lambda: cluster.partitions(run.changelog), 60, "the changelog")
            assert all(len(s.isr) == 3 for s in leaders.values())  # the worker made it RF 3
            assert _min_insync(cluster, run.changelog) == "2"
            yield run
            _finish(run, tmp_path)
        finally:
            worker.kill()
            print("\n" + "\n".join(run.timeline))


def _finish(run: Run, tmp_path: Path) -> None:
    run.send(run.quarters[3])
    finish_and_compare(run.worker, run.cluster.bootstrap, run.names, run.stream,
                       tmp_path / "replayed")
    run.mark("the worker's snapshot equals replay")
    retries = run.worker.total(run.worker.scrape(), "community_pulse_kafka_send_retries_total")
    assert run.worker.proc.poll() is None  # the same process throughout: no crash loop
    run.worker.kill()
    assert EXITED_ON_A_BATCH not in run.worker.log.read_text()
    # Whatever it committed is in the changelog: a fresh worker rebuilds it exactly.
    restarted = WorkerProcess(run.cluster.bootstrap, tmp_path / "second", run.names.prefix,
                              run.names.app_id, extra_env=REPLICATED)
    try:
        wait_for(lambda: owns(restarted, len(run.stream.communities)), 120,
                 "every community")
        assert_snapshot_equals_replay(restarted, run.stream, tmp_path / "replayed-again")
        run.mark("after kill -9, a fresh worker's snapshot equals replay")
    finally:
        restarted.stop()
    letters = dead_letters(run.cluster.bootstrap, run.names)
    run.mark(f"send retries {retries:.0f}; dead letters {len(letters)} written, "
             f"{len({h['dead_letter_id'] for h in letters})} distinct")
    assert len({h["dead_letter_id"] for h in letters}) == run.bad


def _led_by(states: dict[int, PartitionState], node: int) -> set[int]:
    return {p for p, s in states.items() if s.leader == node}


def test_changelog_leader_killed_on_a_3_node_cluster_loses_nothing(tmp_path: Path) -> None:
    with _replicated_run(tmp_path, seed=14) as run:
        cluster, changelog = run.cluster, run.changelog
        before = cluster.partitions(changelog)
        victim = before[0].leader
        led = _led_by(before, victim)
        sources_led = [(t, p) for t in run.names.source_topics
                       for p in _led_by(cluster.partitions(t), victim)]
        assert sources_led, "the victim leads no source partition"
        cluster.node(victim).crash()
        run.mark(f"node {victim} killed -9 (led changelog {sorted(led)} and "
                 f"{len(sources_led)} source partitions)")
        for p in led:
            cluster.wait_for_leader(changelog, p, not_on=victim)
        run.mark("its leaderships moved")
        run.send(run.quarters[1])
        run.send(run.quarters[2][:100])
        run.wait_committed("second quarter committed with the node down")
        after = cluster.partitions(changelog)
        assert all(after[p].leader not in (victim, -1) and victim not in after[p].isr
                   for p in led)  # leadership really moved
        cluster.node(victim).restart()
        run.send(run.quarters[2][100:])
        cluster.wait_in_sync([changelog, *run.names.source_topics])
        run.mark(f"node {victim} back and in sync")
        run.wait_committed("third quarter committed")


@pytest.mark.faults
def test_changelog_leader_stalled_on_a_3_node_cluster_loses_nothing(tmp_path: Path) -> None:
    # SIGSTOP a node leading changelog partitions for longer than the broker session
    # timeout: the controller fences it and moves its leaderships to in-sync replicas,
    # and the worker must write to those while the stalled node stays alive but silent.
    # (Not the group's coordinator: a stalled coordinator holds commits and heartbeats
    # for the consumer's request timeout, a different fault; docs/reliability.md.)
    with _replicated_run(tmp_path, seed=15) as run:
        cluster, changelog = run.cluster, run.changelog
        run.send(run.quarters[1])
        run.wait_committed("second quarter committed")
        before = cluster.partitions(changelog)
        coordinator = cluster.group_coordinator(run.names.app_id)
        stalled = next((s.leader for s in before.values() if s.leader != coordinator), -1)
        assert stalled != -1, f"changelog leaders {before}, coordinator {coordinator}"
        led = _led_by(before, stalled)
        cluster.node(stalled).pause()
        run.mark(f"node {stalled} stalled (led changelog {sorted(led)})")
        for p in led:
            cluster.wait_for_leader(changelog, p, not_on=stalled)
        run.mark("its leaderships moved")
        processed = run.processed()
        run.send(run.quarters[2])  # to the new leaders (live nodes only)
        wait_for(lambda: run.processed() > processed, 300,
                 "the worker to process while a node is stalled")
        run.mark("the worker processes and writes its changelog again")
        # All of it, with the node still stalled: the partitions it led are fetched from
        # their new leaders once the fetch waiting on it times out (the consumer's
        # request timeout, 90 s), and a changelog send to the leader the producer last
        # knew is given up after 30 s and re-sent: docs/reliability.md.
        run.wait_committed("third quarter committed with the node still stalled", 300)
        after = cluster.partitions(changelog)
        assert all(after[p].leader not in (stalled, -1) for p in led)  # really moved
        cluster.node(stalled).resume()
        run.mark(f"node {stalled} resumed")
