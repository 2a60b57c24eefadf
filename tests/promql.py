"""Every PromQL expression the project ships, with where it came from.

    from tests.promql import all_exprs
    for e in all_exprs(community="demo-healthy", window="28d"):
        ...  # e.source, e.expr: run it against a real Prometheus

Sources: dashboard panel targets and variable queries (template variables substituted),
Grafana-managed alert rule queries, Prometheus alert and recording rules.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import yaml

REPO = Path(__file__).resolve().parents[1]
PROM_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
GRAFANA_DIR = REPO / "grafana"
DASHBOARD_FILES = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
GRAFANA_RULE_FILES = sorted((GRAFANA_DIR / "provisioning" / "alerting").glob("*.yml"))

# The exported series (docs/metrics.md); histograms also have _bucket/_sum/_count.
EXPORTED_METRICS = frozenset({
    "community_pulse_members", "community_pulse_role_users",
    "community_pulse_contributor_share_ratio", "community_pulse_tier",
    "community_pulse_sustainability_score", "community_pulse_sustainability_component_ratio",
    "community_pulse_window_events", "community_pulse_posts_eligible",
    "community_pulse_posts_answered_in_sla", "community_pulse_unanswered_posts",
    "community_pulse_median_first_reply_seconds", "community_pulse_stagnating",
    "community_pulse_last_activity_timestamp_seconds",
    "community_pulse_events_consumed_total", "community_pulse_events_processed_total",
    "community_pulse_events_duplicates_total", "community_pulse_events_dead_lettered_total",
    "community_pulse_event_time_lag_seconds", "community_pulse_sink_errors_total",
    "community_pulse_owned_communities", "community_pulse_last_snapshot_timestamp_seconds",
    "community_pulse_consumer_lag_seconds", "community_pulse_consumer_lag_messages",
    "community_pulse_assigned_partitions", "community_pulse_kafka_send_retries_total",
    "community_pulse_sink_pending_rows", "community_pulse_sink_dropped_rows_total",
    "community_pulse_sink_pending_bytes", "community_pulse_quarantined_files_total",
    "community_pulse_catching_up", "community_pulse_steering_file_invalid",
    "community_pulse_closing_sustainability_score", "community_pulse_closing_tier",
    "community_pulse_closing_timestamp_seconds", "community_pulse_closing_late_events_total",
    "community_pulse_merge_suggestion_jaccard",
    "community_pulse_merge_suggestion_merged_share_ratio", "community_pulse_focus_rank",
    # steering (docs/steering.md)
    "community_pulse_goal_value", "community_pulse_goal_expected", "community_pulse_goal_target",
    "community_pulse_goal_progress_ratio", "community_pulse_goal_status",
    "community_pulse_experts", "community_pulse_experts_replying",
    "community_pulse_expert_replies", "community_pulse_expert_needed",
    "community_pulse_content_posts", "community_pulse_content_engagement_ratio",
})
EXPORTED_HISTOGRAMS = frozenset({
    "community_pulse_snapshot_duration_seconds", "community_pulse_sink_duration_seconds"})


class PromExpr(NamedTuple):
    source: str  # e.g. "grafana/dashboards/x.json panel 3 'Tier' target A"
    expr: str


def load_build() -> ModuleType:
    """grafana/build.py as a module (grafana/ is not a package)."""
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA_DIR / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def substitute(expr: str, community: str, window: str) -> str:
    """Fill in Grafana template variables; values are escaped for a "..." PromQL string."""

    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"')

    values = {
        "community": esc(community), "window": esc(window), "instance": ".*",
        "__rate_interval": "1m", "__interval": "15s", "__range": "1h",
        "datasource": "prometheus",
    }

    def fill(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", fill, expr)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def dashboard_exprs(community: str = "demo", window: str = "28d") -> list[PromExpr]:
    out: list[PromExpr] = []
    for path in DASHBOARD_FILES:
        dash: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        for panel in dash.get("panels", []):
            for t in panel.get("targets", []):
                if t.get("expr"):
                    src = (f"{_rel(path)} panel {panel.get('id')} {panel.get('title')!r} "
                           f"target {t.get('refId')}")
                    out.append(PromExpr(src, substitute(t["expr"], community, window)))
        for var in dash.get("templating", {}).get("list", []):
            q = var.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q or "")
            if var.get("type") == "query" and m:
                out.append(PromExpr(f"{_rel(path)} variable {var['name']}",
                                    substitute(m.group(1), community, window)))
    return out


def grafana_alert_exprs() -> list[PromExpr]:
    out: list[PromExpr] = []
    for path in GRAFANA_RULE_FILES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                for q in rule.get("data", []):
                    if q.get("datasourceUid") != "__expr__" and q["model"].get("expr"):
                        out.append(PromExpr(f"{_rel(path)} rule {rule['title']} query "
                                            f"{q['refId']}", q["model"]["expr"]))
    return out


def prometheus_rules() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, rule) for path in RULE_FILES
            for group in (yaml.safe_load(path.read_text(encoding="utf-8")) or {})["groups"]
            for rule in group["rules"]]


def prometheus_exprs() -> list[PromExpr]:
    return [PromExpr(f"{_rel(path)} {'alert' if 'alert' in r else 'record'} "
                     f"{r.get('alert') or r.get('record')}", " ".join(r["expr"].split()))
            for path, r in prometheus_rules()]


def all_exprs(community: str = "demo", window: str = "28d") -> list[PromExpr]:
    """Every PromQL expression used anywhere, template variables filled in."""
    return dashboard_exprs(community, window) + grafana_alert_exprs() + prometheus_exprs()


def recorded_names() -> set[str]:
    return {r["record"] for _, r in prometheus_rules() if "record" in r}


def metric_names(expr: str) -> set[str]:
    """Names of community_pulse series (raw or recorded) an expression reads."""
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"(?<![\w:])((?:\w+:)?community_pulse[\w:]*)", no_strings))


def known_metric(name: str) -> bool:
    if name in EXPORTED_METRICS or name in recorded_names():
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return base in EXPORTED_HISTOGRAMS


def promtool() -> str | None:
    """Path of promtool; calls pytest.skip/fail when absent (fail when CI=true)."""
    import pytest

    path = shutil.which("promtool")
    if path:
        return path
    message = ("promtool not found: apt-get install prometheus "
               "(or run deploy/prometheus/install.sh)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " — required in CI")
    pytest.skip(message)
    return None
