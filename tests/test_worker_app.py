"""The Faust app the worker (and the benchmark's Faust floor) runs with."""

from __future__ import annotations

import asyncio

from streams.worker import FETCH_MAX_WAIT_MS, faust_app


def test_consumer_fetch_wait_is_bounded() -> None:
    # Faust builds its aiokafka consumer with fetch_max_wait_ms=1500; a fetch that asks
    # only for idle partitions then holds back busy ones that long (benchmarks.md).
    async def created_consumer_wait() -> int:
        app = faust_app("test-fetch-wait", "kafka://127.0.0.1:9", 1)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(created_consumer_wait()) == FETCH_MAX_WAIT_MS < 1500
