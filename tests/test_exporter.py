"""The Prometheus exposition: names, HELP texts, privacy threshold, cardinality budget."""

from __future__ import annotations

import random

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from devkit import generate as gen
from schemas.events import Event, Reason
from sinks.prometheus import CLOSING_FAMILIES, ClosingValue, CommunitySeries, WorkerMetrics
from streams.config import MetricConfig
from streams.core import PulseCore
from streams.pipeline import TopicStats

NOW = 1_795_000_000_000
BUDGET_PER_COMMUNITY = 65  # docs/operations.md
CLOSING_BUDGET_PER_COMMUNITY = 8  # 2 families x 2 windows x (newest, 7 days before)


def series_of(snapshot: list) -> CommunitySeries:
    series = CommunitySeries(min_members=5)
    for community_id in {row.community_id for row in snapshot}:
        series.update(community_id, [r for r in snapshot if r.community_id == community_id])
    return series


def rows() -> list:
    rng = random.Random(4)
    core = PulseCore(MetricConfig())
    events = [e for c in gen.plan(6, 200, rng) for e in gen.history(c, NOW, 35, rng)]
    core.apply(msgspec.convert(e, type=Event) for e in events)
    core.apply([Event("tiny-1", "post", "tiny", "u1", NOW - 1000, post_id="p")])
    return core.snapshot(NOW)


def test_series_per_community_stay_within_the_budget_and_small_ones_are_hidden() -> None:
    series = series_of(rows())
    per_community: dict[str, int] = {}
    for family in text_string_to_metric_families(series.render()):
        assert family.documentation, family.name
        for sample in family.samples:
            assert "user" not in "".join(sample.labels.values())
            per_community[sample.labels["community"]] = (
                per_community.get(sample.labels["community"], 0) + 1)
    assert "tiny" not in per_community  # one member: below the privacy threshold
    assert len(per_community) == 6
    assert max(per_community.values()) <= BUDGET_PER_COMMUNITY
    assert min(per_community.values()) >= 41  # every always-defined series is there


def test_pipeline_metrics_follow_prometheus_conventions() -> None:
    stats = {"community.posts": TopicStats(consumed=3, processed=2, duplicates=1)}
    metrics = WorkerMetrics(stats, min_members=5)
    text = metrics.exposition().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, family in families.items():
        assert name.startswith("community_pulse_")
        assert family.documentation
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
    dead = [s for s in families["community_pulse_events_dead_lettered"].samples
            if s.name.endswith("_total")]
    assert len(dead) == len(Reason.ALL) and all(s.value == 0 for s in dead)  # all from zero


def test_cached_series_follow_updates_and_removals_and_escape_labels() -> None:
    snapshot = rows()
    series = series_of(snapshot)
    first = snapshot[0].community_id
    assert f'community="{first}"' in series.render()  # the page is now cached
    series.retain({r.community_id for r in snapshot} - {first})
    names = {s.labels["community"] for f in text_string_to_metric_families(series.render())
             for s in f.samples}
    assert first not in names and names
    odd = [r.__class__(**{**{k: getattr(r, k) for k in r.__slots__},
                          "community_id": 'a "quoted"\\ name\nx'}) for r in snapshot[:2]]
    series.update(odd[0].community_id, odd)
    parsed = {s.labels["community"] for f in text_string_to_metric_families(series.render())
              for s in f.samples}
    assert 'a "quoted"\\ name\nx' in parsed
    assert 'a \\"quoted\\"' in series.render()
    series.remove(odd[0].community_id)
    assert 'a \\"quoted\\"' not in series.render()


def test_closing_series_hold_the_newest_and_week_old_values_within_their_budget() -> None:
    series = CommunitySeries(min_members=5, families=CLOSING_FAMILIES)
    series.update_closing("c", [
        ("0d", ClosingValue(7, 10, 50.0, 1)), ("0d", ClosingValue(28, 12, 55.0, 2)),
        ("7d", ClosingValue(7, 3, 80.0, 2)),  # below the privacy threshold then: hidden
        ("7d", ClosingValue(28, 12, 70.0, 2))])
    series.update_closing("gone", [("0d", ClosingValue(7, 10, 1.0, 0))])
    series.retain({"c"})
    found = {}
    for family in text_string_to_metric_families(series.render()):
        assert family.documentation, family.name
        for sample in family.samples:
            labels = sample.labels
            found[(sample.name, labels["window"], labels["ago"])] = sample.value
            assert labels["community"] == "c"
    assert found == {
        ("community_pulse_closing_sustainability_score", "7d", "0d"): 50.0,
        ("community_pulse_closing_tier", "7d", "0d"): 1.0,
        ("community_pulse_closing_sustainability_score", "28d", "0d"): 55.0,
        ("community_pulse_closing_tier", "28d", "0d"): 2.0,
        ("community_pulse_closing_sustainability_score", "28d", "7d"): 70.0,
        ("community_pulse_closing_tier", "28d", "7d"): 2.0}
    assert len(found) <= CLOSING_BUDGET_PER_COMMUNITY
