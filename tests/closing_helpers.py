"""Shared by the closing-row tests: read `daily` views and compare them with replay."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from sinks.parquet import catalogue_sql, read_history, snapshots_glob
from streams.config import MetricConfig
from streams.replay import replay

Key = tuple[str, int, int]  # (community_id, window_days, as_of ms)


def daily_rows(data_dir: Path) -> dict[Key, dict[str, Any]]:
    """The `daily` view of a data dir, by key; fails on a second row for a key. Read as
    `community-pulse sql` reads (read_history: asked again if a file was replaced while
    read, which DuckDB does not expect)."""
    return read_history(data_dir, lambda: _daily_rows(data_dir))


def _daily_rows(data_dir: Path) -> dict[Key, dict[str, Any]]:
    con = duckdb.connect()
    for statement in catalogue_sql(data_dir):
        con.execute(statement)
    raw = con.sql(f"""SELECT community_id, window_days, epoch_ms(as_of) AS t, count(*) AS n
                      FROM read_parquet('{snapshots_glob(data_dir)}') WHERE closing
                      GROUP BY ALL HAVING n > 1""").fetchall()
    assert not raw, f"second closing rows in the files: {raw[:5]}"
    rel = con.sql("SELECT * EXCLUDE (date), epoch_ms(as_of) AS t FROM daily")
    rows = [dict(zip(rel.columns, values, strict=True)) for values in rel.fetchall()]
    return {(r["community_id"], r["window_days"], r["t"]): r for r in rows}


def live_rows(data_dir: Path, first: bool = False) -> dict[Key, dict[str, Any]]:
    """The live rows of a data dir by key (`first`: only those of the oldest as_of)."""
    con = duckdb.connect()
    for statement in catalogue_sql(data_dir):
        con.execute(statement)
    rel = con.sql(f"""SELECT * EXCLUDE (date), epoch_ms(as_of) AS t FROM snapshots
                      WHERE NOT closing {"QUALIFY t = min(t) OVER ()" if first else ""}""")
    rows = [dict(zip(rel.columns, values, strict=True)) for values in rel.fetchall()]
    return {(r["community_id"], r["window_days"], r["t"]): r for r in rows}


def replayed_daily(events: list[dict], out: Path, as_of_ms: int | None = None,
                   every_day: bool = True, live: bool = False) -> dict[Key, dict[str, Any]]:
    """`replay --snapshot-every 1d` (or `--as-of`) of the events: its `daily` rows (or,
    `live`, its rows at a moment that is not a midnight)."""
    source = out.with_suffix(".jsonl")
    source.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in events))
    replay([source], out, MetricConfig(), as_of_ms=as_of_ms,
           every_ms=86_400_000 if every_day else None)
    return live_rows(out) if live else daily_rows(out)


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Rows equal value by value (floats to 1e-9)."""
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9):
                return False
        elif x != y:
            return False
    return True


def differences(got: dict[Key, dict[str, Any]], want: dict[Key, dict[str, Any]]) -> list[str]:
    """What differs between two sets of daily rows (empty: identical)."""
    out = [f"missing {k}" for k in sorted(want.keys() - got.keys())][:5]
    out += [f"extra {k}" for k in sorted(got.keys() - want.keys())][:5]
    for key in sorted(want.keys() & got.keys()):
        if not same(got[key], want[key]):
            diff = {c: (got[key][c], want[key][c]) for c in want[key]
                    if got[key].get(c) != want[key][c]}
            out.append(f"{key}: {diff}")
            if len(out) > 10:
                break
    return out
