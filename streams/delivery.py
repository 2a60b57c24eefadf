"""What the worker writes to Kafka besides Faust's own traffic, and when a batch counts.

A batch is acked (its offsets may be committed) only once its changelog deltas and dead
letters are on the broker (DurableSender); a batch whose handling raises is never acked
(withhold_acks) and the worker leaves (exit_unclean) to restart from the changelog.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from faust.exceptions import ProducerSendError
from faust.types import EventT

from schemas.events import Rejection

log = logging.getLogger(__name__)

# Every record we write stays below the producer's max_request_size (1,000,000 bytes,
# which a record over it fails in Faust's send buffer, crashing the worker at every
# restart) with room for the key, headers and batch overhead.
RECORD_MAX_BYTES = 900_000
DEAD_LETTER_KEEP_BYTES = 64 * 1024  # of a dead letter that would not fit: its first bytes
SEND_RETRY_FIRST_S = 0.2
SEND_RETRY_MAX_S = 5.0
EXIT_BATCH_FAILED = 70  # EX_SOFTWARE: a bug in batch handling; restart to resume


class Record(NamedTuple):
    """One record the worker writes to Kafka (changelog delta or dead letter)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None
    headers: list[tuple[str, bytes]] | None = None
    # What to write instead when the broker refuses this record as too large (a topic
    # with a smaller max.message.bytes): a dead letter's bare headers.
    smaller: Record | None = None


class DurableSender:
    """Writes records straight to the producer and returns once the broker has every
    one of them (acks=all), retrying failed ones with backoff for as long as it takes.

    Not Faust's send buffer (`send_soon`, `Table.send_changelog`): that one logs a
    failed send and moves on, its flush gives up after 0.1 s without progress, and the
    offset commit goes ahead anyway. Whoever awaits `send` knows the records are
    durable, so the ingest agent acks a batch only after its writes are.
    """

    def __init__(self, producer: Any, on_retry: Callable[[int], None] = lambda n: None) -> None:
        self.producer = producer
        self.on_retry = on_retry

    async def send(self, records: Sequence[Record]) -> None:
        pending = list(records)
        delay = SEND_RETRY_FIRST_S
        while pending:
            failed: list[tuple[Record, BaseException]] = []
            sent: list[tuple[Record, Any]] = []
            for record in pending:
                try:
                    sent.append((record, await self.producer.send(
                        record.topic, record.key, record.value, record.partition, None,
                        record.headers)))
                except ProducerSendError as exc:  # e.g. no metadata for the topic in time
                    failed.append((record, exc.__cause__ or exc))
            for record, future in sent:
                try:
                    await future
                except KafkaError as exc:
                    failed.append((record, exc))
            if not failed:
                return
            self.on_retry(len(failed))
            for topic in sorted({record.topic for record, _ in failed}):
                problems = {type(exc).__name__ for record, exc in failed if record.topic == topic}
                # No record content in the log: only the topic and the error's kind.
                log.warning("send to topic %s failed (%s); retrying in %.1f s", topic,
                            ", ".join(sorted(problems)), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, SEND_RETRY_MAX_S)
            pending = [record.smaller if record.smaller is not None and isinstance(
                exc, (MessageSizeTooLargeError, RecordTooLargeError)) else record
                for record, exc in failed]


def exit_unclean(exc: Exception) -> None:
    """Leave at once after a batch failed half-way: only a restart from the changelog
    and the committed offsets is exact again. As after a kill -9, which loses nothing
    (the batch was never committed); a graceful Faust stop after an agent crash can
    hang, and Faust's supervisor would restart the agent on the half-applied state."""
    log.critical("handling a batch failed; exiting without committing it", exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_BATCH_FAILED)


def withhold_acks(batch: Sequence[EventT]) -> None:
    """Make sure the messages of a batch are never acked, so their offsets are never
    committed: `take_events` acks a batch in a `finally`, also when its handling raised.

    A message marked acked is skipped by `Message.ack`, which then never reaches
    `Consumer.ack`; the consumer's acked offsets keep a gap there, and `_new_offset`
    never commits past a gap (tests/test_worker_app.py checks both on the installed
    Faust)."""
    for event in batch:
        event.message.acked = True


def dead_letter(topic: str, msg: Any, rejection: Rejection, number: int) -> Record:
    """The dead-letter record of a rejection: original key and bytes, reason, source.

    `dead_letter_id` (source topic, partition, offset and the rejection's number in the
    message) is the same when a restart reads the message again, so readers
    (`community-pulse redrive`) drop the copies. A record that would not fit keeps the
    first DEAD_LETTER_KEEP_BYTES with the original size and SHA-256 in headers."""
    source = f"{msg.topic}/{msg.partition}/{msg.offset}"
    headers = [
        ("reason", rejection.reason.encode()),
        ("detail", rejection.detail.encode()[:1000]),
        ("source_topic", msg.topic.encode()),
        ("source_partition", str(msg.partition).encode()),
        ("source_offset", str(msg.offset).encode()),
        ("dead_letter_id", f"{source}/{number}".encode()),
        ("events", str(rejection.count).encode()),  # an envelope's bad elements: one letter
    ]
    key, value = msg.key, rejection.raw
    digest = [("original_size", str(len(value)).encode()),
              ("original_sha256", hashlib.sha256(value).hexdigest().encode())]
    # If the topic refuses even that (a small max.message.bytes): the headers alone,
    # which still say where the original is (source topic, partition, offset).
    bare = Record(topic, None, b"", None, [(name, text[:100]) for name, text in headers]
                  + digest)
    if len(value) + len(key or b"") > RECORD_MAX_BYTES:
        headers += digest
        value = value[:DEAD_LETTER_KEEP_BYTES]
        key = key[:DEAD_LETTER_KEEP_BYTES] if key else key
    return Record(topic, key, value, None, headers, bare)
