"""Build the Grafana dashboards and Grafana-managed alert rules from code.

    python grafana/build.py          # (re)write grafana/dashboards/*.json and the alert rules
    python grafana/build.py --check  # exit 1 when a generated file is out of date

Dashboards use a datasource variable (`datasource`); the alert rules are derived from the
Prometheus alerts in deploy/prometheus/rules/alerts.yml (same names, expressions, `for`,
labels and annotations), so Prometheus and Grafana alert on exactly the same logic.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DASHBOARD_DIR = HERE / "dashboards"
ALERT_RULES_FILE = HERE / "provisioning" / "alerting" / "community-pulse-rules.yml"
PROMETHEUS_ALERTS = REPO / "deploy" / "prometheus" / "rules" / "alerts.yml"

FOLDER_UID = "community-pulse"
FOLDER_TITLE = "Community Pulse"
DATASOURCE_UID = "community-pulse-prometheus"  # provisioned in provisioning/datasources/
RULE_GROUP = "community-pulse"
RULE_GROUP_INTERVAL = "1m"

DS = {"type": "prometheus", "uid": "${datasource}"}
CONTRIBUTE = "are creator, conversationalist or critic (post or reply)"
Json = dict[str, Any]

TIER_MAPPING = [
    {
        "type": "value",
        "options": {
            "0": {"text": "low (<15%)", "color": "red", "index": 0},
            "1": {"text": "medium (15-30%)", "color": "yellow", "index": 1},
            "2": {"text": "high (>=30%)", "color": "green", "index": 2},
        },
    }
]
STAGNATING_MAPPING = [
    {
        "type": "value",
        "options": {
            "0": {"text": "no", "color": "green", "index": 0},
            "1": {"text": "STAGNATING", "color": "red", "index": 1},
        },
    }
]

ACTIONS_MD = """\
### What to do, per tier (contributor share: members who are creator, conversationalist or critic)

**Low — below 15%.** The information shared is not representative of the whole group.
- Focus on a group where 15% or more of the members post or reply.
- Merge similar communities (the small ones too) and explain why the group is made larger.
- Stimulate more members to post or reply: apply *talking*, or provoke
  reactions as a creator yourself.
- And/or bring in a content expert and let them act as critic.

**Medium — 15% to 30%.** If it is large and its topics relate to your responsibilities,
be part of it: listening (and talking) shows what people need and what valuable
knowledge lives there.
- Bring similar communities (the small ones too) together and explain why.
- Stimulate even more members to post or reply.
- And/or bring in a content expert who acts as critic.

**High — 30% or more.** A community of practice you must be part of: much information is
brought in and judged, and it leads sooner to usable hard content.
- Bring in a content expert and let them act as critic.

**Any tier — "stilstand is achteruitgang" (standing still is decline).** Keep it sustainable:
talk *with* people, not at them; keep conversations going; listen and show you listen;
bring creators and critics together and ask for their input; use storytelling; respond
within the agreed service level (who notices, who responds within what time).
"""


CLOSING_NOTE = ("Closing values: the rows at UTC midnights, final by event time (the "
                "`daily` view of the Parquet history), exported by the worker from its state, "
                "so they exist from its first hour.")

# --------------------------------------------------------------------------- panels


def target(expr: str, legend: str = "", ref: str = "A", *, table: bool = False) -> Json:
    t: Json = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend}
    if table:
        t.update(format="table", instant=True, range=False)
    return t


def panel(kind: str, title: str, grid: tuple[int, int, int, int], targets: list[Json],
          **extra: Any) -> Json:
    x, y, w, h = grid
    p: Json = {
        "type": kind,
        "title": title,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "datasource": DS,
        "targets": targets,
    }
    p.update(extra)
    return p


def field_config(unit: str = "short", *, mappings: list[Json] | None = None, min_: float | None
                 = None, max_: float | None = None, stack: bool = False,
                 thresholds: list[tuple[float | None, str]] | None = None) -> Json:
    defaults: Json = {"unit": unit}
    if mappings:
        defaults["mappings"] = mappings
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if thresholds:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"value": v, "color": c} for v, c in thresholds],
        }
    if stack:
        defaults["custom"] = {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 60,
                              "lineWidth": 1}
    return {"defaults": defaults, "overrides": []}


def stat(title: str, grid: tuple[int, int, int, int], expr: str, unit: str = "short", *,
         description: str, **fc: Any) -> Json:
    return panel("stat", title, grid, [target(expr)], description=description,
                 fieldConfig=field_config(unit, **fc),
                 options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                          "colorMode": "background", "graphMode": "none"})


def timeseries(title: str, grid: tuple[int, int, int, int], targets: list[Json],
               unit: str = "short", overrides: list[Json] | None = None, *,
               description: str, **fc: Any) -> Json:
    config = field_config(unit, **fc)
    config["overrides"] = overrides or []
    return panel("timeseries", title, grid, targets, description=description,
                 fieldConfig=config,
                 options={"legend": {"displayMode": "table", "placement": "right",
                                     "calcs": ["lastNotNull"]},
                          "tooltip": {"mode": "multi", "sort": "desc"}})


def text(title: str, grid: tuple[int, int, int, int], content: str, description: str) -> Json:
    x, y, w, h = grid
    return {"type": "text", "title": title, "description": description,
            "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "options": {"mode": "markdown", "content": content}}


def refs(targets: list[Json]) -> list[Json]:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return targets


def datasource_var() -> Json:
    return {"name": "datasource", "label": "Prometheus", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "refresh": 1}


def window_var() -> Json:
    return {"name": "window", "label": "Window", "type": "query", "datasource": DS,
            "query": {"query": "label_values(community_pulse_members, window)",
                      "refId": "window"},
            "definition": "label_values(community_pulse_members, window)",
            "current": {"text": "28d", "value": "28d"}, "refresh": 2, "sort": 1, "hide": 0}


def dashboard(uid: str, title: str, panels: list[Json], variables: list[Json],
              tags: list[str], description: str) -> Json:
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["community-pulse", *tags],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "1m",
        "time": {"from": "now-7d", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["community-pulse"], "asDropdown": True,
                   "title": "Community Pulse", "includeVars": True, "keepTime": True}],
        "panels": panels,
    }


# ------------------------------------------------------------------------ dashboards


def overview() -> Json:
    w = 'window="$window"'
    tier = f"max by (community) (community_pulse_tier{{{w}}})"
    table_targets = refs([
        target(tier, table=True),
        target(f"max by (community) (community_pulse_contributor_share_ratio{{{w}}})",
               table=True),
        target(f"max by (community) (community_pulse_sustainability_score{{{w}}})", table=True),
        target("max by (community) (community_pulse_stagnating)", table=True),
        target(f"max by (community) (community_pulse_members{{{w}}})", table=True),
        target(f"max by (community) (community_pulse_unanswered_posts{{{w}}})", table=True),
        target(f"max by (community) (community:community_pulse_sustainability_score:change_7d"
               f"{{{w}}})", table=True),
        target('max by (community) (community_pulse_sustainability_score{window="7d"})',
               table=True),
    ])
    names = ["Tier", "Contributor share", "Score", "Stagnating", "Members", "Unanswered",
             "Score Δ 7d (closing)", "Score, last 7 days"]
    rename = {f"Value #{chr(ord('A') + i)}": n for i, n in enumerate(names)}
    overrides = [
        {"matcher": {"id": "byName", "options": "Tier"},
         "properties": [{"id": "mappings", "value": TIER_MAPPING},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}}]},
        {"matcher": {"id": "byName", "options": "Contributor share"},
         "properties": [{"id": "unit", "value": "percentunit"}, {"id": "decimals", "value": 1}]},
        *({"matcher": {"id": "byName", "options": score},
           "properties": [{"id": "decimals", "value": 0}, {"id": "max", "value": 100},
                          {"id": "custom.cellOptions",
                           "value": {"type": "gauge", "mode": "basic"}}]}
          for score in ("Score", "Score, last 7 days")),
        {"matcher": {"id": "byName", "options": "Stagnating"},
         "properties": [{"id": "mappings", "value": STAGNATING_MAPPING},
                        {"id": "custom.cellOptions", "value": {"type": "color-text"}}]},
        {"matcher": {"id": "byName", "options": "community"},
         "properties": [{"id": "links", "value": [{
             "title": "Open community",
             "url": "/d/community-pulse-community/?var-community=${__value.raw}"
                    "&var-window=${window}&var-datasource=${datasource}"}]}]},
    ]
    table = panel(
        "table", "Communities (tier, share, score, stagnating)", (0, 13, 16, 14), table_targets,
        description="One row per community, in the selected window: tier and contributor share "
                    "(members who are creator, conversationalist or critic), sustainability "
                    "score 0-100, members, posts past the response SLA without a reply, and the "
                    "score's change over 7 days. Stagnating looks at the last 7 and 14 days "
                    "whatever the window, so a community can score well over 28 days and "
                    "stagnate now: 'Score, last 7 days' shows that recent score beside it.",
        fieldConfig={"defaults": {"custom": {"align": "auto"},
                                  "thresholds": {"mode": "absolute", "steps": [
                                      {"value": None, "color": "red"},
                                      {"value": 40, "color": "yellow"},
                                      {"value": 70, "color": "green"}]}},
                     "overrides": overrides},
        options={"showHeader": True, "sortBy": [{"displayName": "Score", "desc": False}]},
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True},
                                           "renameByName": rename}},
        ],
    )
    panels = [
        stat("Low tier (<15%)", (0, 0, 4, 4),
             f"count(max by (community) (community_pulse_tier{{{w}}}) == 0) or vector(0)",
             thresholds=[(None, "green"), (1, "red")],
             description=f"Communities where under 15% of the members {CONTRIBUTE} in the "
                         "selected window: not representative of the group."),
        stat("Medium tier (15-30%)", (4, 0, 4, 4),
             f"count(max by (community) (community_pulse_tier{{{w}}}) == 1) or vector(0)",
             thresholds=[(None, "yellow")],
             description=f"Communities where 15% to 30% of the members {CONTRIBUTE}: worth "
                         "joining and listening to."),
        stat("High tier (>=30%)", (8, 0, 4, 4),
             f"count(max by (community) (community_pulse_tier{{{w}}}) == 2) or vector(0)",
             thresholds=[(None, "green")],
             description=f"Communities where 30% or more of the members {CONTRIBUTE}: "
                         "communities of practice to be part of."),
        stat("Stagnating communities", (12, 0, 4, 4), "job:community_pulse_stagnating:count",
             thresholds=[(None, "green"), (1, "red")],
             description="Communities with members and no post or reply in the last 7 days, "
                         "or fewer than 75% as many people posting and replying in the last "
                         "14 days as in the 14 before (independent of the window)."),
        stat("Average sustainability", (16, 0, 4, 4),
             f"window:community_pulse_sustainability_score:avg{{{w}}}", min_=0, max_=100,
             thresholds=[(None, "red"), (40, "yellow"), (70, "green")],
             description="Mean sustainability score (0-100) of the exported communities in the "
                         "selected window: retention, continuity, responsiveness, participation "
                         "and reciprocity."),
        stat("Members (exported communities)", (20, 0, 4, 4),
             f"window:community_pulse_members:sum{{{w}}}", thresholds=[(None, "blue")],
             description="Members summed over the exported communities (a person in two "
                         "communities counts twice; communities under the privacy threshold "
                         "are not exported)."),
        timeseries("Communities per tier", (0, 4, 12, 9),
                   [target(f"window:community_pulse_communities_by_tier:count{{{w}}}",
                           "{{tier}}")], stack=True,
                   description="Number of exported communities in each tier over time, in the "
                               "selected window."),
        panel("bargauge", "Sustainability score by community", (12, 4, 12, 9),
              [target(f"sort_desc(max by (community) "
                      f"(community_pulse_sustainability_score{{{w}}}))", "{{community}}")],
              description="Each community's sustainability score (0-100) in the selected "
                          "window, best first.",
              fieldConfig=field_config("none", min_=0, max_=100, thresholds=[
                  (None, "red"), (40, "yellow"), (70, "green")]),
              options={"orientation": "horizontal", "displayMode": "gradient",
                       "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}),
        table,
        text("Recommended actions per tier", (16, 13, 8, 14), ACTIONS_MD,
             "What the seed article recommends for each tier."),
        goals_overview(27),
        *network_steering_panels(y=35),
    ]
    return dashboard("community-pulse-overview", "Community Pulse — overview", panels,
                     [datasource_var(), window_var()], ["overview"],
                     "All communities by tier and sustainability score.")


def network_steering_panels(y: int) -> list[Json]:
    """Merge suggestions and where to start (SPEC 5, docs/steering.md): the network-wide
    view that the worker owning partition 0 exports."""
    def table_panel(title: str, grid: tuple[int, int, int, int], targets: list[Json],
                    names: list[str], sort: str, desc: bool, units: dict[str, str],
                    description: str) -> Json:
        rename = {f"Value #{chr(ord('A') + i)}": n for i, n in enumerate(names)}
        overrides = [{"matcher": {"id": "byName", "options": name},
                      "properties": [{"id": "unit", "value": unit}, {"id": "decimals", "value": 2}]}
                     for name, unit in units.items()]
        return panel("table", title, grid, refs(targets), description=description,
                     fieldConfig={"defaults": {"custom": {"align": "auto"}},
                                  "overrides": overrides},
                     options={"showHeader": True, "sortBy": [{"displayName": sort, "desc": desc}]},
                     transformations=[
                         {"id": "merge", "options": {}},
                         {"id": "organize", "options": {"excludeByName": {"Time": True},
                                                        "renameByName": rename}}])

    candidates = "max by (community) (community_pulse_focus_rank)"
    return [
        table_panel(
            "Merge suggestions: low and medium communities and who shares their members",
            (0, y, 14, 10),
            [target("max by (community, candidate) (community_pulse_merge_suggestion_jaccard)",
                    table=True),
             target("max by (community, candidate) "
                    "(community_pulse_merge_suggestion_merged_share_ratio)", table=True)],
            ["Member overlap (Jaccard)", "Contributor share if merged"],
            "Member overlap (Jaccard)", True,
            {"Member overlap (Jaccard)": "percentunit",
             "Contributor share if merged": "percentunit"},
            "For each community in tier low or medium, the communities that share most of its "
            "members (shared / all members of the two) and the share of members who would "
            f"{CONTRIBUTE} if they merged: merge similar communities, the small ones too, and "
            "explain why the group grows. Estimated from member sketches (docs/steering.md)."),
        table_panel(
            "Where to start: communities of practice, best first", (14, y, 10, 10),
            [target(candidates, table=True),
             target(f"max by (community) (community_pulse_members{{window=\"$window\"}}) "
                    f"and on (community) {candidates}", table=True),
             target(f"max by (community) (community_pulse_contributor_share_ratio"
                    f"{{window=\"$window\"}}) and on (community) {candidates}", table=True)],
            ["Rank", "Members", "Contributor share"], "Rank", False,
            {"Contributor share": "percentunit"},
            "Communities of practice to start with: tier high, at least 20 members, not "
            "stagnating; ranked by the number of members who post or reply, then by "
            "sustainability. Take the next one only when your follow-up is under control."),
    ]


def query_var(name: str, label: str, query: str, **extra: Any) -> Json:
    """A dashboard variable filled from a Prometheus label_values() query."""
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name}, "definition": query,
            "refresh": 2, "hide": 0, **extra}


def community() -> Json:
    c = 'community="$community"'
    cw = 'community="$community", window="$window"'
    community_var = query_var("community", "Community",
                              "label_values(community_pulse_members, community)",
                              sort=1, current={})
    panels = [
        stat("Tier ($window)", (0, 0, 4, 4), f"max(community_pulse_tier{{{cw}}})",
             mappings=TIER_MAPPING,
             description=f"By the share of members who {CONTRIBUTE} in the window: low under "
                         "15%, medium 15-30%, high 30% or more."),
        stat("Members", (4, 0, 3, 4), f"max(community_pulse_members{{{cw}}})",
             thresholds=[(None, "blue")],
             description="Users who joined, or did anything in the last 90 days, and did not "
                         "leave after their last activity."),
        stat("Contributor share ($window)", (7, 0, 4, 4),
             f"max(community_pulse_contributor_share_ratio{{{cw}}})", "percentunit",
             thresholds=[(None, "red"), (0.15, "yellow"), (0.3, "green")],
             description=f"Share of the members who {CONTRIBUTE} in the window; it sets the "
                         "tier."),
        stat("Sustainability ($window)", (11, 0, 3, 4),
             f"max(community_pulse_sustainability_score{{{cw}}})", min_=0, max_=100,
             thresholds=[(None, "red"), (40, "yellow"), (70, "green")],
             description="Score 0-100 over the window: the mean of retention, continuity, "
                         "responsiveness, participation and reciprocity. A long window can "
                         "still score well while the community stagnates now: pick 7d."),
        stat("Score change 7d (closing)", (14, 0, 3, 4),
             f"community:community_pulse_sustainability_score:change_7d{{{cw}}}",
             thresholds=[(None, "red"), (-15, "yellow"), (0, "green")],
             description="Closing score at the last UTC midnight minus the one 7 days before. "
                         + CLOSING_NOTE),
        stat("Stagnating (last 7/14 days)", (17, 0, 3, 4),
             f"max(community_pulse_stagnating{{{c}}})", mappings=STAGNATING_MAPPING,
             description="No post or reply in the last 7 days, or fewer than 75% as many "
                         "people posting and replying in the last 14 days as in the 14 before. "
                         "Independent of the window selected above."),
        stat("Last activity", (20, 0, 4, 4),
             f"max(community_pulse_last_activity_timestamp_seconds{{{c}}}) * 1000",
             "dateTimeFromNow", thresholds=[(None, "text")],
             description="Time of the newest post, reply, like or view."),
        timeseries("Role ladder (primary role per member)", (0, 4, 12, 10), [target(
            f"max by (role) (community_pulse_role_users{{{cw}}})", "{{role}}")], stack=True,
            description="Members by their highest role in the window (creator, "
                        "conversationalist, critic, joiner, spectator, inactive); the stack "
                        "adds up to the members."),
        timeseries("Sustainability components", (12, 4, 12, 10), [target(
            f"max by (component) (community_pulse_sustainability_component_ratio{{{cw}}})",
            "{{component}}")], "percentunit", min_=0, max_=1,
            description="The five parts of the score, each 0-100%: retention, continuity, "
                        "responsiveness, participation, reciprocity (docs/metrics.md)."),
        timeseries("Listening: posts past the response SLA", (0, 14, 12, 9), refs([
            target(f"max(community_pulse_posts_eligible{{{cw}}})", "eligible"),
            target(f"max(community_pulse_posts_answered_in_sla{{{cw}}})", "answered in SLA"),
            target(f"max(community_pulse_unanswered_posts{{{cw}}})", "unanswered"),
        ]), description="Posts in the window older than the response SLA (eligible), those "
                        "answered by another member within the SLA, and those with no reply "
                        "by another member yet."),
        timeseries("Median time to first reply", (12, 14, 12, 9), [target(
            f"max(community_pulse_median_first_reply_seconds{{{cw}}})", "median first reply")],
            "s", min_=0,
            description="Median time from a post to its first reply by another member, over "
                        "the window's posts that have one."),
        timeseries("Sustainability score", (0, 23, 12, 9), refs([
            target(f"max(community_pulse_sustainability_score{{{cw}}})", "score"),
            target(f"community:community_pulse_sustainability_score:change_7d{{{cw}}}",
                   "change over the 7 days to the last midnight (closing values)"),
        ]), min_=-100, max_=100,
            description="The score (0-100) and its change over the 7 days to the last UTC "
                         "midnight (closing values, from the worker's event history)."),
        timeseries("Activity in the window", (12, 23, 12, 9), [target(
            f"max by (type) (community_pulse_window_events{{{cw}}})", "{{type}}")],
            description="Distinct posts, replies, likes and views in the window."),
        *goal_panels(c, 32),
        *steering_panels(cw, 41),
    ]
    return dashboard("community-pulse-community", "Community Pulse — community", panels,
                     [datasource_var(), community_var, window_var()], ["community"],
                     "One community in depth: roles, listening, sustainability.")


def goal_panels(selector: str, y: int) -> list[Json]:
    """SMART goals (docs/steering.md): each goal's value against its expected line, and
    where each goal stands."""
    status = f'max by (goal, status) (community_pulse_goal_status{{{selector}}}) == 1'
    return [
        timeseries("Goals: value against the expected line (dashed: expected, dotted: target)",
                   (0, y, 16, 9), refs([
                       target(f"max by (goal) (community_pulse_goal_value{{{selector}}})",
                              "{{goal}}"),
                       target(f"max by (goal) (community_pulse_goal_expected{{{selector}}})",
                              "{{goal}} expected"),
                       target(f"max by (goal) (community_pulse_goal_target{{{selector}}})",
                              "{{goal}} target"),
                   ]), overrides=[
                       _dashed("/ expected$/", [8, 6]), _dashed("/ target$/", [2, 4])],
                   description="Each SMART goal's metric value, the line it is expected to "
                               "follow from baseline to target by the deadline, and the "
                               "target."),
        panel("table", "Goals: status and progress", (16, y, 8, 9), refs([
            target(status, table=True),
            target(f"max by (goal) (community_pulse_goal_progress_ratio{{{selector}}})",
                   table=True)]),
            description="Each goal's status (not started, on track, behind, met, missed, "
                        "ended, no data) and progress from baseline (0%) to target (100%).",
            fieldConfig={"defaults": {"unit": "percentunit"}, "overrides": []},
            transformations=[
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {
                    "excludeByName": {"Time": True, "Value #A": True},
                    "renameByName": {"Value #B": "progress"}}}]),
    ]


def steering_panels(selector: str, y: int) -> list[Json]:
    """Content experts (with a roster) and soft/hard content of one community."""
    return [
        stat("Content experts (members)", (0, y, 4, 4),
             f"max(community_pulse_experts{{{selector}}})", thresholds=[(None, "blue")],
             description="Content experts of the roster (experts_file) who are members of "
                         "the community. Empty without a roster."),
        stat("Experts replying", (4, y, 4, 4),
             f"max(community_pulse_experts_replying{{{selector}}})",
             thresholds=[(None, "red"), (1, "green")],
             description="Roster experts who wrote at least one reply in the window: the "
                         "article asks for an expert acting as critic in every tier."),
        stat("Expert needed", (0, y + 4, 8, 4),
             f"max(community_pulse_expert_needed{{{selector}}})", mappings=[{
                 "type": "value", "options": {
                     "0": {"text": "no: an expert replies", "color": "green", "index": 0},
                     "1": {"text": "YES: bring in a content expert as critic", "color": "red",
                           "index": 1}}}],
             description="Yes when the community has members and no roster expert replied "
                         "in the window."),
        timeseries("Replies by content experts", (8, y, 8, 8), [target(
            f"max(community_pulse_expert_replies{{{selector}}})", "expert replies")],
            description="Replies written by roster experts in the window."),
        timeseries("Soft (ugc) and hard (managed) content: posts and engagement",
                   (16, y, 8, 8), refs([
                       target(f"max by (kind) (community_pulse_content_posts{{{selector}}})",
                              "{{kind}} posts"),
                       target(f"max by (kind) (community_pulse_content_engagement_ratio"
                              f"{{{selector}}})", "{{kind}} engagement"),
                   ]), overrides=[{"matcher": {"id": "byRegexp", "options": "/engagement$/"},
                                   "properties": [{"id": "unit", "value": "percentunit"},
                                                  {"id": "custom.axisPlacement",
                                                   "value": "right"}]}],
                   description="Posts in the window by kind, managed (hard content) or ugc "
                               "(soft, user content), and the share of each kind's posts that "
                               "got a reply or like from another user (right axis)."),
    ]


def goals_overview(y: int) -> Json:
    """Every goal (docs/steering.md): community, metric, status and progress."""
    return panel("table", "SMART goals of all communities (status and progress)",
                 (0, y, 24, 8), description="Every goal of the goals file: its community, "
                 "metric and window, its status and its progress from baseline (0%) to target "
                 "(100%).", targets=refs([
                     target("max by (goal, community, metric, window, status) "
                            "(community_pulse_goal_status) == 1", table=True),
                     target("max by (goal, community, metric, window) "
                            "(community_pulse_goal_progress_ratio)", table=True)]),
                 fieldConfig={"defaults": {}, "overrides": [
                     {"matcher": {"id": "byName", "options": "progress"},
                      "properties": [{"id": "unit", "value": "percentunit"},
                                     {"id": "custom.cellOptions",
                                      "value": {"type": "gauge", "mode": "basic"}},
                                     {"id": "max", "value": 1}]}]},
                 options={"showHeader": True, "sortBy": [{"displayName": "status"}]},
                 transformations=[
                     {"id": "merge", "options": {}},
                     {"id": "organize", "options": {
                         "excludeByName": {"Time": True, "Value #A": True},
                         "renameByName": {"Value #B": "progress"}}}])


def _dashed(regex: str, dash: list[int]) -> Json:
    return {"matcher": {"id": "byRegexp", "options": regex},
            "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": dash}}]}


def pipeline() -> Json:
    inst = 'instance=~"$instance"'
    rate = "[$__rate_interval]"
    instance_var = query_var("instance", "Worker",
                             "label_values(community_pulse_events_consumed_total, instance)",
                             multi=True, includeAll=True, allValue=".*",
                             current={"text": "All", "value": "$__all"})
    counters = ("consumed", "processed", "duplicates")
    per_topic = [
        target(f"sum by (topic) (rate(community_pulse_events_{n}_total{{{inst}}}{rate}))",
               f"{{{{topic}}}} {n}")
        for n in counters
    ]
    per_topic.append(target(
        f"sum by (topic) (rate(community_pulse_events_dead_lettered_total{{{inst}}}{rate}))",
        "{{topic}} dead-lettered"))
    unaccounted = (
        f"sum by (topic) (community_pulse_events_consumed_total{{{inst}}})"
        f" - sum by (topic) (community_pulse_events_processed_total{{{inst}}})"
        f" - sum by (topic) (community_pulse_events_duplicates_total{{{inst}}})"
        f" - (sum by (topic) (community_pulse_events_dead_lettered_total{{{inst}}})"
        f" or 0 * sum by (topic) (community_pulse_events_consumed_total{{{inst}}}))"
    )

    def quantiles(metric: str, by: str = "") -> list[Json]:
        grp = f"{by}, le" if by else "le"
        lbl = f"{{{{{by}}}}} " if by else ""
        return refs([target(f"histogram_quantile({q}, sum by ({grp}) "
                            f"(rate({metric}_bucket{{{inst}}}{rate})))", f"{lbl}p{int(q * 100)}")
                     for q in (0.5, 0.95, 0.99)])

    panels = [
        stat("Workers up", (0, 0, 4, 4), 'sum(up{job="community-pulse"})',
             thresholds=[(None, "red"), (1, "green")],
             description="Workers whose /metrics Prometheus can scrape."),
        stat("Owned communities", (4, 0, 4, 4),
             f"sum(community_pulse_owned_communities{{{inst}}})", thresholds=[(None, "blue")],
             description="Communities in the partitions the workers own now (each once)."),
        stat("Unaccounted events (must be 0)", (8, 0, 4, 4), f"sum({unaccounted})",
             thresholds=[(None, "green"), (1, "red")],
             description="Consumed minus processed, duplicates and dead-lettered, over all "
                         "topics: anything but 0 (beyond a batch in flight) is lost input."),
        stat("Dead-lettered (range)", (12, 0, 4, 4),
             f"sum(increase(community_pulse_events_dead_lettered_total{{{inst}}}[$__range]))"
             " or vector(0)", thresholds=[(None, "green"), (1, "orange")],
             description="Invalid messages sent to the dead-letter topic in the time range."),
        stat("Oldest snapshot age", (16, 0, 4, 4),
             f"time() - min(community_pulse_last_snapshot_timestamp_seconds{{{inst}}})", "s",
             thresholds=[(None, "green"), (300, "yellow"), (900, "red")],
             description="Seconds since the worker that snapshotted least recently wrote its "
                         "last snapshot (Parquet and gauges)."),
        stat("Consumer lag", (20, 0, 4, 4),
             f"max(community_pulse_consumer_lag_seconds{{{inst}}})", "s",
             thresholds=[(None, "green"), (60, "yellow"), (300, "red")],
             description="Now minus the Kafka time of the newest message the slowest worker "
                         "processed: how far behind the producers it is. It also grows when "
                         "no producer sends anything at all."),
        timeseries("Throughput per topic", (0, 4, 12, 9), refs(per_topic), "eps",
                   description="Messages per second per topic: consumed, processed, duplicates "
                               "and dead-lettered."),
        timeseries("Dead-lettered by reason", (12, 4, 12, 9), [target(
            f"sum by (topic, reason) (rate(community_pulse_events_dead_lettered_total"
            f"{{{inst}}}{rate}))", "{{topic}} {{reason}}")], "eps",
            description="Invalid messages per second, by topic and reason."),
        timeseries("Consumer lag per worker", (0, 13, 8, 8), [target(
            f"max by (instance) (community_pulse_consumer_lag_seconds{{{inst}}})",
            "{{instance}}")], "s",
            description="Now minus the Kafka time of the newest message each worker "
                        "processed: the freshness of its gauges and snapshots."),
        timeseries("Newest event age per topic", (8, 13, 8, 8), [target(
            f"max by (instance, topic) (community_pulse_event_time_lag_seconds{{{inst}}})",
            "{{instance}} {{topic}}")], "s",
            description="Now minus the event time of the newest event seen per topic. A quiet "
                        "topic (views, memberships) grows here without being behind; look at "
                        "consumer lag for freshness."),
        timeseries("Owned communities per worker", (16, 13, 8, 8), [target(
            f"community_pulse_owned_communities{{{inst}}}", "{{instance}}")],
            description="Communities each worker exports; they move after a rebalance."),
        timeseries("Snapshot duration", (0, 21, 8, 8),
                   quantiles("community_pulse_snapshot_duration_seconds"), "s",
                   description="Time to compute one snapshot of all owned communities "
                               "(p50, p95, p99)."),
        timeseries("Sink write duration", (8, 21, 8, 8),
                   quantiles("community_pulse_sink_duration_seconds", "sink"), "s",
                   description="Time to write one snapshot per sink (Parquet, metrics)."),
        timeseries("Sink errors", (16, 21, 8, 8), [target(
            f"sum by (instance, sink) (increase(community_pulse_sink_errors_total{{{inst}}}"
            f"{rate}))", "{{instance}} {{sink}}")],
            description="Failed snapshot writes per sink; see the worker log."),
        stat("Workers catching up", (0, 29, 6, 4),
             f"sum(community_pulse_catching_up{{{inst}}})",
             thresholds=[(None, "green"), (1, "orange")],
             description="Workers reading a backlog: they write no live rows and withhold "
                         "the closing values the trend alerts compare."),
        stat("Closing rows up to (slowest worker)", (6, 29, 6, 4),
             f"min(community_pulse_closing_timestamp_seconds{{{inst}}}) * 1000",
             "dateTimeFromNow", thresholds=[(None, "text")],
             description="The newest UTC midnight whose closing rows every worker has "
                         "written. " + CLOSING_NOTE),
        timeseries("Events too late for closing rows", (12, 29, 12, 8), [target(
            f"sum by (instance) (rate(community_pulse_closing_late_events_total{{{inst}}}"
            f"{rate}))", "{{instance}}")], "eps",
            description="Events that arrived after the grace period of a midnight at or "
                        "after their time, once per such midnight written final without "
                        "them (an event days late counts for each day); final closing "
                        "rows stay as they were."),
    ]
    return dashboard("community-pulse-pipeline", "Community Pulse — pipeline health", panels,
                     [datasource_var(), instance_var], ["pipeline"],
                     "Kafka consumption, dead letters, event-time lag, snapshots and sinks.")


def dashboards() -> dict[str, Json]:
    """File name -> dashboard model."""
    return {f"{d['uid']}.json": d for d in (overview(), community(), pipeline())}


# ---------------------------------------------------------------------- alert rules

_CONDITION = re.compile(r"^(?P<value>.+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<thr>-?\d+(?:\.\d+)?)$",
                        re.DOTALL)


def split_condition(expr: str) -> tuple[str, str, str]:
    """`<value> <op> <number>` -> (value, op, number); the value may hold comparisons."""
    m = _CONDITION.match(" ".join(expr.split()))
    if not m:
        raise ValueError(f"alert expr is not '<value> <op> <number>': {expr!r}")
    # the non-greedy value plus anchored number picks the last top-level operator
    return m.group("value"), m.group("op"), m.group("thr")


def grafana_rule(rule: Json) -> Json:
    value, op, thr = split_condition(rule["expr"])
    annotations = {k: str(v).replace("$value", "$values.B.Value")
                   for k, v in rule.get("annotations", {}).items()}
    return {
        "uid": "cp-" + re.sub(r"(?<!^)(?=[A-Z])", "-", rule["alert"]).lower(),
        "title": rule["alert"],
        "condition": "C",
        "data": [
            {"refId": "A", "datasourceUid": DATASOURCE_UID,
             "relativeTimeRange": {"from": 600, "to": 0},
             "model": {"refId": "A", "expr": value, "instant": True, "range": False,
                       "datasource": {"type": "prometheus", "uid": DATASOURCE_UID}}},
            {"refId": "B", "datasourceUid": "__expr__",
             "model": {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last",
                       "settings": {"mode": "dropNN"},
                       "datasource": {"type": "__expr__", "uid": "__expr__"}}},
            {"refId": "C", "datasourceUid": "__expr__",
             "model": {"refId": "C", "type": "math", "expression": f"$B {op} {thr}",
                       "datasource": {"type": "__expr__", "uid": "__expr__"}}},
        ],
        "noDataState": "OK",
        "execErrState": "Error",
        "for": rule.get("for", "0s"),
        "labels": dict(rule.get("labels", {})),
        "annotations": annotations,
        "isPaused": False,
    }


def alert_rules() -> Json:
    """Grafana alerting provisioning document (apiVersion 1) derived from Prometheus alerts."""
    doc = yaml.safe_load(PROMETHEUS_ALERTS.read_text(encoding="utf-8"))
    rules = [grafana_rule(r) for g in doc["groups"] for r in g["rules"] if "alert" in r]
    return {"apiVersion": 1, "groups": [{
        "orgId": 1, "name": RULE_GROUP, "folder": FOLDER_TITLE,
        "interval": RULE_GROUP_INTERVAL, "rules": rules}]}


# ---------------------------------------------------------------------------- files


def rendered() -> dict[Path, str]:
    files = {DASHBOARD_DIR / name: json.dumps(d, indent=2, ensure_ascii=False) + "\n"
             for name, d in dashboards().items()}
    header = ("# GENERATED by grafana/build.py from deploy/prometheus/rules/alerts.yml;"
              " do not edit.\n")
    files[ALERT_RULES_FILE] = header + yaml.safe_dump(alert_rules(), sort_keys=False,
                                                      allow_unicode=True, width=100)
    return files


def main(argv: list[str]) -> int:
    stale = [p for p, text in rendered().items()
             if not p.exists() or p.read_text(encoding="utf-8") != text]
    if "--check" in argv:
        for p in stale:
            print(f"out of date: {p.relative_to(REPO)} (run python grafana/build.py)")
        return 1 if stale else 0
    for p, text in rendered().items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    print(f"wrote {len(stale)} changed file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
