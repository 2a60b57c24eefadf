"""(a) The client limit: aiokafka `getmany` + msgspec decode into the event struct.

Counts events (an envelope counts its elements, an undecodable message counts 1).
Usage: raw_client.py BOOTSTRAP GROUP STATUS_FILE TOPIC...
"""

from __future__ import annotations

import asyncio
import sys

import msgspec
from aiokafka import AIOKafkaConsumer

from bench.common import Status
from schemas.events import Event
from streams.kafka_auth import KafkaSecurity

_decode = msgspec.json.Decoder(Event | list[Event]).decode


async def main(bootstrap: str, group: str, status_path: str, topics: list[str]) -> None:
    status = Status(status_path)
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=group,
        auto_offset_reset="earliest", fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **KafkaSecurity.from_settings().client_kwargs(),  # the product's settings
    )
    await consumer.start()
    count = 0
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            for messages in batches.values():
                for msg in messages:
                    try:
                        decoded = _decode(msg.value)
                    except msgspec.DecodeError:
                        count += 1
                        continue
                    count += len(decoded) if isinstance(decoded, list) else 1
            status.write(count)
    finally:
        status.write(count, force=True)
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
