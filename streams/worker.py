"""The streaming job: a Faust app that feeds the pure core and runs the sinks.

Topology (one agent, all event topics co-partitioned by community_id):

    community.{posts,replies,likes,views,memberships}
        -> ingest agent (batches of messages; decode, validate, apply to PulseCore)
             -> rejected input  -> community.dead-letter (original bytes + reason)
             -> accepted events -> `community-events` table (changelog), one write
                                   per community per batch
    snapshot timer -> PulseCore.snapshot(now) -> Parquet files + /metrics gauges

State: the table holds each community's recent accepted events as per-batch deltas
(keyed "<partition>\x1f<tag>\x1f<community>"), so its Kafka changelog lets any worker of
the consumer group rebuild a community exactly after a restart or a rebalance. The
in-memory PulseCore is derived from it and rebuilt on recovery.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import faust
import msgspec
from faust.types import TP, EventT, StreamT, TableT
from prometheus_client import start_http_server

from schemas.events import DEAD_LETTER_TOPIC, DEFAULT_TOPICS, Event, Rejection
from sinks.parquet import SnapshotWriter
from sinks.prometheus import WorkerMetrics
from streams.config import MetricConfig, RuntimeConfig
from streams.core import PulseCore, SnapshotRow
from streams.pipeline import Ingestor

log = logging.getLogger(__name__)

BATCH_MAX_MESSAGES = 2000
BATCH_WITHIN_S = 0.05
DELTA_MAX_EVENTS = 2000
_SEP = "\x1f"
_encode_events = msgspec.msgpack.Encoder().encode
_decode_events = msgspec.msgpack.Decoder(list[Event]).decode


def _delta_key(partition: int, tag: str, community_id: str) -> bytes:
    return f"{partition}{_SEP}{tag}{_SEP}{community_id}".encode()


def _parse_key(key: bytes) -> tuple[int, str, str]:
    partition, tag, community_id = key.decode().split(_SEP, 2)
    return int(partition), tag, community_id


class DeltaLog:
    """Accepted events per community and batch, kept in a changelog-backed Faust table.

    Writes go to the changelog partition of the community's source partition, which
    is where Faust recovers them from when that partition is assigned to a worker.
    """

    def __init__(self, table: TableT) -> None:
        self.table = table
        # community -> [(newest event ts in the delta, key)], to expire whole deltas
        self.index: dict[str, list[tuple[int, bytes]]] = {}

    def append(self, partition: int, tag: str, community_id: str, events: list[Event]) -> None:
        # Chunked so that one changelog message stays well below Kafka's 1 MiB default.
        for start in range(0, len(events), DELTA_MAX_EVENTS):
            chunk = events[start : start + DELTA_MAX_EVENTS]
            key = _delta_key(partition, f"{tag}#{start}", community_id)
            self._put(partition, key, _encode_events(chunk))
            newest = max(event.ts_ms for event in chunk)
            self.index.setdefault(community_id, []).append((newest, key))

    def _put(self, partition: int, key: bytes, value: bytes | None) -> None:
        if value is None:
            self.table.data.pop(key, None)
        else:
            self.table.data[key] = value
        self.table.send_changelog(partition, key, value)

    def expire(self, community_id: str, partition: int, cut_ms: int, carry: list[Event]) -> None:
        """Delete deltas older than the cut; keep the membership events still in force."""
        entries = self.index.get(community_id, [])
        expired = [key for newest, key in entries if newest <= cut_ms]
        if not expired:
            return
        carry_key = _delta_key(partition, "carry", community_id)
        self._put(partition, carry_key, _encode_events(carry) if carry else None)
        for key in expired:
            self._put(partition, key, None)
        self.index[community_id] = [(n, k) for n, k in entries if n > cut_ms]

    def load(
        self, partitions: set[int], skip: set[str]
    ) -> Iterable[tuple[int, str, list[Event]]]:
        """Stored deltas of the given partitions, except communities in `skip`.

        Deltas of other partitions (no longer ours) are dropped from local memory; their
        changelog stays for the worker that owns them now.
        """
        for key, value in list(self.table.data.items()):
            partition, tag, community_id = _parse_key(key)
            if partition not in partitions:
                del self.table.data[key]
                self.index.pop(community_id, None)
                continue
            if community_id in skip or not value:
                continue
            events = _decode_events(value)
            if tag != "carry" and events:
                newest = max(event.ts_ms for event in events)
                self.index.setdefault(community_id, []).append((newest, key))
            yield partition, community_id, events


class PulseWorker:
    """Glue between Faust and the core. Everything Faust-free is testable directly."""

    def __init__(
        self,
        metric_config: MetricConfig,
        runtime: RuntimeConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = metric_config
        self.runtime = runtime
        self.clock = clock
        self.topics = {runtime.topic_prefix + name: types for name, types in DEFAULT_TOPICS.items()}
        self.core = PulseCore(metric_config)
        self.ingestor = Ingestor(self.core, self.topics)
        self.partition_of: dict[str, int] = {}
        self.latest: Sequence[SnapshotRow] = ()
        self.writer = SnapshotWriter(runtime.data_dir)
        self.metrics = WorkerMetrics(lambda: self.latest, self.ingestor.stats,
                                     runtime.min_members_exported)
        self.deltas: DeltaLog | None = None
        self.dead_letter: Any = None  # faust Topic, bound in build_app

    # ---- ingest -----------------------------------------------------------------------

    def handle_batch(self, batch: Sequence[EventT]) -> None:
        """Apply one batch of Kafka messages; one changelog write per community."""
        now_ms = int(self.clock() * 1000)
        accepted: dict[str, list[Event]] = {}
        tags: dict[str, str] = {}
        for message_event in batch:
            msg = message_event.message
            # A missing key counts as a mismatch: keys are what keep a community whole.
            result = self.ingestor.ingest(msg.topic, msg.value, msg.key or b"", now_ms)
            for rejection in result.rejections:
                self._send_dead_letter(msg, rejection)
            if not result.events:
                continue
            community_id = result.events[0].community_id
            self.partition_of[community_id] = msg.partition
            accepted.setdefault(community_id, []).extend(result.events)
            # (topic, offset) of the first message is unique and stable across retries.
            tags.setdefault(community_id, f"{msg.topic}@{msg.offset}")
        if self.deltas is not None:
            for community_id, events in accepted.items():
                partition = self.partition_of[community_id]
                self.deltas.append(partition, tags[community_id], community_id, events)

    def _send_dead_letter(self, msg: Any, rejection: Rejection) -> None:
        log.debug("dead letter from %s: %s", msg.topic, rejection.message)
        if self.dead_letter is None:
            return
        self.dead_letter.send_soon(
            key=msg.key,
            value=rejection.raw,
            headers=[
                ("reason", rejection.reason.encode()),
                ("detail", rejection.detail.encode()[:1000]),
                ("source_topic", msg.topic.encode()),
                ("source_partition", str(msg.partition).encode()),
                ("source_offset", str(msg.offset).encode()),
            ],
        )

    # ---- ownership --------------------------------------------------------------------

    def recover(self, partitions: set[int]) -> None:
        """Rebuild the communities of our partitions from the recovered table."""
        if self.deltas is None:
            return
        known = set(self.core.communities)
        for partition, community_id, events in self.deltas.load(partitions, skip=known):
            self.partition_of[community_id] = partition
            self.core.state(community_id).apply(events)
        log.info("recovered %d communities", len(self.core.communities) - len(known))
        self.metrics.owned.set(len(self.core.communities))

    def revoke(self, partitions: set[int]) -> None:
        """Stop computing and exporting the communities of revoked partitions.

        Their table data stays until recovery: a partition revoked and assigned back in
        the same rebalance is not re-read from the changelog.
        """
        gone = {c for c, p in self.partition_of.items() if p in partitions}
        self.core.forget(gone)
        for community_id in gone:
            del self.partition_of[community_id]
            if self.deltas is not None:
                self.deltas.index.pop(community_id, None)
        self.latest = [row for row in self.latest if row.community_id not in gone]
        self.metrics.owned.set(len(self.core.communities))

    # ---- snapshots --------------------------------------------------------------------

    def take_snapshot(self) -> list[SnapshotRow]:
        as_of = int(self.clock() * 1000)
        with self.metrics.snapshot_seconds.time():
            rows = self.core.snapshot(as_of)
        self.latest = rows
        self.metrics.owned.set(len(self.core.communities))
        self.metrics.last_snapshot.set(as_of / 1000)
        self._expire(as_of - self.config.retention_ms)
        return rows

    def _expire(self, cut_ms: int) -> None:
        self.core.expire(cut_ms)
        if self.deltas is None:
            return
        for community_id, partition in list(self.partition_of.items()):
            state = self.core.communities.get(community_id)
            carry = state.memberships_through(cut_ms) if state is not None else []
            self.deltas.expire(community_id, partition, cut_ms, carry)
            if state is None:
                del self.partition_of[community_id]

    def write_rows(self, rows: Sequence[SnapshotRow]) -> None:
        if not rows:
            return
        try:
            with self.metrics.sink_seconds.labels("parquet").time():
                self.writer.write(rows)
        except Exception:  # a sink outage must not stop the stream; it is counted
            self.metrics.sink_errors.labels("parquet").inc()
            log.exception("writing %d snapshot rows failed", len(rows))


def build_app(worker: PulseWorker) -> faust.App:
    rt = worker.runtime
    app = faust.App(
        rt.app_id,
        broker=rt.broker,
        # Faust wants a local folder even with in-memory tables; keep it out of the CWD.
        datadir=str(Path(tempfile.gettempdir()) / f"community-pulse-{rt.app_id}"),
        store="memory://",
        topic_partitions=rt.partitions,
        table_standby_replicas=0,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=BATCH_MAX_MESSAGES * 2,
    )
    source = app.topic(
        *worker.topics, key_type=bytes, value_type=bytes, partitions=rt.partitions, internal=True
    )
    worker.dead_letter = app.topic(
        rt.topic_prefix + DEAD_LETTER_TOPIC, key_type=bytes, value_type=bytes,
        partitions=rt.partitions, internal=True,
    )
    table = app.Table(
        "community-events", partitions=rt.partitions, key_type=bytes, value_type=bytes
    )
    worker.deltas = DeltaLog(table)
    source_topics = set(worker.topics)

    @app.agent(source, name="ingest")
    async def ingest(stream: StreamT) -> None:
        batches = stream.take_events(  # type: ignore[attr-defined]  # missing from StreamT
            BATCH_MAX_MESSAGES, within=BATCH_WITHIN_S)
        async for batch in batches:
            worker.handle_batch(batch)

    @app.task
    async def declare_dead_letter_topic() -> None:
        await worker.dead_letter.maybe_declare()

    @table.on_recover
    async def on_recover() -> None:
        active = app.assignor.assigned_actives()
        worker.recover({tp.partition for tp in active if tp.topic in source_topics})

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: faust.App, revoked: set[TP], **_: Any) -> None:
        worker.revoke({tp.partition for tp in revoked if tp.topic in source_topics})

    @app.timer(interval=rt.snapshot_interval_s)
    async def snapshot() -> None:
        rows = worker.take_snapshot()
        await asyncio.get_running_loop().run_in_executor(None, worker.write_rows, rows)

    return app


def run(metric_config: MetricConfig, runtime: RuntimeConfig, loglevel: str = "warning") -> None:
    """Run the worker until SIGINT/SIGTERM (what `community-pulse worker` does)."""
    worker = PulseWorker(metric_config, runtime)
    app = build_app(worker)
    start_http_server(runtime.metrics_port, addr="0.0.0.0", registry=worker.metrics.registry)
    log.warning("metrics on :%d/metrics, snapshots in %s", runtime.metrics_port, runtime.data_dir)
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
