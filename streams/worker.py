"""PulseWorker: the worker's logic around the pure core, without Faust.

It turns batches of Kafka messages into core updates (decode, validate, pseudonymise,
dead letters, changelog deltas), keeps what it owns through rebalances, and computes
snapshots, closing rows (streams.closing) and steering inputs for the sinks, in steps
that the Faust timers of streams.app interleave with consumption. Tests drive it with
Faust-like messages and an injectable clock.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from faust.types import EventT
from kafka.partitioner.default import murmur2

from schemas.events import (
    DEFAULT_TOPICS,
    Event,
    Reason,
    Rejection,
)
from sinks.network import STALE_AFTER_INTERVALS, SteeringSink
from sinks.parquet import (
    FINAL_KEY,
    SinkQueue,
    SnapshotWriter,
    closing_file_name,
    rows_to_table,
)
from sinks.prometheus import ClosingValue, WorkerMetrics
from sinks.steering import goals_table
from streams.changelog import DeltaLog
from streams.closing import ClosingBook, Task, Written, midnight_at_or_before
from streams.config import DAY_MS, ConfigError, MetricConfig, RuntimeConfig
from streams.core import TIERS, CommunityState, PulseCore, SnapshotRow
from streams.delivery import Record, dead_letter
from streams.pipeline import Ingested, Ingestor, internal_rejection
from streams.privacy import Pseudonymiser
from streams.steering import goals as steering_goals
from streams.steering.experts import small_rosters
from streams.steering.files import Watched, read_experts, read_goals, read_managers
from streams.steering.focus import managers_of
from streams.steering.network import (
    FOLLOWUP_COUNTS_SCHEMA,
    SKETCH_SCHEMA,
    SteeringSettings,
    community_inputs,
)

log = logging.getLogger(__name__)

# Keys whose murmur2 hash is kept, by their bytes (cleared when full). A community id is
# at most 256 characters, 1,024 bytes of UTF-8: longer keys are never hashed or kept.
KEY_HASH_CACHE_BYTES = 8 * 2**20
MAX_KEY_BYTES = 4 * 256
DELTA_EXPIRY_EVERY_MS = 3_600_000
REFRESH_BUDGET_SHARE = 2  # live, refreshing may take half the time (never when behind)
BEHIND_S = 5.0  # consumer lag above which we are catching up, not live
BEHIND_SNAPSHOT_EVERY = 3  # while catching up, only every third snapshot tick snapshots
SLICE_S = 0.02  # longest stretch of snapshot work before the agent gets a turn
# The agent's turn lasts as long as a slice: one event-loop round (sleep(0)) moves a
# message only one step through Faust's fetcher -> stream -> buffer chain.
AGENT_TURN_S = SLICE_S
CATCH_UP_CHECKS = 10  # more than this many checks (seconds) behind: catching up
TREND_DAYS = 7  # the closing series compare the newest midnight with this many days before
_VALUE_COLUMNS = ["community_id", "window_days", "members", "sustainability", "tier"]


class Parsed(NamedTuple):
    """One message of a batch, decoded."""

    topic: str
    partition: int
    offset: int
    arrival_ms: int  # its Kafka timestamp (the worker's clock if that is earlier)
    result: Ingested


class PreparedBatch(NamedTuple):
    parsed: list[Parsed]  # per message
    records: list[Record]  # to be on the broker before the batch counts
    lag_s: float | None  # now minus the newest message's Kafka timestamp
    duplicates: dict[str, int]  # per topic: accepted events that changed nothing


class PulseWorker:
    """Glue between Faust and the core. Everything Faust-free is testable directly."""

    def __init__(
        self,
        metric_config: MetricConfig,
        runtime: RuntimeConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # (expert rosters are held to the privacy threshold: streams.steering.experts)
        self.config = metric_config = replace(
            metric_config, experts_min_roster=runtime.min_members_exported)
        self.runtime = runtime
        self.clock = clock
        self.topics = {runtime.topic_prefix + name: types for name, types in DEFAULT_TOPICS.items()}
        self.pseudonymise = Pseudonymiser.from_runtime(runtime)
        self.managers = (read_managers(runtime.managers_file, self.pseudonymise)
                         if runtime.managers_file else [])
        self.core = PulseCore(metric_config, managers_of(self.managers))
        self.steering = SteeringSink(runtime.data_dir, SteeringSettings.of(runtime),
                                     self.managers, metric_config)
        self.partitions: set[int] = set()  # of the event topics, assigned to this worker
        self.ingestor = Ingestor(self.core, self.topics, self.pseudonymise)
        self.partition_of: dict[str, int] = {}
        # Changed since /metrics last showed them, oldest change first (a dict as an
        # ordered set: a community that changes again keeps its place in the queue).
        self.dirty: dict[str, None] = {}
        self.writer = SnapshotWriter(runtime.data_dir)
        self.metrics = WorkerMetrics(self.ingestor.stats, runtime.min_members_exported,
                                     runtime.liveness_timeout_s)
        self.sink = SinkQueue(self._write_parquet,
                              on_error=self.metrics.sink_errors.labels("parquet").inc,
                              on_drop=self.metrics.sink_dropped_rows.labels("parquet").inc,
                              max_bytes=runtime.sink_max_pending_mib << 20)
        self.metrics.sink_pending_rows.labels("parquet").set_function(
            lambda: self.sink.pending_rows)
        self.metrics.sink_pending_bytes.labels("parquet").set_function(
            lambda: self.sink.pending_bytes)
        self.deltas: DeltaLog | None = None
        self.dead_letter: Any = None  # faust Topic, bound in build_app
        self.dead_letter_topic: str | None = None  # its name
        # Partition count of a topic (None: unknown, no partition check); build_app
        # binds it to the consumer's metadata.
        self.partitions_of: Callable[[str], int | None] = lambda topic: None
        self._key_hashes: dict[bytes, int] = {}
        self._key_hash_bytes = 0
        # Last answer from the broker (monotonic); past the session timeout without one,
        # the group has given our partitions to others: stop exporting and writing.
        self.last_contact: float | None = None  # None: not asked yet (still starting)
        self.session_timeout_s = 60.0  # build_app takes Faust's broker_session_timeout
        self._cut_off = False
        # Changelog records of delta expiry, in order: each item's records are to be on
        # the broker before the next item's are written (carry before deletions).
        self.expiry_records: list[list[Record]] = []
        self._deltas_expired_at = 0
        self._next_refresh = 0.0
        self.behind = False  # consuming a backlog: skip the fast refresh
        self._snapshot_ticks = 0
        # Closing rows (streams.closing). The arrival mark: everything that arrived in our
        # partitions before it is processed; None while catching up (or rebalancing).
        self.mark: int | None = None
        self.newest_closing = 0  # the newest midnight whose closing rows were written
        self._exported_at: int | None = None  # the newest midnight of the trend series
        # (rows of one community at one midnight; followed from now on: see take_over)
        self.closing = ClosingBook[list[SnapshotRow]](
            runtime.closing_grace_ms, runtime.closing_backfill_days, int(clock() * 1000))
        self.first_event: dict[int, int] = {}  # partition -> oldest event time applied
        self.processed_next: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset
        # The end offsets of the last checks, with their times, newest last.
        self._ends_seen: deque[tuple[dict[tuple[str, int], int], int]] = deque(
            maxlen=CATCH_UP_CHECKS)
        self.ownership = 0  # changes with every revoke and recovery (closing passes)
        # Rows of the midnights this process wrote and that are still open, per partition,
        # so a late event recomputes one community's row, not the partition's.
        self._closing_rows: dict[tuple[int, int], dict[str, list[SnapshotRow]]] = {}
        # midnight -> community -> its closing values, for the trend series (TREND_DAYS).
        self._closing_values: dict[int, dict[str, list[ClosingValue]]] = {}
        self.goals = (read_goals(runtime.goals_file, metric_config.windows_days)
                      if runtime.goals_file else [])
        self.goal_rows: list[steering_goals.GoalRow] = []  # at the newest snapshot
        # Read again when they change (reload_steering_files); the managers file is not:
        # follow-up state is kept only for the communities followed at start.
        self._watched = {name: Watched(path) for name, path in (
            ("goals", runtime.goals_file), ("experts", runtime.experts_file)) if path}
        for name in self._watched:
            self.metrics.steering_file_invalid.labels(name).set(0)
        # Source partitions this worker owns (set on each assignment); None: all of them
        # (no consumer group, e.g. in tests). Decides who reports goals without data.
        self.assigned: set[int] | None = None

    # ---- ingest -----------------------------------------------------------------------

    def prepare(self, batch: Sequence[EventT]) -> PreparedBatch:
        """Decode one batch of Kafka messages, apply its accepted events to the core and
        store them in the table: the records to write (one changelog write per
        partition, dead letters) before `apply` may count the batch.

        The core is updated here, before the records are durable, so that a message
        whose update raises (a bug) can be left out of the changelog and dead-lettered
        instead; if the records never get written the worker exits (exit_unclean) and a
        restart reads the batch again."""
        now_ms = int(self.clock() * 1000)
        parsed: list[Parsed] = []
        for message_event in batch:
            msg = message_event.message
            misplaced = self._misplaced(msg)
            # A missing key counts as a mismatch: keys are what keep a community whole.
            result = misplaced or self.ingestor.parse(msg.topic, msg.value, msg.key or b"",
                                                      now_ms)
            arrival_ms = min(int(msg.timestamp * 1000), now_ms)  # a producer may run ahead
            parsed.append(Parsed(msg.topic, msg.partition, msg.offset, arrival_ms, result))
        duplicates = self._update_core(parsed, [m.message for m in batch])
        records: list[Record] = []
        by_partition: dict[int, list[Event]] = {}
        tags: dict[int, str] = {}
        for message_event, item in zip(batch, parsed, strict=True):
            for number, rejection in enumerate(item.result.rejections):
                if self.dead_letter_topic is not None:
                    records.append(dead_letter(self.dead_letter_topic, message_event.message,
                                               rejection, number))
            if not item.result.events:
                continue
            by_partition.setdefault(item.partition, []).extend(item.result.events)
            if item.partition not in tags:
                # (topic, offset) of the first message is unique and stable across retries.
                tags[item.partition] = f"{item.topic}@{item.offset}"
        if self.deltas is not None:
            for partition, events in by_partition.items():
                records.extend(self.deltas.append(partition, tags[partition], events))
        # Kafka timestamp of the newest message: how far behind the producers we are.
        lag = max(0.0, now_ms / 1000 - batch[-1].message.timestamp) if batch else None
        return PreparedBatch(parsed, records, lag, duplicates)

    def _update_core(self, parsed: list[Parsed], messages: Sequence[Any]) -> dict[str, int]:
        """Tell the closing book what arrived and apply the accepted events to the core,
        one call per topic; return the duplicates per topic.

        Before a message too late for a closing midnight that is not final yet, what came
        before it is applied and the community's rows there are frozen as they are then
        (streams.closing), so the core is called more than once per topic in that batch.

        A core call that raises cannot be bad input (the decoder rejected that) but a bug:
        the communities it touched are rebuilt from the changelog and this batch's
        messages applied so far, then its messages are applied one by one, and a message
        that raises again is replaced by a rejection (reason internal): its partition
        goes on."""
        pending: dict[str, list[int]] = {}  # topic -> messages not applied yet
        duplicates: dict[str, int] = {}
        applied: list[int] = []  # messages whose events are in the core
        for index, item in enumerate(parsed):
            events = item.result.events
            if not events:
                continue
            community_id = events[0].community_id  # (one per message: its key)
            self.partition_of[community_id] = item.partition
            freeze = self._arrived(item.partition, events, item.arrival_ms)
            if freeze:  # too late for these midnights: their rows as they are before it
                self._apply_pending(pending, parsed, messages, applied, duplicates)
                self._freeze(item.partition, community_id, freeze)
            pending.setdefault(item.topic, []).append(index)
        self._apply_pending(pending, parsed, messages, applied, duplicates)
        return duplicates

    def _apply_pending(self, pending: dict[str, list[int]], parsed: list[Parsed],
                       messages: Sequence[Any], applied: list[int],
                       duplicates: dict[str, int]) -> None:
        for topic, indexes in pending.items():
            try:
                found = self.core.apply(
                    [event for index in indexes for event in parsed[index].result.events])
            except Exception as exc:
                found = self._update_one_by_one(parsed, messages, indexes, applied, exc)
            else:
                applied.extend(indexes)
            duplicates[topic] = duplicates.get(topic, 0) + found
        pending.clear()

    def _update_one_by_one(self, parsed: list[Parsed], messages: Sequence[Any],
                           indexes: list[int], applied: list[int], exc: Exception) -> int:
        if self.deltas is None:
            raise exc  # nothing to rebuild the communities from (tests without a table)
        log.error("a core update raised %s; rebuilding its communities and applying its "
                  "%d messages one by one:\n%s", type(exc).__name__, len(indexes),
                  "".join(traceback.format_tb(exc.__traceback__)))  # (no text: it may quote data)
        self._rebuild({parsed[i].result.events[0].community_id for i in indexes}, parsed,
                      applied)
        duplicates = 0
        for index in indexes:
            events = parsed[index].result.events
            try:
                duplicates += self.core.apply(events)
            except Exception as again:
                log.error("a message of %s raised %s again: dead-lettered (internal)",
                          parsed[index].topic, type(again).__name__)
                parsed[index] = parsed[index]._replace(result=Ingested(
                    [], [internal_rejection(messages[index].value, again)]))
                self._rebuild({events[0].community_id}, parsed, applied)
            else:
                applied.append(index)
        return duplicates

    def _rebuild(self, communities: set[str], parsed: list[Parsed], applied: list[int]
                 ) -> None:
        """The communities' state as the changelog has it plus this batch's messages
        applied so far: what a restart would find, with those messages."""
        assert self.deltas is not None
        partitions = {self.partition_of[c] for c in communities if c in self.partition_of}
        self.core.forget(communities)
        for events in self.deltas.stored(partitions):
            self.core.apply([event for event in events if event.community_id in communities])
        self.core.apply([event for index in applied for event in parsed[index].result.events
                         if event.community_id in communities])

    def _misplaced(self, msg: Any) -> Ingested | None:
        """A message on another partition than the Java client's murmur2 partitioner
        puts its key on (the contract: SPEC 1), as a wrong_partition rejection.

        A producer with another partitioner (librdkafka's default is crc32) would split
        a community over workers; once it is fixed, `community-pulse redrive` puts
        these messages where they belong."""
        key = msg.key
        # A key longer than any community id is rejected by the decoder (key_mismatch);
        # hashing it (kafka-python's murmur2 is Python: ~50 ms for 100 kB) is not needed.
        partitions = self.partitions_of(msg.topic) if key and len(key) <= MAX_KEY_BYTES \
            else None
        if not partitions:
            return None
        hashed = self._key_hashes.get(key)
        if hashed is None:
            if self._key_hash_bytes + len(key) > KEY_HASH_CACHE_BYTES:
                self._key_hashes.clear()
                self._key_hash_bytes = 0
                self.metrics.key_cache_clears.inc()
            hashed = self._key_hashes[key] = murmur2(key) & 0x7FFFFFFF
            self._key_hash_bytes += len(key)
        expected = hashed % partitions
        if expected == msg.partition:
            return None
        detail = (f"the key belongs on partition {expected} of {partitions} (murmur2), "
                  f"not {msg.partition}")
        return Ingested([], [Rejection(msg.value or b"", Reason.WRONG_PARTITION, detail)])

    def apply(self, prepared: PreparedBatch) -> None:
        """Count a prepared batch (once its records are on the broker) and mark its
        communities for the gauges. Counters only ever show what a restart would find
        again."""
        by_topic: dict[str, list[Event]] = {}
        for topic, partition, offset, _, (events, rejections) in prepared.parsed:
            self.processed_next[(topic, partition)] = offset + 1
            self.ingestor.counted(topic, events, rejections)
            if not events:
                continue
            self.dirty[events[0].community_id] = None  # (one community per message: key)
            by_topic.setdefault(topic, []).extend(events)
        if prepared.lag_s is not None:
            self.metrics.consumer_lag.set(prepared.lag_s)
            self.behind = prepared.lag_s > BEHIND_S
        for topic, events in by_topic.items():
            self.ingestor.applied(topic, events, prepared.duplicates.get(topic, 0))

    def handle_batch(self, batch: Sequence[EventT]) -> None:
        """`prepare` and `apply` at once, without writing to Kafka (tests, tools)."""
        self.apply(self.prepare(batch))

    def _arrived(self, partition: int, events: list[Event], arrival_ms: int
                 ) -> tuple[int, ...]:
        """Tell the closing book what arrived (one community's events) and when it reached
        Kafka (its timestamp; the worker's clock if that is earlier); return the
        midnights whose row of the community is to be frozen before they are applied."""
        timestamps: list[int] = [event.ts for event in events]  # type: ignore[misc]
        oldest = self._oldest_in(partition, timestamps)
        arrival = self.closing.arrived(partition, events[0].community_id, timestamps, oldest,
                                       arrival_ms)
        if arrival.late:
            self.metrics.closing_late.inc(arrival.late)
        return arrival.freeze

    def _freeze(self, partition: int, community_id: str, midnights: tuple[int, ...]
                ) -> None:
        """The community's closing rows at these midnights from the state as it is."""
        state = self.core.communities.get(community_id)
        first = state.oldest_ts() if state else None
        for midnight in midnights:
            self.closing.freeze(partition, midnight, community_id,
                                _closing_rows_of(state, first, midnight))

    def _oldest_in(self, partition: int, timestamps: list[int]) -> int:
        """Note the oldest event time of the partition; return the oldest of these."""
        oldest = min(timestamps)
        if oldest < self.first_event.get(partition, oldest + 1):
            self.first_event[partition] = oldest
        return oldest


    # ---- ownership --------------------------------------------------------------------

    def recover(self, partitions: set[int]) -> None:
        """Rebuild the communities of our partitions from the recovered table."""
        self.assigned = set(partitions)
        if self.deltas is None:
            return
        self.revoke(set(self.partition_of.values()) - partitions)
        self.partitions = set(partitions)
        self.core.forget(list(self.partition_of))  # rebuilt whole: deltas mix communities
        self.partition_of.clear()
        self.first_event.clear()
        self.ownership += 1
        for partition, events in self.deltas.load(partitions):
            for event in events:
                self.partition_of[event.community_id] = partition
            if events:
                self._oldest_in(partition, [event.ts for event in events])  # type: ignore[misc]
            self.core.apply(events)
        self.closing.forget(set(self.closing.partitions) - partitions)
        self.closing.take_over(int(self.clock() * 1000))  # (for the partitions new to us)
        for partition in partitions:  # the changelog keeps what its last cut left
            cut = self.deltas.cuts.get(partition)
            self.closing.exact_from(
                partition, None if cut is None else cut + self.config.retention_ms)
        self.dirty.update(dict.fromkeys(self.core.communities))
        log.info("recovered %d communities", len(self.core.communities))
        self.metrics.owned.set(len(self.core.communities))

    def revoke(self, partitions: set[int]) -> None:
        """Stop computing and exporting the communities of revoked partitions.

        Their table data stays until recovery: a partition revoked and assigned back in
        the same rebalance is not re-read from the changelog.
        """
        self.partitions -= partitions
        self.ownership += 1
        gone = {c for c, p in self.partition_of.items() if p in partitions}
        self.core.forget(gone)
        for community_id in gone:
            del self.partition_of[community_id]
            self.metrics.communities.remove(community_id)
            self.metrics.closing.remove(community_id)
            self.dirty.pop(community_id, None)
        self.closing.forget(partitions)
        for key in [k for k in self._closing_rows if k[0] in partitions]:
            del self._closing_rows[key]
        for partition in partitions:
            self.first_event.pop(partition, None)
        self.metrics.owned.set(len(self.core.communities))

    # ---- contact with the broker --------------------------------------------------------

    def cut_off(self) -> bool:
        """Whether the broker has not answered for longer than the session timeout: the
        consumer group has moved our partitions to other workers by now. The community
        gauges go (other workers export them) and no live rows are written until the
        broker answers again."""
        if self.last_contact is None or (
                time.monotonic() - self.last_contact <= self.session_timeout_s):
            return False
        if not self._cut_off:
            self._cut_off = True
            log.warning("no answer from Kafka for %.0f s (session timeout): not exporting "
                        "or writing %d communities until it is back",
                        self.session_timeout_s, len(self.core.communities))
            self.metrics.communities.retain(set())
            self.metrics.owned.set(0)
            self.metrics.assigned_partitions.set(0)
            self.metrics.consumer_lag_messages.clear()
        return True

    def in_contact(self, lag_by_topic: dict[str, int], partitions: int) -> None:
        """The broker answered: the lag of each topic (highwater minus position over
        our partitions) and how many source partitions are ours."""
        self.last_contact = time.monotonic()
        if self._cut_off:
            self._cut_off = False
            log.warning("Kafka answers again")
            self.dirty.update(dict.fromkeys(self.core.communities))
            self.metrics.owned.set(len(self.core.communities))
        self.metrics.consumer_lag_messages.clear()
        for topic, lag in lag_by_topic.items():
            self.metrics.consumer_lag_messages.labels(topic).set(lag)
        self.metrics.assigned_partitions.set(partitions)

    # ---- snapshots --------------------------------------------------------------------

    def refresh_steps(self) -> Iterator[None]:
        """Recompute the gauges of communities that changed since they were last shown.

        A generator that yields after every SLICE_S of work, so the caller can let the
        agent consume in between (no long stalls on the event loop). Paced so that
        refreshing takes at most 1/REFRESH_BUDGET_SHARE of the time: when every community
        changes all the time, gauges lag a little more instead of starving ingestion.
        """
        started = time.monotonic()
        if started < self._next_refresh or self.behind or self.cut_off():
            return  # while catching up, gauges wait for the full snapshot
        spent = 0.0
        slice_start = time.perf_counter()
        # Oldest change first; communities that change during the pass queue up again.
        for _ in range(len(self.dirty)):
            if not self.dirty:
                break  # a snapshot ran in between and covered the rest
            community_id = next(iter(self.dirty))
            del self.dirty[community_id]
            state = self.core.communities.get(community_id)  # may be revoked meanwhile
            if state is not None:  # as of now: the pass spans several agent turns
                as_of = int(self.clock() * 1000)
                self.metrics.communities.update(community_id, state.snapshot(as_of))
            if time.perf_counter() - slice_start > SLICE_S:
                spent += time.perf_counter() - slice_start
                yield
                slice_start = time.perf_counter()
        spent += time.perf_counter() - slice_start
        # Counted from the start: the agent's turns between slices are part of the rest.
        self._next_refresh = started + spent * REFRESH_BUDGET_SHARE

    def snapshot_due(self) -> bool:
        """Whether this snapshot tick should snapshot. While catching up, only every
        BEHIND_SNAPSHOT_EVERY-th does: numbers over a half-read backlog are soon
        outdated, and the time is better spent reading it."""
        self._snapshot_ticks += 1
        if self.cut_off():
            return False  # the partitions are someone else's by now: no rows as if ours
        return not self.behind or self._snapshot_ticks % BEHIND_SNAPSHOT_EVERY == 0

    def snapshot_steps(self, as_of: int, rows: list[SnapshotRow]) -> Iterator[None]:
        """Snapshot every owned community into `rows` (windows slide even without new
        events), yielding after every SLICE_S of work like `refresh_steps`."""
        self.dirty.clear()  # covered by this snapshot; changes from now on stay dirty
        spent = 0.0
        slice_start = time.perf_counter()
        for community_id in sorted(self.core.communities):
            state = self.core.communities.get(community_id)
            if state is not None:
                community_rows = state.snapshot(as_of)
                rows.extend(community_rows)
                self.metrics.communities.update(community_id, community_rows)
            if time.perf_counter() - slice_start > SLICE_S:
                spent += time.perf_counter() - slice_start
                yield
                slice_start = time.perf_counter()
        spent += time.perf_counter() - slice_start
        self.metrics.snapshot_seconds.observe(spent)
        owned = set(self.core.communities)
        rows[:] = [row for row in rows if row.community_id in owned]  # revoked meanwhile
        self.metrics.communities.retain(owned)
        self._evaluate_goals(as_of, rows)
        self.metrics.owned.set(len(owned))
        if self.mark is not None:  # (while catching up, live rows are not written)
            self.metrics.last_snapshot.set(as_of / 1000)
        self._expire(self.expiry_cut(as_of))

    def _evaluate_goals(self, as_of: int, rows: Sequence[SnapshotRow]) -> None:
        """The goals at this snapshot, for the gauges (only for communities above the
        privacy threshold)."""
        if not self.goals:
            return
        self.goal_rows = self.goals_at(as_of, rows)
        small = {row.community_id for row in rows
                 if row.members < self.runtime.min_members_exported}
        self.metrics.goals.update(self.goals, [
            g for g in self.goal_rows if g.community_id not in small])

    def goals_at(self, as_of: int, rows: Sequence[SnapshotRow]
                 ) -> list[steering_goals.GoalRow]:
        """The goals of the communities this worker owns, from its snapshot rows at
        `as_of`: of each community in the rows, and (no_data) of each community without
        rows whose partition this worker owns."""
        named = steering_goals.communities(self.goals)
        return self._goals_of([asdict(row) for row in rows if row.community_id in named],
                              as_of, self._owns_partition_of)

    def closing_goals(self, partition: int, midnight: int, table: pa.Table
                      ) -> list[steering_goals.GoalRow]:
        """The goals table's rows at a closing midnight, from one partition's closing
        rows: of its communities, and (no_data) of goals whose community has no closing row
        there but belongs to this partition (seen in it, or its key would go to it)."""
        table = self._publishable(table)  # as the snapshots' Parquet
        named = pa.array(sorted(steering_goals.communities(self.goals)), pa.string())
        rows = table.filter(pc.is_in(table["community_id"], value_set=named)).to_pylist()
        return self._goals_of(rows, midnight, lambda community: self.partition_of.get(
            community, self._partition_by_key(community)) == partition)

    def _goals_of(self, rows: list[dict[str, Any]], as_of: int,
                  owns: Callable[[str], bool]) -> list[steering_goals.GoalRow]:
        present = {row["community_id"] for row in rows}
        mine = [goal for goal in self.goals if goal.community in present or owns(goal.community)]
        return steering_goals.evaluate(mine, rows, as_of)

    def _owns_partition_of(self, community_id: str) -> bool:
        """Whether the community's events would come to this worker."""
        return self.assigned is None or self._partition_by_key(community_id) in self.assigned

    def _partition_by_key(self, community_id: str) -> int:
        """The partition of a community's key by Kafka's default partitioner (murmur2, as
        the producers' clients do with the SPEC's keys)."""
        return (murmur2(community_id.encode()) & 0x7FFFFFFF) % self.runtime.partitions

    def take_snapshot(self) -> list[SnapshotRow]:
        """The whole snapshot in one go (the timer interleaves the steps instead)."""
        rows: list[SnapshotRow] = []
        for _ in self.snapshot_steps(int(self.clock() * 1000), rows):
            pass
        return rows

    def expiry_cut(self, as_of: int) -> int:
        """What snapshots at `as_of` and every closing midnight still to be written
        need kept (SPEC 4: state for a midnight within grace, or missed, stays)."""
        mark = self.mark if self.mark is not None else as_of
        needed = [self.closing.oldest_needed(p, mark, self.first_event.get(p))
                  for p in self._partitions()]
        return min([as_of, *needed]) - self.config.retention_ms

    def _partitions(self) -> set[int]:
        """The partitions with communities, and those the closing book follows (all
        their communities may have expired while a midnight is still open there)."""
        return set(self.partition_of.values()) | set(self.closing.partitions)

    def _expire(self, cut_ms: int) -> None:
        for partition in self._partitions():
            self.closing.exact_from(partition, cut_ms + self.config.retention_ms)
        self.core.expire(cut_ms)
        for community_id in [c for c in self.partition_of if c not in self.core.communities]:
            del self.partition_of[community_id]
        # Changelog deltas go hourly: rewriting the carried-over joins costs a pass.
        if self.deltas is None or cut_ms - self._deltas_expired_at < DELTA_EXPIRY_EVERY_MS:
            return
        self._deltas_expired_at = cut_ms
        for partition in set(self.partition_of.values()):
            if not self.deltas.has_expired(partition, cut_ms):
                continue
            carry = [event for c, p in self.partition_of.items() if p == partition
                     for event in self.core.communities[c].memberships_through(cut_ms)]
            self.expiry_records.extend(self.deltas.expire(partition, cut_ms, carry))

    # ---- closing rows ---------------------------------------------------------------

    def observe_offsets(self, ends: Mapping[Any, int] | None,
                        committed: Mapping[Any, int | None], now_ms: int) -> None:
        """Note the end offsets of our partitions now. The arrival mark is the time of
        the newest of the last CATCH_UP_CHECKS checks whose end offsets are all processed:
        everything that arrived before it is in the state. None of them: catching up (so
        a worker that keeps up, a second or two behind, is not). `ends` None: unknown
        (rebalancing, broker unreachable), so catching up."""
        def done(tp: tuple[str, int]) -> int:
            return max(self.processed_next.get(tp, 0), committed.get(tp) or 0)

        self.mark = None
        if ends is None:
            self._ends_seen.clear()
        else:
            now = {(tp[0], tp[1]): end for tp, end in ends.items()}
            for seen, at in reversed(self._ends_seen):  # newest first
                if set(seen) == set(now) and all(done(tp) >= end for tp, end in seen.items()):
                    self.mark = at
                    break
            self._ends_seen.append((now, now_ms))
        self.metrics.catching_up.set(0 if self.mark is not None else 1)
        if self.mark is None:  # trend series over a half-read backlog: withdrawn
            self.export_closing(None)

    def closing_checks(self, mark: int) -> list[tuple[int, int]]:
        """(partition, midnight) pairs whose closing file the sink must be asked about."""
        return [(p, midnight) for p in sorted(self._partitions())
                for midnight in self.closing.to_check(p, mark, self.first_event.get(p))]

    def read_closings(self, checks: list[tuple[int, int]], mark: int
                      ) -> list[tuple[int, int, tuple[bool, pa.Table | None] | None]]:
        """What the sink holds for `checks`: per file whether it is final, and the
        values the trend series need of recent ones (I/O: runs in an executor thread)."""
        keep_from = midnight_at_or_before(mark) - TREND_DAYS * DAY_MS
        return [(p, midnight, self.writer.read_closing(
            midnight, p, _VALUE_COLUMNS if midnight >= keep_from else None))
            for p, midnight in checks]

    def learn_closings(self, found: list[tuple[int, int, tuple[bool, pa.Table | None] | None]]
                       ) -> None:
        """What the sink holds: open files are rewritten, final ones never; the values
        of recent ones feed the trend series."""
        for partition, midnight, file in found:
            if file is None:
                self.closing.learn(partition, midnight, Written.ABSENT)
                continue
            final, table = file
            self.closing.learn(partition, midnight, Written.FINAL if final else Written.OPEN)
            if table is not None:
                read: dict[str, list[ClosingValue]] = {}
                for row in table.to_pylist():
                    read.setdefault(row["community_id"], []).append(ClosingValue(
                        row["window_days"], row["members"], row["sustainability"],
                        TIERS.index(row["tier"])))
                self._closing_values.setdefault(midnight, {}).update(read)

    def closing_steps(self, mark: int, out: list[tuple[Task, pa.Table]]) -> Iterator[None]:
        """Compute the closing rows due at `mark` into `out` (task, table), yielding
        after every SLICE_S of work like `snapshot_steps`."""
        slice_start, ownership = time.perf_counter(), self.ownership
        oldest: dict[str, int | None] = {}  # community -> oldest event time, once a pass
        planned: list[Task] = []
        for partition in sorted(self._partitions()):
            tasks = self.closing.plan(partition, mark, self.first_event.get(partition))
            planned += tasks
            for task in tasks:
                midnight = task.midnight
                rows = self._closing_rows.setdefault((partition, midnight), {})
                values = self._closing_values.setdefault(midnight, {})
                # Rows frozen before events too late for the midnight: taken as they are.
                frozen = self.closing.frozen(partition, midnight)
                if task.communities is None:
                    names = sorted({c for c, p in self.partition_of.items() if p == partition}
                                   | frozen.keys())
                    for community_id in [c for c in rows if c not in names]:
                        del rows[community_id]
                else:
                    names = sorted(task.communities | frozen.keys())
                for community_id in names:
                    found = frozen.get(community_id)
                    if found is None:
                        state = self.core.communities.get(community_id)
                        if community_id not in oldest:
                            oldest[community_id] = state.oldest_ts() if state else None
                        found = _closing_rows_of(state, oldest[community_id], midnight)
                    if found:
                        rows[community_id] = found
                        values[community_id] = [ClosingValue(
                            r.window_days, r.members, r.sustainability, r.tier_level)
                            for r in found]
                    else:  # no event at or before the midnight
                        rows.pop(community_id, None)
                        values.pop(community_id, None)
                    if time.perf_counter() - slice_start > SLICE_S:
                        yield
                        slice_start = time.perf_counter()
                        if self.ownership != ownership:  # a rebalance: rows may miss
                            out.clear()  # communities; the next pass starts over
                            for planned_task in planned:
                                self.closing.retry(planned_task)
                            return
                table = rows_to_table([r for c in sorted(rows) for r in rows[c]], closing=True)
                final = b"true" if task.final else b"false"
                out.append((task, table.replace_schema_metadata(
                    {**(table.schema.metadata or {}), FINAL_KEY: final})))

    def write_closings(self, written: list[tuple[Task, pa.Table]]) -> list[Task]:
        """Write the closing files (I/O: runs in an executor thread); the tasks done."""
        done = []
        for task, table in written:
            try:
                with self.metrics.sink_seconds.labels("parquet").time():
                    self.writer.write_table(task.midnight, self._publishable(table),
                                            closing_file_name(task.midnight, task.partition))
                    if self.goals:  # the goals table: one row per goal and midnight
                        self.writer.tables.write("goals", goals_table(
                            self.closing_goals(task.partition, task.midnight, table)))
            except Exception:  # counted like live rows; the book retries next time
                self.metrics.sink_errors.labels("parquet").inc()
                log.exception("writing closing rows of partition %d at %d failed",
                              task.partition, task.midnight)
                continue
            done.append(task)
        return done

    def closing_written(self, attempted: list[tuple[Task, pa.Table]], tasks: list[Task],
                        mark: int) -> None:
        """After `write_closings`: `tasks` of the `attempted` are written."""
        owned = self._partitions()
        for task, _ in attempted:
            if task not in tasks:
                self.closing.retry(task)
        for task in tasks:
            if task.partition not in owned:
                continue  # revoked meanwhile: the new owner reads the file
            late = self.closing.done(task)
            if late:
                self.metrics.closing_late.inc(late)
            if task.final:
                self._closing_rows.pop((task.partition, task.midnight), None)
            if task.midnight > self.newest_closing:
                self.newest_closing = task.midnight
                self.metrics.closing_as_of.set(task.midnight / 1000)
        if tasks or self._exported_at != midnight_at_or_before(mark):
            self.export_closing(mark)

    def export_closing(self, mark: int | None) -> None:
        """The trend series: each community's closing values at the newest midnight
        (ago=0d) and TREND_DAYS before it; none while catching up."""
        if mark is None:
            self.metrics.closing.retain(set())
            self._exported_at = None
            return
        newest = self._exported_at = midnight_at_or_before(mark)
        for midnight in [d for d in self._closing_values if d < newest - TREND_DAYS * DAY_MS]:
            del self._closing_values[midnight]
        for community_id in self.partition_of:
            self.metrics.closing.update_closing(community_id, [
                (f"{days}d", value) for days in (0, TREND_DAYS)
                for value in self._closing_values.get(newest - days * DAY_MS, {}).get(
                    community_id, ())])
        self.metrics.closing.retain(set(self.partition_of))

    def learn_closing_files(self, now_ms: int) -> None:
        """Ask the sink which closing files exist, with the clock for the range (after a
        recovery, before the backlog streams in: so events that arrive after an open
        midnight's grace are recognised as too late while catching up)."""
        self.learn_closings(self.read_closings(self.closing_checks(now_ms), now_ms))

    def close_midnights(self) -> list[Task]:
        """One closing pass in one go (the timer interleaves the steps and does the I/O
        in a thread instead)."""
        mark = self.mark
        if mark is None:
            return []
        self.learn_closings(self.read_closings(self.closing_checks(mark), mark))
        out: list[tuple[Task, pa.Table]] = []
        for _ in self.closing_steps(mark, out):
            pass
        done = self.write_closings(out)
        self.closing_written(out, done, mark)
        return done

    def _publishable(self, table: pa.Table) -> pa.Table:
        """Closing rows without the small communities when asked (privacy, as in
        write_rows); the rows kept in memory still have them."""
        if not self.runtime.parquet_omit_small_communities:
            return table
        return table.filter(pc.greater_equal(table["members"],
                                             self.runtime.min_members_exported))

    def write_rows(self, rows: Sequence[SnapshotRow], wait: bool = True) -> None:
        """Live rows to Parquet, through the sink queue (written by its thread, kept and
        retried while the sink fails), which also retries what is waiting; `wait` until
        that attempt is over (the snapshot timer does not: a hung disk must not stop
        expiry). (The goals table comes from the closing rows, see `write_closings`.)"""
        if self.runtime.parquet_omit_small_communities:  # as /metrics does (privacy)
            rows = [row for row in rows if row.members >= self.runtime.min_members_exported]
        attempt = self.sink.submit(rows)
        if wait and attempt is not None:
            attempt.result()

    def _write_parquet(self, rows: Sequence[SnapshotRow]) -> None:
        with self.metrics.sink_seconds.labels("parquet").time():
            self.writer.write(rows)


    # ---- steering ---------------------------------------------------------------------

    def read_changed_steering_files(self) -> dict[str, Any]:
        """The goals file and the experts roster, read again where the file changed
        (I/O: the reload timer runs this in a thread). A file that no longer reads keeps
        what was read before: one log line with the reason (never a user id), and
        community_pulse_steering_file_invalid is 1 until the file reads again."""
        read: dict[str, Any] = {}
        for name, watched in self._watched.items():
            if not watched.changed():
                continue
            try:
                read[name] = (read_goals(watched.path, self.config.windows_days)
                              if name == "goals" else
                              read_experts(watched.path, self.pseudonymise))
            except Exception as exc:  # whatever it is, the running worker keeps going
                self.metrics.steering_file_invalid.labels(name).set(1)
                # (a ConfigError's line names the file, entry and field, never a user id;
                # another exception is a gap in the checks: its type only, it may quote one)
                why = str(exc) if isinstance(exc, ConfigError) else (
                    f"{watched.path}: unexpected {type(exc).__name__} (a bug: please report it)")
                log.warning("%s file not reloaded, the one read before stays: %s", name, why)
                continue
            self.metrics.steering_file_invalid.labels(name).set(0)
        return read

    def use_steering_files(self, read: Mapping[str, Any]) -> None:
        """Apply what `read_changed_steering_files` read: from the next snapshot on."""
        if "goals" in read:
            self.goals = read["goals"]
            log.info("goals file reloaded: %d goals", len(self.goals))
        if "experts" in read:
            self.config = replace(self.config, experts=read["experts"])
            self.core.use_experts(read["experts"])
            log.info("experts file reloaded: rosters of %d communities", len(read["experts"]))
            small_rosters(read["experts"], self.config.experts_min_roster, "experts file")

    def steering_steps(self, as_of: int, inputs: list[pa.Table]) -> Iterator[None]:
        """Sketches and follow-up counts of the owned communities at `as_of` into
        `inputs`, yielding after every SLICE_S of work like `snapshot_steps`."""
        parts: list[tuple[pa.Table, pa.Table]] = []
        slice_start = time.perf_counter()
        for community_id in sorted(self.core.communities):
            state = self.core.communities.get(community_id)  # may be revoked meanwhile
            if state is not None:
                parts.append(community_inputs([state], self.managers, as_of,
                                              self.steering.settings))
            if time.perf_counter() - slice_start > SLICE_S:
                yield
                slice_start = time.perf_counter()
        inputs[:] = [pa.concat_tables([p[i] for p in parts] or [schema.empty_table()])
                     for i, schema in enumerate((SKETCH_SCHEMA, FOLLOWUP_COUNTS_SCHEMA))]

    def publish_steering(self, as_of: int, inputs: Sequence[pa.Table]) -> None:
        """Write this worker's steering inputs; the owner of partition 0 then forms the
        network-wide tables from every worker's newest (run off the event loop)."""
        try:
            with self.metrics.sink_seconds.labels("steering").time():
                self.steering.write_inputs(*inputs)
                if 0 not in self.partitions:
                    self.metrics.show_steering(None)
                    return
                rt, span = self.runtime, STALE_AFTER_INTERVALS * 1000
                inputs_since = as_of - int(span * rt.steering_interval_s)
                snapshots_since = as_of - int(
                    span * rt.snapshot_interval_s * BEHIND_SNAPSHOT_EVERY)
                self.metrics.show_steering(self.steering.network_from_data_dir(
                    as_of, inputs_since, snapshots_since))
                if rt.sketch_retention_days:  # one worker prunes: the owner of partition 0
                    self.steering.prune("member_sketches",
                                        as_of - rt.sketch_retention_days * DAY_MS)
        except Exception:  # a sink outage must not stop the stream; it is counted
            self.metrics.sink_errors.labels("steering").inc()
            log.exception("writing the steering tables failed")


def _closing_rows_of(state: CommunityState | None, first: int | None, midnight: int
                     ) -> list[SnapshotRow]:
    """A community's closing rows at a midnight (`first`: its oldest event time); none
    before its first event, as in replay."""
    if state is None or first is None or first > midnight:
        return []
    return state.snapshot(midnight)
