"""What the decoder's checks cost (issue 21: UTF-8, nesting depth, fields named twice),
this code beside a baseline commit, interleaved in one process, per message kind.

Cases: one reply event a message (the worker's single events), an envelope of 2,000
replies (a batching producer), and 2,000 JSON lines decoded at once (`decode_lines`,
replay's path for what DuckDB leaves over). Each round times both codes on the same
bytes, alternately; the ratio is the median of the per-round ratios.

Usage: decode_cost.py [--baseline REV] [--rounds N]   (default 82f929c; a git worktree)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_795_000_000_000


def load_events_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def reply(i: int) -> dict[str, Any]:
    return {"event_id": f"e{i}-abcdef-1234", "type": "reply", "community_id": "c1",
            "user_id": f"user{i % 5000}@corp.example", "ts": NOW - i * 1000,
            "post_id": f"p{i % 9000}", "reply_id": f"r{i}", "parent_id": f"p{i % 9000}",
            "parent_type": "post"}


def per_call(decode: Callable[[ModuleType], object], module: ModuleType, repeat: int
             ) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        decode(module)
    return (time.perf_counter() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="82f929c")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "events.py"
        baseline.write_bytes(subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{args.baseline}:schemas/events.py"],
            check=True, capture_output=True).stdout)
        old = load_events_module(baseline, "baseline_events")
    new = load_events_module(ROOT / "schemas/events.py", "this_events")
    single = json.dumps(reply(1)).encode()
    envelope = json.dumps([reply(i) for i in range(2000)]).encode()
    lines = [json.dumps(reply(i)).encode() for i in range(2000)]
    replies = frozenset({"reply"})
    cases: dict[str, tuple[Callable[[ModuleType], object], int]] = {
        "one event a message": (lambda m: m.decode_message(single, replies, NOW, b"c1"), 20_000),
        "envelope of 2,000": (lambda m: m.decode_message(envelope, replies, NOW, b"c1"), 100),
        "2,000 lines at once": (lambda m: m.decode_lines(lines, replies, NOW), 100),
    }
    print(f"| message | {args.baseline} | this | ratio (median of {args.rounds} rounds) |\n"
          "| --- | ---: | ---: | ---: |")
    for name, (decode, repeat) in cases.items():
        pairs = []
        for _ in range(args.rounds):
            before = per_call(decode, old, repeat)
            after = per_call(decode, new, repeat)
            pairs.append((before, after))
        ratio = statistics.median(after / before for before, after in pairs)
        print(f"| {name} | {statistics.median(b for b, _ in pairs) * 1e6:,.1f} µs | "
              f"{statistics.median(a for _, a in pairs) * 1e6:,.1f} µs | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
