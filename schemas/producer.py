"""A small producer helper for applications that emit community events.

Batch envelopes (a JSON array of events in one Kafka message, SPEC section 1) are the
cheapest way into the pipeline: the worker decodes a whole envelope in one call and
pays Kafka's and Faust's per-message cost once per envelope. Group by topic and
community (the message key), as this helper does:

    with EnvelopeProducer("127.0.0.1:9092", batch_size=100) as producer:
        producer.send({"event_id": "e1", "type": "post", "community_id": "c1",
                       "user_id": "u1", "ts": 1767225600000, "post_id": "p1"})

On a secured cluster, pass the product's settings (TLS, SASL; docs/security.md):
`EnvelopeProducer(bootstrap, security=KafkaSecurity.from_settings())` with
`from streams.kafka_auth import KafkaSecurity`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from schemas.events import DEFAULT_TOPICS, MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from streams.kafka_auth import KafkaSecurity

TOPIC_OF = {kind: topic for topic, kinds in DEFAULT_TOPICS.items() for kind in kinds}
_encode = msgspec.json.encode


def envelopes(
    events: Iterable[Mapping[str, Any]], batch_size: int, topic_prefix: str = ""
) -> Iterator[tuple[str, bytes, bytes]]:
    """(topic, key, value) messages: single events, or envelopes of up to batch_size."""
    if batch_size <= 1:
        for e in events:
            yield topic_prefix + TOPIC_OF[e["type"]], e["community_id"].encode(), _encode(e)
        return
    pending: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for e in events:
        slot = (topic_prefix + TOPIC_OF[e["type"]], e["community_id"])
        group = pending.setdefault(slot, [])
        group.append(e)
        if len(group) >= batch_size:
            yield from _encoded(slot, pending.pop(slot))
    for slot, group in pending.items():
        yield from _encoded(slot, group)


def _encoded(
    slot: tuple[str, str], group: list[Mapping[str, Any]]
) -> Iterator[tuple[str, bytes, bytes]]:
    value = _encode(group)
    if len(value) > MAX_MESSAGE_BYTES and len(group) > 1:  # split rather than be rejected
        half = len(group) // 2
        yield from _encoded(slot, group[:half])
        yield from _encoded(slot, group[half:])
        return
    yield slot[0], slot[1].encode(), value


class EnvelopeProducer:
    """Buffers events per (topic, community) and sends them as batch envelopes."""

    def __init__(self, bootstrap: str, batch_size: int = 100, topic_prefix: str = "",
                 security: KafkaSecurity | None = None, **producer_config: Any) -> None:
        """`security` (TLS, SASL; `KafkaSecurity.from_settings()` reads the product's
        settings) is checked with one login first: a refused one raises KafkaAccessError
        at once instead of the producer retrying until it times out."""
        from kafka import KafkaProducer

        from streams.kafka_auth import check_access

        self.batch_size = batch_size
        self.topic_prefix = topic_prefix
        self._buffer: list[Mapping[str, Any]] = []
        bootstrap = bootstrap.removeprefix("kafka://")
        if security is not None:
            check_access(bootstrap, security)
            producer_config = {**security.client_kwargs(), **producer_config}
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            **{"linger_ms": 20, "batch_size": 512 * 1024,
               "max_request_size": 2 * MAX_MESSAGE_BYTES, **producer_config},
        )

    def send(self, event: Mapping[str, Any]) -> None:
        self._buffer.append(event)
        if len(self._buffer) >= self.batch_size * 50:
            self.flush(wait=False)

    def send_raw(self, topic: str, key: bytes, value: bytes) -> None:
        """Send bytes as they are (the generator uses it for deliberately bad input)."""
        self._producer.send(self.topic_prefix + topic, key=key, value=value)

    def flush(self, wait: bool = True) -> None:
        for topic, key, value in envelopes(self._buffer, self.batch_size, self.topic_prefix):
            self._producer.send(topic, key=key, value=value)
        self._buffer.clear()
        if wait:
            self._producer.flush()

    def close(self) -> None:
        self.flush()
        self._producer.close()

    def __enter__(self) -> EnvelopeProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
