"""`community-pulse` with one fault injected, for the fault tests (never the product).

    python tests/fault_worker.py FAULT worker --broker ...

FAULT:
    raise-mid-batch:N   the Nth core update of two or more events applies half of them
                        and raises (a bug half-way through a batch)
    none                no fault (the same launcher, for comparison)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams import pipeline
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


if __name__ == "__main__":
    fault, *args = sys.argv[1:]
    name, _, arg = fault.partition(":")
    if name == "raise-mid-batch":
        raise_mid_batch(int(arg))
    elif name != "none":
        sys.exit(f"unknown fault {fault}")
    sys.exit(main(args))
