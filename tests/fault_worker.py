"""`community-pulse` with one fault injected, for the fault tests (never the product).

    python tests/fault_worker.py FAULT worker --broker ...

FAULT:
    raise-mid-batch:N   the Nth core update of two or more events applies half of them
                        and raises (a bug half-way through a batch)
    slow-seek:S         the seek to the committed offsets at the end of each recovery
                        answers late (a loaded broker answering its ~25 committed-offset
                        requests slowly): once 100 fetched records wait in the stream
                        buffers, or after S seconds
    fast-clock:T0:X     the worker's clock (snapshots, expiry, event-time checks) is
                        T0 + (wall clock - T0) * X: at epoch seconds T0 it agrees with
                        the wall clock, then runs X times as fast
    none                no fault (the same launcher, for comparison)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
import time
from typing import Any

from streams import app, pipeline, worker
from streams.cli import main


def raise_mid_batch(nth: int) -> None:
    original = pipeline.Ingestor.apply
    calls = 0

    def apply(self: pipeline.Ingestor, topic: str, events: list[pipeline.Event]) -> None:
        nonlocal calls
        if len(events) >= 2:
            calls += 1
            if calls == nth:
                original(self, topic, events[: len(events) // 2])
                raise RuntimeError("injected fault half-way through a batch")
        original(self, topic, events)

    pipeline.Ingestor.apply = apply  # type: ignore[method-assign]


BUFFERED = 100  # slow-seek answers once this many fetched records wait in stream buffers


def _buffered(faust_app: Any) -> int:
    """Records waiting in the agents' stream buffers (Faust's channel queues)."""
    channels = {c for chans in faust_app.topics._tp_index.values() for c in chans}
    return sum(c._queue.qsize() for c in channels if getattr(c, "_queue", None) is not None)


def slow_seek(seconds: float) -> None:
    original = app._Consumer.seek_to_committed

    async def seek_to_committed(self: app._Consumer) -> Any:
        committed = await original(self)
        # The answer comes late: as late as it takes for fetched records to reach a
        # stream buffer (what the fetcher does meanwhile), at most `seconds`.
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and _buffered(self.app) < BUFFERED:
            await asyncio.sleep(0.005)
        return committed

    app._Consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign,assignment]


def fast_clock(start_s: float, speed: float) -> None:
    original = worker.PulseWorker.__init__

    def clock() -> float:
        return start_s + (time.time() - start_s) * speed

    def init(self: worker.PulseWorker, *args: object, **kwargs: object) -> None:
        original(self, *args, **{**kwargs, "clock": clock})  # type: ignore[arg-type]

    worker.PulseWorker.__init__ = init  # type: ignore[method-assign]


if __name__ == "__main__":
    fault, *args = sys.argv[1:]
    name, _, arg = fault.partition(":")
    if name == "raise-mid-batch":
        raise_mid_batch(int(arg))
    elif name == "slow-seek":
        slow_seek(float(arg))
    elif name == "fast-clock":
        start, speed = arg.split(":")
        fast_clock(float(start), float(speed))
    elif name != "none":
        sys.exit(f"unknown fault {fault}")
    sys.exit(main(args))
