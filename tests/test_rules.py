"""Prometheus config, recording and alerting rules: `promtool check` and `promtool test`.

Skipped with a message when promtool is missing on a developer machine; in CI (CI=true) a
missing promtool fails instead.
"""

from __future__ import annotations

import subprocess

import yaml

from tests.promql import PROM_DIR, RULE_FILES, prometheus_rules, promtool

TEST_FILES = sorted((PROM_DIR / "tests").glob("*.yml"))


def _run(*args: str) -> None:
    tool = promtool()
    result = subprocess.run([str(tool), *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_rules() -> None:
    _run("check", "rules", *map(str, RULE_FILES))


def test_check_config() -> None:
    _run("check", "config", str(PROM_DIR / "prometheus.yml"))


def test_unit_tests_pass() -> None:
    _run("test", "rules", *map(str, TEST_FILES))


def _tests() -> list[dict]:
    return [t for f in TEST_FILES for t in yaml.safe_load(f.read_text(encoding="utf-8"))["tests"]]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = [c for t in _tests() for c in t.get("alert_rule_test", [])]
    for _, rule in prometheus_rules():
        if "alert" not in rule:
            continue
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no firing case"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no quiet case"


def test_every_recording_rule_is_tested() -> None:
    tested = {c["expr"] for t in _tests() for c in t.get("promql_expr_test", [])}
    for _, rule in prometheus_rules():
        if "record" in rule:
            assert rule["record"] in tested, f"{rule['record']} has no promql_expr_test"


def test_alerts_have_severity_summary_and_runbook() -> None:
    for _, rule in prometheus_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}
            assert {"summary", "description", "runbook"} <= set(rule["annotations"])
            anchor = rule["annotations"]["runbook"].split("#")[1]
            docs = (PROM_DIR.parents[1] / "docs" / "operations.md").read_text(encoding="utf-8")
            assert f"### {rule['alert']}" in docs, f"runbook section for {anchor} missing"


def test_config_points_at_rule_files_and_job() -> None:
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    assert sorted(cfg["rule_files"]) == sorted(f"rules/{p.name}" for p in RULE_FILES)
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "community-pulse" and job["scrape_interval"] == "15s"
    targets = yaml.safe_load((PROM_DIR / "targets" / "local.yml").read_text(encoding="utf-8"))
    assert targets[0]["targets"] == ["localhost:9464"]
