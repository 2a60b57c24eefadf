"""The local Kafka broker used by tests and the demo really works and cleans up after itself."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from devkit import devkafka
from devkit.devkafka import DevKafkaError, LocalKafka


def _roundtrip(bootstrap: str, topic: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        producer.send(topic, key=b"c1", value=b'{"type":"post"}').get(timeout=20)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=20_000,
    )
    try:
        got: list[tuple[bytes | None, bytes | None]] = []
        for m in consumer:  # stops at the first message or after the timeout
            got.append((m.key, m.value))
            break
    finally:
        consumer.close()
    assert got == [(b"c1", b'{"type":"post"}')]


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)  # the broker led its own process group
    except ProcessLookupError:
        return True
    return False


def test_produce_and_consume(
    kafka: LocalKafka,
    create_topics: Callable[..., list[str]],
    unique_topic: Callable[[str], str],
) -> None:
    (topic,) = create_topics(unique_topic("devkafka"), partitions=4)
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        (desc,) = admin.describe_topics([topic])
    finally:
        admin.close()
    assert len(desc["partitions"]) == 4
    _roundtrip(kafka.bootstrap, topic)


@pytest.mark.kafka
def test_two_brokers_at_once_and_clean_stop(
    tmp_path: os.PathLike[str], unique_topic: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative run_dir, as the demo's default data dir is
    with LocalKafka(run_dir="data/run") as a, LocalKafka() as b:
        assert a.bootstrap != b.bootstrap
        assert len({a.port, a.controller_port, b.port, b.controller_port}) == 4
        for broker in (a, b):
            _roundtrip(broker.bootstrap, unique_topic("auto"))  # auto-created topic
        pids = [a.pid, b.pid]
        b_dir = b.dir
    for pid in pids:
        assert pid is not None and _gone(pid)
    assert b_dir is not None and not b_dir.exists()  # temp dir removed
    assert not a.running() and a.pid is None
    a.stop()  # idempotent


def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(DevKafkaError, match=f"port 127.0.0.1:{port} is busy"):
            LocalKafka(port=port).start()


def test_cli_missing_java_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert devkafka.main(["run", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Java" in err and "Traceback" not in err


def test_fetch_needs_maven_only_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    monkeypatch.setenv("PULSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DevKafkaError, match="Maven"):
        devkafka.fetch_jars()
    libs = devkafka.libs_dir()
    libs.mkdir(parents=True)
    (libs / devkafka.MARKER).write_text("done\n")
    assert devkafka.fetch_jars() == libs  # complete cache: no Maven needed
