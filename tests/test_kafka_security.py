"""Kafka security against the real broker's secured listeners (SASL_SSL with PLAIN and
SCRAM-SHA-512, SSL with a required client certificate), configured only through the
product's settings, and the settings' own rules. The worker's end-to-end run over
SASL_SSL is in test_worker_e2e.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import TopicAuthorizationFailedError

from devkit import generate as gen
from devkit.devkafka import LocalKafka, Secured, free_port
from schemas.events import DEAD_LETTER_TOPIC, DEFAULT_TOPICS
from streams import config
from streams.app import build_app, faust_app, ignored_faust_environment
from streams.config import ConfigError, MetricConfig, RuntimeConfig
from streams.kafka_auth import (
    Acl,
    KafkaAccessError,
    KafkaSecurity,
    check_access,
    producer_acls,
    redrive_acls,
)
from streams.worker import PulseWorker
from tests.workers import WorkerProcess, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _secured(kafka: LocalKafka) -> Secured:
    assert kafka.secured is not None
    return kafka.secured


def _cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT,
                          env={**clean, **env}, capture_output=True, text=True, timeout=timeout)


def _count(bootstrap: str, topics: list[str], security: KafkaSecurity) -> int:
    consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000, **security.client_kwargs())
    try:
        return sum(1 for _ in consumer)
    finally:
        consumer.close()


def test_generate_over_sasl_ssl_with_plain_login(secured_kafka: LocalKafka) -> None:
    s = _secured(secured_kafka)
    env = s.settings_env("PLAIN")
    out = _cli("generate", "--bootstrap", s.sasl_ssl_bootstrap, "--communities", "3",
               "--days", "3", "--no-bad", env=env)
    assert out.returncode == 0, out.stderr
    sent = int(out.stdout.split(" in ")[1].split()[0].replace(",", ""))  # "... in N messages"
    assert s.plain_password not in out.stdout + out.stderr
    # `generate` writes to the unprefixed topics; read them back through the secured listener
    counted = wait_for(lambda: _count(s.sasl_ssl_bootstrap, list(DEFAULT_TOPICS),
                                      s.security("PLAIN")) or None, 60, "messages")
    assert counted >= sent > 0


def test_scram_user_gets_only_what_its_acls_allow(secured_kafka: LocalKafka,
                                                  unique_topic) -> None:
    s = _secured(secured_kafka)
    topic = unique_topic("scram")
    secured_kafka.create_topics([topic])
    scram = s.security("SCRAM-SHA-512")

    def visible() -> set[str]:
        consumer = KafkaConsumer(bootstrap_servers=s.sasl_ssl_bootstrap, **scram.client_kwargs())
        try:
            return set(consumer.topics())
        finally:
            consumer.close()

    assert topic not in visible()  # logged in, but no ACL: the authorizer hides the topic
    secured_kafka.grant(f"User:{s.scram_user}",
                        [Acl("TOPIC", "LITERAL", topic, op) for op in ("DESCRIBE", "READ",
                                                                        "WRITE")])
    wait_for(lambda: topic in visible(), 30, "the ACLs to apply")
    gen.produce(s.sasl_ssl_bootstrap, [(topic, b"c1", b"{}")] * 5, scram)
    assert _count(s.sasl_ssl_bootstrap, [topic], scram) == 5


def test_mutual_tls_for_the_producer_and_for_faust_s_clients(secured_kafka: LocalKafka,
                                                             unique_topic) -> None:
    s = _secured(secured_kafka)
    mtls = KafkaSecurity("SSL", cafile=str(s.cafile), certfile=str(s.client_certfile),
                         keyfile=str(s.client_keyfile))
    with pytest.raises(KafkaAccessError, match="client certificate"):
        check_access(s.ssl_bootstrap, KafkaSecurity("SSL", cafile=str(s.cafile)))
    topic = unique_topic("mtls")
    gen.produce(s.ssl_bootstrap, [(topic, b"c1", b"{}")] * 3, mtls)
    # What the worker's Faust app hands aiokafka (consumer, producer, topic creation).
    app = faust_app("mtls-check", f"kafka://{s.ssl_bootstrap}", 1, security=mtls)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert auth["security_protocol"] == "SSL"

    async def consume() -> int:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=s.ssl_bootstrap,
                                    auto_offset_reset="earliest", **auth)
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=10_000)
            return sum(len(records) for records in batches.values())
        finally:
            await consumer.stop()

    assert asyncio.run(consume()) == 3


def test_sasl_without_tls(secured_kafka: LocalKafka, unique_topic) -> None:
    s = _secured(secured_kafka)
    topic = unique_topic("saslplain")
    plain = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", s.plain_user, s.plain_password)
    gen.produce(s.sasl_plaintext_bootstrap, [(topic, b"c1", b"{}")] * 2, plain)
    assert _count(s.sasl_plaintext_bootstrap, [topic], plain) == 2
    wrong = KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-512", s.scram_user, "wrong")
    with pytest.raises(KafkaAccessError, match="refused the SCRAM-SHA-512 login"):
        check_access(s.sasl_plaintext_bootstrap, wrong)


def test_untrusted_broker_certificate_is_one_clear_error(secured_kafka: LocalKafka) -> None:
    s = _secured(secured_kafka)
    system_cas = KafkaSecurity("SASL_SSL", "PLAIN", s.plain_user, s.plain_password)
    with pytest.raises(KafkaAccessError, match=r"not trusted.*kafka_ssl_cafile"):
        check_access(s.sasl_ssl_bootstrap, system_cas)


@pytest.mark.parametrize("command", ["worker", "generate"])
def test_wrong_password_is_one_line_and_a_non_zero_exit(secured_kafka: LocalKafka,
                                                        tmp_path: Path, command: str) -> None:
    s = _secured(secured_kafka)
    wrong = "not-the-password-4711"
    env = {**s.settings_env("SCRAM-SHA-512"), "PULSE_KAFKA_SASL_PASSWORD": wrong}
    args = (["worker", "--broker", s.sasl_ssl_bootstrap, "--data-dir", str(tmp_path),
             "--metrics-port", "0"] if command == "worker" else
            ["generate", "--bootstrap", s.sasl_ssl_bootstrap, "--communities", "1"])
    out = _cli(*args, env=env, timeout=90)  # (a hang fails here)
    assert out.returncode != 0
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "refused the SCRAM-SHA-512 login of user 'pulse-scram'" in lines[0]
    assert wrong not in lines[0] and s.scram_password not in lines[0]


def test_security_settings_come_from_toml_env_and_files(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("from-a-file\n")
    toml = tmp_path / "pulse.toml"
    toml.write_text(f'[runtime]\nkafka_security_protocol = "SASL_PLAINTEXT"\n'
                    f'kafka_sasl_username = "svc"\nkafka_sasl_password_file = "{password_file}"\n'
                    f'kafka_ssl_check_hostname = false\ntopic_replication_factor = 3\n')
    monkeypatch.setenv("PULSE_KAFKA_SASL_MECHANISM", "scram-sha-512")
    monkeypatch.setenv("PULSE_TOPIC_MIN_INSYNC_REPLICAS", "2")
    _, runtime = config.load(toml)
    assert (runtime.topic_replication_factor, runtime.topic_min_insync_replicas) == (3, 2)
    assert runtime.kafka_ssl_check_hostname is False
    security = KafkaSecurity.from_runtime(runtime)
    assert (security.mechanism, security.username, security.password) == (
        "SCRAM-SHA-512", "svc", "from-a-file")
    assert "from-a-file" not in repr(security) + repr(runtime)
    monkeypatch.setenv("PULSE_KAFKA_SSL_CHECK_HOSTNAME", "maybe")
    with pytest.raises(ConfigError, match="kafka_ssl_check_hostname"):
        config.load(toml)


@pytest.mark.parametrize(("settings", "message"), [
    ({"kafka_security_protocol": "TLS"}, "must be one of"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"}, "needs a password"),
    ({"kafka_security_protocol": "SASL_SSL"}, "needs kafka_sasl_username"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/x"}, "both"),
    ({"kafka_ssl_cafile": "/etc/hostname"}, "kafka_security_protocol is PLAINTEXT"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent"}, "not a readable"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u",
      "kafka_sasl_password_file": "/nonexistent"}, "cannot read kafka_sasl_password_file"),
    # SASL settings with the protocol left at its default would connect PLAINTEXT.
    ({"kafka_sasl_username": "u"},
     "kafka_sasl_username is set but kafka_security_protocol is PLAINTEXT: set"),
    ({"kafka_sasl_mechanism": "SCRAM-SHA-512"}, "kafka_sasl_mechanism is set but"),
    ({"kafka_security_protocol": "SSL", "kafka_sasl_password_file": "/x"},
     "kafka_sasl_password_file is set but kafka_security_protocol is SSL"),
])
def test_bad_security_settings_are_one_line(settings: dict[str, str], message: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PULSE_KAFKA_SASL_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match=message) as error:
        KafkaSecurity.from_runtime(RuntimeConfig(**settings))  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


def test_a_sasl_password_in_the_environment_needs_a_sasl_protocol(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_KAFKA_SASL_PASSWORD", "secret-4711")
    with pytest.raises(ConfigError, match="PULSE_KAFKA_SASL_PASSWORD is set but") as error:
        KafkaSecurity.from_runtime(RuntimeConfig())
    assert "secret-4711" not in str(error.value)


def test_product_settings_win_over_faust_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"BROKER_URL": "kafka://elsewhere:9092",
                        "PROCESSING_GUARANTEE": "exactly_once",
                        "TOPIC_REPLICATION_FACTOR": "7", "APP_ENV_PREFIX": "X_"}.items():
        monkeypatch.setenv(name, value)
    app = faust_app("env-check", "kafka://127.0.0.1:9", 2, replication=3)
    assert [str(url) for url in app.conf.broker] == ["kafka://127.0.0.1:9"]
    assert app.conf.processing_guarantee.value == "at_least_once"
    assert app.conf.topic_replication_factor == 3
    assert {"BROKER_URL", "PROCESSING_GUARANTEE", "TOPIC_REPLICATION_FACTOR"} <= set(
        ignored_faust_environment())


def test_replication_and_min_insync_replicas_reach_the_topics_the_worker_creates(
        tmp_path: Path) -> None:
    runtime = RuntimeConfig(broker="kafka://127.0.0.1:9", data_dir=tmp_path,
                            topic_replication_factor=3, topic_min_insync_replicas=2)
    worker = PulseWorker(MetricConfig(), runtime)
    app = build_app(worker)
    assert app.conf.topic_replication_factor == 3
    changelog = app.tables["community-events"].changelog_topic
    source = next(agent.channel for agent in app.agents.values())
    for topic in (changelog, worker.dead_letter, source):
        assert (topic.config or {}).get("min.insync.replicas") == "2"


def test_worker_over_mutual_tls(secured_kafka: LocalKafka, tmp_path: Path) -> None:
    """The worker's Faust clients with a client certificate (SSLCredentials): it consumes
    and keeps its changelog on the listener that requires one."""
    s = _secured(secured_kafka)
    prefix, app_id = f"m{uuid.uuid4().hex[:8]}.", f"pulse-{uuid.uuid4().hex[:8]}"
    secured_kafka.create_topics([prefix + t for t in (*DEFAULT_TOPICS, DEAD_LETTER_TOPIC)])
    events = [{"event_id": f"e{n}", "type": "post", "community_id": f"c{n % 3}",
               "user_id": f"u{n}", "ts": 1_767_225_600_000 + n, "post_id": f"p{n}"}
              for n in range(30)]
    messages = [(prefix + topic, key, value) for topic, key, value in gen.to_messages(events, 1)]
    gen.produce(s.sasl_ssl_bootstrap, messages, s.security("PLAIN"))
    env = {"PULSE_KAFKA_SECURITY_PROTOCOL": "SSL", "PULSE_KAFKA_SSL_CAFILE": str(s.cafile),
           "PULSE_KAFKA_SSL_CERTFILE": str(s.client_certfile),
           "PULSE_KAFKA_SSL_KEYFILE": str(s.client_keyfile)}
    worker = WorkerProcess(s.ssl_bootstrap, tmp_path / "data", prefix, app_id, extra_env=env)
    try:
        wait_for(lambda: worker.total(worker.scrape(), "community_pulse_events_processed_total")
                 == len(events), 90, "the events consumed over mutual TLS")
        # The worker's own end-offset lookups (streams.app.OffsetLookup: lag poll, catch-up
        # check) log in too: caught up, the lag polled, still owning its partitions.
        wait_for(lambda: (samples := worker.scrape()) and worker.value(
            samples, "community_pulse_catching_up") == 0 and worker.value(
            samples, "community_pulse_consumer_lag_messages", topic=prefix + "community.posts"
            ) == 0, 60, "caught up by its own offset lookups over mutual TLS")
        assert worker.total(worker.scrape(), "community_pulse_assigned_partitions") > 0
        changelog = f"{app_id}-community-events-changelog"
        mtls = KafkaSecurity("SSL", cafile=str(s.cafile), certfile=str(s.client_certfile),
                             keyfile=str(s.client_keyfile))
        wait_for(lambda: _count(s.ssl_bootstrap, [changelog], mtls), 30, "the changelog")
    finally:
        worker.stop()


def test_unreachable_broker_is_one_line_for_generate(tmp_path: Path) -> None:
    out = _cli("generate", "--bootstrap", f"127.0.0.1:{free_port()}", "--communities", "1",
               env={}, timeout=60)
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, lines
    assert "cannot reach Kafka at 127.0.0.1:" in lines[0] and "Connect call failed" in lines[0]


def _dead_letter(source_topic: str, value: bytes, letter: str) -> tuple:
    headers = [("reason", b"wrong_partition"), ("detail", b"-"),
               ("source_topic", source_topic.encode()), ("dead_letter_id", letter.encode())]
    return b"c1", value, headers


def test_redrive_logs_in_like_every_client_and_writes_only_event_topics(
        secured_kafka: LocalKafka) -> None:
    """`redrive` over a SASL_SSL-only listener, as a SCRAM user that holds exactly
    `redrive_acls`: letters go back to their event topic; a letter naming any other topic
    stays. Without the security settings it stops with one line."""
    s = _secured(secured_kafka)
    prefix, app_id = f"rd{uuid.uuid4().hex[:8]}.", f"pulse-{uuid.uuid4().hex[:8]}"
    runtime = RuntimeConfig(topic_prefix=prefix, app_id=app_id)
    dead_letters, posts = prefix + DEAD_LETTER_TOPIC, prefix + "community.posts"
    secured_kafka.create_topics([dead_letters, posts, "elsewhere." + prefix])
    letters = [_dead_letter(posts, b'{"n": 1}', "a"), _dead_letter(posts, b'{"n": 2}', "b"),
               _dead_letter("elsewhere." + prefix, b'{"n": 3}', "c"),
               _dead_letter(dead_letters, b'{"n": 4}', "d")]  # (a loop)
    admin = KafkaProducer(bootstrap_servers=secured_kafka.bootstrap)  # a super user
    for key, value, headers in letters:
        admin.send(dead_letters, key=key, value=value, headers=headers)
    admin.flush()
    admin.close()
    secured_kafka.grant(f"User:{s.scram_user}", redrive_acls(runtime))
    env = {**s.settings_env("SCRAM-SHA-512"), "PULSE_TOPIC_PREFIX": prefix,
           "PULSE_APP_ID": app_id}

    def redriven() -> subprocess.CompletedProcess | None:
        out = _cli("redrive", "--broker", s.sasl_ssl_bootstrap, env=env, timeout=90)
        return out if "Authorization" not in out.stderr else None  # ACLs not applied yet

    out = wait_for(redriven, 60, "redrive with its ACLs")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("redrove 2 dead letter(s); skipped 2 naming no event topic "
                                  "(left in the dead-letter topic)")
    consumer = KafkaConsumer(posts, bootstrap_servers=secured_kafka.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    try:
        assert sorted(r.value for r in consumer) == [b'{"n": 1}', b'{"n": 2}']
    finally:
        consumer.close()
    scram = s.security("SCRAM-SHA-512")
    # The ACLs give no WRITE on the dead-letter topic: a producer cannot plant letters.
    producer = KafkaProducer(bootstrap_servers=s.sasl_ssl_bootstrap, max_block_ms=20_000,
                             **scram.client_kwargs())
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(dead_letters, b"{}").get(timeout=20)
    finally:
        producer.close()

    bare = _cli("redrive", "--broker", s.sasl_ssl_bootstrap, env={
        "PULSE_TOPIC_PREFIX": prefix, "PULSE_APP_ID": app_id}, timeout=90)
    lines = (bare.stdout + bare.stderr).strip().splitlines()
    assert bare.returncode == 2 and len(lines) == 1, lines
    assert "expect PLAINTEXT" in lines[0] and "closed the connection" in lines[0]


def test_producer_acls_name_the_event_topics_not_the_dead_letter_topic() -> None:
    acls = producer_acls("p.")
    assert {a.name for a in acls} == {f"p.{t}" for t in DEFAULT_TOPICS}
    assert all(a.pattern == "LITERAL" and a.operation in ("DESCRIBE", "WRITE") for a in acls)
    assert not any(a.name == "p." + DEAD_LETTER_TOPIC for a in redrive_acls(
        RuntimeConfig(topic_prefix="p.")) if a.operation == "WRITE")
