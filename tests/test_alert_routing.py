"""Every alert says how urgent it is and where it goes (issue 13, point 5): `route` is
`page` exactly for the critical pipeline alerts, `ticket` for the rest, and the example
notification policy sends pages to the on-call receiver before any other route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "deploy" / "prometheus" / "rules" / "alerts.yml"
POLICIES = REPO / "grafana" / "provisioning" / "alerting" / "policies.yml"


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_severity_area_and_route() -> None:
    for rule in alerts():
        labels = rule["labels"]
        assert labels["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert labels["area"] in {"community", "pipeline"}, rule["alert"]
        assert labels["route"] in {"page", "ticket"}, rule["alert"]
        assert (labels["route"] == "page") == (labels["severity"] == "critical"), rule["alert"]
        if labels["area"] == "community":  # community managers act in working hours
            assert labels["route"] == "ticket", rule["alert"]


def test_example_policy_sends_pages_first() -> None:
    policy = yaml.safe_load(POLICIES.read_text(encoding="utf-8"))["policies"][0]
    first = policy["routes"][0]
    assert first["object_matchers"] == [["route", "=", "page"]]
    assert first["receiver"] == "pipeline-oncall"
    assert all(r["receiver"] != "pipeline-oncall" for r in policy["routes"][1:])
