"""Peak memory of the worker while poison goes through it (issue 21), this code beside a
baseline commit, in one run.

Each case runs in a fresh child process that builds a `PulseWorker` (no broker: the
batch handling of `prepare`, with dead letters built as for the topic) and feeds it one
batch of 2,000 good messages, then the poison; it reports its peak RSS (`VmHWM`) before
and after the poison, and how long the poison batch took.

Cases:
* `envelope`: one message holding a 200,000-element envelope of junk (`[0,0,...]`);
* `keys`: 2,000 messages with 100 kB keys (rejected: no community id is that long),
  in batches of 200.

Usage: poison_memory.py [--baseline REV]   (default 82f929c; a temporary git worktree)
Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOW_S = time.time()
BATCH = 200


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _batch(items: list[tuple[bytes, bytes]], first: int) -> list[Any]:
    return [SimpleNamespace(message=SimpleNamespace(
        topic="community.posts", value=value, key=key, partition=0, offset=first + i,
        timestamp=NOW_S)) for i, (value, key) in enumerate(items)]


def child(case: str, code: Path) -> dict[str, float]:
    """Runs the case on the code in `code` (first on sys.path)."""
    sys.path.insert(0, str(code))
    import msgspec

    import streams
    assert Path(streams.__file__).is_relative_to(code), streams.__file__

    from streams.config import MetricConfig, RuntimeConfig
    from streams.worker import PulseWorker

    worker = PulseWorker(MetricConfig(), RuntimeConfig(data_dir=Path(tempfile.mkdtemp())),
                         clock=lambda: NOW_S)
    worker.dead_letter_topic = "community.dead-letter"
    worker.partitions_of = lambda topic: 4  # the wrong-partition check runs, as on Kafka
    now_ms = int(NOW_S * 1000)

    def post(i: int) -> bytes:
        return msgspec.json.encode({"event_id": f"e{i}", "type": "post", "community_id": "c",
                                    "user_id": f"u{i % 50}", "ts": now_ms - i, "post_id": f"p{i}"})

    from kafka.partitioner.default import murmur2
    good_key = next(f"c{i}".encode() for i in range(100)  # (a key on partition 0 of 4)
                    if (murmur2(f"c{i}".encode()) & 0x7FFFFFFF) % 4 == 0)
    worker.handle_batch(_batch([(post(i).replace(b'"c"', b'"' + good_key + b'"'), good_key)
                                for i in range(2000)], 0))
    before = peak_rss_mb()
    started = time.perf_counter()
    if case == "envelope":
        worker.prepare(_batch([(b"[" + b",".join([b"0"] * 200_000) + b"]", good_key)], 2000))
    else:
        for start in range(0, 2000, BATCH):
            worker.prepare(_batch([(post(i), bytes([i % 251]) * 100_000 + str(i).encode())
                                   for i in range(start, start + BATCH)], 2000 + start))
    return {"before_mb": before, "peak_mb": peak_rss_mb(),
            "seconds": time.perf_counter() - started}


def run_case(code: Path, case: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-I", __file__, "--child", case, "--code", str(code)],
                         check=True, capture_output=True, text=True, cwd=code)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="82f929c")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.code)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                        str(baseline), args.baseline], check=True)
        try:
            results = {(name, case): run_case(code, case)
                       for case in ("envelope", "keys")
                       for name, code in (("baseline", baseline), ("this", ROOT))}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(baseline)], check=True)
    print("| case | code | peak RSS before | peak RSS after | growth | seconds |\n"
          "| --- | --- | ---: | ---: | ---: | ---: |")
    for (name, case), r in results.items():
        label = args.baseline if name == "baseline" else "this"
        print(f"| {case} | {label} | {r['before_mb']:.0f} MB | {r['peak_mb']:.0f} MB | "
              f"{r['peak_mb'] - r['before_mb']:.0f} MB | {r['seconds']:.2f} |")
    print(json.dumps({f"{name}/{case}": r for (name, case), r in results.items()}))


if __name__ == "__main__":
    main()
