"""Panels an ops team keeps (issue 13, point 5): every panel says what it measures, the
pipeline dashboard shows consumer lag, not a newest-event age that turns red only because
a topic is quiet, and a stagnating community's recent score is shown beside its long one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "grafana" / "dashboards"
DASHBOARDS = {p.name: json.loads(p.read_text(encoding="utf-8"))
              for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def exprs(panel: dict[str, Any]) -> str:
    return " ".join(t["expr"] for t in panel.get("targets", []))


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_says_what_it_measures(name: str) -> None:
    for panel in DASHBOARDS[name]["panels"]:
        description = panel.get("description", "")
        assert len(description.split()) >= 5, f"{name}: {panel['title']!r} has no description"


def test_pipeline_shows_consumer_lag_and_no_stat_of_newest_event_age() -> None:
    panels = DASHBOARDS["community-pulse-pipeline.json"]["panels"]
    stats = [p for p in panels if p["type"] == "stat"]
    assert any("community_pulse_consumer_lag_seconds" in exprs(p) for p in stats)
    assert not any("community_pulse_event_time_lag_seconds" in exprs(p) for p in stats)
    age = next(p for p in panels if "community_pulse_event_time_lag_seconds" in exprs(p))
    assert "quiet topic" in age["description"]


def test_stagnation_is_shown_beside_a_recent_score() -> None:
    overview = DASHBOARDS["community-pulse-overview.json"]
    table = next(p for p in overview["panels"] if p["type"] == "table")
    assert 'community_pulse_sustainability_score{window="7d"}' in exprs(table)
    community = DASHBOARDS["community-pulse-community.json"]["panels"]
    titles = {p["title"] for p in community}
    assert "Stagnating (last 7/14 days)" in titles and "Sustainability ($window)" in titles
