"""What every adapter does with raw input: decode, validate, apply, count.

The Faust worker and the replay command both push raw message bytes through
`Ingestor.ingest`, so they share one validation path and one set of counters, for
which `consumed = processed + duplicates + dead_lettered` always holds per topic
(counted in events: an envelope's rejection counts every element it holds).

Nothing a message holds stops the pipeline: the decoder rejects every kind of bad input
with its reason, and should decoding a message ever raise all the same (a bug), that
message becomes a rejection with reason `internal` and the others go on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from schemas.events import Event, Reason, Rejection, decode_lines, decode_message, newest_ts
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
        try:
            events, rejections = decode_message(value, self.topics[topic], now_ms, key)
            return Ingested(self.pseudonymised(events), rejections)
        except Exception as exc:
            return Ingested([], [internal_rejection(value, exc)])

    def decode_lines(self, topic: str, values: Sequence[bytes], now_ms: int) -> Ingested:
        """`decode` for many keyless messages at once (see `schemas.events.decode_lines`)."""
        try:
            events, rejections = decode_lines(values, self.topics[topic], now_ms)
            events = self.pseudonymised(events)
        except Exception:  # (a bug): find the message, as the worker would
            parsed = [self.parse(topic, value, None, now_ms) for value in values]
            events = [event for result in parsed for event in result.events]
            rejections = [bad for result in parsed for bad in result.rejections]
        return self.counted(topic, events, rejections)

    def pseudonymised(self, events: list[Event]) -> list[Event]:
        """The decoded events with their user ids pseudonymised (when configured), before
        they go anywhere: core, changelog, counters."""
        if self.pseudonymise is not None:
            self.pseudonymise.events(events)
        return events

    def counted(self, topic: str, events: list[Event], rejections: list[Rejection]) -> Ingested:
        """Count messages decoded (and pseudonymised) elsewhere, as `decode` does."""
        stats = self.stats[topic]
        stats.consumed += len(events)
        for rejection in rejections:
            for reason, count in rejection.by_reason():
                stats.consumed += count
                stats.dead_lettered[reason] += count
        return Ingested(events, rejections)

    def apply(self, topic: str, events: list[Event]) -> None:
        if events:
            self.applied(topic, events, self.core.apply(events))

    def applied(self, topic: str, events: list[Event], duplicates: int) -> None:
        """Count events applied to the core, of which `duplicates` changed nothing."""
        if not events:
            return
        stats = self.stats[topic]
        stats.duplicates += duplicates
        stats.processed += len(events) - duplicates
        newest = newest_ts(events)
        if stats.newest_event_ms is None or newest > stats.newest_event_ms:
            stats.newest_event_ms = newest


def internal_rejection(value: bytes | None, exc: BaseException) -> Rejection:
    """A message whose handling raised: its bytes and the exception's class only (an
    exception's text may quote the data, e.g. a user id)."""
    return Rejection(value or b"", Reason.INTERNAL, f"handling it raised {type(exc).__name__}")
