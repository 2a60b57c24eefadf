"""`make demo` (`community-pulse demo`) runs end to end from a fresh directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from devkit.devkafka import free_port
from devkit.generate import BAD_MESSAGES


@pytest.mark.kafka
def test_demo_runs_end_to_end_with_its_default_relative_data_dir(tmp_path: Path) -> None:
    # Relative data dir, as the default (data/demo) is: the broker runs in its own folder.
    run = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--communities", "8", "--rate", "50",
         "--duration", "30", "--data-dir", "data/demo", "--metrics-port", str(free_port())],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    final = run.stdout.rsplit("community-pulse demo", 1)[-1]
    exported = re.search(r"communities exported: (\d+)", final)
    assert exported and int(exported.group(1)) > 0, final
    assert re.search(r"where to start \(communities of practice, best first\): 1\. ", final)
    counts = re.search(r"events consumed ([\d,]+)\s+processed ([\d,]+)\s+duplicates ([\d,]+)"
                       r"\s+dead-lettered ([\d,]+)", final)
    assert counts, final
    consumed, processed, duplicates, dead = (int(g.replace(",", "")) for g in counts.groups())
    assert dead == len(BAD_MESSAGES) and processed > 0 and duplicates > 0
    assert consumed >= processed + duplicates + dead  # read at one scrape, mid-batch at most
    data = tmp_path / "data" / "demo"
    with duckdb.connect(str(data / "pulse.duckdb"), read_only=True) as db:
        communities = db.execute("SELECT count(DISTINCT community_id) FROM snapshots").fetchone()
    assert communities is not None and communities[0] == 8
