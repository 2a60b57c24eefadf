"""(f) Replay throughput vs a DuckDB SQL snapshot over the same JSON-lines file.

`replay`: streams.replay.replay (decode, validate, sort, apply, one snapshot, Parquet).
`duckdb`: read_json -> dedup by event_id -> per community x window (7d, 28d): members
(last membership event a join, or activity within the 90-day horizon and no later
leave), primary role counts on the ladder, contributors, tier, events per type. That is
a subset of the snapshot (no listening, retention, continuity or stagnation), so the
comparison favours DuckDB.
Prints one JSON line: {"mode", "seconds", "cpu_seconds", "events", "rows"}.
Usage: replay_duckdb.py replay|duckdb|duckdb1 FILE OUT_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DUCKDB_SQL = """
WITH ev AS (
    SELECT DISTINCT ON (community_id, event_id) *
    FROM read_json(?, format = 'newline_delimited', columns = {
        event_id: 'VARCHAR', type: 'VARCHAR', community_id: 'VARCHAR',
        user_id: 'VARCHAR', ts: 'BIGINT', parent_type: 'VARCHAR'})
),
t AS (SELECT max(ts) AS t FROM ev),
act AS (
    SELECT community_id, user_id, ts,
           CASE type WHEN 'post' THEN 0
                     WHEN 'reply' THEN CASE WHEN parent_type = 'reply' THEN 1 ELSE 2 END
                     WHEN 'like' THEN 3 ELSE 4 END AS cat, type
    FROM ev, t WHERE type NOT IN ('join', 'leave') AND ts <= t.t
),
mem AS (
    SELECT community_id, user_id, arg_max(type, ts * 2 + (type = 'leave')::INT) AS kind,
           max(ts) AS mts
    FROM ev, t WHERE type IN ('join', 'leave') AND ts <= t.t GROUP BY ALL
),
last_act AS (SELECT community_id, user_id, max(ts) AS ats FROM act GROUP BY ALL),
members AS (
    SELECT community_id, user_id
    FROM mem FULL JOIN last_act USING (community_id, user_id), t
    WHERE kind = 'join'
       OR (ats > t.t - 90 * 86400000::BIGINT AND (mts IS NULL OR mts <= ats))
),
w AS (SELECT unnest([7, 28]) AS days),
roles AS (
    SELECT a.community_id, w.days, a.user_id, min(a.cat) AS role
    FROM act a, w, t WHERE a.ts > t.t - w.days::BIGINT * 86400000
    GROUP BY ALL
),
role_counts AS (
    SELECT m.community_id, w.days,
           count(*) AS members,
           count(*) FILTER (WHERE r.role = 0) AS creators,
           count(*) FILTER (WHERE r.role = 1) AS conversationalists,
           count(*) FILTER (WHERE r.role = 2) AS critics,
           count(*) FILTER (WHERE r.role = 3) AS joiners,
           count(*) FILTER (WHERE r.role = 4) AS spectators,
           count(*) FILTER (WHERE r.role <= 2) AS contributors
    FROM members m CROSS JOIN w
    LEFT JOIN roles r ON r.community_id = m.community_id AND r.user_id = m.user_id
                     AND r.days = w.days
    GROUP BY ALL
),
type_counts AS (
    SELECT a.community_id, w.days,
           count(*) FILTER (WHERE type = 'post') AS posts,
           count(*) FILTER (WHERE type = 'reply') AS replies,
           count(*) FILTER (WHERE type = 'like') AS likes,
           count(*) FILTER (WHERE type = 'view') AS views
    FROM act a, w, t WHERE a.ts > t.t - w.days::BIGINT * 86400000 GROUP BY ALL
)
SELECT rc.*, coalesce(tc.posts, 0) AS posts, coalesce(tc.replies, 0) AS replies,
       coalesce(tc.likes, 0) AS likes, coalesce(tc.views, 0) AS views,
       CASE WHEN rc.contributors / rc.members < 0.15 THEN 'low'
            WHEN rc.contributors / rc.members < 0.30 THEN 'medium' ELSE 'high' END AS tier
FROM role_counts rc LEFT JOIN type_counts tc USING (community_id, days)
ORDER BY community_id, days
"""


def main(mode: str, path: str, out_dir: str) -> None:
    started, cpu = time.perf_counter(), time.process_time()
    if mode == "replay":
        from streams.config import MetricConfig
        from streams.replay import replay

        result = replay([Path(path)], out_dir, MetricConfig())
        events, rows = result.stats.consumed, result.rows_written
    else:
        import duckdb

        con = duckdb.connect()
        if mode == "duckdb1":
            con.execute("SET threads = 1")
        out = con.execute(DUCKDB_SQL, [path]).fetchall()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        events = con.execute(
            "SELECT count(*) FROM read_json(?, format = 'newline_delimited', "
            "columns = {event_id: 'VARCHAR'})", [path]).fetchone()[0]  # type: ignore[index]
        rows = len(out)
        print(json.dumps({"mode": mode, "seconds": seconds, "cpu_seconds": cpu_seconds,
                          "events": events, "rows": rows}))
        return
    print(json.dumps({"mode": mode, "seconds": time.perf_counter() - started,
                      "cpu_seconds": time.process_time() - cpu, "events": events,
                      "rows": rows}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
