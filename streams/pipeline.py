"""What every adapter does with raw input: decode, validate, apply, count.

The Faust worker and the replay command both push raw message bytes through
`Ingestor.ingest`, so they share one validation path and one set of counters, for
which `consumed = processed + duplicates + dead_lettered` always holds per topic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from schemas.events import Event, Rejection, decode_lines, decode_message, newest_ts
from streams.core import PulseCore
from streams.privacy import Pseudonymiser


@dataclass
class TopicStats:
    consumed: int = 0
    processed: int = 0
    duplicates: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    newest_event_ms: int | None = None


class Ingested(NamedTuple):  # a tuple: built once per Kafka message, so kept cheap
    events: list[Event]  # valid events, duplicates included (harmless to re-apply)
    rejections: list[Rejection]


class Ingestor:
    """Validates raw messages of known topics and applies them to the core."""

    def __init__(self, core: PulseCore, topics: Mapping[str, frozenset[str]],
                 pseudonymise: Pseudonymiser | None = None) -> None:
        self.core = core
        self.topics = dict(topics)
        self.stats = {topic: TopicStats() for topic in topics}
        self.pseudonymise = pseudonymise  # applied to every decoded event's user id

    def ingest(self, topic: str, value: bytes | None, key: bytes | None, now_ms: int) -> Ingested:
        """Decode, count and apply one message."""
        result = self.decode(topic, value, key, now_ms)
        self.apply(topic, result.events)
        return result

    def decode(self, topic: str, value: bytes | None, key: bytes | None, now_ms: int) -> Ingested:
        """Decode and count one message without applying it (replay sorts first)."""
        return self.counted(topic, *self.parse(topic, value, key, now_ms))

    def parse(self, topic: str, value: bytes | None, key: bytes | None, now_ms: int) -> Ingested:
        """Decode one message without counting it: the worker counts a batch only once
        its changelog and dead-letter writes are on the broker."""
        events, rejections = decode_message(value, self.topics[topic], now_ms, key)
        return Ingested(self.pseudonymised(events), rejections)

    def decode_lines(self, topic: str, values: Sequence[bytes], now_ms: int) -> Ingested:
        """`decode` for many keyless messages at once (see `schemas.events.decode_lines`)."""
        events, rejections = decode_lines(values, self.topics[topic], now_ms)
        return self.counted(topic, self.pseudonymised(events), rejections)

    def pseudonymised(self, events: list[Event]) -> list[Event]:
        """The decoded events with their user ids pseudonymised (when configured), before
        they go anywhere: core, changelog, counters."""
        if self.pseudonymise is not None:
            self.pseudonymise.events(events)
        return events

    def counted(self, topic: str, events: list[Event], rejections: list[Rejection]) -> Ingested:
        """Count messages decoded (and pseudonymised) elsewhere, as `decode` does."""
        stats = self.stats[topic]
        stats.consumed += len(events) + len(rejections)
        for rejection in rejections:
            stats.dead_lettered[rejection.reason] += 1
        return Ingested(events, rejections)

    def apply(self, topic: str, events: list[Event]) -> None:
        if not events:
            return
        stats = self.stats[topic]
        duplicates = self.core.apply(events)
        stats.duplicates += duplicates
        stats.processed += len(events) - duplicates
        newest = newest_ts(events)
        if stats.newest_event_ms is None or newest > stats.newest_event_ms:
            stats.newest_event_ms = newest
