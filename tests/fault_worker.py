"""`community-pulse` with one fault injected, for the fault tests (never the product).

    python tests/fault_worker.py FAULT worker --broker ...

FAULT:
    raise-mid-batch:N   the Nth core update of two or more events applies half of them
                        and raises, once (a bug half-way through a batch)
    crash-mid-batch:N   the Nth core update of two or more events applies half of them
                        and the process dies at once (exit 70, as after kill -9)
    poison-event:MARK   every core update holding an event whose id contains MARK
                        applies half of its events and raises (a bug one message
                        always meets)
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
import os
import time
from collections.abc import Callable
from typing import Any

from streams import app, core, worker
from streams.cli import main


def _half_then(fault: Callable[[list[Any]], bool], act: Callable[[], None]) -> None:
    """PulseCore.apply applies half of its events and then `act`s when `fault` says so."""
    original = core.PulseCore.apply

    def apply(self: core.PulseCore, events: Any) -> int:
        events = list(events)
        if fault(events):
            original(self, events[: len(events) // 2])
            act()
        return original(self, events)

    core.PulseCore.apply = apply  # type: ignore[method-assign]


def _nth_update(nth: int) -> Callable[[list[Any]], bool]:
    calls = 0

    def fault(events: list[Any]) -> bool:
        nonlocal calls
        if len(events) >= 2:
            calls += 1
        return len(events) >= 2 and calls == nth

    return fault


def raise_mid_batch(nth: int) -> None:
    def act() -> None:
        raise RuntimeError("injected fault half-way through a batch")

    _half_then(_nth_update(nth), act)


def crash_mid_batch(nth: int) -> None:
    def act() -> None:
        print("injected crash half-way through a batch", file=sys.stderr, flush=True)
        os._exit(70)

    _half_then(_nth_update(nth), act)


def poison_event(mark: str) -> None:
    def act() -> None:
        raise RuntimeError("injected fault on a poisoned event")

    _half_then(lambda events: any(mark in event.event_id for event in events), act)


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
    elif name == "crash-mid-batch":
        crash_mid_batch(int(arg))
    elif name == "poison-event":
        poison_event(arg)
    elif name == "slow-seek":
        slow_seek(float(arg))
    elif name == "fast-clock":
        start, speed = arg.split(":")
        fast_clock(float(start), float(speed))
    elif name != "none":
        sys.exit(f"unknown fault {fault}")
    sys.exit(main(args))
