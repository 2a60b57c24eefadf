"""Prometheus exposition: per-community gauges and pipeline health.

Community gauges are computed at scrape time from the latest snapshot the worker
holds (a custom collector, as prometheus/client_python recommends for state that
lives elsewhere), so a community the worker stops owning disappears at once.
Communities with fewer members than the privacy threshold are never exported, and
no label ever carries a user id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.core import SnapshotRow
from streams.pipeline import TopicStats

NS = "community_pulse"
ROLE_FIELDS = {
    "creator": "creators",
    "conversationalist": "conversationalists",
    "critic": "critics",
    "joiner": "joiners",
    "spectator": "spectators",
    "inactive": "inactives",
}
COMPONENTS = ("retention", "continuity", "responsiveness", "participation", "reciprocity")
EVENT_FIELDS = {"post": "posts", "reply": "replies", "like": "likes", "view": "views"}


def _gauge(name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NS}_{name}", doc, labels=list(labels))


class CommunityCollector(Collector):
    """Per-community gauges from the latest snapshot rows (`rows()` returns them)."""

    def __init__(self, rows: Callable[[], Sequence[SnapshotRow]], min_members: int) -> None:
        self._rows = rows
        self._min_members = min_members

    def describe(self) -> list[Metric]:
        return []  # families depend on live state; skip the registry's collision check

    def collect(self) -> Iterator[Metric]:
        cw = ("community", "window")
        members = _gauge("members", "Members in the window (SPEC 2).", cw)
        roles = _gauge("role_users", "Members by primary role on the ladder.", (*cw, "role"))
        share = _gauge(
            "contributor_share_ratio", "Share of members who are creator, "
            "conversationalist or critic.", cw)
        tier = _gauge("tier", "Tier: 0 low (<15%), 1 medium (15-30%), 2 high (>=30%).", cw)
        score = _gauge("sustainability_score", "Sustainability score, 0-100.", cw)
        component = _gauge(
            "sustainability_component_ratio", "Sustainability component in [0,1] "
            "(absent when undefined).", (*cw, "component"))
        events = _gauge("window_events", "Distinct events in the window.", (*cw, "type"))
        eligible = _gauge(
            "posts_eligible", "Posts in the window older than the response SLA.", cw)
        answered = _gauge(
            "posts_answered_in_sla", "Eligible posts first answered within the SLA.", cw)
        unanswered = _gauge(
            "unanswered_posts", "Posts older than the SLA with no reply by another user.", cw)
        median = _gauge(
            "median_first_reply_seconds", "Median time to the first reply by another user.",
            cw)
        stagnating = _gauge("stagnating", "1 when the community stagnates (SPEC 3).",
                            ("community",))
        last_activity = _gauge(
            "last_activity_timestamp_seconds", "Newest activity event time.", ("community",))
        rows = self._rows()
        first_window = min((r.window_days for r in rows), default=0)
        for row in rows:
            if row.members < self._min_members:
                continue
            labels = [row.community_id, f"{row.window_days}d"]
            members.add_metric(labels, row.members)
            for role, field in ROLE_FIELDS.items():
                roles.add_metric([*labels, role], getattr(row, field))
            share.add_metric(labels, row.contributor_share)
            tier.add_metric(labels, row.tier_level)
            score.add_metric(labels, row.sustainability)
            for name in COMPONENTS:
                value = getattr(row, name)
                if value is not None:
                    component.add_metric([*labels, name], value)
            for kind, field in EVENT_FIELDS.items():
                events.add_metric([*labels, kind], getattr(row, field))
            eligible.add_metric(labels, row.posts_eligible)
            answered.add_metric(labels, row.posts_answered_in_sla)
            unanswered.add_metric(labels, row.unanswered_posts)
            if row.median_first_reply_seconds is not None:
                median.add_metric(labels, row.median_first_reply_seconds)
            if row.window_days == first_window:  # per-community series, once
                stagnating.add_metric([row.community_id], float(row.stagnating))
                if row.last_activity_ms is not None:
                    last_activity.add_metric([row.community_id], row.last_activity_ms / 1000)
        yield from (members, roles, share, tier, score, component, events, eligible,
                    answered, unanswered, median, stagnating, last_activity)


class PipelineCollector(Collector):
    """Pipeline counters per topic, read from the ingestor's live stats."""

    def __init__(self, stats: Mapping[str, TopicStats], clock: Callable[[], float] = time.time):
        self._stats = stats
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        consumed = CounterMetricFamily(
            f"{NS}_events_consumed", "Events read from the topic.", labels=["topic"])
        processed = CounterMetricFamily(
            f"{NS}_events_processed", "Valid, new events applied.", labels=["topic"])
        duplicates = CounterMetricFamily(
            f"{NS}_events_duplicates", "Events whose event_id was already seen.",
            labels=["topic"])
        dead = CounterMetricFamily(
            f"{NS}_events_dead_lettered", "Events sent to the dead-letter topic.",
            labels=["topic", "reason"])
        lag = GaugeMetricFamily(
            f"{NS}_event_time_lag_seconds", "Now minus the newest event time seen.",
            labels=["topic"])
        now = self._clock()
        for topic, s in self._stats.items():
            consumed.add_metric([topic], s.consumed)
            processed.add_metric([topic], s.processed)
            duplicates.add_metric([topic], s.duplicates)
            for reason, count in s.dead_lettered.items():
                dead.add_metric([topic, reason], count)
            if s.newest_event_ms is not None:
                lag.add_metric([topic], max(0.0, now - s.newest_event_ms / 1000))
        yield from (consumed, processed, duplicates, dead, lag)


class WorkerMetrics:
    """The registry a worker serves on /metrics, and the instruments it updates."""

    def __init__(
        self,
        rows: Callable[[], Sequence[SnapshotRow]],
        stats: Mapping[str, TopicStats],
        min_members: int,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(CommunityCollector(rows, min_members))
        self.registry.register(PipelineCollector(stats))
        reg = self.registry
        self.snapshot_seconds = Histogram(
            f"{NS}_snapshot_duration_seconds", "Time to compute one snapshot of all owned "
            "communities.", registry=reg)
        self.sink_seconds = Histogram(
            f"{NS}_sink_duration_seconds", "Time to write one snapshot to a sink.",
            ["sink"], registry=reg)
        self.sink_errors = Counter(
            f"{NS}_sink_errors", "Failed sink writes.", ["sink"], registry=reg)
        self.sink_errors.labels("parquet")
        self.owned = Gauge(
            f"{NS}_owned_communities", "Communities whose partitions this worker owns.",
            registry=reg)
        self.last_snapshot = Gauge(
            f"{NS}_last_snapshot_timestamp_seconds", "as_of of the newest snapshot.",
            registry=reg)
