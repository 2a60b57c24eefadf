"""What closing rows cost the worker, side by side in one run (ratios), without Kafka.

- ingest: `PulseWorker.handle_batch` over the same messages with the closing bookkeeping
  (arrivals, oldest event per partition) and with it switched off;
- backfill: the first closing pass of a worker started on 35 days of history (every
  midnight of the backfill range, one file per partition and midnight) against one live
  snapshot of all communities;
- steady state: a pass that rewrites today's open midnight for a late event in one
  community, against the same live snapshot.

Usage: python bench/closing_cost.py [COMMUNITIES] [USERS]  (prints one JSON line)
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec

from devkit import generate as gen
from schemas.producer import TOPIC_OF
from streams.app import BATCH_MAX_MESSAGES
from streams.config import MetricConfig, RuntimeConfig
from streams.worker import PulseWorker

NOW_MS = 1_795_000_000_000  # 2026-11-17T...Z


def messages(events: list[dict], offsets: dict[tuple[str, int], int]) -> list[Any]:
    out = []
    for e in events:
        topic, partition = TOPIC_OF[e["type"]], hash(e["community_id"]) % 4
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        out.append(SimpleNamespace(message=SimpleNamespace(
            topic=topic, partition=partition, offset=offset, key=e["community_id"].encode(),
            value=msgspec.json.encode(e), timestamp=NOW_MS / 1000)))
    return out


def ingest(worker: PulseWorker, batch: list[Any]) -> float:
    started = time.process_time()
    for start in range(0, len(batch), BATCH_MAX_MESSAGES):
        worker.handle_batch(batch[start:start + BATCH_MAX_MESSAGES])
    return time.process_time() - started


def main(communities: int, users: int) -> None:
    rng = random.Random(7)
    events = gen.messy_order(
        [e for c in gen.plan(communities, users, rng) for e in gen.history(c, NOW_MS, 35, rng)],
        rng)
    result: dict[str, Any] = {"events": len(events), "communities": communities}
    with tempfile.TemporaryDirectory() as tmp:
        offsets: dict[tuple[str, int], int] = {}
        batch = messages(events, offsets)
        times: dict[bool, list[float]] = {False: [], True: []}
        for run in range(6):  # alternating, best of three each (a shared machine)
            closing = bool(run % 2)
            worker = PulseWorker(MetricConfig(), RuntimeConfig(data_dir=Path(tmp) / str(run)),
                                 clock=lambda: NOW_MS / 1000)
            if not closing:
                worker._arrived = lambda *_: ()  # type: ignore[method-assign]
            times[closing].append(ingest(worker, batch))
        without, with_closing = min(times[False]), min(times[True])
        result["ingest_cpu_s"] = {"without_closing": round(without, 3),
                                  "with_closing": round(with_closing, 3),
                                  "ratio": round(with_closing / without, 3)}
        started = time.process_time()
        worker.take_snapshot()
        live = time.process_time() - started
        for _ in range(2):
            worker.observe_offsets(dict(offsets), {}, NOW_MS)
        started = time.process_time()
        tasks = worker.close_midnights()
        backfill = time.process_time() - started
        result["live_snapshot_cpu_s"] = round(live, 3)
        result["backfill"] = {"files": len(tasks), "cpu_s": round(backfill, 3),
                              "ratio_to_live_snapshot": round(backfill / live, 1)}
        community = events[0]["community_id"]
        late = {"event_id": "late", "type": "post", "community_id": community,
                "user_id": "someone", "ts": NOW_MS - NOW_MS % 86_400_000 - 60_000,
                "post_id": "late"}
        worker.handle_batch(messages([late], offsets))
        for _ in range(2):
            worker.observe_offsets(dict(offsets), {}, NOW_MS + 1000)
        started = time.process_time()
        tasks = worker.close_midnights()
        rewrite = time.process_time() - started
        result["late_rewrite"] = {"files": len(tasks), "cpu_s": round(rewrite, 4),
                                  "ratio_to_live_snapshot": round(rewrite / live, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200,
         int(sys.argv[2]) if len(sys.argv) > 2 else 20_000)
