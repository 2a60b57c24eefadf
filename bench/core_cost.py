"""CPU cost of the core's hot paths, for a side-by-side of two versions of the code.

Per-event `PulseCore.apply` (batches of 2,000), `snapshot` of every community, and bulk
`apply_columns`, on 60 generated communities over 35 days; CPU seconds (process time, so
other processes on a shared machine count less), the best of 7. Prints one JSON line.

    PYTHONPATH=/path/to/old/checkout .venv/bin/python bench/core_cost.py
    .venv/bin/python bench/core_cost.py [roster]   # roster: 3 content experts each
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time

import msgspec

from devkit import generate as gen
from schemas.columnar import events_table
from schemas.events import Event
from streams.bulk import EventColumns, apply_columns
from streams.config import MetricConfig
from streams.core import PulseCore

NOW = 1_795_000_000_000
rng = random.Random(11)
events = [msgspec.convert(e, type=Event) for c in gen.plan(60, 6000, rng)
          for e in gen.history(c, NOW, 35, rng)]
events.sort(key=lambda e: e.ts)
config = MetricConfig()
if len(sys.argv) > 1 and sys.argv[1] == "roster":
    repliers: dict[str, set[str]] = {}  # experts who do reply: the costlier case
    for e in events:
        if e.type == "reply":
            repliers.setdefault(e.community_id, set()).add(e.user_id)
    pick = random.Random(1)
    config = MetricConfig(experts={c: frozenset(pick.sample(sorted(u), min(3, len(u))))
                                   for c, u in repliers.items()})
gc.set_threshold(100_000, 50, 10)
best: dict[str, float] = {}
for _ in range(7):
    core = PulseCore(config)
    t0 = time.process_time()
    for i in range(0, len(events), 2000):
        core.apply(events[i:i + 2000])
    t1 = time.process_time()
    for _ in range(3):
        core.snapshot(NOW)
    t2 = time.process_time()
    bulk_core = PulseCore(config)
    cols = EventColumns.from_table(events_table(events))
    t3 = time.process_time()
    apply_columns(bulk_core, cols)
    t4 = time.process_time()
    for k, v in (("apply_us_per_event", (t1 - t0) / len(events) * 1e6),
                 ("snapshot_ms", (t2 - t1) / 3 * 1000), ("bulk_apply_s", t4 - t3)):
        best[k] = min(best.get(k, 1e9), v)
print(json.dumps({"events": len(events), **{k: round(v, 3) for k, v in best.items()}}))
