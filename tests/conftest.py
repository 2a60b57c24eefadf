"""Shared fixtures: one real Kafka broker per test session (see streams/devkafka.py).

Tests that use the `kafka` fixture are marked `kafka` automatically, so
`pytest -m "not kafka"` runs only the tests that need no broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

pytest.register_assert_rewrite("tests.faults", "tests.workers")

from devkit.devcerts import DevCerts, make_certs  # noqa: E402
from devkit.devkafka import LocalKafka  # noqa: E402

LONG_MARKERS = {"faults": "make faults", "soak": "make soak"}


def pytest_addoption(parser: pytest.Parser) -> None:
    for marker, target in LONG_MARKERS.items():
        parser.addoption(f"--{marker}", action="store_true",
                         help=f"run the tests marked {marker} ({target}; skipped otherwise)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kafka: needs the session's real local Kafka broker (fixture `kafka`)"
    )
    config.addinivalue_line("markers", "faults: long fault runs (make faults)")
    config.addinivalue_line("markers", "soak: the 10-minute soak (make soak)")
    # kafka-python loads its protocol schemas with deprecated importlib.resources calls.
    for msg in ("read_text is deprecated", "open_text is deprecated"):
        config.addinivalue_line("filterwarnings", f"ignore:{msg}:DeprecationWarning")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if {"kafka", "secured_kafka"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)
        for marker, target in LONG_MARKERS.items():
            if item.get_closest_marker(marker) and not config.getoption(f"--{marker}"):
                item.add_marker(pytest.mark.skip(reason=f"long: run with {target}"))


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A started single-node broker on free ports; its logs stay under pytest's tmp dir."""
    with LocalKafka(run_dir=tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A second broker with SASL_SSL (PLAIN, SCRAM-SHA-512) and mutual-TLS listeners beside
    its plain one (`.secured`), certificates made by openssl for this session, and an
    authorizer: the SCRAM user may do only what a test grants it (`broker.grant`)."""
    with LocalKafka(run_dir=tmp_path_factory.mktemp("kafka-secured"), secured=True,
                    acls=True) as broker:
        yield broker


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """A throw-away CA with a server certificate for 127.0.0.1 (`broker_keystore`: key and
    chain in one PEM) and a client certificate, for the https tests."""
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def unique_topic() -> Callable[[str], str]:
    """`unique_topic("posts")` gives a topic name no other test uses (tests share one broker)."""

    def name(prefix: str = "test") -> str:
        return f"{prefix}.{uuid.uuid4().hex[:12]}"

    return name


@pytest.fixture
def create_topics(kafka: LocalKafka) -> Callable[..., list[str]]:
    """`create_topics("a", "b", partitions=4)` creates the topics and waits for leaders."""

    def make(*names: str, partitions: int = 4) -> list[str]:
        kafka.create_topics(list(names), partitions=partitions)
        return list(names)

    return make
