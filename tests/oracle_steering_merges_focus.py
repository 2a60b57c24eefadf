"""An independent DuckDB SQL oracle for merge suggestions, where to start and open
follow-ups (SPEC 5), written from the SPEC like `tests/oracle.py` and sharing nothing
with `streams/`: members and contributors, overlaps, ranks and follow-ups are SQL over
the deduplicated raw events (first occurrence of an `event_id` in a community wins).

Interpretations (docs/steering.md says the same): members and contributors as in SPEC 2
(contributors: members who posted or replied in the window); a community with no members
is tier `low`; open follow-ups count threads with a post or reply in the window, and look
at posts and replies back to `t - lookback`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from schemas.events import Event
from streams.config import MetricConfig

try:
    from tests.oracle import _events_table
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from oracle import _events_table  # type: ignore[no-redef]

DAY = 86_400_000

_MEMBERS = """
CREATE TABLE ev AS SELECT * EXCLUDE (seq) FROM raw_arrow
    QUALIFY row_number() OVER (PARTITION BY community_id, event_id ORDER BY seq) = 1;
CREATE TABLE members AS
WITH users_c AS (SELECT DISTINCT community_id, user_id FROM ev),
last_mem AS (
    SELECT community_id, user_id, type AS mtype, ts AS mts FROM ev
    WHERE type IN ('join', 'leave') AND ts <= {t}
    QUALIFY row_number() OVER (PARTITION BY community_id, user_id
                               ORDER BY ts DESC, (type = 'leave') DESC) = 1),
last_act AS (
    SELECT community_id, user_id, max(ts) AS lats FROM ev
    WHERE type IN ('post', 'reply', 'like', 'view') AND ts <= {t}
    GROUP BY ALL)
SELECT u.community_id, u.user_id,
    EXISTS (SELECT 1 FROM ev c WHERE c.community_id = u.community_id
            AND c.user_id = u.user_id AND c.type IN ('post', 'reply')
            AND c.ts > {t} - {w} AND c.ts <= {t}) AS contributor
FROM users_c u
LEFT JOIN last_mem USING (community_id, user_id)
LEFT JOIN last_act USING (community_id, user_id)
WHERE mtype = 'join'
   OR (lats > {t} - {horizon} AND NOT coalesce(mtype = 'leave' AND mts > lats, false));
CREATE TABLE sizes AS
SELECT c.community_id,
    count(m.user_id) AS n_members,
    count(m.user_id) FILTER (m.contributor) AS n_contributors
FROM (SELECT DISTINCT community_id FROM ev) c
LEFT JOIN members m USING (community_id)
GROUP BY ALL;
"""

_MERGES = """
WITH tiered AS (
    SELECT *, CASE WHEN n_members = 0 THEN 0.0
                   ELSE n_contributors::DOUBLE / n_members END AS share
    FROM sizes),
pairs AS (
    SELECT a.community_id AS community_id, b.community_id AS candidate_id,
           count(*) AS shared_members
    FROM members a JOIN members b
      ON a.user_id = b.user_id AND a.community_id <> b.community_id
    GROUP BY ALL),
merged AS (
    SELECT p.*, sa.n_members + sb.n_members - p.shared_members AS merged_members,
        (SELECT count(DISTINCT m.user_id) FROM members m
         WHERE m.contributor AND m.community_id IN (p.community_id, p.candidate_id))
            AS merged_contributors,
        sa.share AS share_a
    FROM pairs p
    JOIN tiered sa ON sa.community_id = p.community_id
    JOIN tiered sb ON sb.community_id = p.candidate_id),
scored AS (
    SELECT community_id, candidate_id,
        shared_members::DOUBLE / merged_members AS jaccard, shared_members, merged_members,
        merged_contributors, merged_contributors::DOUBLE / merged_members AS merged_share
    FROM merged
    WHERE share_a < {high})
SELECT *, CASE WHEN merged_share < {medium} THEN 'low'
               WHEN merged_share < {high} THEN 'medium' ELSE 'high' END AS merged_tier
FROM scored
WHERE jaccard >= {min_overlap}
QUALIFY row_number() OVER (PARTITION BY community_id
                           ORDER BY jaccard DESC, merged_share DESC, candidate_id) <= {top}
ORDER BY community_id, jaccard DESC, merged_share DESC, candidate_id
"""


def _connect(events: Sequence[Event]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config={"threads": 1})
    con.register("raw_arrow", _events_table(events))
    return con


def _bigint(value: int) -> str:
    return f"CAST({int(value)} AS BIGINT)"


def oracle_merges(events: Sequence[Event], t: int, window_days: int, config: MetricConfig,
                  min_overlap: float, top: int) -> list[dict[str, Any]]:
    """merge_suggestions rows (without as_of and window_days), ranked per community."""
    con = _connect(events)
    try:
        con.execute(_MEMBERS.format(t=_bigint(t), w=_bigint(window_days * DAY),
                                    horizon=_bigint(config.membership_horizon_days * DAY)))
        cursor = con.execute(_MERGES.format(
            high=repr(float(config.tier_high_share)),
            medium=repr(float(config.tier_medium_share)),
            min_overlap=repr(float(min_overlap)), top=int(top)))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


def oracle_open_followups(events: Sequence[Event], managers: Sequence[tuple[str, str, str]],
                          t: int, window_days: int, lookback_ms: int) -> dict[str, int]:
    """Open follow-ups per manager name; `managers`: (name, user_id, community_id) rows,
    one per followed community."""
    con = _connect(events)
    try:
        con.execute("CREATE TABLE ev AS SELECT * EXCLUDE (seq) FROM raw_arrow QUALIFY "
                    "row_number() OVER (PARTITION BY community_id, event_id ORDER BY seq) = 1")
        con.register("mgr", pa.table({
            "name": [m[0] for m in managers], "user_id": [m[1] for m in managers],
            "community_id": [m[2] for m in managers]}))
        rows = con.execute(f"""
            WITH writes AS (
                SELECT community_id, post_id, user_id, ts FROM ev
                WHERE type IN ('post', 'reply') AND ts <= {_bigint(t)}
                  AND ts > {_bigint(t)} - {_bigint(lookback_ms)}),
            active AS (
                SELECT DISTINCT community_id, post_id FROM writes
                WHERE ts > {_bigint(t)} - {_bigint(window_days * DAY)}),
            last_own AS (
                SELECT m.name, m.user_id, w.community_id, w.post_id, max(w.ts) AS last_ts
                FROM mgr m JOIN writes w
                  ON w.community_id = m.community_id AND w.user_id = m.user_id
                GROUP BY ALL)
            SELECT m.name, count(l.post_id) AS open_followups
            FROM (SELECT DISTINCT name FROM mgr) m
            LEFT JOIN last_own l ON l.name = m.name
                AND EXISTS (SELECT 1 FROM active a
                            WHERE a.community_id = l.community_id AND a.post_id = l.post_id)
                AND EXISTS (SELECT 1 FROM writes o
                            WHERE o.community_id = l.community_id AND o.post_id = l.post_id
                              AND o.user_id <> l.user_id AND o.ts > l.last_ts)
            GROUP BY m.name""").fetchall()
        return {name: n for name, n in rows}
    finally:
        con.close()


def oracle_focus(snapshot_rows: Sequence[dict[str, Any]], window_days: int,
                 min_members: int) -> list[str]:
    """Candidate community ids, best first, from snapshot rows (dicts, as oracle.py's)."""
    con = duckdb.connect(":memory:")
    try:
        con.register("rows", pa.Table.from_pylist(list(snapshot_rows)) if snapshot_rows
                     else pa.table({"community_id": pa.array([], pa.string())}))
        if not snapshot_rows:
            return []
        return [r[0] for r in con.execute(f"""
            SELECT community_id FROM rows
            WHERE window_days = {int(window_days)} AND tier = 'high'
              AND members >= {int(min_members)} AND NOT stagnating
            ORDER BY contributors DESC, round(sustainability, 9) DESC, community_id
            """).fetchall()]
    finally:
        con.close()
