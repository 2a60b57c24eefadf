"""Nothing personal in logs, pseudonym keys and rosters (streams/privacy.py).

The end-to-end run injects send failures on the real broker (a dead-letter topic whose
max.message.bytes is smaller than the rejected messages) and then greps the worker's
whole log for every user id it was sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import uuid
from pathlib import Path
from types import SimpleNamespace

import duckdb
import msgspec
import pytest
from faust.types.tuples import FutureMessage, PendingMessage
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from devkit import generate as gen
from devkit.devkafka import LocalKafka
from schemas.events import DEAD_LETTER_TOPIC, DEFAULT_TOPICS, Event
from sinks.parquet import rows_to_table
from streams import config
from streams.app import faust_app
from streams.changelog import DeltaLog, UserIdsMismatch
from streams.cli import main
from streams.closing import Task
from streams.config import ConfigError, MetricConfig, RuntimeConfig
from streams.core import PulseCore
from streams.privacy import Pseudonymiser, SendFailureFilter
from streams.replay import parse_time
from streams.steering.files import read_managers
from streams.steering.network import SKETCHES_OFF
from streams.worker import PulseWorker
from tests.workers import WorkerProcess, wait_for

SECRET_USER = "user-secret-4711"
AS_OF = "2026-11-18T12:00:00Z"


def _failed_send_log(caplog: pytest.LogCaptureFixture, with_filter: bool) -> str:
    """What faust.topics.Topic._on_published logs for a send that failed."""
    app = faust_app("log-check", "kafka://127.0.0.1:9", 1)
    topic = app.topic("pulse.dead-letter", key_type=bytes, value_type=bytes)
    logger = logging.getLogger("faust.topics")
    log_filter = SendFailureFilter()

    async def fail_one() -> None:
        pending = PendingMessage(
            channel=topic, key=b"community-1", value=f'{{"user_id":"{SECRET_USER}"}}'.encode(),
            partition=None, timestamp=None, headers=None, key_serializer=None,
            value_serializer=None, callback=None)
        message = FutureMessage(pending)
        sent = asyncio.get_running_loop().create_future()
        sent.set_exception(RuntimeError("MessageSizeTooLargeError: 2000 bytes"))
        topic._on_published(sent, message, None, None)  # type: ignore[attr-defined]
        message.exception()  # (retrieved: no "exception was never retrieved" noise)

    if with_filter:
        logger.addFilter(log_filter)
    try:
        with caplog.at_level(logging.WARNING, logger="faust.topics"):
            asyncio.run(fail_one())
    finally:
        logger.removeFilter(log_filter)
    lines = [r.getMessage() for r in caplog.records if r.name == "faust.topics"]
    caplog.clear()
    assert len(lines) == 1
    return lines[0]


def test_send_failure_warning_keeps_topic_and_error_only(
        caplog: pytest.LogCaptureFixture) -> None:
    # Faust's own line: "_on_published error for message topic T error E message M".
    # If an upgrade changes it, the filter's pattern no longer matches and this fails.
    original = _failed_send_log(caplog, with_filter=False)
    assert original.startswith("_on_published error for message topic pulse.dead-letter")
    assert " message <FutureMessage" in original  # the part that may render the message
    assert _failed_send_log(caplog, with_filter=True) == (
        "send to topic pulse.dead-letter failed: MessageSizeTooLargeError: 2000 bytes "
        "(message content not logged)")


def test_send_failure_filter_drops_a_rendered_message() -> None:
    record = logging.LogRecord(
        "faust.topics", logging.WARNING, __file__, 1,
        "_on_published error for message topic t error boom message "
        f"<PendingMessage key=b'c' value=b'{SECRET_USER}'>", None, None)
    assert SendFailureFilter().filter(record)
    assert SECRET_USER not in record.getMessage()
    assert record.getMessage().startswith("send to topic t failed: boom")


def test_pseudonyms_are_keyed_stable_and_hide_the_id() -> None:
    first, same, other = (Pseudonymiser(k) for k in (b"k" * 32, b"k" * 32, b"j" * 32))
    assert first(SECRET_USER) == same(SECRET_USER) != other(SECRET_USER)
    assert re.fullmatch(r"[0-9a-f]{32}", first(SECRET_USER))
    assert first("a") != first("b")
    assert "k" * 32 not in repr(first)
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        Pseudonymiser(b"short")


def test_rosters_are_hashed_with_the_same_key(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    roster = tmp_path / "experts.yml"
    roster.write_text(f"experts:\n  c1: [ann, {SECRET_USER}]\n")
    monkeypatch.setenv("PULSE_MIN_MEMBERS_EXPORTED", "2")  # (a roster of 2 is then enough)
    key = "a-key-of-thirty-two-bytes-000000"
    (tmp_path / "key").write_text(key + "\n")
    monkeypatch.setenv("PULSE_EXPERTS_FILE", str(roster))
    assert config.load()[0].experts == {"c1": frozenset({"ann", SECRET_USER})}  # off
    monkeypatch.setenv("PULSE_PSEUDONYMISE_USER_IDS", "true")
    monkeypatch.setenv("PULSE_PSEUDONYM_KEY_FILE", str(tmp_path / "key"))
    decoder = Pseudonymiser(key.encode())  # what the worker's decoder applies to events
    assert config.load()[0].experts == {"c1": frozenset({decoder("ann"), decoder(SECRET_USER)})}
    monkeypatch.delenv("PULSE_PSEUDONYM_KEY_FILE")
    monkeypatch.delenv("PULSE_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigError, match="needs a key"):
        config.load()
    monkeypatch.setenv("PULSE_PSEUDONYM_KEY", key)
    assert config.load()[0].experts == {"c1": frozenset({decoder("ann"), decoder(SECRET_USER)})}


def test_managers_are_hashed_with_the_same_key(tmp_path: Path) -> None:
    managers = tmp_path / "managers.yml"
    managers.write_text(f"managers:\n  - name: Ann\n    user_id: {SECRET_USER}\n"
                        "    follows: [c1]\n")
    key = Pseudonymiser(b"a-key-of-thirty-two-bytes-000000")
    (hashed,) = read_managers(managers, key)
    (plain,) = read_managers(managers)
    assert (hashed.name, hashed.user_id) == ("Ann", key(SECRET_USER))
    assert plain.user_id == SECRET_USER


def _event(n: int, user: str, **extra: object) -> dict[str, object]:
    return {"event_id": f"e{n}", "type": "post", "community_id": "c1", "user_id": user,
            "ts": 1_767_225_600_000 + n, "post_id": f"p{n}", **extra}


def test_worker_logs_hold_no_user_ids_when_sends_fail(kafka: LocalKafka,
                                                      tmp_path: Path) -> None:
    prefix = f"p{uuid.uuid4().hex[:8]}."
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:  # dead letters over 512 bytes are refused by the broker: their sends fail
        admin.create_topics([NewTopic(prefix + DEAD_LETTER_TOPIC, 4, 1,
                                      topic_configs={"max.message.bytes": "512"})])
    finally:
        admin.close()
    kafka.create_topics([prefix + t for t in DEFAULT_TOPICS])
    users = [f"user-valid-{n}" for n in range(20)]
    leaked = [f"user-leak-{n}" for n in range(5)]
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    for n, user in enumerate(users):
        producer.send(prefix + "community.posts", key=b"c1",
                      value=msgspec.json.encode(_event(n, user)))
    for n, user in enumerate(leaked):  # a post on the replies topic, too big for the DLQ
        producer.send(prefix + "community.replies", key=b"c1", value=msgspec.json.encode(
            _event(100 + n, user, padding="x" * 1000)))
    producer.send(prefix + "community.likes", key=b"c1",  # not JSON, names a user
                  value=f'{{"user_id": "{SECRET_USER}", '.encode())
    producer.flush()
    producer.close()
    worker = WorkerProcess(kafka.bootstrap, tmp_path / "data", prefix,
                           f"pulse-{uuid.uuid4().hex[:8]}")
    try:
        def consumed() -> bool:
            samples = worker.scrape()
            return worker.total(samples, "community_pulse_events_consumed_total") >= 26

        wait_for(consumed, 90, "every message consumed")
        wait_for(lambda: "failed" in worker.log.read_text(), 60, "the failed dead-letter sends")
    finally:
        worker.stop()
    log = worker.log.read_text()
    assert re.search(r"send to topic \S+dead-letter failed", log)
    if "PULSE_SKETCH_KEY" not in os.environ:  # started without a sketch key: said once
        assert log.count(SKETCHES_OFF) == 1
    for user in [*users, *leaked, SECRET_USER]:
        assert user not in log, user
    assert "x" * 100 not in log  # no message content either


@pytest.fixture(scope="module")
def history_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "events.jsonl"
    rng = random.Random(5)
    now = parse_time(AS_OF)
    events = [e for c in gen.plan(8, 150, rng) for e in gen.history(c, now, 30, rng)]
    path.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in events))
    return path


def _snapshot_rows(data_dir: Path) -> list[tuple]:
    with duckdb.connect(str(data_dir / "pulse.duckdb"), read_only=True) as con:
        return con.sql("SELECT * EXCLUDE (date) FROM snapshots "
                       "ORDER BY community_id, window_days").fetchall()


def test_replay_with_pseudonyms_and_without_small_communities(
        history_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def replayed(name: str) -> list[tuple]:
        args = ["replay", str(history_file), "--data-dir", str(tmp_path / name), "--as-of", AS_OF]
        assert main(args) == 0
        return _snapshot_rows(tmp_path / name)

    plain = replayed("plain")
    monkeypatch.setenv("PULSE_PSEUDONYMISE_USER_IDS", "true")
    monkeypatch.setenv("PULSE_PSEUDONYM_KEY", "replay-pseudonym-key-0123456789")
    assert replayed("pseudonymised") == plain  # the numbers do not change
    members = sorted({row[3] for row in plain})
    threshold = members[len(members) // 2]  # some rows under it, some not
    monkeypatch.setenv("PULSE_MIN_MEMBERS_EXPORTED", str(threshold))
    assert replayed("threshold-only-for-metrics") == plain  # Parquet keeps them by default
    monkeypatch.setenv("PULSE_PARQUET_OMIT_SMALL_COMMUNITIES", "true")
    kept = replayed("omitted")
    assert kept == [row for row in plain if row[3] >= threshold]
    assert 0 < len(kept) < len(plain)
    capsys.readouterr()


def test_worker_leaves_small_communities_out_of_parquet_when_asked(tmp_path: Path) -> None:
    core = PulseCore(MetricConfig())
    core.apply([Event(f"e{n}", "join", "big" if n < 6 else "small", f"u{n}", 1_767_225_600_000)
                for n in range(8)])
    midnight = 1_767_225_600_000
    rows = core.snapshot(midnight)
    for omit, expected in ((False, {"big", "small"}), (True, {"big"})):
        runtime = RuntimeConfig(data_dir=tmp_path / str(omit), min_members_exported=5,
                                parquet_omit_small_communities=omit)
        worker = PulseWorker(MetricConfig(), runtime)
        worker.write_rows(rows)  # live rows
        task = Task(partition=0, midnight=midnight, communities=None, final=True)
        assert worker.write_closings([(task, rows_to_table(rows, closing=True))]) == [task]
        files = str(tmp_path / str(omit) / "snapshots" / "**" / "*.parquet")
        got = duckdb.sql(f"SELECT DISTINCT community_id, closing FROM read_parquet('{files}')")
        assert got is not None and sorted(got.fetchall()) == sorted(
            (c, closing) for c in expected for closing in (False, True))


class _Table:
    """The Faust table's local store and changelog, as DeltaLog uses them."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.changelog_topic = SimpleNamespace(get_topic_name=lambda: "app-changelog")

    def send_changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
        pass


@pytest.mark.parametrize(("written", "read", "refused"), [
    ("raw", "raw", False), ("raw", "fp-a", True), ("fp-a", "fp-a", False),
    ("fp-a", "fp-b", True), ("fp-a", "raw", True),
    (None, "raw", False), (None, "fp-a", True),  # deltas of a version without the record
])
def test_deltas_record_how_they_store_user_ids(written: str | None, read: str,
                                                refused: bool) -> None:
    table = _Table()
    events = [Event("e1", "post", "c", "u1", 1_767_225_600_000, post_id="p")]
    DeltaLog(table, written or "raw").append(2, "t@1", events)  # type: ignore[arg-type]
    if written is None:
        table.data = {k: v for k, v in table.data.items() if not k.endswith(b"user-ids")}
    loading = DeltaLog(table, read)  # type: ignore[arg-type]
    if refused:
        with pytest.raises(UserIdsMismatch, match=r"app-changelog holds user ids .*new app_id"):
            list(loading.load({2}))
    else:
        loaded = [e for _, batch in loading.load({2}) for e in batch]
        assert list(map(msgspec.structs.astuple, loaded)) == list(
            map(msgspec.structs.astuple, events))
    assert list(DeltaLog(table, "fp-z").load({5})) == []  # type: ignore[arg-type]  # not ours
