"""End to end on the real broker: generator -> Kafka -> Faust worker -> Parquet + /metrics.

One module-scoped pipeline run serves several assertions: Parquet rows, /metrics values,
dead letters with reasons, the consumed = processed + duplicates + dead-lettered balance,
replay giving identical snapshots, and a restarted worker recovering its state from
the table changelog.

The run happens twice: on a plain listener, and on a SASL_SSL listener (TLS with the
test's own CA) with pseudonymised user ids, where every client logs in: the test's
producer and consumers as a PLAIN user, the worker (consumer, producer, changelog, dead
letters, topic creation) as a SCRAM-SHA-512 user that the broker's authorizer allows
only the ACLs docs/security.md lists (`worker_acls`). The changelog read back from the
broker then holds no raw user id, and replay without pseudonyms still gives the same
numbers.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from devkit import generate as gen
from devkit.devkafka import SCRAM_USER, LocalKafka
from schemas.events import DEAD_LETTER_TOPIC, DEFAULT_TOPICS
from streams.changelog import _CUT_SUFFIX, _USER_IDS_SUFFIX, _decode_events
from streams.config import MetricConfig, RuntimeConfig
from streams.kafka_auth import worker_acls
from streams.privacy import Pseudonymiser
from streams.replay import replay
from tests.workers import (
    Samples,
    WorkerProcess,
    parquet_rows,
    produce,
    settled_snapshot,
    wait_for,
)

N_COMMUNITIES = 10
PSEUDONYM_KEY = "e2e-pseudonym-key-0123456789abcdef"

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
    bootstrap: str
    secured: bool
    env: dict[str, str] = field(default_factory=dict)  # the worker's extra settings
    client: dict[str, Any] = field(default_factory=dict)  # kafka-python security kwargs


def _consumed_all(worker: WorkerProcess, expected: int) -> Samples | None:
    samples = worker.scrape()
    done = worker.total(samples, "community_pulse_events_consumed_total") >= expected
    return samples if done else None


@pytest.fixture(scope="module", params=["plain", "sasl_ssl"])
def pipeline(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    secured = request.param == "sasl_ssl"
    tmp = tmp_path_factory.mktemp("e2e")
    kafka: LocalKafka = request.getfixturevalue("secured_kafka" if secured else "kafka")
    bootstrap, env, client = kafka.bootstrap, {}, {}
    if secured:
        assert kafka.secured is not None
        key_file = tmp / "pseudonym.key"
        key_file.write_text(PSEUDONYM_KEY)
        bootstrap = kafka.secured.sasl_ssl_bootstrap
        env = {**kafka.secured.settings_env("SCRAM-SHA-512"),
               "PULSE_PSEUDONYMISE_USER_IDS": "true", "PULSE_PSEUDONYM_KEY_FILE": str(key_file)}
        client = kafka.secured.security("PLAIN").client_kwargs()  # the test's own clients
    prefix = f"t{uuid.uuid4().hex[:8]}."
    app_id = f"pulse-{uuid.uuid4().hex[:8]}"
    if secured:  # the worker (SCRAM user) gets the documented ACLs and nothing else
        kafka.grant(f"User:{SCRAM_USER}",
                    worker_acls(RuntimeConfig(topic_prefix=prefix, app_id=app_id)))
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
    produce(bootstrap, prefix, messages[: len(messages) // 2] + BAD, **client)
    worker = WorkerProcess(bootstrap, tmp / "data", prefix, app_id, extra_env=env)
    # The rest arrives while the worker runs.
    wait_for(worker.scrape, 60, "the worker's /metrics")
    produce(bootstrap, prefix, messages[len(messages) // 2 :], **client)
    wait_for(lambda: _consumed_all(worker, len(events) + len(BAD)), 120, "all events consumed")
    yield Pipeline(kafka, prefix, app_id, events_file, len(events), worker, tmp, bootstrap,
                   secured, env, client)
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
        for kind in ("managed", "ugc"):  # soft and hard content (SPEC 5)
            assert worker.value(samples, "community_pulse_content_posts", kind=kind,
                                **labels) == row[f"{kind}_posts"]
    assert exported > 0
    assert sum(r["managed_posts"] for r in rows) > 0 and sum(r["ugc_posts"] for r in rows) > 0
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
        pipeline.prefix + DEAD_LETTER_TOPIC, bootstrap_servers=pipeline.bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=5000, **pipeline.client)
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


def _comparable(row: dict) -> dict:
    return {k: (round(v, 9) if isinstance(v, float) else v) for k, v in row.items()}


def test_replay_gives_identical_snapshots(pipeline: Pipeline) -> None:
    as_of, _ = settled_snapshot(pipeline.worker)
    streamed = parquet_rows(pipeline.worker.data_dir, as_of)
    out = pipeline.tmp / "replayed"
    replay([pipeline.events_file], out, MetricConfig(), as_of_ms=round(as_of * 1000))
    replayed = parquet_rows(out, as_of)
    assert [_comparable(r) for r in replayed] == [_comparable(r) for r in streamed]


def _changelog_user_ids(pipeline: Pipeline) -> set[str]:
    """Every user id in the worker's changelog topic, read back from the broker."""
    consumer = KafkaConsumer(
        f"{pipeline.app_id}-community-events-changelog", bootstrap_servers=pipeline.bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=3000, **pipeline.client)
    try:  # (deltas, not the records of how they store user ids and of expiry cuts)
        values = [record.value for record in consumer if record.value
                  and not record.key.endswith((_USER_IDS_SUFFIX, _CUT_SUFFIX))]
    finally:
        consumer.close()
    if pipeline.secured:
        assert not any(b"user-" in value for value in values)  # not even inside a value
    return {event.user_id for value in values for event in _decode_events(value)}


def test_changelog_holds_raw_user_ids_only_without_pseudonyms(pipeline: Pipeline) -> None:
    raw = {msgspec.json.decode(line)["user_id"]
           for line in pipeline.events_file.read_bytes().splitlines()}
    pseudonymise = Pseudonymiser(PSEUDONYM_KEY.encode())
    expected = {pseudonymise(u) for u in raw} if pipeline.secured else raw

    def complete() -> set[str] | None:
        ids = _changelog_user_ids(pipeline)
        return ids if ids == expected else None

    stored = wait_for(complete, 60, "every accepted event's user in the changelog")
    assert stored.isdisjoint(raw) == pipeline.secured


def test_the_changelog_topic_gets_min_insync_replicas_from_the_settings(
        pipeline: Pipeline) -> None:
    admin = KafkaAdminClient(bootstrap_servers=pipeline.kafka.bootstrap)  # (admin listener)
    try:
        topic = f"{pipeline.app_id}-community-events-changelog"
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    setting = described["topic"][topic]["min.insync.replicas"]
    assert setting["value"] == str(RuntimeConfig().topic_min_insync_replicas)
    assert setting["config_source"] == "DYNAMIC_TOPIC_CONFIG"  # set when the worker created it


def test_worker_log_names_no_user_and_no_secret(pipeline: Pipeline) -> None:
    log = pipeline.worker.log.read_text()
    assert "user-" not in log  # every generated user id starts so; bad input names "u"
    for secret in (pipeline.env.get("PULSE_KAFKA_SASL_PASSWORD"), PSEUDONYM_KEY):
        assert secret is None or secret not in log


def test_restarted_worker_recovers_state_from_changelog(pipeline: Pipeline) -> None:
    pipeline.worker.stop()
    restarted = WorkerProcess(pipeline.bootstrap, pipeline.tmp / "after-restart",
                              pipeline.prefix, pipeline.app_id, extra_env=pipeline.env)
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
        assert [_comparable(r) for r in parquet_rows(out, as_of)] == [
            _comparable(r) for r in recovered]
        # The restarted worker consumed nothing new: its state came from the changelog.
        samples = restarted.scrape()
        assert restarted.total(samples, "community_pulse_events_processed_total") == 0
    finally:
        restarted.stop()


def test_a_worker_that_stores_user_ids_otherwise_refuses_the_changelog(
        pipeline: Pipeline) -> None:
    """Switching pseudonymisation on (plain run) or changing its key (secured run) under
    the same app_id would count every user twice: the worker stops with one line."""
    key_file = pipeline.tmp / "another.key"
    key_file.write_text("another-pseudonym-key-0123456789")
    env = {**pipeline.env, "PULSE_PSEUDONYMISE_USER_IDS": "true",
           "PULSE_PSEUDONYM_KEY_FILE": str(key_file)}
    other = WorkerProcess(pipeline.bootstrap, pipeline.tmp / "other-key", pipeline.prefix,
                          pipeline.app_id, extra_env=env)
    try:
        other.proc.wait(timeout=120)
    finally:
        other.stop()
    assert other.proc.returncode == 2
    (line,) = [ln for ln in other.log.read_text().splitlines() if "error:" in ln]
    stored = "pseudonymised (key fingerprint " if pipeline.secured else "raw,"
    assert f"holds user ids {stored}" in line and "new app_id" in line


def test_generate_writes_to_the_topics_of_the_topic_prefix(
        kafka: LocalKafka, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """`generate --bootstrap` produces where a worker with the same settings reads."""
    from streams import cli

    prefix = f"gen-{uuid.uuid4().hex[:8]}."
    monkeypatch.setenv("PULSE_TOPIC_PREFIX", prefix)
    assert cli.main(["generate", "--bootstrap", kafka.bootstrap, "--communities", "3",
                     "--days", "2", "--no-bad"]) == 0
    printed = capsys.readouterr().out
    messages = int(printed.split(" messages")[0].rsplit(" ", 1)[1].replace(",", ""))
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap)
    try:
        topics = {t for t in consumer.topics() if t.startswith(prefix)}
        assert topics and topics <= {prefix + name for name in DEFAULT_TOPICS}
        partitions = [tp for t in topics for tp in (
            TopicPartition(t, p) for p in consumer.partitions_for_topic(t) or ())]
        assert sum(consumer.end_offsets(partitions).values()) == messages > 0
    finally:
        consumer.close()
    assert f"(topics {prefix}community.*)" in printed
