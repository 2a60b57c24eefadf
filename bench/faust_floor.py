"""(b) The engine floor: a bare Faust agent that only counts messages.

Same Faust settings as `streams.app.build_app` where they matter (`PulseApp` with the
worker's default fetch wait, raw serializers, in-memory store, partitions, buffer size,
`take_events(2000, within=0.05)`), but no decode, no table, no core.
Usage: faust_floor.py BOOTSTRAP APP_ID STATUS_FILE PARTITIONS TOPIC...
"""

from __future__ import annotations

import sys

import faust

from bench.common import Status
from streams.app import BATCH_MAX_MESSAGES, BATCH_WITHIN_S, faust_app
from streams.config import RuntimeConfig
from streams.kafka_auth import KafkaSecurity


def main(bootstrap: str, app_id: str, status_path: str, partitions: int,
         topics: list[str]) -> None:
    status = Status(status_path)
    app = faust_app(app_id, f"kafka://{bootstrap}", partitions,  # the worker's settings
                    RuntimeConfig().fetch_max_wait_ms, KafkaSecurity.from_settings())
    source = app.topic(*topics, key_type=bytes, value_type=bytes, partitions=partitions)
    counted = [0]

    @app.agent(source, name="count")
    async def count(stream: faust.StreamT) -> None:
        batches = stream.take_events(  # type: ignore[attr-defined]  # missing from StreamT
            BATCH_MAX_MESSAGES, within=BATCH_WITHIN_S)
        async for batch in batches:
            counted[0] += len(batch)
            status.write(counted[0])

    @app.timer(interval=0.2)
    async def report() -> None:
        status.write(counted[0], force=True)

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
