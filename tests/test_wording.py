"""One wording for the tier everywhere a user reads it (issue 13, point 1): the share of
members who are creator, conversationalist or critic, as SPEC section 2 and the core
compute it, never "creator or critic"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devkit.demo import summary
from sinks.prometheus import COMMUNITY_FAMILIES

REPO = Path(__file__).resolve().parent.parent
CANONICAL = "creator, conversationalist or critic"
# "creator or critic", "creator+critic", "creators/critics", "critic or creator", ... as a
# description of who counts; "bring creators and critics together" is advice, not a count.
TWO_ROLE_WORDING = re.compile(
    r"creators?\s*(?:or|\+|/)\s*critics?|critics?\s*(?:or|\+|/)\s*creators?", re.I)
USER_FACING = [
    "README.md", "docs/*.md", "devkit/demo.py", "grafana/build.py", "grafana/dashboards/*.json",
    "grafana/provisioning/alerting/*.yml", "deploy/prometheus/rules/*.yml",
    "deploy/prometheus/tests/*.yml", "sinks/prometheus.py",
]


def user_facing_files() -> list[Path]:
    return sorted(p for pattern in USER_FACING for p in REPO.glob(pattern))


@pytest.mark.parametrize("path", user_facing_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_text_says_the_tier_counts_creators_and_critics_only(path: Path) -> None:
    found = TWO_ROLE_WORDING.findall(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(REPO)}: {found}"


def test_the_places_that_define_the_tier_use_the_canonical_wording() -> None:
    for name in ("README.md", "docs/operations.md", "grafana/dashboards/"
                 "community-pulse-overview.json", "deploy/prometheus/rules/alerts.yml"):
        assert CANONICAL in (REPO / name).read_text(encoding="utf-8"), name
    assert CANONICAL in COMMUNITY_FAMILIES["community_pulse_tier"]
    assert CANONICAL in COMMUNITY_FAMILIES["community_pulse_contributor_share_ratio"]
    header = summary({}, 0).splitlines()[0]
    assert f"share of members who are {CANONICAL}" in header
