"""Memory of the sink queue at its bound (docs/reliability.md): the Parquet sink fails (a
disk outage) while snapshots of N communities keep coming; the queue keeps the newest
rows up to `sink_max_pending_mib` and drops the oldest. Measured: the process's RSS
growth and, with --trace, what the queued rows hold (tracemalloc: allocated after minus
before, the state built first; three times slower), against the queue's own estimate.
Prints one JSON line.
Usage: sink_queue_memory.py [--communities 10000] [--mib 256] [--snapshots 12] [--trace]
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import tracemalloc
from collections.abc import Sequence

from schemas.events import Event
from sinks.parquet import ROW_BYTES, SinkQueue
from streams.config import DAY_MS, MetricConfig
from streams.core import PulseCore, SnapshotRow

T = 1_795_000_000_000


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024


def core_of(communities: int) -> PulseCore:
    """Communities of 300 members (past the small ints CPython shares, as large ones
    are), with posts and replies."""
    core = PulseCore(MetricConfig())
    for c in range(communities):
        cid = f"community-{c:05d}"
        core.apply([Event(f"j{c}-{u}", "join", cid, f"u{u}", T - DAY_MS * (1 + u % 20))
                    for u in range(300)] + [
            event for i in range(5) for event in (
                Event(f"p{c}-{i}", "post", cid, f"u{i}", T - 3_600_000 * (i + 1),
                      post_id=f"p{c}-{i}"),
                Event(f"r{c}-{i}", "reply", cid, f"u{i + 1}", T - 1_800_000 * (i + 1),
                      post_id=f"p{c}-{i}", reply_id=f"r{c}-{i}", parent_id=f"p{c}-{i}",
                      parent_type="post"))])
    return core


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--communities", type=int, default=10_000)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--snapshots", type=int, default=12)
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    core = core_of(args.communities)
    core.snapshot(T)
    gc.collect()

    def disk_full(rows: Sequence[SnapshotRow]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    dropped: list[int] = []
    queue = SinkQueue(disk_full, on_drop=dropped.append, max_bytes=args.mib << 20,
                      first_backoff_s=3600)
    rss_before = rss_mib()
    if args.trace:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(args.snapshots):
        attempt = queue.submit(core.snapshot(T + i * 10_000))
        if attempt is not None:
            attempt.result()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    traced = {"held_mib": round(held / 2**20, 1),
              "held_bytes_per_row": round(held / queue.pending_rows)} if args.trace else {}
    print(json.dumps({
        "communities": args.communities, "snapshots": args.snapshots,
        "bound_mib": args.mib, "row_bytes_estimate": ROW_BYTES,
        "pending_rows": queue.pending_rows, "dropped_rows": sum(dropped),
        "estimate_mib": round(queue.pending_bytes / 2**20, 1), **traced,
        "rss_growth_mib": round(rss_mib() - rss_before, 1)}))


if __name__ == "__main__":
    main()
