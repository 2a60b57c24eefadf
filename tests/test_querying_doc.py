"""Every SQL example of docs/querying.md runs against a replayed history."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest

from devkit import generate as gen
from streams.config import MetricConfig
from streams.replay import parse_time, replay
from streams.steering.goals import Goal

DOC = Path(__file__).parent.parent / "docs" / "querying.md"
END = "2026-11-18T12:00:00Z"


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("history")
    rng = random.Random(1)
    events = [e for c in gen.plan(8, 300, rng) for e in gen.history(c, parse_time(END), 40, rng)]
    source = tmp / "events.jsonl"
    source.write_bytes(b"\n".join(msgspec.json.encode(e) for e in events))
    goals = [Goal("share-up", "medium-0001", "contributor_share", 28, 0.1, 0.9,
                  parse_time(END) - 30 * 86_400_000, parse_time(END) + 30 * 86_400_000,
                  parse_time(END) + 60 * 86_400_000)]  # (a goal that falls behind)
    replay([source], tmp / "data", MetricConfig(), as_of_ms=parse_time(END),
           every_ms=12 * 3_600_000, goals=goals)
    return tmp / "data" / "pulse.duckdb"


def test_every_sql_example_runs_and_the_main_ones_return_rows(catalogue: Path) -> None:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 6
    con = duckdb.connect(str(catalogue), read_only=True)
    ordered = sorted(blocks, key=lambda sql: not sql.lstrip().upper().startswith("CREATE"))
    results: dict[str, Any] = {}
    for sql in ordered:
        results[sql] = con.sql(sql).fetchall() if not sql.lstrip().upper().startswith(
            "CREATE") else con.execute(sql)
    tier_history = next(r for s, r in results.items() if "Tier history" in s or
                        "community_id = 'healthy-0000'" in s)
    assert len(tier_history) >= 20  # one row per day of history
    movers = next(r for s, r in results.items() if "week_ago" in s)
    assert movers and all(len(row) == 4 for row in movers)
    ladder = next(r for s, r in results.items() if "sum(creators)" in s)
    assert len(ladder) >= 4 and all(sum(row[1:]) > 0 for row in ladder)
    goals = next(r for s, r in results.items() if "days_at_target" in s)
    assert goals and all(days >= 20 for _, _, days in goals)
    # `daily`: the midnight rows of the replay, once each, and nothing else.
    assert con.sql("""SELECT count(*) = count(DISTINCT (community_id, window_days, as_of))
                             AND bool_and(closing) AND bool_and(epoch_ms(as_of) % 86400000 = 0)
                      FROM daily""").fetchall() == [(True,)]
    standing = next(r for s, r in results.items() if "AS since" in s)
    assert [row[:3] for row in standing] == [("share-up", "medium-0001", "behind")]
    assert standing[0][4] > 1  # behind for days
    content = next(r for s, r in results.items() if "managed_engagement" in s)
    assert content[-1][1] > 0 and content[-1][2] > 0 and 0 < content[-1][3] <= 1
