"""Prometheus exposition: per-community gauges and pipeline health.

Community gauges are rendered when a community's snapshot changes and cached, so a
scrape costs a string join however many communities a worker owns; pipeline counters
are read live at scrape time (custom collectors, as prometheus/client_python recommends
for state that lives elsewhere). A community the worker stops owning disappears at once.
Communities with fewer members than the privacy threshold are never exported, and
no label ever carries a user id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from schemas.events import Reason
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


def community_families(
    rows: Iterable[SnapshotRow], min_members: int, timestamps: bool = False,
    extra_labels: Mapping[str, str] | None = None,
) -> list[Metric]:
    """Per-community metric families for snapshot rows.

    Live scrapes render the latest snapshot without timestamps; a backfill renders a
    whole history with each sample stamped with its as_of.
    """
    extra = dict(extra_labels or {})
    cw = ("community", "window", *extra)
    members = _gauge("members", "Members in the window (SPEC 2).", cw)
    roles = _gauge("role_users", "Members by primary role on the ladder.", (*cw, "role"))
    share = _gauge("contributor_share_ratio", "Share of members who are creator, "
                   "conversationalist or critic.", cw)
    tier = _gauge("tier", "Tier: 0 low (<15%), 1 medium (15-30%), 2 high (>=30%).", cw)
    score = _gauge("sustainability_score", "Sustainability score, 0-100.", cw)
    component = _gauge("sustainability_component_ratio", "Sustainability component in [0,1] "
                       "(absent when undefined).", (*cw, "component"))
    events = _gauge("window_events", "Distinct events in the window.", (*cw, "type"))
    eligible = _gauge("posts_eligible", "Posts in the window older than the response SLA.", cw)
    answered = _gauge("posts_answered_in_sla", "Eligible posts first answered within the SLA.",
                      cw)
    unanswered = _gauge("unanswered_posts",
                        "Posts older than the SLA with no reply by another user.", cw)
    median = _gauge("median_first_reply_seconds",
                    "Median time to the first reply by another user.", cw)
    c = ("community", *extra)
    stagnating = _gauge("stagnating", "1 when the community stagnates (SPEC 3).", c)
    last_activity = _gauge("last_activity_timestamp_seconds", "Newest activity event time.", c)
    rows = list(rows)
    first_window = min((r.window_days for r in rows), default=0)
    for row in rows:
        if row.members < min_members:
            continue
        ts = row.as_of_ms / 1000 if timestamps else None
        labels = [row.community_id, f"{row.window_days}d", *extra.values()]

        def put(family: GaugeMetricFamily, value: float, *more: str,
                labels: list[str] = labels, ts: float | None = ts) -> None:
            family.add_metric([*labels[:2], *more, *labels[2:]] if more else labels, value,
                              timestamp=ts)

        put(members, row.members)
        for role, field in ROLE_FIELDS.items():
            put(roles, getattr(row, field), role)
        put(share, row.contributor_share)
        put(tier, row.tier_level)
        put(score, row.sustainability)
        for name in COMPONENTS:
            if getattr(row, name) is not None:
                put(component, getattr(row, name), name)
        for kind, field in EVENT_FIELDS.items():
            put(events, getattr(row, field), kind)
        put(eligible, row.posts_eligible)
        put(answered, row.posts_answered_in_sla)
        put(unanswered, row.unanswered_posts)
        if row.median_first_reply_seconds is not None:
            put(median, row.median_first_reply_seconds)
        if row.window_days == first_window:  # per-community series, once per snapshot
            community_labels = [row.community_id, *extra.values()]
            stagnating.add_metric(community_labels, float(row.stagnating), timestamp=ts)
            if row.last_activity_ms is not None:
                last_activity.add_metric(community_labels, row.last_activity_ms / 1000,
                                         timestamp=ts)
    return [members, roles, share, tier, score, component, events, eligible, answered,
            unanswered, median, stagnating, last_activity]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _text_lines(family: Metric) -> list[str]:
    """Sample lines of one family in the Prometheus text format (0.0.4)."""
    lines = []
    for sample in family.samples:
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
        lines.append(f"{sample.name}{{{labels}}} {floatToGoString(sample.value)}\n")
    return lines


class CommunitySeries:
    """Per-community gauges, rendered when a community's rows change, not per scrape.

    A scrape then only joins cached lines, so its cost does not grow with how often
    Prometheus (or a dashboard) asks, and refreshing one community touches only its
    own lines. Forgetting a community (after a rebalance) removes its series at once.
    """

    def __init__(self, min_members: int) -> None:
        self._min_members = min_members
        self._headers = {
            family.name: f"# HELP {family.name} {family.documentation}\n"
                         f"# TYPE {family.name} gauge\n"
            for family in community_families([], min_members)
        }
        self._lines: dict[str, dict[str, list[str]]] = {}  # community -> family -> lines

    def update(self, community_id: str, rows: Sequence[SnapshotRow]) -> None:
        families = community_families(rows, self._min_members)
        lines = {family.name: _text_lines(family) for family in families if family.samples}
        if lines:
            self._lines[community_id] = lines
        else:
            self._lines.pop(community_id, None)

    def replace_all(self, rows: Sequence[SnapshotRow]) -> None:
        by_community: dict[str, list[SnapshotRow]] = {}
        for row in rows:
            by_community.setdefault(row.community_id, []).append(row)
        self._lines = {}
        for community_id, community_rows in by_community.items():
            self.update(community_id, community_rows)

    def remove(self, community_id: str) -> None:
        self._lines.pop(community_id, None)

    def render(self) -> str:
        per_community = list(self._lines.values())  # a stable copy against updates
        parts = []
        for name, header in self._headers.items():
            parts.append(header)
            for lines in per_community:
                parts.extend(lines.get(name, ()))
        return "".join(parts)


def openmetrics_history(
    rows: Iterable[SnapshotRow], min_members: int, extra_labels: Mapping[str, str]
) -> bytes:
    """A snapshot history as timestamped OpenMetrics text, for
    `promtool tsdb create-blocks-from openmetrics` (backfilling trend alerts)."""
    lines = []
    for family in community_families(rows, min_members, True, extra_labels):
        # Each series' samples together and in time order, as OpenMetrics requires.
        family.samples.sort(key=lambda s: (sorted(s.labels.items()), s.timestamp))
        registry = CollectorRegistry()
        registry.register(_Fixed(family))
        lines.append(openmetrics.generate_latest(registry).removesuffix(b"# EOF\n"))
    return b"".join(lines) + b"# EOF\n"


class _Fixed(Collector):
    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> Iterator[Metric]:
        yield self._family


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
            # Every reason from zero, so the first dead letter shows up as an increase.
            for reason in Reason.ALL:
                dead.add_metric([topic, reason], s.dead_lettered[reason])
            if s.newest_event_ms is not None:
                lag.add_metric([topic], max(0.0, now - s.newest_event_ms / 1000))
        yield from (consumed, processed, duplicates, dead, lag)


class WorkerMetrics:
    """What a worker serves on /metrics: cached community series + live pipeline metrics."""

    def __init__(self, stats: Mapping[str, TopicStats], min_members: int) -> None:
        self.communities = CommunitySeries(min_members)
        self.registry = CollectorRegistry()
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

    def exposition(self) -> bytes:
        return generate_latest(self.registry) + self.communities.render().encode()

    def serve(self, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
        """Serve /metrics from a daemon thread (what start_http_server does, plus the
        cached community series)."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = metrics.exposition()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # no access log on stderr

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
        return server
