"""`make bench` ends with `bench.profile_hot`, which drives `PulseWorker` without Faust; it
broke unnoticed once when the worker started to write its changelog records itself. This
runs it on a small history so such a change fails here, not after a 10-minute bench."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import msgspec

from devkit import generate as gen

NOW = 1_795_000_000_000


def test_profile_hot_runs_on_single_events_and_envelopes(tmp_path: Path) -> None:
    rng = random.Random(3)
    communities = gen.plan(6, 300, rng)
    events = [e for c in communities for e in gen.history(c, NOW, 10, rng)]
    paths = []
    for name, batch_size in (("single", 1), ("envelope", 50)):
        path = tmp_path / f"{name}.msgpack"
        path.write_bytes(msgspec.msgpack.encode(list(gen.to_messages(events, batch_size))))
        paths.append(str(path))
    run = subprocess.run([sys.executable, "-m", "bench.profile_hot", *paths, "1000"],
                         capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    for label in ("single", "envelope"):
        assert result[label]["events"] >= 1000
        assert result[label]["snapshot_rows"] > 0
