"""How far the network-wide merge suggestions (from member sketches) are from the exact
command, on generated data with families of overlapping communities.

Writes events of `--families` families of `--per-family` communities: a family shares a
pool of users, each community draws 25-100% of its pool plus 10% outsiders, and a share
of its members (5%, 15% or 40%) posts in the last weeks; members join by membership
events. Then, for each sketch size, `community-pulse replay --as-of T` (which writes the
sketch estimate to the `merge_suggestions` table) against `community-pulse suggest-merges
--as-of T` (exact), both as subprocesses, on the same file. Prints one JSON line per
sketch size: pairs found by each, precision and recall of the estimate's pairs, the
absolute error of jaccard and merged_share, the relative error of merged_members and
merged_contributors over the pairs both have, and each command's wall time.
Usage: python -m bench.steering_sketches [--families 8] [--per-family 5] [--pool 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import numpy as np

AS_OF = "2026-11-30T00:00:00Z"
AS_OF_MS = int(datetime.fromisoformat(AS_OF).timestamp() * 1000)
DAY = 86_400_000


def events(families: int, per_family: int, pool: int, rng: random.Random) -> list[dict]:
    out: list[dict] = []
    for f in range(families):
        users = [f"u{f}-{i}" for i in range(pool)]
        for c in range(per_family):
            community = f"fam{f:02d}-c{c}"
            members = set(rng.sample(users, rng.randint(pool // 4, pool)))
            members |= {f"outsider-{rng.randrange(10**6)}" for _ in range(len(members) // 10)}
            share = rng.choice((0.05, 0.15, 0.40))
            for user in sorted(members):
                out.append({"event_id": f"j-{community}-{user}", "type": "join",
                            "community_id": community, "user_id": user,
                            "ts": AS_OF_MS - 60 * DAY})
                if rng.random() < share:
                    post = f"p-{community}-{user}"
                    out.append({"event_id": post, "type": "post", "community_id": community,
                                "user_id": user, "post_id": post,
                                "ts": AS_OF_MS - rng.randrange(1, 27 * DAY)})
    return out


def run(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "streams.cli", *args], check=True, env=env,
                   capture_output=True)
    return time.monotonic() - started


def compare(exact_file: Path, data_dir: Path) -> dict[str, Any]:
    con = duckdb.connect()
    exact = {(r[0], r[1]): r[2:] for r in con.execute(
        "SELECT community_id, candidate_id, jaccard, merged_members, merged_contributors, "
        f"merged_share FROM read_parquet('{exact_file}')").fetchall()}
    estimate = {(r[0], r[1]): r[2:] for r in con.execute(
        "SELECT community_id, candidate_id, jaccard, merged_members, merged_contributors, "
        f"merged_share FROM read_parquet('{data_dir}/merge_suggestions/*/*.parquet')"
    ).fetchall()}
    both = sorted(set(exact) & set(estimate))

    def errors(i: int, relative: bool) -> dict[str, float]:
        e = np.array([abs(estimate[k][i] - exact[k][i]) / (exact[k][i] if relative else 1)
                      for k in both])
        return {"mean": round(float(e.mean()), 4), "p95": round(float(np.percentile(e, 95)), 4),
                "max": round(float(e.max()), 4)} if len(e) else {}

    return {"pairs_exact": len(exact), "pairs_estimate": len(estimate),
            "precision": round(len(both) / len(estimate), 3) if estimate else None,
            "recall": round(len(both) / len(exact), 3) if exact else None,
            "jaccard_abs_error": errors(0, False),
            "merged_members_rel_error": errors(1, True),
            "merged_contributors_rel_error": errors(2, True),
            "merged_share_abs_error": errors(3, False)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", type=int, default=8)
    parser.add_argument("--per-family", type=int, default=5)
    parser.add_argument("--pool", type=int, default=4000)
    parser.add_argument("--sizes", default="256,1024,4096")
    parser.add_argument("--seed", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generated = events(options.families, options.per_family, options.pool,
                           random.Random(options.seed))
        source = work / "events.jsonl"
        source.write_bytes(b"\n".join(map(msgspec.json.encode, generated)) + b"\n")
        # Sketches (and so replay's merge suggestions) need a key (docs/security.md).
        env = {**os.environ, "PULSE_SKETCH_KEY": "bench-sketch-key-0123456789abcdef"}
        exact_file = work / "exact.parquet"
        exact_s = run(["suggest-merges", str(source), "--as-of", AS_OF, "--out",
                       str(exact_file)], env)
        for size in options.sizes.split(","):
            data_dir = work / f"replay-{size}"
            replay_s = run(["replay", str(source), "--data-dir", str(data_dir),
                            "--as-of", AS_OF], {**env, "PULSE_SKETCH_SIZE": size})
            print(json.dumps({"events": len(generated), "communities":
                              options.families * options.per_family, "sketch_size": int(size),
                              **compare(exact_file, data_dir),
                              "suggest_merges_s": round(exact_s, 2),
                              "replay_with_sketches_s": round(replay_s, 2)}), flush=True)


if __name__ == "__main__":
    main()
