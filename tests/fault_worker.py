"""`community-pulse` with one fault injected, for the fault tests (never the product).

    python tests/fault_worker.py FAULT worker --broker ...

FAULT:
    raise-mid-batch:N   the Nth core update of two or more events applies half of them
                        and raises (a bug half-way through a batch)
    fast-clock:T0:X     the worker's clock (snapshots, expiry, event-time checks) is
                        T0 + (wall clock - T0) * X: at epoch seconds T0 it agrees with
                        the wall clock, then runs X times as fast
    none                no fault (the same launcher, for comparison)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import time

from streams import pipeline, worker
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
    elif name == "fast-clock":
        start, speed = arg.split(":")
        fast_clock(float(start), float(speed))
    elif name != "none":
        sys.exit(f"unknown fault {fault}")
    sys.exit(main(args))
