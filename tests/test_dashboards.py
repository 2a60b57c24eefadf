"""Grafana dashboards and alert rules: structure, datasource refs, PromQL validity, names."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql import (
    DASHBOARD_FILES,
    GRAFANA_DIR,
    PROM_DIR,
    REPO,
    all_exprs,
    known_metric,
    load_build,
    metric_names,
    prometheus_rules,
    promtool,
)

DASHBOARDS = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARD_FILES}
PROVISIONING = GRAFANA_DIR / "provisioning"


def test_generated_files_are_up_to_date() -> None:
    stale = [str(p.relative_to(REPO)) for p, text in load_build().rendered().items()
             if not p.exists() or p.read_text(encoding="utf-8") != text]
    assert not stale, f"run python grafana/build.py: {stale}"


def test_the_three_dashboards_exist() -> None:
    uids = {d["uid"] for d in DASHBOARDS.values()}
    assert uids == {"community-pulse-overview", "community-pulse-community",
                    "community-pulse-pipeline"}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name: str) -> None:
    d = DASHBOARDS[name]
    for key in ("uid", "title", "panels", "templating", "schemaVersion", "time"):
        assert key in d, key
    assert len(d["uid"]) <= 40
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in d["panels"]:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
        if p["type"] == "text":
            assert p["options"]["content"].strip()
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            assert t["expr"].strip()
        for var in ("community", "window", "instance"):
            if any(f"${var}" in t["expr"] for t in p["targets"]):
                assert var in variables, f"{p['title']} uses undefined ${var}"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}"


def test_panels_no_overlap() -> None:
    for name, d in DASHBOARDS.items():
        cells: set[tuple[int, int]] = set()
        for p in d["panels"]:
            g = p["gridPos"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{name}: {p['title']} overlaps"
            cells |= mine


def test_required_content() -> None:
    overview = DASHBOARDS["community-pulse-overview.json"]
    table = next(p for p in overview["panels"] if p["type"] == "table")
    text = " ".join(t["expr"] for t in table["targets"])
    for metric in ("community_pulse_tier", "community_pulse_contributor_share_ratio",
                   "community_pulse_sustainability_score", "community_pulse_stagnating"):
        assert metric in text
    actions = next(p for p in overview["panels"] if p["type"] == "text")["options"]["content"]
    for phrase in ("15%", "30%", "content expert", "Merge", "creator", "critic"):
        assert phrase in actions
    community = DASHBOARDS["community-pulse-community.json"]
    assert "community" in {v["name"] for v in community["templating"]["list"]}
    ladder = next(p for p in community["panels"] if "Role ladder" in p["title"])
    assert ladder["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    exprs = " ".join(t["expr"] for p in community["panels"] for t in p.get("targets", []))
    for metric in ("posts_eligible", "posts_answered_in_sla", "unanswered_posts",
                   "median_first_reply_seconds", "sustainability_component_ratio"):
        assert metric in exprs
    pipeline = " ".join(t["expr"] for p in DASHBOARDS["community-pulse-pipeline.json"]["panels"]
                        for t in p.get("targets", []))
    for metric in ("consumed", "processed", "duplicates", "dead_lettered", "event_time_lag",
                   "snapshot_duration", "sink_duration", "sink_errors"):
        assert metric in pipeline


def test_template_variables_are_all_substituted() -> None:
    left = [e for e in all_exprs() if "$" in e.expr]
    assert not left


def test_every_metric_name_is_exported_or_recorded() -> None:
    unknown = {(e.source, n) for e in all_exprs() for n in metric_names(e.expr)
               if not known_metric(n)}
    assert not unknown


def test_every_expr_parses(tmp_path: Path) -> None:
    tool = promtool()
    exprs = all_exprs(community='a "quoted" community', window="7d")
    rules = {"groups": [{"name": "parse-check", "rules": [
        {"record": f"check:expr_{i}", "expr": e.expr} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = subprocess.run([str(tool), "check", "rules", str(path)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:  # name the culprits
        bad = [e.source for e in exprs if _promtool_rejects(str(tool), e.expr, tmp_path)]
        pytest.fail(f"promtool rejects: {bad}\n{result.stdout}{result.stderr}")


def _promtool_rejects(tool: str, expr: str, tmp: Path) -> bool:
    path = tmp / "one.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "check:one", "expr": expr}]}]}), encoding="utf-8")
    return subprocess.run([tool, "check", "rules", str(path)], capture_output=True,
                          check=False).returncode != 0


# ---------------------------------------------------------------- Grafana alerting


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_grafana_rules_match_prometheus_alerts() -> None:
    build = load_build()
    doc = _yaml(PROVISIONING / "alerting" / "community-pulse-rules.yml")
    assert doc["apiVersion"] == 1
    (group,) = doc["groups"]
    grafana = {r["title"]: r for r in group["rules"]}
    prom = {r["alert"]: r for _, r in prometheus_rules() if "alert" in r}
    assert set(grafana) == set(prom)
    for required in ("CommunityStagnating", "CommunitySustainabilityDrop",
                     "CommunityTierDowngrade", "CommunityUnansweredPosts",
                     "PipelineConsumerLagHigh", "PipelineDeadLetters",
                     "PipelineSnapshotsStale", "PipelineSinkErrors"):
        assert required in prom
    uids = [r["uid"] for r in group["rules"]]
    assert len(uids) == len(set(uids)) and all(len(u) <= 40 for u in uids)
    for name, rule in grafana.items():
        value, op, thr = build.split_condition(prom[name]["expr"])
        data = {d["refId"]: d for d in rule["data"]}
        assert rule["condition"] == "C"
        assert data["A"]["model"]["expr"] == value
        assert data["A"]["datasourceUid"] == build.DATASOURCE_UID
        assert data["B"]["model"]["type"] == "reduce" and data["B"]["model"]["expression"] == "A"
        assert data["C"]["model"]["expression"] == f"$B {op} {thr}"
        assert rule["for"] == prom[name].get("for", "0s")
        assert rule["labels"] == prom[name]["labels"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert set(rule["annotations"]) == set(prom[name]["annotations"])
        assert "$value " not in json.dumps(rule["annotations"])


def test_split_condition_takes_the_last_operator() -> None:
    split = load_build().split_condition
    assert split("max(a and on (x) b > 0) > 900") == ("max(a and on (x) b > 0)", ">", "900")
    assert split("a - b >= 15") == ("a - b", ">=", "15")
    assert split('up{job="x"} == 0') == ('up{job="x"}', "==", "0")
    with pytest.raises(ValueError):
        split("absent(up)")


def test_provisioning_files() -> None:
    ds = _yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert [d["uid"] for d in ds] == [load_build().DATASOURCE_UID]
    assert ds[0]["type"] == "prometheus"
    (provider,) = _yaml(PROVISIONING / "dashboards" / "community-pulse.yml")["providers"]
    assert provider["type"] == "file" and provider["folderUid"] == "community-pulse"
    contact = _yaml(PROVISIONING / "alerting" / "contact-points.yml")["contactPoints"]
    receivers = {c["name"] for c in contact}
    policy = _yaml(PROVISIONING / "alerting" / "policies.yml")["policies"][0]
    used = {policy["receiver"]} | {r["receiver"] for r in policy["routes"]}
    assert used <= receivers
    severities = {r["labels"]["area"] for _, r in prometheus_rules() if "alert" in r}
    routed = {m[2] for r in policy["routes"] for m in r["object_matchers"] if m[0] == "area"}
    assert severities <= routed


def test_push_module_agrees_with_build() -> None:
    from sinks import grafana as push

    build = load_build()
    assert (push.FOLDER_UID, push.FOLDER_TITLE) == (build.FOLDER_UID, build.FOLDER_TITLE)
    assert push.DEFAULT_DATASOURCE_UID == build.DATASOURCE_UID
    assert (GRAFANA_DIR / push.RULES_FILE) == build.ALERT_RULES_FILE
    assert PROM_DIR.exists()
