"""(f) Replay throughput vs a DuckDB SQL computation of the same snapshot.

`replay`: streams.replay.replay (validate, sort, apply in bulk, one snapshot at the newest
event time, Parquet), with its default partition processes (one per CPU; `replay1`:
one process); its CPU seconds include theirs.
`duckdb` / `duckdb1` (one thread): `snapshot_sql`, the same snapshot (every SPEC column,
both windows) as one query: read_json, dedup by event_id, members, roles, counts,
listening, retention, continuity, sustainability, stagnation; written to Parquet too.
`compare`: every row and column of the two outputs side by side (floats to 1e-9).
Prints one JSON line.
Usage: replay_duckdb.py replay|replay1|duckdb|duckdb1 FILE OUT_DIR
       replay_duckdb.py compare REPLAY_OUT_DIR DUCKDB_OUT_DIR
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from streams.config import DAY_MS, HOUR_MS, MetricConfig

COLUMNS = (
    "members", "creators", "conversationalists", "critics", "joiners", "spectators",
    "inactives", "contributors", "contributor_share", "tier", "posts", "replies", "likes",
    "views", "posts_eligible", "posts_answered_in_sla", "unanswered_posts",
    "median_first_reply_seconds", "retention", "continuity", "responsiveness",
    "participation", "reciprocity", "sustainability", "stagnating",
)


def snapshot_sql(config: MetricConfig) -> str:
    """The whole snapshot (SPEC sections 2-3, every column) at t = the newest event time,
    as one DuckDB query over a JSON-lines file (parameter 1): the batch limit, and an
    independent implementation to check the replay's rows against. It covers what the
    bench needs: integer `ts`, equal sustainability weights, one SLA for all communities,
    and duplicates that repeat an event whole."""
    day = DAY_MS
    sla = int(config.sla_hours * HOUR_MS)
    windows = ", ".join(str(w) for w in config.windows_days)
    quiet, span = config.stagnation_quiet_days * day, config.stagnation_compare_days * day
    return f"""
WITH ev AS (
    SELECT DISTINCT ON (community_id, event_id) *
    FROM read_json(?, format = 'newline_delimited', columns = {{
        event_id: 'VARCHAR', type: 'VARCHAR', community_id: 'VARCHAR', user_id: 'VARCHAR',
        ts: 'BIGINT', post_id: 'VARCHAR', parent_type: 'VARCHAR', target_id: 'VARCHAR',
        target_type: 'VARCHAR'}})
),
t AS (SELECT max(ts) AS t FROM ev),
e AS (SELECT ev.* FROM ev, t WHERE ts <= t.t),
w AS (SELECT unnest([{windows}])::BIGINT AS days),
communities AS (SELECT DISTINCT community_id FROM ev),
act AS (
    SELECT community_id, user_id, ts, type,
           CASE type WHEN 'post' THEN 0
                     WHEN 'reply' THEN CASE WHEN parent_type = 'reply' THEN 1 ELSE 2 END
                     WHEN 'like' THEN 3 ELSE 4 END AS cat
    FROM e WHERE type NOT IN ('join', 'leave')
),
mem AS (
    SELECT community_id, user_id, arg_max(type, ts * 2 + (type = 'leave')::INT) AS kind,
           max(ts) AS mts
    FROM e WHERE type IN ('join', 'leave') GROUP BY ALL
),
last_act AS (SELECT community_id, user_id, max(ts) AS ats FROM act GROUP BY ALL),
members AS (
    SELECT community_id, user_id
    FROM mem FULL JOIN last_act USING (community_id, user_id), t
    WHERE kind = 'join' OR (ats > t.t - {config.membership_horizon_days * day}
                            AND (mts IS NULL OR mts <= ats))
),
roles AS (
    SELECT a.community_id, w.days, a.user_id, min(a.cat) AS role
    FROM act a, w, t WHERE a.ts > t.t - w.days * {day} GROUP BY ALL
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
    FROM act a, w, t WHERE a.ts > t.t - w.days * {day} GROUP BY ALL
),
posts AS (
    SELECT DISTINCT ON (community_id, post_id) community_id, post_id, user_id AS author,
           ts AS post_ts
    FROM e WHERE type = 'post' ORDER BY community_id, post_id, ts DESC
),
first_reply AS (  -- earliest reply in the thread by someone other than the author
    SELECT p.community_id, p.post_id, min(r.ts) AS first_ts
    FROM posts p JOIN e r ON r.type = 'reply' AND r.community_id = p.community_id
                         AND r.post_id = p.post_id AND r.user_id <> p.author
    GROUP BY ALL
),
liked AS (
    SELECT DISTINCT p.community_id, p.post_id
    FROM posts p JOIN e l ON l.type = 'like' AND l.target_type = 'post'
                         AND l.community_id = p.community_id AND l.target_id = p.post_id
                         AND l.user_id <> p.author
),
listening AS (
    SELECT p.community_id, w.days,
           count(*) AS n_posts,
           count(*) FILTER (WHERE f.first_ts IS NOT NULL OR l.post_id IS NOT NULL) AS responded,
           count(*) FILTER (WHERE p.post_ts <= t.t - {sla}) AS eligible,
           count(*) FILTER (WHERE p.post_ts <= t.t - {sla}
                            AND f.first_ts - p.post_ts <= {sla}) AS answered,
           count(*) FILTER (WHERE p.post_ts <= t.t - {sla} AND f.first_ts IS NULL) AS unanswered,
           quantile_cont(f.first_ts - p.post_ts, 0.5) / 1000 AS median_s
    FROM posts p CROSS JOIN w CROSS JOIN t
    LEFT JOIN first_reply f USING (community_id, post_id)
    LEFT JOIN liked l USING (community_id, post_id)
    WHERE p.post_ts > t.t - w.days * {day}
    GROUP BY ALL
),
contrib AS (SELECT community_id, user_id, ts FROM e WHERE type IN ('post', 'reply')),
user_windows AS (
    SELECT c.community_id, w.days, c.user_id,
           bool_or(c.ts <= t.t - w.days * {day}) AS before,
           bool_or(c.ts > t.t - w.days * {day}) AS now
    FROM contrib c, w, t WHERE c.ts > t.t - 2 * w.days * {day} GROUP BY ALL
),
retention AS (
    SELECT community_id, days, count(*) FILTER (WHERE before) AS before_n,
           count(*) FILTER (WHERE before AND now) AS kept
    FROM user_windows GROUP BY ALL
),
continuity AS (
    SELECT community_id, days, count(DISTINCT (t.t - ts) // {day}) AS periods
    FROM e, w, t WHERE type = 'reply' AND ts > t.t - days * {day} GROUP BY ALL
),
stagnation AS (
    SELECT community_id,
           count(*) FILTER (WHERE ts > t.t - {quiet}) AS quiet_n,
           count(DISTINCT user_id) FILTER (WHERE ts > t.t - {span}) AS recent_users,
           count(DISTINCT user_id) FILTER (WHERE ts > t.t - {2 * span}
                                            AND ts <= t.t - {span}) AS before_users
    FROM contrib, t GROUP BY ALL
),
rows AS (
    SELECT c.community_id, w.days AS window_days,
           coalesce(rc.members, 0) AS members, coalesce(rc.creators, 0) AS creators,
           coalesce(rc.conversationalists, 0) AS conversationalists,
           coalesce(rc.critics, 0) AS critics, coalesce(rc.joiners, 0) AS joiners,
           coalesce(rc.spectators, 0) AS spectators,
           coalesce(rc.members - rc.creators - rc.conversationalists - rc.critics
                    - rc.joiners - rc.spectators, 0) AS inactives,
           coalesce(rc.contributors, 0) AS contributors,
           CASE WHEN rc.members > 0 THEN rc.contributors / rc.members ELSE 0 END AS share,
           coalesce(tc.posts, 0) AS posts, coalesce(tc.replies, 0) AS replies,
           coalesce(tc.likes, 0) AS likes, coalesce(tc.views, 0) AS views,
           coalesce(li.eligible, 0) AS posts_eligible,
           coalesce(li.answered, 0) AS posts_answered_in_sla,
           coalesce(li.unanswered, 0) AS unanswered_posts,
           li.median_s AS median_first_reply_seconds,
           CASE WHEN re.before_n > 0 THEN re.kept / re.before_n END AS retention,
           coalesce(co.periods, 0) / w.days AS continuity,
           CASE WHEN li.eligible > 0 THEN li.answered / li.eligible END AS responsiveness,
           li.responded / li.n_posts AS reciprocity,
           coalesce(rc.members, 0) > 0 AND (coalesce(st.quiet_n, 0) = 0
               OR coalesce(st.recent_users, 0)
                  < {config.stagnation_drop_ratio} * coalesce(st.before_users, 0)) AS stagnating
    FROM communities c CROSS JOIN w
    LEFT JOIN role_counts rc ON rc.community_id = c.community_id AND rc.days = w.days
    LEFT JOIN type_counts tc ON tc.community_id = c.community_id AND tc.days = w.days
    LEFT JOIN listening li ON li.community_id = c.community_id AND li.days = w.days
    LEFT JOIN retention re ON re.community_id = c.community_id AND re.days = w.days
    LEFT JOIN continuity co ON co.community_id = c.community_id AND co.days = w.days
    LEFT JOIN stagnation st ON st.community_id = c.community_id
),
scored AS (
    SELECT *,
           CASE WHEN members > 0 THEN least(1.0, share / {config.tier_high_share}) END
               AS participation
    FROM rows
)
SELECT community_id, window_days, members, creators, conversationalists, critics, joiners,
       spectators, inactives, contributors, share AS contributor_share,
       CASE WHEN share < {config.tier_medium_share} THEN 'low'
            WHEN share < {config.tier_high_share} THEN 'medium' ELSE 'high' END AS tier,
       posts, replies, likes, views, posts_eligible, posts_answered_in_sla,
       unanswered_posts, median_first_reply_seconds, retention, continuity,
       responsiveness, participation, reciprocity,
       100.0 * (coalesce(retention, 0) + continuity + coalesce(responsiveness, 0)
                + coalesce(participation, 0) + coalesce(reciprocity, 0))
             / (1 + (retention IS NOT NULL)::INT + (responsiveness IS NOT NULL)::INT
                + (participation IS NOT NULL)::INT + (reciprocity IS NOT NULL)::INT)
           AS sustainability,
       stagnating
FROM scored ORDER BY community_id, window_days
"""


def compare(replay_dir: str, duckdb_dir: str) -> dict[str, Any]:
    """Rows of both outputs, matched on (community_id, window_days), column by column."""
    import duckdb

    con = duckdb.connect()
    ours = con.execute(f"SELECT community_id, window_days, {', '.join(COLUMNS)} FROM "
                       f"read_parquet('{replay_dir}/snapshots/**/*.parquet')").fetchall()
    theirs = con.execute(f"SELECT community_id, window_days, {', '.join(COLUMNS)} FROM "
                         f"read_parquet('{duckdb_dir}/snapshot.parquet')").fetchall()
    by_key = {row[:2]: row[2:] for row in theirs}
    differing: dict[str, int] = {}
    example: dict[str, Any] = {}
    for row in ours:
        other = by_key.pop(row[:2], None)
        for name, a, b in zip(COLUMNS, row[2:], other or [object()] * len(COLUMNS),
                              strict=True):
            same = a == b or (isinstance(a, float) and isinstance(b, float)
                              and abs(a - b) <= 1e-9 * max(1.0, abs(a)))
            if not same:
                differing[name] = differing.get(name, 0) + 1
                example.setdefault(name, {"row": list(row[:2]), "replay": a, "duckdb": b})
    return {"mode": "compare", "rows_replay": len(ours), "rows_duckdb": len(theirs),
            "rows_only_in_duckdb": len(by_key), "differing_values": differing,
            "examples": example}


def main(mode: str, path: str, out_dir: str) -> None:
    if mode == "compare":
        print(json.dumps(compare(path, out_dir)))
        return
    started, cpu = time.perf_counter(), time.process_time()
    if mode in ("replay", "replay1"):
        from streams.config import tune_gc
        from streams.replay import replay

        tune_gc()  # as `community-pulse replay` runs
        result = replay([Path(path)], out_dir, MetricConfig(),
                        jobs=1 if mode == "replay1" else None)
        events, rows = result.stats.consumed, result.rows_written
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the partition processes
        cpu_seconds += usage.ru_utime + usage.ru_stime
    else:
        import duckdb

        con = duckdb.connect()
        if mode == "duckdb1":
            con.execute("SET threads = 1")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        target = Path(out_dir) / "snapshot.parquet"
        con.execute(f"COPY ({snapshot_sql(MetricConfig())}) TO '{target}' (FORMAT parquet)",
                    [path])
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        events = con.execute(
            "SELECT count(*) FROM read_json(?, format = 'newline_delimited', "
            "columns = {event_id: 'VARCHAR'})", [path]).fetchone()[0]  # type: ignore[index]
        rows = con.execute(f"SELECT count(*) FROM '{target}'").fetchone()[0]  # type: ignore[index]
    print(json.dumps({"mode": mode, "seconds": seconds, "cpu_seconds": cpu_seconds,
                      "events": events, "rows": rows}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
