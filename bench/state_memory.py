"""(g) State memory of PulseCore: bytes per (community, user) and per retained event id.

Two measurements over the same JSON-lines file:
* tracemalloc: bytes still allocated after decoding + applying everything in chunks
  and dropping the decoded events (so only what the core retains is left);
* a deep-size walk of the core (sys.getsizeof, each object once), split into
  users (dict entries, one int64 array per user, user id strings),
  dedup (day buckets, sets, event id strings), kinds (per-type timestamps), threads.
Prints one JSON line.
Usage: state_memory.py FILE
       state_memory.py --users N [--days D]   (generated: N users in ~N/40 communities)
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from devkit import generate as gen
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


def generated(n_users: int, days: int, now_ms: int) -> Iterator[bytes]:
    """`devkit.generate` history of enough communities that ~n_users users take part."""
    rng = random.Random(5)
    # Members are drawn with replacement from the pool: ~1.6 memberships per user.
    communities = gen.plan(max(1, n_users // 40), n_users, rng)
    encode = msgspec.json.encode
    for community in communities:
        for event in gen.history(community, now_ms, days, rng):
            yield encode(event)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path)
    parser.add_argument("--users", type=int)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args(argv)
    config = MetricConfig()
    now_ms = int(time.time() * 1000)
    messages = (read_messages(args.file) if args.file
                else generated(args.users, args.days, now_ms))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    core = PulseCore(config)
    ingestor = Ingestor(core, {"f": frozenset(EVENT_TYPES)})
    chunk: list[bytes] = []
    for message in messages:
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
    ids = sum(len(ids) for s in core.communities.values()
              for days in (s._seen_by_day, s._frozen_by_day) for ids in days.values())
    logs = [user for s in core.communities.values() for user in s.users.values()]
    memberships = sum(len(user.memberships()) for user in logs)
    logged = sum(len(user) for user in logs)  # memberships + contributions + activity
    threads = sum(len(s.threads) for s in core.communities.values())
    seen = {id(config)}
    # Shared small objects (interned strings, small ints) are counted once, by the first.
    parts = {"users": 0, "dedup": 0, "kinds": 0, "threads": 0, "other": 0}
    seen.add(id(core.communities))
    for cid, state in core.communities.items():
        parts["other"] += sys.getsizeof(cid) + sys.getsizeof(state)
        seen.update((id(cid), id(state), id(state.config)))
        parts["users"] += deep_size(state.users, seen)
        parts["dedup"] += (deep_size(state._seen_by_day, seen)
                           + deep_size(state._frozen_by_day, seen)
                           + deep_size(state._seen, seen) + deep_size(state._frozen, seen))
        parts["kinds"] += deep_size(state.kinds, seen)
        parts["threads"] += deep_size(state.threads, seen)
    parts["other"] += sys.getsizeof(core.communities)
    walked = sum(parts.values())
    # Fixed part of a (community, user): everything in `users` but the logged entries
    # (8 bytes each in the int64 arrays, no int objects).
    entry_bytes = 8 * logged
    print(json.dumps({
        "communities": len(core.communities),
        "users": len({u for state in core.communities.values() for u in state.users}),
        "community_user_pairs": pairs,
        "retained_event_ids": ids,
        "logged_entries": logged,
        "membership_entries": memberships,
        "threads": threads,
        "tracemalloc_bytes": traced,
        "walk_bytes": walked,
        "walk_parts": parts,
        "bytes_per_pair_all_user_state": parts["users"] / pairs,
        "bytes_per_pair_fixed": (parts["users"] - entry_bytes) / pairs,
        "entries_per_pair": logged / pairs,
        "bytes_per_event_id": parts["dedup"] / ids,
        "bytes_total_per_pair": traced / pairs,
        "events_processed": ingestor.stats["f"].processed,
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
