"""The streaming job: the Faust app that feeds PulseWorker (streams.worker) and its timers.

Topology (one agent, all event topics co-partitioned by community_id):

    community.{posts,replies,likes,views,memberships}
        -> ingest agent (batches of messages; decode, validate, apply to PulseCore)
             -> rejected input  -> community.dead-letter (original bytes + reason)
             -> accepted events -> `community-events` table (changelog), one write
                                   per partition per batch
    refresh timer (0.5 s)  -> communities that changed -> /metrics gauges
    snapshot timer (10 s)  -> PulseCore.snapshot(now) of all -> Parquet + /metrics
                              (every third tick only, and no Parquet, while catching up)
                           -> starts a closing pass beside it (SnapshotTimer): closing
                              rows of due UTC midnights (streams.closing) -> one Parquet
                              file per partition and midnight + /metrics
    catch-up timer (1 s)   -> end offsets of the source partitions (OffsetLookup, a client
                              of our own): caught up when all that was there a tick ago
                              is processed (the arrival mark)
    lag timer (5 s)        -> consumer lag per topic; no answer past the session
                              timeout: cut off (stop exporting and writing)
    file timer (10 s)      -> the goals and experts files, read again when changed
    steering timer (15 m)  -> sketches and follow-up counts of the owned communities
                              -> Parquet; the owner of partition 0 also forms the
                              network-wide steering tables (sinks.network)

State: the table holds each partition's recent accepted events as per-batch deltas
(keyed by partition and batch tag), so its Kafka changelog lets any worker of the consumer
group rebuild a partition's communities exactly after a restart or a rebalance. The
in-memory PulseCore is derived from it and rebuilt on recovery.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import faust
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, StreamT

from schemas.events import DEAD_LETTER_TOPIC
from sinks.prometheus import MetricsAccess
from streams.changelog import RAW_IDS, DeltaLog, UserIdsMismatch
from streams.closing import Task
from streams.config import ConfigError, MetricConfig, RuntimeConfig
from streams.core import SnapshotRow
from streams.delivery import DurableSender, exit_unclean, withhold_acks
from streams.kafka_auth import KafkaAccessError, KafkaSecurity, check_access
from streams.privacy import install_log_filters
from streams.steering.network import SKETCHES_OFF
from streams.worker import AGENT_TURN_S, PulseWorker

log = logging.getLogger(__name__)
# The start's own lines come before Faust sets up logging, and mode gives this module's
# logger a NullHandler (its Service subclasses below): they would be dropped there.
start_log = logging.getLogger("community-pulse")

BATCH_MAX_MESSAGES = 2000
BATCH_WITHIN_S = 0.05
LAG_POLL_INTERVAL_S = 5.0  # how often the worker asks the broker for its lag
LAG_POLL_TIMEOUT_S = 10.0
LOOKUP_REQUEST_TIMEOUT_S = 5.0  # the worker's own end-offset lookups (OffsetLookup)
HEARTBEAT_INTERVAL_S = 1.0  # event-loop heartbeat behind /healthz
# How long the producer waits for a broker's answer before it gives the request up,
# reconnects and re-sends with fresh metadata (Kafka's own clients: 30 s). Faust's
# 20-minute default held every batch for as long as a stalled (alive but silent)
# changelog leader stayed so, although Kafka had moved the leadership to an in-sync
# replica within seconds (tests/test_faults_cluster.py). DurableSender retries whatever
# times out.
PRODUCER_REQUEST_TIMEOUT_S = 30.0
CATCH_UP_CHECK_S = 1.0
REFRESH_INTERVAL_S = 0.5
FILE_CHECK_INTERVAL_S = 10.0  # how often the goals and experts files are looked at


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust hard-codes fetch_max_wait_ms=1500. aiokafka keeps one fetch in flight
        # per broker and leaves out partitions that still hold undrained records; after
        # any pause in draining, that fetch asks only for the idle partitions (e.g. no
        # membership traffic) and the broker holds it 1.5 s while the busy ones wait:
        # measured as 1-1.5 s consumption stalls at a steady 2,000 events/s.
        wait_ms = getattr(self.app, "fetch_max_wait_ms", 0)
        if wait_ms:
            consumer._fetch_max_wait_ms = wait_ms
        return consumer

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        # Faust passes its *live* set of active partitions, and this call waits up to
        # 1 s for records. A rebalance that starts meanwhile empties the set (revoke,
        # then the whole new assignment paused until table recovery resumes the
        # changelog partitions), and aiokafka's fetched_records() reads an empty set as
        # "every assigned partition": the waiting call drains the changelog records
        # recovery has just seeked to, and Faust's getmany() drops them (flow stopped).
        # aiokafka's position is past them, so recovery never sees them and waits
        # forever ("No event received for active tp ... since recovery start"). A short
        # fetch wait makes it likely: records arrive while the stale call still waits.
        # So ask only for the partitions active now, and give back to aiokafka (seek)
        # whatever Faust would drop.
        wanted = set(active_partitions)
        if not wanted:
            return {}
        records = await super()._fetch_records(
            consumer, wanted, timeout=timeout, max_records=max_records
        )
        owner = self.consumer
        assigned = consumer.assignment()
        kept = {}
        for tp, batch in records.items():
            if owner.flow_active and (
                tp in active_partitions or tp in owner._buffered_partitions
            ):
                kept[tp] = batch
            elif batch and tp in assigned:
                log.debug("fetched %d records of %s while it is not consumed: back to %d",
                          len(batch), tp, batch[0].offset)
                consumer.seek(tp, batch[0].offset)
        return kept


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class PulseApp(faust.App):
    """faust.App whose Kafka consumer can wait less than Faust's 1.5 s per fetch
    (RuntimeConfig.fetch_max_wait_ms; 0 keeps Faust's)."""

    fetch_max_wait_ms = 0

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)


def _scratch_dir(app_id: str) -> str:
    """Faust wants a local folder even with in-memory tables: a fresh one per process
    under $TMPDIR (not the CWD), removed when the process exits."""
    path = tempfile.mkdtemp(prefix=f"community-pulse-{app_id}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def faust_app(
    app_id: str, broker: str, partitions: int, fetch_max_wait_ms: int = 0,
    security: KafkaSecurity | None = None, replication: int = 1,
    session_timeout_s: float = 60.0,
) -> faust.App:
    """The Faust settings the worker runs with (the benchmark's floor uses them too).

    Faust reads environment variables of its own (BROKER_URL, PROCESSING_GUARANTEE, ...)
    over the arguments given here; `env={}` stops that, so the product's settings win
    (`ignored_faust_environment` names what was ignored)."""
    app = PulseApp(
        app_id,
        env={},
        broker=broker,
        broker_credentials=(security or KafkaSecurity()).faust_credentials(),
        topic_replication_factor=replication,
        # How long the group waits for a silent worker before its partitions move on;
        # a worker cut off for that long stops exporting and writing (PulseWorker.cut_off).
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=min(3.0, session_timeout_s / 10),
        producer_request_timeout=PRODUCER_REQUEST_TIMEOUT_S,  # acks stay Faust's -1 (all)
        datadir=_scratch_dir(app_id),
        store="memory://",
        topic_partitions=partitions,
        table_standby_replicas=0,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=BATCH_MAX_MESSAGES * 2,
    )
    app.fetch_max_wait_ms = fetch_max_wait_ms
    return app


def ignored_faust_environment() -> list[str]:
    """Faust's own environment variables that are set here, which faust_app ignores."""
    names = {param.env_name for param in faust.Settings.SETTINGS.values() if param.env_name}
    return sorted(name for name in names if name in os.environ)


class OffsetLookup:
    """End offsets for the worker's own checks (lag poll, catch-up), from a client of its
    own without a group. Through Faust (`consumer.highwaters`) they ran on its consumer
    thread, whose method queue has two workers shared with the fetches: two lookups
    stuck on a stalled broker held every fetch, from every broker, for the consumer's
    request timeout of 90 s (tests/test_faults_cluster.py). Here a silent node costs one
    lookup LOOKUP_REQUEST_TIMEOUT_S, and the next lookup starts a new client, with new
    metadata: with one client, every lookup asked the stalled node again (aiokafka's
    end_offsets gives up after the same time as its request, before that request's
    clean-up drops the connection and refreshes the metadata)."""

    def __init__(self, servers: Sequence[str], security: KafkaSecurity) -> None:
        self._settings: dict[str, Any] = {
            "client_id": "community-pulse-lookup",
            "enable_auto_commit": False,
            "request_timeout_ms": int(LOOKUP_REQUEST_TIMEOUT_S * 1000),
            **security.client_kwargs()}
        self._servers = list(servers)
        self._client: AIOKafkaConsumer | None = None

    async def end_offsets(self, tps: Sequence[TP]) -> dict[TP, int]:
        if self._client is None:  # started on first use, in the app's event loop
            # In another order each time: a stalled first server would hold every start.
            servers = random.sample(self._servers, len(self._servers))
            client = AIOKafkaConsumer(bootstrap_servers=servers, **self._settings)
            try:
                await client.start()
            except BaseException:  # no broker answers yet: the next lookup tries again
                await client.stop()
                raise
            self._client = client
        try:
            ends = await self._client.end_offsets([TopicPartition(*tp) for tp in tps])
        except Exception:
            await self.stop()  # new metadata next time
            raise
        return {TP(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    async def stop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.stop()


def build_app(worker: PulseWorker, security: KafkaSecurity | None = None) -> faust.App:
    rt = worker.runtime
    app = faust_app(rt.app_id, rt.broker, rt.partitions, rt.fetch_max_wait_ms, security,
                    rt.topic_replication_factor, rt.session_timeout_s)
    # Topics the worker creates when they are missing (replication: topic_replication_factor).
    topic_config = {"min.insync.replicas": str(rt.topic_min_insync_replicas)}
    source = app.topic(
        *worker.topics, key_type=bytes, value_type=bytes, partitions=rt.partitions,
        internal=True, config=topic_config,
    )
    worker.dead_letter = dead_letter_topic = app.topic(
        rt.topic_prefix + DEAD_LETTER_TOPIC, key_type=bytes, value_type=bytes,
        partitions=rt.partitions, internal=True, config=topic_config,
    )
    worker.dead_letter_topic = dead_letter_topic.get_topic_name()
    worker.partitions_of = app.consumer.topic_partitions
    table = app.Table(
        "community-events", partitions=rt.partitions, key_type=bytes, value_type=bytes,
        extra_topic_configs=topic_config,
    )
    worker.deltas = DeltaLog(table, RAW_IDS if worker.pseudonymise is None
                             else worker.pseudonymise.fingerprint)
    worker.assigned = set()  # nothing until the consumer group assigns partitions
    source_topics = set(worker.topics)
    sender = DurableSender(app.producer, worker.metrics.send_retries.inc)

    @app.agent(source, name="ingest")
    async def ingest(stream: StreamT) -> None:
        batches = stream.take_events(  # type: ignore[attr-defined]  # missing from StreamT
            BATCH_MAX_MESSAGES, within=BATCH_WITHIN_S)
        async for batch in batches:
            try:
                prepared = worker.prepare(batch)
                await sender.send(prepared.records)  # acked below only once durable
                worker.apply(prepared)
            except BaseException as exc:
                withhold_acks(batch)  # its offsets stay uncommitted
                if isinstance(exc, Exception):
                    exit_unclean(exc)
                raise

    @app.task
    async def declare_dead_letter_topic() -> None:
        await dead_letter_topic.maybe_declare()

    worker.session_timeout_s = app.conf.broker_session_timeout
    contact_probe = TP(worker.dead_letter_topic, 0)  # asked even with nothing assigned
    lookup = OffsetLookup(faust_aiokafka.server_list(app.conf.broker, 9092),
                          security or KafkaSecurity())

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_lookup(app: faust.App, **_: Any) -> None:
        await lookup.stop()

    async def poll_lag() -> None:
        consumer = app.consumer
        ours = [tp for tp in consumer.assignment() if tp.topic in source_topics]
        highwaters = await lookup.end_offsets([*ours, contact_probe])
        lag: dict[str, int] = dict.fromkeys(source_topics, 0)
        for tp in ours:
            position = await consumer.position(tp)
            if position is not None and tp in highwaters:
                lag[tp.topic] += max(0, highwaters[tp] - position)
        worker.in_contact(lag, len(ours))

    @app.timer(interval=LAG_POLL_INTERVAL_S)
    async def watch_kafka() -> None:
        # The lag gauge moves without batches arriving (a stuck or starved consumer
        # shows), and a broker that does not answer is noticed (cut_off).
        try:
            await asyncio.wait_for(poll_lag(), LAG_POLL_TIMEOUT_S)
        except Exception as exc:  # no answer, whatever the reason: no contact
            log.info("lag poll failed: %r", exc)
            if worker.last_contact is None:  # the first poll: the clock starts now
                worker.last_contact = time.monotonic()
        worker.cut_off()

    @app.timer(interval=REFRESH_INTERVAL_S)
    async def write_expiry() -> None:
        while worker.expiry_records:  # carry pieces on the broker before any deletion
            await sender.send(worker.expiry_records[0])
            del worker.expiry_records[0]

    @table.on_recover
    async def on_recover() -> None:
        # After this returns Faust resumes the source partitions, awaits their seek to the
        # committed offsets and then resumes flow control, which empties every stream
        # buffer. Flow is on already (recovery turned it on to read the changelog): records
        # fetched during the seek would be dropped there, counted as read by aiokafka and
        # Faust, never re-read (lost, or committed past). Held at the gate, they wait.
        app.flow_control.suspend()
        active = app.assignor.assigned_actives()
        try:
            worker.recover({tp.partition for tp in active if tp.topic in source_topics})
        except UserIdsMismatch as exc:  # counting a user twice: refuse, in one line
            print(f"community-pulse: error: {exc}", file=sys.stderr, flush=True)
            os._exit(2)
        # Faust resumes the source partitions after this returns: the closing files are
        # known before the backlog streams in (see learn_closing_files).
        now_ms = int(worker.clock() * 1000)
        checks = worker.closing_checks(now_ms)
        if checks:
            found = await asyncio.get_running_loop().run_in_executor(
                None, worker.read_closings, checks, now_ms)
            worker.learn_closings(found)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: faust.App, revoked: set[TP], **_: Any) -> None:
        worker.revoke({tp.partition for tp in revoked if tp.topic in source_topics})

    @app.timer(interval=REFRESH_INTERVAL_S)
    async def refresh() -> None:
        for _ in worker.refresh_steps():
            await asyncio.sleep(AGENT_TURN_S)  # let the agent consume between slices

    @app.timer(interval=FILE_CHECK_INTERVAL_S)
    async def reload_steering_files() -> None:
        # (its own timer: a file system that hangs holds only this one)
        read = await asyncio.get_running_loop().run_in_executor(
            None, worker.read_changed_steering_files)
        worker.use_steering_files(read)

    @app.timer(interval=rt.steering_interval_s)
    async def steering() -> None:
        if worker.mark is None:  # catching up: sketches of a half-read backlog would mislead
            return
        as_of, inputs = int(worker.clock() * 1000), list[pa.Table]()
        for _ in worker.steering_steps(as_of, inputs):
            await asyncio.sleep(AGENT_TURN_S)
        await asyncio.get_running_loop().run_in_executor(
            None, worker.publish_steering, as_of, inputs)

    @app.timer(interval=CATCH_UP_CHECK_S)
    async def track_catch_up() -> None:
        now_ms = int(worker.clock() * 1000)
        ends = None
        if not (app.rebalancing or app.in_recovery):
            tps = [tp for tp in app.assignor.assigned_actives() if tp.topic in source_topics]
            try:
                ends = await lookup.end_offsets(tps) if tps else {}
            except Exception as exc:  # (e.g. the broker is away): unknown, catching up
                log.debug("end offsets unavailable: %s", exc)
        worker.observe_offsets(ends, committed_offsets(app), now_ms)

    snapshots = SnapshotTimer(worker, app.add_future)  # (cancelled when the app stops)

    @app.timer(interval=rt.snapshot_interval_s)
    async def snapshot() -> None:
        await snapshots.tick()

    return app


class SnapshotTimer:
    """The snapshot timer's work. Each tick snapshots the owned communities (gauges, live
    rows queued to the sink thread, expiry), then starts a closing pass in the background
    unless the previous one is still busy: closing files are read and written in a thread,
    and a hung disk there must stall only the closing rows, not expiry or the live rows."""

    def __init__(self, worker: PulseWorker,
                 start: Callable[[Coroutine[Any, Any, None]], asyncio.Future[None]]
                 = asyncio.ensure_future) -> None:
        self.worker = worker
        self.start = start
        self.closing: asyncio.Future[None] | None = None

    async def tick(self) -> None:
        worker = self.worker
        if not worker.snapshot_due():
            return
        rows: list[SnapshotRow] = []
        for _ in worker.snapshot_steps(int(worker.clock() * 1000), rows):
            await asyncio.sleep(AGENT_TURN_S)
        if worker.mark is None:  # live rows over a half-read backlog are not written
            return
        worker.write_rows(rows, wait=False)
        if self.closing is not None:
            if not self.closing.done():
                return  # still reading or writing: its midnights stay pending (and kept)
            self.closing.result()  # a pass that failed fails the timer, as before
        self.closing = self.start(self.close_midnights(worker.mark))

    async def close_midnights(self, mark: int) -> None:
        """One closing pass at the arrival mark: which files exist, the rows due, their
        files (I/O in an executor thread, the rows in slices between agent turns)."""
        worker, loop = self.worker, asyncio.get_running_loop()
        checks = worker.closing_checks(mark)
        if checks:
            ownership = worker.ownership
            found = await loop.run_in_executor(None, worker.read_closings, checks, mark)
            if worker.ownership != ownership:
                return  # a rebalance meanwhile: the next pass asks again
            worker.learn_closings(found)
        closing: list[tuple[Task, pa.Table]] = []
        for _ in worker.closing_steps(mark, closing):
            await asyncio.sleep(AGENT_TURN_S)
        done = await loop.run_in_executor(None, worker.write_closings, closing)
        worker.closing_written(closing, done, mark)


def committed_offsets(app: faust.App) -> Mapping[Any, int | None]:
    """Faust's committed offset per partition (the next offset to read): what a
    partition with nothing processed by this process has done. Faust keeps it in a
    private field; tests/test_worker_app.py fails if an upgrade renames it."""
    return getattr(app.consumer, "_committed_offset", {})


class StartupError(ConfigError):
    """The worker cannot start with these settings; the message is one line."""


def check_broker(runtime: RuntimeConfig, security: KafkaSecurity) -> None:
    """The broker preflight (streams.kafka_auth.check_access) before Faust starts, whose
    own failures are endless retries (a refused login) or a page of traceback."""
    try:
        check_access(runtime.broker, security)
    except KafkaAccessError as exc:
        hint = "" if exc.reached else "; set it with --broker or PULSE_BROKER"
        raise StartupError(f"{exc}{hint}") from None


def serve_metrics(worker: PulseWorker, port: int, host: str, access: MetricsAccess) -> None:
    try:
        worker.metrics.serve(port, host, access)
    except OSError as exc:
        raise StartupError(f"cannot serve /metrics on port {port}: {exc.strerror or exc} "
                           "(choose another with --metrics-port)") from None


def run(metric_config: MetricConfig, runtime: RuntimeConfig, loglevel: str = "warning") -> None:
    """Run the worker until SIGINT/SIGTERM (what `community-pulse worker` does)."""
    install_log_filters()
    security = KafkaSecurity.from_runtime(runtime)
    access = MetricsAccess.from_runtime(runtime)
    offset = runtime.clock_offset_s
    # (first: a bad goals or managers file is named at once, with or without a broker)
    worker = PulseWorker(metric_config, runtime,
                         clock=(lambda: time.time() + offset) if offset else time.time)
    check_broker(runtime, security)
    ignored = ignored_faust_environment()
    if ignored:
        start_log.warning("ignoring Faust's environment variable(s) %s: community-pulse "
                          "reads its settings from the config file and PULSE_* only",
                          ", ".join(ignored))
    app = build_app(worker, security)
    serve_metrics(worker, runtime.metrics_port, runtime.metrics_host, access)
    start_log.warning("metrics on %s://%s:%d/metrics%s, snapshots in %s", access.scheme,
                      runtime.metrics_host, runtime.metrics_port,
                      " (basic auth)" if access.user else "", runtime.data_dir)
    if worker.steering.settings.sketch_key is None:  # (after the start's one-line errors)
        start_log.warning(SKETCHES_OFF)
    faust_worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    if not sys.stdout.isatty():
        faust_worker.spinner = None  # it writes cursor escape codes, also into a log file
    keep_beating(faust_worker.loop, worker.metrics.beat)
    faust_worker.execute_from_commandline()


def keep_beating(loop: asyncio.AbstractEventLoop, beat: Callable[[], None]) -> None:
    """Call `beat` every HEARTBEAT_INTERVAL_S from the event loop itself (not a Faust
    timer, which starts only with the app): /healthz fails when the beats stop, i.e.
    when something blocks the loop; /metrics is served from its own thread."""
    def tick() -> None:
        beat()
        loop.call_later(HEARTBEAT_INTERVAL_S, tick)

    loop.call_soon(tick)
