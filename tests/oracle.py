"""An independent test oracle for the domain core, written as DuckDB SQL from SPEC 2-3.

It deliberately shares nothing with `streams/core.py`: the raw events go into an
in-memory DuckDB table, duplicates are removed in SQL (first occurrence of an
`event_id` within a community wins), and every snapshot column is one SQL expression
over that table. Python only builds the tables and shapes the result rows.

Interpretations (the same ones `docs/metrics.md` documents for the product):

* every event window, period and comparison span is half-open on the left:
  `t - W < ts <= t`; continuity period k is `(t - (k+1) d, t - k d]`;
* membership activity is post/reply/like/view (join/leave are membership events);
  at equal timestamps a leave sorts after a join; a leave only cancels activity
  membership when it is strictly later than the last activity;
* the first reply of a post is the earliest reply with that `post_id` by another
  user, at or before `t`; its delay is `reply_ts - post_ts`, even if negative;
* a like counts for reciprocity only with `target_type = 'post'` on that post;
* roles are counted among members only; retention and stagnation use every user who
  posted or replied, members or not;
* the median is the usual one (mean of the two middle values);
* a row exists for every community with any event at all, even when every event
  lies after `as_of` (then everything is zero / undefined).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from schemas.events import Event
from streams.config import MetricConfig

DAY = 86_400_000

_COLUMNS = (
    "event_id",
    "type",
    "community_id",
    "user_id",
    "ts",
    "post_id",
    "reply_id",
    "parent_id",
    "parent_type",
    "target_id",
    "target_type",
    "content_kind",
)

ROW_KEYS = (
    "community_id",
    "as_of_ms",
    "window_days",
    "members",
    "creators",
    "conversationalists",
    "critics",
    "joiners",
    "spectators",
    "inactives",
    "contributors",
    "contributor_share",
    "tier",
    "posts",
    "replies",
    "likes",
    "views",
    "posts_eligible",
    "posts_answered_in_sla",
    "unanswered_posts",
    "median_first_reply_seconds",
    "retention",
    "continuity",
    "responsiveness",
    "participation",
    "reciprocity",
    "sustainability",
    "stagnating",
    "last_activity_ms",
    "experts",
    "experts_replying",
    "expert_replies",
    "expert_needed",
    "managed_posts",
    "ugc_posts",
    "managed_engagement",
    "ugc_engagement",
)

_SQL = """
WITH
-- one output row per community x as_of x window
cw AS (
    SELECT c.community_id, c.sla, a.t, w.window_days, w.window_days * {day} AS w
    FROM comm c CROSS JOIN as_ofs a CROSS JOIN wins w
),
act AS (SELECT * FROM ev WHERE type IN ('post', 'reply', 'like', 'view')),
users_t AS (SELECT DISTINCT e.community_id, e.user_id, a.t FROM ev e CROSS JOIN as_ofs a),
-- last membership event at or before t (a leave sorts after a join at the same ts)
last_mem AS (
    SELECT u.community_id, u.user_id, u.t, m.type AS mtype, m.ts AS mts
    FROM users_t u
    JOIN ev m ON m.community_id = u.community_id AND m.user_id = u.user_id
        AND m.type IN ('join', 'leave') AND m.ts <= u.t
    QUALIFY row_number() OVER (
        PARTITION BY u.community_id, u.user_id, u.t
        ORDER BY m.ts DESC, (m.type = 'leave') DESC
    ) = 1
),
last_act AS (
    SELECT u.community_id, u.user_id, u.t, max(a.ts) AS lats
    FROM users_t u
    JOIN act a ON a.community_id = u.community_id AND a.user_id = u.user_id AND a.ts <= u.t
    GROUP BY u.community_id, u.user_id, u.t
),
members AS (
    SELECT u.community_id, u.user_id, u.t
    FROM users_t u
    LEFT JOIN last_mem lm
        ON lm.community_id = u.community_id AND lm.user_id = u.user_id AND lm.t = u.t
    LEFT JOIN last_act la
        ON la.community_id = u.community_id AND la.user_id = u.user_id AND la.t = u.t
    WHERE lm.mtype = 'join'
       OR (la.lats > u.t - {horizon}
           AND NOT coalesce(lm.mtype = 'leave' AND lm.mts > la.lats, false))
),
member_roles AS (
    SELECT m.community_id, m.t, cw.window_days, m.user_id,
        CASE
            WHEN bool_or(a.type = 'post') THEN 1
            WHEN bool_or(a.type = 'reply' AND a.parent_type = 'reply') THEN 2
            WHEN bool_or(a.type = 'reply' AND a.parent_type = 'post') THEN 3
            WHEN bool_or(a.type = 'like') THEN 4
            WHEN bool_or(a.type = 'view') THEN 5
            ELSE 6
        END AS role
    FROM members m
    JOIN cw ON cw.community_id = m.community_id AND cw.t = m.t
    LEFT JOIN act a ON a.community_id = m.community_id AND a.user_id = m.user_id
        AND a.ts > m.t - cw.w AND a.ts <= m.t
    GROUP BY m.community_id, m.t, cw.window_days, m.user_id
),
roles AS (
    SELECT community_id, t, window_days,
        count(*) AS members,
        count(*) FILTER (role = 1) AS creators,
        count(*) FILTER (role = 2) AS conversationalists,
        count(*) FILTER (role = 3) AS critics,
        count(*) FILTER (role = 4) AS joiners,
        count(*) FILTER (role = 5) AS spectators,
        count(*) FILTER (role = 6) AS inactives,
        count(*) FILTER (role <= 3) AS contributors
    FROM member_roles
    GROUP BY community_id, t, window_days
),
counts AS (
    SELECT cw.community_id, cw.t, cw.window_days,
        count(a.event_id) FILTER (a.type = 'post') AS posts,
        count(a.event_id) FILTER (a.type = 'reply') AS replies,
        count(a.event_id) FILTER (a.type = 'like') AS likes,
        count(a.event_id) FILTER (a.type = 'view') AS views
    FROM cw
    LEFT JOIN act a ON a.community_id = cw.community_id AND a.ts > cw.t - cw.w AND a.ts <= cw.t
    GROUP BY cw.community_id, cw.t, cw.window_days
),
wposts AS (
    SELECT cw.community_id, cw.t, cw.window_days, cw.sla,
        p.event_id AS post_event, p.post_id, p.user_id AS author, p.ts AS post_ts,
        coalesce(p.content_kind = 'managed', false) AS managed
    FROM cw
    JOIN ev p ON p.type = 'post' AND p.community_id = cw.community_id
        AND p.ts > cw.t - cw.w AND p.ts <= cw.t
),
post_resp AS (
    SELECT wp.community_id, wp.t, wp.window_days, wp.sla, wp.post_ts, wp.managed,
        min(r.ts) AS first_reply,
        min(l.ts) AS first_like
    FROM wposts wp
    LEFT JOIN ev r ON r.type = 'reply' AND r.community_id = wp.community_id
        AND r.post_id = wp.post_id AND r.user_id <> wp.author AND r.ts <= wp.t
    LEFT JOIN ev l ON l.type = 'like' AND l.target_type = 'post'
        AND l.community_id = wp.community_id AND l.target_id = wp.post_id
        AND l.user_id <> wp.author AND l.ts <= wp.t
    GROUP BY wp.community_id, wp.t, wp.window_days, wp.sla, wp.post_event, wp.post_ts,
        wp.managed
),
listening AS (
    SELECT community_id, t, window_days,
        count(*) AS nposts,
        count(*) FILTER (post_ts <= t - sla) AS eligible,
        count(*) FILTER (
            post_ts <= t - sla AND first_reply IS NOT NULL AND first_reply - post_ts <= sla
        ) AS answered,
        count(*) FILTER (post_ts <= t - sla AND first_reply IS NULL) AS unanswered,
        quantile_cont((first_reply - post_ts)::DOUBLE, 0.5) / 1000.0 AS median_s,
        count(*) FILTER (first_reply IS NOT NULL OR first_like IS NOT NULL) AS responded,
        count(*) FILTER (managed) AS managed_n,
        count(*) FILTER (NOT managed) AS ugc_n,
        count(*) FILTER (managed AND (first_reply IS NOT NULL OR first_like IS NOT NULL))
            AS managed_responded,
        count(*) FILTER (NOT managed AND (first_reply IS NOT NULL OR first_like IS NOT NULL))
            AS ugc_responded
    FROM post_resp
    GROUP BY community_id, t, window_days
),
writers AS (SELECT community_id, user_id, ts FROM ev WHERE type IN ('post', 'reply')),
user_win AS (
    SELECT cw.community_id, cw.t, cw.window_days, x.user_id,
        bool_or(x.ts > cw.t - 2 * cw.w AND x.ts <= cw.t - cw.w) AS in_prev,
        bool_or(x.ts > cw.t - cw.w AND x.ts <= cw.t) AS in_cur
    FROM cw JOIN writers x ON x.community_id = cw.community_id
    GROUP BY cw.community_id, cw.t, cw.window_days, x.user_id
),
ret AS (
    SELECT community_id, t, window_days,
        count(*) FILTER (in_prev) AS prev_n,
        count(*) FILTER (in_prev AND in_cur) AS kept_n
    FROM user_win
    GROUP BY community_id, t, window_days
),
periods AS (
    SELECT cw.community_id, cw.t, cw.window_days, k.k
    FROM cw CROSS JOIN range(0, {max_window}) k(k)
    WHERE k.k < cw.window_days
),
period_hits AS (
    SELECT pe.community_id, pe.t, pe.window_days, pe.k, count(r.event_id) > 0 AS hit
    FROM periods pe
    LEFT JOIN ev r ON r.type = 'reply' AND r.community_id = pe.community_id
        AND r.ts > pe.t - (pe.k + 1) * {day} AND r.ts <= pe.t - pe.k * {day}
    GROUP BY pe.community_id, pe.t, pe.window_days, pe.k
),
cont AS (
    SELECT community_id, t, window_days,
        (count(*) FILTER (hit))::DOUBLE / window_days AS continuity
    FROM period_hits
    GROUP BY community_id, t, window_days
),
stag AS (
    SELECT c.community_id, a.t,
        count(x.ts) FILTER (x.ts > a.t - {quiet} AND x.ts <= a.t) AS quiet_n,
        count(DISTINCT x.user_id) FILTER (x.ts > a.t - {span} AND x.ts <= a.t) AS recent_n,
        count(DISTINCT x.user_id) FILTER (
            x.ts > a.t - 2 * {span} AND x.ts <= a.t - {span}
        ) AS before_n
    FROM comm c CROSS JOIN as_ofs a
    LEFT JOIN writers x ON x.community_id = c.community_id
    GROUP BY c.community_id, a.t
),
-- content experts (SPEC 5): roster users who are members; who replied, how often
expert_members AS (
    SELECT m.community_id, m.t, count(*) AS n
    FROM members m JOIN roster r ON r.community_id = m.community_id AND r.user_id = m.user_id
    GROUP BY m.community_id, m.t
),
expert_replies AS (
    SELECT cw.community_id, cw.t, cw.window_days,
        count(DISTINCT x.user_id) AS replying, count(*) AS replies
    FROM cw
    JOIN ev x ON x.type = 'reply' AND x.community_id = cw.community_id
        AND x.ts > cw.t - cw.w AND x.ts <= cw.t
    JOIN roster r ON r.community_id = x.community_id AND r.user_id = x.user_id
    GROUP BY cw.community_id, cw.t, cw.window_days
),
last_activity AS (
    SELECT c.community_id, a.t, max(x.ts) AS last_ts
    FROM comm c CROSS JOIN as_ofs a
    LEFT JOIN act x ON x.community_id = c.community_id AND x.ts <= a.t
    GROUP BY c.community_id, a.t
),
base AS (
    SELECT cw.community_id, cw.t, cw.window_days,
        coalesce(r.members, 0) AS members,
        coalesce(r.creators, 0) AS creators,
        coalesce(r.conversationalists, 0) AS conversationalists,
        coalesce(r.critics, 0) AS critics,
        coalesce(r.joiners, 0) AS joiners,
        coalesce(r.spectators, 0) AS spectators,
        coalesce(r.inactives, 0) AS inactives,
        coalesce(r.contributors, 0) AS contributors,
        CASE WHEN coalesce(r.members, 0) > 0
            THEN r.contributors::DOUBLE / r.members ELSE 0.0 END AS share,
        n.posts, n.replies, n.likes, n.views,
        coalesce(l.eligible, 0) AS eligible,
        coalesce(l.answered, 0) AS answered,
        coalesce(l.unanswered, 0) AS unanswered,
        l.median_s,
        CASE WHEN coalesce(rt.prev_n, 0) > 0
            THEN rt.kept_n::DOUBLE / rt.prev_n END AS retention,
        ct.continuity,
        CASE WHEN coalesce(l.eligible, 0) > 0
            THEN l.answered::DOUBLE / l.eligible END AS responsiveness,
        CASE WHEN coalesce(l.nposts, 0) > 0
            THEN l.responded::DOUBLE / l.nposts END AS reciprocity,
        s.quiet_n, s.recent_n, s.before_n,
        la.last_ts,
        coalesce(em.n, 0) AS experts,
        coalesce(er.replying, 0) AS experts_replying,
        coalesce(er.replies, 0) AS expert_replies,
        coalesce(l.managed_n, 0) AS managed_posts,
        coalesce(l.ugc_n, 0) AS ugc_posts,
        l.managed_responded::DOUBLE / nullif(l.managed_n, 0) AS managed_engagement,
        l.ugc_responded::DOUBLE / nullif(l.ugc_n, 0) AS ugc_engagement
    FROM cw
    LEFT JOIN roles r USING (community_id, t, window_days)
    JOIN counts n USING (community_id, t, window_days)
    LEFT JOIN listening l USING (community_id, t, window_days)
    LEFT JOIN ret rt USING (community_id, t, window_days)
    JOIN cont ct USING (community_id, t, window_days)
    JOIN stag s USING (community_id, t)
    JOIN last_activity la USING (community_id, t)
    LEFT JOIN expert_members em USING (community_id, t)
    LEFT JOIN expert_replies er USING (community_id, t, window_days)
),
scored AS (
    SELECT *,
        CASE WHEN members > 0 THEN least(1.0, share / {high}) END AS participation
    FROM base
)
SELECT community_id, t AS as_of_ms, window_days, members, creators, conversationalists,
    critics, joiners, spectators, inactives, contributors,
    share AS contributor_share,
    CASE WHEN share < {medium} THEN 'low' WHEN share < {high} THEN 'medium'
        ELSE 'high' END AS tier,
    posts, replies, likes, views,
    eligible AS posts_eligible, answered AS posts_answered_in_sla,
    unanswered AS unanswered_posts, median_s AS median_first_reply_seconds,
    retention, continuity, responsiveness, participation, reciprocity,
    coalesce(
        100.0 * (
            coalesce(retention * {w_ret}, 0.0) + continuity * {w_cont}
            + coalesce(responsiveness * {w_resp}, 0.0)
            + coalesce(participation * {w_part}, 0.0)
            + coalesce(reciprocity * {w_rec}, 0.0)
        ) / nullif(
            CASE WHEN retention IS NULL THEN 0.0 ELSE {w_ret} END + {w_cont}
            + CASE WHEN responsiveness IS NULL THEN 0.0 ELSE {w_resp} END
            + CASE WHEN participation IS NULL THEN 0.0 ELSE {w_part} END
            + CASE WHEN reciprocity IS NULL THEN 0.0 ELSE {w_rec} END,
            0.0),
        0.0) AS sustainability,
    members > 0 AND (quiet_n = 0 OR recent_n::DOUBLE < {ratio} * before_n) AS stagnating,
    last_ts AS last_activity_ms,
    CASE WHEN {has_roster} THEN experts END AS experts,
    CASE WHEN {has_roster} THEN experts_replying END AS experts_replying,
    CASE WHEN {has_roster} THEN expert_replies END AS expert_replies,
    CASE WHEN {has_roster} THEN members > 0 AND experts_replying = 0 END AS expert_needed,
    managed_posts, ugc_posts, managed_engagement, ugc_engagement
FROM scored
ORDER BY community_id, as_of_ms, window_days
"""


def _bigint(value: int) -> str:
    return f"CAST({int(value)} AS BIGINT)"


def _double(value: float) -> str:
    return f"CAST({float(value)!r} AS DOUBLE)"


def _events_table(events: Iterable[Event]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in ("seq", *_COLUMNS)}
    for seq, event in enumerate(events):
        columns["seq"].append(seq)
        for name in _COLUMNS:
            columns[name].append(getattr(event, name))
    schema = pa.schema(
        [("seq", pa.int64())]
        + [(name, pa.int64() if name == "ts" else pa.string()) for name in _COLUMNS]
    )
    return pa.Table.from_pydict(columns, schema=schema)


def oracle_snapshots(
    events: Sequence[Event], as_ofs: Sequence[int], config: MetricConfig
) -> list[dict[str, Any]]:
    """Rows for every community with any event, for each `as_of` and window.

    Rows are ordered by (community_id, as_of_ms, window_days)."""
    con = duckdb.connect(":memory:", config={"threads": 1})
    try:
        raw = _events_table(events)
        con.register("raw_arrow", raw)
        con.execute(
            "CREATE TABLE ev AS SELECT * EXCLUDE (seq) FROM raw_arrow "
            "QUALIFY row_number() OVER (PARTITION BY community_id, event_id ORDER BY seq) = 1"
        )
        communities = sorted({e.community_id for e in events})
        con.execute("CREATE TABLE comm (community_id VARCHAR, sla BIGINT)")
        if communities:
            con.executemany(
                "INSERT INTO comm VALUES (?, ?)",
                [[c, config.sla_ms(c)] for c in communities],
            )
        con.execute("CREATE TABLE as_ofs (t BIGINT)")
        con.executemany("INSERT INTO as_ofs VALUES (?)", [[int(t)] for t in set(as_ofs)])
        con.execute("CREATE TABLE roster (community_id VARCHAR, user_id VARCHAR)")
        roster = [[c, u] for c, users in (config.experts or {}).items() for u in users]
        if roster:
            con.executemany("INSERT INTO roster VALUES (?, ?)", roster)
        con.execute("CREATE TABLE wins (window_days BIGINT)")
        con.executemany(
            "INSERT INTO wins VALUES (?)", [[int(w)] for w in set(config.windows_days)]
        )
        sql = _SQL.format(
            day=_bigint(DAY),
            horizon=_bigint(config.membership_horizon_days * DAY),
            max_window=_bigint(max(config.windows_days)),
            quiet=_bigint(config.stagnation_quiet_days * DAY),
            span=_bigint(config.stagnation_compare_days * DAY),
            medium=_double(config.tier_medium_share),
            high=_double(config.tier_high_share),
            ratio=_double(config.stagnation_drop_ratio),
            w_ret=_double(config.weight_retention),
            w_cont=_double(config.weight_continuity),
            w_resp=_double(config.weight_responsiveness),
            w_part=_double(config.weight_participation),
            w_rec=_double(config.weight_reciprocity),
            has_roster="true" if config.experts is not None else "false",
        )
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        assert tuple(names) == ROW_KEYS, names
        rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    finally:
        con.close()
    for row in rows:
        row["stagnating"] = bool(row["stagnating"])
        if row["expert_needed"] is not None:
            row["expert_needed"] = bool(row["expert_needed"])
    return rows


def oracle_snapshot(
    events: Sequence[Event], as_of_ms: int, config: MetricConfig
) -> list[dict[str, Any]]:
    """SnapshotRow columns as dicts, one per community x window, for one `as_of`."""
    return oracle_snapshots(events, [as_of_ms], config)


# ---- steering (SPEC 5) ----------------------------------------------------------------

_GOALS_SQL = """
SELECT g.id AS goal_id, g.community AS community_id, g.metric, g.window_days,
    a.t AS as_of_ms, v.value,
    g.baseline + (g.target - g.baseline)
        * greatest(0.0, least(1.0, (a.t - g.start_ms)::DOUBLE / (g.deadline_ms - g.start_ms)))
        AS expected,
    (v.value - g.baseline) / (g.target - g.baseline) AS progress,
    CASE
        WHEN v.community_id IS NULL THEN 'no_data'
        WHEN a.t < g.start_ms THEN 'not_started'
        WHEN a.t > g.sustain_until_ms THEN 'ended'
        WHEN v.value IS NULL THEN 'no_data'
        WHEN a.t < g.deadline_ms THEN CASE
            WHEN (g.target > g.baseline AND v.value >= expected - {slack})
              OR (g.target < g.baseline AND v.value <= expected + {slack}) THEN 'on_track'
            ELSE 'behind' END
        WHEN (g.target > g.baseline AND v.value >= g.target - {slack})
          OR (g.target < g.baseline AND v.value <= g.target + {slack}) THEN 'met'
        ELSE 'missed'
    END AS status
FROM goals g CROSS JOIN as_ofs a
LEFT JOIN vals v ON v.community_id = g.community AND v.window_days = g.window_days
    AND v.metric = g.metric AND v.t = a.t
ORDER BY goal_id, as_of_ms
""".replace("{slack}", "1e-9 * abs(g.target - g.baseline)")


def oracle_goals(goals: Sequence[Any], values: Sequence[tuple[str, int, str, int, Any]],
                 as_ofs: Sequence[int]) -> list[dict[str, Any]]:
    """Goal rows (SPEC 5) as SQL over goals (objects with the `Goal` fields) and metric
    values `(community_id, window_days, metric, t, value)`; a community, window and t
    with no entry at all has no snapshot row (`no_data`)."""
    con = duckdb.connect(":memory:", config={"threads": 1})
    try:
        con.execute("CREATE TABLE goals (id VARCHAR, community VARCHAR, metric VARCHAR, "
                    "window_days BIGINT, baseline DOUBLE, target DOUBLE, start_ms BIGINT, "
                    "deadline_ms BIGINT, sustain_until_ms BIGINT)")
        con.executemany("INSERT INTO goals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [[g.id, g.community, g.metric, g.window_days, g.baseline, g.target,
                          g.start_ms, g.deadline_ms, g.sustain_until_ms] for g in goals])
        con.execute("CREATE TABLE vals (community_id VARCHAR, window_days BIGINT, "
                    "metric VARCHAR, t BIGINT, value DOUBLE)")
        if values:
            con.executemany("INSERT INTO vals VALUES (?, ?, ?, ?, ?)", [list(v) for v in values])
        con.execute("CREATE TABLE as_ofs (t BIGINT)")
        con.executemany("INSERT INTO as_ofs VALUES (?)", [[int(t)] for t in set(as_ofs)])
        cursor = con.execute(_GOALS_SQL)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    finally:
        con.close()
