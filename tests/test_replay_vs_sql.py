"""The replay's snapshot agrees, row by row and column by column, with an independent
implementation of the same SPEC definitions in DuckDB SQL (`bench.replay_duckdb`)."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec

from bench.replay_duckdb import compare, main
from devkit import generate as gen

NOW_MS = 1_795_000_000_000


def test_replay_and_the_sql_snapshot_agree_on_every_value(tmp_path: Path) -> None:
    rng = random.Random(11)
    events = [e for c in gen.plan(24, 600, rng) for e in gen.history(c, NOW_MS, 70, rng)]
    events = gen.messy_order(events, rng)  # late, out of order, ~1% duplicated
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in events))

    main("replay", str(path), str(tmp_path / "replay"))
    main("duckdb", str(path), str(tmp_path / "duckdb"))
    result = compare(str(tmp_path / "replay"), str(tmp_path / "duckdb"))

    assert result["rows_replay"] == result["rows_duckdb"] == 2 * 24
    assert result["rows_only_in_duckdb"] == 0
    assert result["differing_values"] == {}, result["examples"]
