"""`community-pulse redrive`: put dead letters back on their source topics once the cause
is fixed (e.g. a producer that used another partitioner: reason `wrong_partition`).

Reads the dead-letter topic as the consumer group `<app_id>-redrive`, so a second run
continues where the first stopped, and re-produces each chosen letter's original key
and bytes to its source topic with the Java client's murmur2 partitioner (kafka-python's
default, the contract's). Letters are deduplicated by their `dead_letter_id` header (a
restarted worker may have written one twice); letters that kept only their first bytes
(an oversized message: header `original_size`) cannot be re-driven and are counted.
The group's offsets are committed only after the producer has flushed everything.

Both clients connect with the product's Kafka security settings (`KafkaSecurity`, after
the same one-line login check as every client): dead letters hold what producers sent,
user ids included. A letter is re-produced only to one of the event topics (with
`topic_prefix`); one that names another topic is left where it is and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from schemas.events import DEAD_LETTER_TOPIC
from streams.kafka_auth import KafkaSecurity, check_access, event_topics


@dataclass
class RedriveReport:
    redriven: Counter[str] = field(default_factory=Counter)  # source topic -> letters
    skipped: Counter[str] = field(default_factory=Counter)  # why -> letters

    def __str__(self) -> str:
        sent = sum(self.redriven.values())
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return f"redrove {sent} dead letter(s)" + (f"; skipped {skipped}" if skipped else "")


def redrive(bootstrap: str, app_id: str, topic_prefix: str = "",
            reasons: frozenset[str] = frozenset({"wrong_partition"}),
            timeout_s: float = 10.0, *, security: KafkaSecurity) -> RedriveReport:
    """Re-produce the dead letters with one of `reasons` (empty: every reason) that
    arrived since the last run; return what was done."""
    check_access(bootstrap, security)  # a refused login: one line, not a hanging client
    topic = topic_prefix + DEAD_LETTER_TOPIC
    allowed = {name.encode(): name for name in event_topics(topic_prefix)}
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"{app_id}-redrive",
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             consumer_timeout_ms=int(timeout_s * 1000),
                             **security.client_kwargs())
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                             **security.client_kwargs())
    report = RedriveReport()
    try:
        partitions = [TopicPartition(topic, p)
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            raise ValueError(f"no dead-letter topic {topic} on {bootstrap}")
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        seen: set[bytes] = set()
        for record in consumer:
            headers = dict(record.headers)
            reason = headers.get("reason", b"").decode(errors="replace")
            letter_id = headers.get("dead_letter_id")
            source = allowed.get(headers.get("source_topic", b""))
            if reasons and reason not in reasons:
                report.skipped[f"with reason {reason or '(none)'}"] += 1
            elif letter_id is not None and letter_id in seen:
                report.skipped["copies"] += 1
            elif "original_size" in headers:
                report.skipped["cut short (oversized)"] += 1
            elif source is None:
                report.skipped["naming no event topic (left in the dead-letter topic)"] += 1
            else:
                producer.send(source, key=record.key, value=record.value)
                report.redriven[source] += 1
            if letter_id is not None:
                seen.add(letter_id)
            if all(consumer.position(tp) >= ends[tp] for tp in partitions):
                break
        producer.flush()
        consumer.commit()
    finally:
        producer.close()
        consumer.close()
    return report
