"""Load messages into Kafka fast (confluent-kafka/librdkafka, from the Quix venv).

Reads a msgpack file holding [[topic, key, value], ...]; loading time is not measured.
Usage: fast_produce.py BOOTSTRAP FILE TOPIC_PREFIX
"""

from __future__ import annotations

import sys
import time

import msgspec
from confluent_kafka import Producer

from streams.kafka_auth import KafkaSecurity


def main(bootstrap: str, path: str, prefix: str) -> None:
    with open(path, "rb") as fh:
        messages = msgspec.msgpack.decode(fh.read())
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "linger.ms": 50,
        "batch.size": 1024 * 1024,
        "batch.num.messages": 100_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1024 * 1024,
        "message.max.bytes": 2 * 1024 * 1024,
        "acks": 1,
        "partitioner": "murmur2_random",  # Java client's partitioner, as Faust/aiokafka use
        **KafkaSecurity.from_settings().librdkafka(),  # the product's settings (PULSE_KAFKA_*)
    })
    errors = [0]

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            errors[0] += 1

    started = time.monotonic()
    for i, (topic, key, value) in enumerate(messages):
        while True:
            try:
                producer.produce(prefix + topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
        if i % 200_000 == 0 and i:
            print(f"  produced {i:,}/{len(messages):,}", file=sys.stderr, flush=True)
    left = producer.flush(120)
    if left or errors[0]:
        sys.exit(f"produce failed: {left} undelivered, {errors[0]} errors")
    print(f"  produced {len(messages):,} messages in {time.monotonic() - started:.1f}s",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
