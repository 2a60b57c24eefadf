"""Prometheus exposition: per-community gauges and pipeline health.

Community gauges are rendered when a community's snapshot changes and cached, so a
scrape costs a string join however many communities a worker owns; pipeline counters
are read live at scrape time (custom collectors, as prometheus/client_python recommends
for state that lives elsewhere). A community the worker stops owning disappears at once.
Communities with fewer members than the privacy threshold are never exported, and
no label ever carries a user id.
"""

from __future__ import annotations

import base64
import hmac
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import pyarrow as pa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import _get_ssl_ctx
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from schemas.events import Reason
from sinks.parquet import QUARANTINED, STEERING_TABLES
from streams.config import ConfigError, RuntimeConfig, read_secret
from streams.core import SnapshotRow
from streams.pipeline import TopicStats
from streams.steering.goals import STATUSES, Goal, GoalRow

NS = "community_pulse"
PASSWORD_ENV = "PULSE_METRICS_BASIC_AUTH_PASSWORD"
# Paths served without basic auth: the probes' (a yes/no that reveals no data).
OPEN_PATHS = ("/healthz",)
# Longest a connection may take for its TLS handshake and for each read of its request.
REQUEST_TIMEOUT_S = 10.0
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


# Per-community gauge families, in exposition order: name -> HELP text.
COMMUNITY_FAMILIES = {
    f"{NS}_members": "Members in the window (SPEC 2).",
    f"{NS}_role_users": "Members by primary role on the ladder.",
    f"{NS}_contributor_share_ratio":
        "Share of members who are creator, conversationalist or critic.",
    f"{NS}_tier": "Tier by the share of members who are creator, conversationalist or "
                  "critic: 0 low (<15%), 1 medium (15-30%), 2 high (>=30%).",
    f"{NS}_sustainability_score": "Sustainability score, 0-100.",
    f"{NS}_sustainability_component_ratio":
        "Sustainability component in [0,1] (absent when undefined).",
    f"{NS}_window_events": "Distinct events in the window.",
    f"{NS}_posts_eligible": "Posts in the window older than the response SLA.",
    f"{NS}_posts_answered_in_sla": "Eligible posts first answered within the SLA.",
    f"{NS}_unanswered_posts": "Posts older than the SLA with no reply by another user.",
    f"{NS}_median_first_reply_seconds": "Median time to the first reply by another user.",
    f"{NS}_stagnating": "1 when the community stagnates (SPEC 3).",
    f"{NS}_last_activity_timestamp_seconds": "Newest activity event time.",
    f"{NS}_experts": "Roster content experts who are members (absent without a roster).",
    f"{NS}_experts_replying": "Roster content experts who replied in the window.",
    f"{NS}_expert_replies": "Replies by roster content experts in the window.",
    f"{NS}_expert_needed": "1 when the community has members and no roster expert replied.",
    f"{NS}_content_posts": "Posts in the window by content kind: managed (hard) or ugc (soft).",
    f"{NS}_content_engagement_ratio": "Share of the kind's posts in the window that got a "
                                      "reply or like from another user (absent: no posts).",
}
CONTENT_KINDS = {"managed": ("managed_posts", "managed_engagement"),
                 "ugc": ("ugc_posts", "ugc_engagement")}

# Closing values (streams.closing): the trend alerts and "change 7d" panels compare these.
CLOSING_FAMILIES = {
    f"{NS}_closing_sustainability_score":
        "Sustainability score of the closing row (UTC midnight, final by event time); "
        "ago=0d: the newest midnight, ago=7d: seven days before it.",
    f"{NS}_closing_tier": "Tier (0/1/2) of the closing row; ago as for the score.",
}

Sample = tuple[str, str, float]  # (family, rendered labels, value)


class ClosingValue(NamedTuple):
    """What the trend series need of one closing row."""

    window_days: int
    members: int
    sustainability: float
    tier_level: int


def closing_samples(values: Iterable[tuple[str, ClosingValue]], community_id: str,
                    min_members: int) -> Iterator[Sample]:
    """The closing series of one community from its (ago, value) pairs; a value of
    fewer members than the privacy threshold yields nothing."""
    for ago, value in values:
        if value.members < min_members:
            continue
        labels = _labels((("community", community_id), ("window", f"{value.window_days}d"),
                          ("ago", ago)))
        yield f"{NS}_closing_sustainability_score", labels, value.sustainability
        yield f"{NS}_closing_tier", labels, float(value.tier_level)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def community_samples(
    rows: Iterable[SnapshotRow], min_members: int, extra_labels: Mapping[str, str] | None = None
) -> Iterator[tuple[SnapshotRow, Sample]]:
    """Every per-community sample of the rows (each with the row it came from).

    The one definition of the community series: live /metrics and the backfill both
    render from it. Rows of communities below the privacy threshold yield nothing.
    """
    extra = tuple((extra_labels or {}).items())
    rows = list(rows)
    first_window = min((r.window_days for r in rows), default=0)
    for row in rows:
        if row.members < min_members:
            continue
        base = (("community", row.community_id), ("window", f"{row.window_days}d"))
        plain = _labels((*base, *extra))

        def sample(family: str, value: float, more: tuple[tuple[str, str], ...] = (),
                   plain: str = plain, base: tuple = base, row: SnapshotRow = row
                   ) -> tuple[SnapshotRow, Sample]:
            labels = _labels((*base, *more, *extra)) if more else plain
            return row, (f"{NS}_{family}", labels, value)

        yield sample("members", row.members)
        for role, field in ROLE_FIELDS.items():
            yield sample("role_users", getattr(row, field), (("role", role),))
        yield sample("contributor_share_ratio", row.contributor_share)
        yield sample("tier", row.tier_level)
        yield sample("sustainability_score", row.sustainability)
        for name in COMPONENTS:
            if getattr(row, name) is not None:
                yield sample("sustainability_component_ratio", getattr(row, name),
                             (("component", name),))
        for kind, field in EVENT_FIELDS.items():
            yield sample("window_events", getattr(row, field), (("type", kind),))
        yield sample("posts_eligible", row.posts_eligible)
        yield sample("posts_answered_in_sla", row.posts_answered_in_sla)
        yield sample("unanswered_posts", row.unanswered_posts)
        if row.median_first_reply_seconds is not None:
            yield sample("median_first_reply_seconds", row.median_first_reply_seconds)
        if row.experts is not None:  # (a roster is configured)
            yield sample("experts", row.experts)
            yield sample("experts_replying", row.experts_replying or 0)
            yield sample("expert_replies", row.expert_replies or 0)
            yield sample("expert_needed", float(bool(row.expert_needed)))
        for kind, (posts, engagement) in CONTENT_KINDS.items():
            yield sample("content_posts", getattr(row, posts), (("kind", kind),))
            if getattr(row, engagement) is not None:
                yield sample("content_engagement_ratio", getattr(row, engagement),
                             (("kind", kind),))
        if row.window_days == first_window:  # per-community series, once per snapshot
            community = _labels((("community", row.community_id), *extra))
            yield row, (f"{NS}_stagnating", community, float(row.stagnating))
            if row.last_activity_ms is not None:
                yield row, (f"{NS}_last_activity_timestamp_seconds", community,
                            row.last_activity_ms / 1000)


def _header(family: str) -> str:
    help_text = COMMUNITY_FAMILIES.get(family) or CLOSING_FAMILIES[family]
    return f"# HELP {family} {help_text}\n# TYPE {family} gauge\n"


class CommunitySeries:
    """Per-community gauges, rendered when a community's rows change, not per scrape.

    A scrape joins the cached lines once per change and reuses the page until the next
    one, so its cost does not grow with how often Prometheus (or a dashboard) asks, and
    refreshing one community touches only its own lines. Forgetting a community (after
    a rebalance) removes its series at once.
    """

    def __init__(self, min_members: int, families: Mapping[str, str] = COMMUNITY_FAMILIES
                 ) -> None:
        self._min_members = min_members
        self._families = families
        self._lines: dict[str, dict[str, list[str]]] = {}  # community -> family -> lines
        # The rendered page, tagged with the number of changes it includes: render() runs
        # on the HTTP thread while updates come from the event loop.
        self._changes = 0
        self._page: tuple[int, str] = (-1, "")

    def update(self, community_id: str, rows: Sequence[SnapshotRow]) -> None:
        self.set_samples(community_id, (sample for _, sample in
                                        community_samples(rows, self._min_members)))

    def update_closing(self, community_id: str, values: Iterable[tuple[str, ClosingValue]]
                       ) -> None:
        self.set_samples(community_id, closing_samples(values, community_id,
                                                       self._min_members))

    def set_samples(self, community_id: str, samples: Iterable[Sample]) -> None:
        lines: dict[str, list[str]] = {}
        for family, labels, value in samples:
            lines.setdefault(family, []).append(
                f"{family}{{{labels}}} {floatToGoString(value)}\n")
        if lines:
            self._lines[community_id] = lines
        else:
            self._lines.pop(community_id, None)
        self._changes += 1

    def retain(self, community_ids: set[str]) -> None:
        """Drop the series of every community not in `community_ids`."""
        for community_id in [c for c in self._lines if c not in community_ids]:
            del self._lines[community_id]
            self._changes += 1

    def remove(self, community_id: str) -> None:
        if self._lines.pop(community_id, None) is not None:
            self._changes += 1

    def render(self) -> str:
        changes, cached = self._changes, self._page
        if cached[0] == changes:
            return cached[1]
        per_community = list(self._lines.values())  # a stable copy against updates
        parts = []
        for family in self._families:
            parts.append(_header(family))
            for lines in per_community:
                parts.extend(lines.get(family, ()))
        page = "".join(parts)
        self._page = (changes, page)
        return page


def openmetrics_history(
    rows: Iterable[SnapshotRow], min_members: int, extra_labels: Mapping[str, str]
) -> bytes:
    """A snapshot history as timestamped OpenMetrics text, for
    `promtool tsdb create-blocks-from openmetrics` (backfilling trend alerts)."""
    by_family: dict[str, dict[str, list[str]]] = {family: {} for family in COMMUNITY_FAMILIES}
    ordered = sorted(rows, key=lambda r: r.as_of_ms)
    for row, (family, labels, value) in community_samples(ordered, min_members, extra_labels):
        # Each series' samples together and in time order, as OpenMetrics requires.
        by_family[family].setdefault(labels, []).append(
            f"{family}{{{labels}}} {floatToGoString(value)} {row.as_of_ms / 1000}\n")
    parts = []
    for family, series in by_family.items():
        parts.append(_header(family))
        for lines in series.values():
            parts.extend(lines)
    parts.append("# EOF\n")
    return "".join(parts).encode()


GOAL_FAMILIES = {
    f"{NS}_goal_value": "Value of the goal's metric (absent when undefined), SPEC 5.",
    f"{NS}_goal_expected": "Where the goal's metric should be now: on the line from the "
                           "baseline at start to the target at the deadline.",
    f"{NS}_goal_target": "The goal's target value.",
    f"{NS}_goal_progress_ratio": "(value - baseline) / (target - baseline); 1 = target.",
    f"{NS}_goal_status": "1 for the goal's status now, 0 for the other statuses.",
}


def goal_samples(goals: Iterable[Goal], rows: Iterable[GoalRow]) -> Iterator[Sample]:
    """The series of each goal's row (labels goal, community, window, metric)."""
    by_id = {goal.id: goal for goal in goals}
    for row in rows:
        base = (("goal", row.goal_id), ("community", row.community_id),
                ("window", f"{row.window_days}d"), ("metric", row.metric))
        labels = _labels(base)
        if row.value is not None:
            yield f"{NS}_goal_value", labels, row.value
        yield f"{NS}_goal_expected", labels, row.expected
        yield f"{NS}_goal_target", labels, by_id[row.goal_id].target
        if row.progress is not None:
            yield f"{NS}_goal_progress_ratio", labels, row.progress
        for status in STATUSES:
            yield (f"{NS}_goal_status", _labels((*base, ("status", status))),
                   float(status == row.status))


class GoalSeries:
    """Goal gauges, rendered when the goals are evaluated (each snapshot), not per scrape."""

    def __init__(self) -> None:
        self._page = ""

    def update(self, goals: Iterable[Goal], rows: Iterable[GoalRow]) -> None:
        lines: dict[str, list[str]] = {family: [] for family in GOAL_FAMILIES}
        for family, labels, value in goal_samples(goals, rows):
            lines[family].append(f"{family}{{{labels}}} {floatToGoString(value)}\n")
        self._page = "".join(  # (one assignment: the HTTP thread reads it)
            f"# HELP {family} {GOAL_FAMILIES[family]}\n# TYPE {family} gauge\n{''.join(found)}"
            for family, found in lines.items() if found)

    def render(self) -> str:
        return self._page


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


class QuarantineCollector(Collector):
    """Files of the history this process moved to DATA_DIR/quarantine, per table."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        moved = CounterMetricFamily(
            f"{NS}_quarantined_files", "Parquet files of the history that were not whole "
            "(zero-length, torn, not Parquet), moved to DATA_DIR/quarantine by this "
            "process; their rows are written anew where the worker can.", labels=["table"])
        for table in ("snapshots", *STEERING_TABLES):
            moved.add_metric([table], QUARANTINED[table])
        yield moved


class WorkerMetrics:
    """What a worker serves on /metrics: cached community series + live pipeline metrics."""

    def __init__(self, stats: Mapping[str, TopicStats], min_members: int,
                 liveness_timeout_s: float = 30.0) -> None:
        self.communities = CommunitySeries(min_members)
        self.closing = CommunitySeries(min_members, CLOSING_FAMILIES)
        self.goals = GoalSeries()
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
        self.sink_pending_rows = Gauge(
            f"{NS}_sink_pending_rows", "Snapshot rows waiting for the sink (kept and "
            "retried with backoff while it fails).", ["sink"], registry=reg)
        self.sink_dropped_rows = Counter(
            f"{NS}_sink_dropped_rows", "Snapshot rows given up on: the oldest live rows, "
            "when more than sink_max_pending_mib waited for a failing sink.", ["sink"],
            registry=reg)
        self.sink_dropped_rows.labels("parquet")
        self.sink_pending_bytes = Gauge(
            f"{NS}_sink_pending_bytes", "Estimated memory of the snapshot rows waiting for "
            "the sink (bounded by sink_max_pending_mib).", ["sink"], registry=reg)
        self.registry.register(QuarantineCollector())
        self.steering_file_invalid = Gauge(
            f"{NS}_steering_file_invalid", "1 while the goals or experts file on disk does "
            "not read: the worker keeps the version read before (its log says why).",
            ["file"], registry=reg)
        self.assigned_partitions = Gauge(
            f"{NS}_assigned_partitions", "Source topic partitions assigned to this worker "
            "(0 while cut off from Kafka).", registry=reg)
        self.consumer_lag_messages = Gauge(
            f"{NS}_consumer_lag_messages", "Messages on our partitions not consumed yet "
            "(highwater minus position), polled every few seconds whether or not "
            "batches arrive.", ["topic"], registry=reg)
        self.send_retries = Counter(
            f"{NS}_kafka_send_retries", "Changelog and dead-letter records the broker did "
            "not take at once; retried until it does (the batch is not committed before).",
            registry=reg)
        self.key_cache_clears = Counter(
            f"{NS}_key_cache_clears", "Times the cache of message keys' partitions (8 MiB "
            "of keys) was full and emptied: many distinct keys, e.g. a producer with "
            "random keys.", registry=reg)
        self.owned = Gauge(
            f"{NS}_owned_communities", "Communities whose partitions this worker owns.",
            registry=reg)
        self.consumer_lag = Gauge(
            f"{NS}_consumer_lag_seconds", "Now minus the Kafka timestamp of the newest "
            "message processed: how far behind the producers the worker is.", registry=reg)
        self.last_snapshot = Gauge(
            f"{NS}_last_snapshot_timestamp_seconds", "as_of of the newest live snapshot "
            "written (none are while catching up).",
            registry=reg)
        self.catching_up = Gauge(
            f"{NS}_catching_up", "1 while the worker reads a backlog (what was in its "
            "partitions a moment ago is not all processed): no live rows are written and "
            "the closing series are withdrawn.", registry=reg)
        self.catching_up.set(1)
        self.closing_as_of = Gauge(
            f"{NS}_closing_timestamp_seconds", "The newest UTC midnight whose closing rows "
            "this worker wrote.", registry=reg)
        self.closing_late = Counter(
            f"{NS}_closing_late_events", "Events that arrived after the grace period of a "
            "midnight at or after their time, once per such midnight written final "
            "without them.",
            registry=reg)
        self._min_members = min_members
        # The network-wide steering view (SPEC 5), from the worker that forms it.
        self.merge_jaccard = Gauge(
            f"{NS}_merge_suggestion_jaccard", "Member overlap (Jaccard) of a community in "
            "tier low or medium with a suggested merge candidate.", ["community", "candidate"],
            registry=reg)
        self.merge_share = Gauge(
            f"{NS}_merge_suggestion_merged_share_ratio", "Share of members who are creator, "
            "conversationalist or critic that the merged community would have.",
            ["community", "candidate"], registry=reg)
        self.focus_rank = Gauge(
            f"{NS}_focus_rank", "Rank (1 = best) of a community of practice to start with: "
            "tier high, large, not stagnating.", ["community"], registry=reg)
        self.liveness_timeout_s = liveness_timeout_s
        self.heartbeat = time.monotonic()

    def show_steering(self, tables: Mapping[str, pa.Table] | None) -> None:
        """Export merge suggestions and focus ranks (None: this worker does not form
        them). Communities below the privacy threshold are left out, as everywhere."""
        for gauge in (self.merge_jaccard, self.merge_share, self.focus_rank):
            gauge.clear()
        if tables is None:
            return
        sketches = tables["member_sketches"]
        members = dict(zip(sketches["community_id"].to_pylist(),
                           sketches["members"].to_pylist(), strict=True))
        for row in tables["merge_suggestions"].to_pylist():
            community, candidate = row["community_id"], row["candidate_id"]
            if min(members.get(community, 0), members.get(candidate, 0)) >= self._min_members:
                self.merge_jaccard.labels(community, candidate).set(row["jaccard"])
                self.merge_share.labels(community, candidate).set(row["merged_share"])
        for row in tables["focus"].to_pylist():
            if row["members"] >= self._min_members:
                self.focus_rank.labels(row["community_id"]).set(row["rank"])

    def beat(self) -> None:
        """Called from an event-loop timer: the loop is turning."""
        self.heartbeat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.heartbeat <= self.liveness_timeout_s

    def exposition(self) -> bytes:
        return (generate_latest(self.registry) + self.communities.render().encode()
                + self.closing.render().encode() + self.goals.render().encode())

    def serve(self, port: int, host: str = "127.0.0.1", access: MetricsAccess | None = None
              ) -> ThreadingHTTPServer:
        """Serve /metrics from a daemon thread (what start_http_server does, plus the
        cached community series), over TLS and behind basic auth when `access` says so.
        `/healthz` answers without auth: it is what the probes call."""
        metrics = self
        guard = access or MetricsAccess()

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT_S  # a client that sends nothing is dropped

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path in OPEN_PATHS:  # liveness: the event loop's heartbeat is recent;
                    alive = metrics.alive()  # a yes/no, so no auth (probes send none)
                    self._reply(200 if alive else 503, b"ok\n" if alive else
                                b"event loop stuck\n", "text/plain; charset=utf-8")
                    return
                if path not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                if not guard.allows(self.headers.get("Authorization")):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="community-pulse"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._reply(200, metrics.exposition(), CONTENT_TYPE_LATEST)

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # no access log on stderr

        server = _MetricsServer((host, port), Handler)
        if guard.certfile:
            # prometheus_client's own TLS context for its exporters (start_http_server's).
            # The handshake is left to each connection's thread (_MetricsServer): done in
            # accept(), one client that connects and sends nothing would stall every scrape.
            context = _get_ssl_ctx(guard.certfile, guard.keyfile, ssl.PROTOCOL_TLS_SERVER)
            server.socket = context.wrap_socket(server.socket, server_side=True,
                                                do_handshake_on_connect=False)
        threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
        return server


class _MetricsServer(ThreadingHTTPServer):
    """One thread per connection, which does the TLS handshake and reads the request
    under REQUEST_TIMEOUT_S; failed or abandoned connections are dropped quietly."""

    daemon_threads = True

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(REQUEST_TIMEOUT_S)
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that hung up or spoke no TLS: nothing to report, no traceback


@dataclass(frozen=True)
class MetricsAccess:
    """Who may read /metrics and how: TLS (certificate and key files) and HTTP basic auth
    (a user and a password); both optional."""

    certfile: str = ""
    keyfile: str = ""
    user: str = ""
    password: str = dataclass_field(default="", repr=False)

    def __post_init__(self) -> None:
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("/metrics over TLS needs metrics_tls_certfile and "
                              "metrics_tls_keyfile")
        if bool(self.user) != bool(self.password):
            raise ConfigError("basic auth on /metrics needs metrics_basic_auth_user and a "
                              f"password ({PASSWORD_ENV} or metrics_basic_auth_password_file)")

    @classmethod
    def from_runtime(cls, runtime: RuntimeConfig) -> MetricsAccess:
        password = read_secret("metrics_basic_auth_password_file",
                               runtime.metrics_basic_auth_password_file, PASSWORD_ENV)
        return cls(str(runtime.metrics_tls_certfile or ""), str(runtime.metrics_tls_keyfile or ""),
                   runtime.metrics_basic_auth_user, password if runtime.metrics_basic_auth_user
                   else "")

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"

    def allows(self, authorization: str | None) -> bool:
        if not self.user:
            return True
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return hmac.compare_digest((authorization or "").encode(), expected.encode())
