"""(g) State memory of PulseCore: bytes per (community, user) and per retained event id.

Two measurements over the same JSON-lines file:
* tracemalloc: bytes still allocated after decoding + applying everything in chunks
  and dropping the decoded events (so only what the core retains is left);
* a deep-size walk of the core (sys.getsizeof, each object once), split into
  users (dict entries, _User, both sorted logs and their packed ints, user id strings),
  dedup (day buckets, sets, event id strings), kinds (per-type timestamps), threads.
Prints one JSON line.
Usage: state_memory.py FILE
"""

from __future__ import annotations

import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from schemas.events import EVENT_TYPES
from streams.config import MetricConfig
from streams.core import PulseCore
from streams.pipeline import Ingestor
from streams.replay import read_messages


def deep_size(obj: Any, seen: set[int]) -> int:
    """Bytes of obj and everything it references that is not already in `seen`."""
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or o is None or isinstance(o, bool):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif hasattr(o, "__slots__"):
            for cls in type(o).__mro__:
                for name in getattr(cls, "__slots__", ()):
                    if hasattr(o, name):
                        stack.append(getattr(o, name))
    return total


def main(path: str) -> None:
    config = MetricConfig()
    now_ms = int(time.time() * 1000)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    core = PulseCore(config)
    ingestor = Ingestor(core, {"f": frozenset(EVENT_TYPES)})
    chunk: list[bytes] = []
    for message in read_messages(Path(path)):
        chunk.append(message)
        if len(chunk) == 20_000:
            for m in chunk:
                ingestor.ingest("f", m, None, now_ms)
            chunk = []
    for m in chunk:
        ingestor.ingest("f", m, None, now_ms)
    del chunk
    core.expire(now_ms - config.retention_ms)  # what the worker's snapshot timer does
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    pairs = sum(len(s.users) for s in core.communities.values())
    ids = sum(len(ids) for s in core.communities.values() for ids in s._seen_by_day.values())
    activity = sum(len(u.activity) for s in core.communities.values() for u in s.users.values())
    memberships = sum(len(u.memberships) for s in core.communities.values()
                      for u in s.users.values() if u.memberships is not None)
    threads = sum(len(s.threads) for s in core.communities.values())
    seen = {id(config)}
    # Shared small objects (interned strings, small ints) are counted once, by the first.
    parts = {"users": 0, "dedup": 0, "kinds": 0, "threads": 0, "other": 0}
    seen.add(id(core.communities))
    for cid, state in core.communities.items():
        parts["other"] += sys.getsizeof(cid) + sys.getsizeof(state)
        seen.update((id(cid), id(state), id(state.config)))
        parts["users"] += deep_size(state.users, seen)
        parts["dedup"] += deep_size(state._seen_by_day, seen)
        parts["kinds"] += deep_size(state.kinds, seen)
        parts["threads"] += deep_size(state.threads, seen)
    parts["other"] += sys.getsizeof(core.communities)
    walked = sum(parts.values())
    # Fixed part of a (community, user): everything in `users` but the logged timestamps
    # (int64 arrays: 8 bytes per entry, no int objects).
    activity_ints = 8 * sum(
        len(log) for state in core.communities.values() for user in state.users.values()
        for log in (user.activity, user.contributions, user.memberships) if log is not None)
    print(json.dumps({
        "communities": len(core.communities),
        "community_user_pairs": pairs,
        "retained_event_ids": ids,
        "activity_entries": activity,
        "membership_entries": memberships,
        "threads": threads,
        "tracemalloc_bytes": traced,
        "walk_bytes": walked,
        "walk_parts": parts,
        "bytes_per_pair_all_user_state": parts["users"] / pairs,
        "bytes_per_pair_fixed": (parts["users"] - activity_ints) / pairs,
        "bytes_per_activity_entry": activity_ints / max(1, activity + memberships + sum(
            len(u.contributions) for s in core.communities.values() for u in s.users.values()
            if u.contributions is not None)),
        "bytes_per_event_id": parts["dedup"] / ids,
        "bytes_total_per_pair": traced / pairs,
        "events_processed": ingestor.stats["f"].processed,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
