"""The worker's Faust app settings and its batch / refresh logic, without a broker."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import msgspec
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from prometheus_client.parser import text_string_to_metric_families

from devkit.devkafka import free_port
from schemas.events import Event, Rejection
from schemas.producer import TOPIC_OF
from streams.app import (
    PRODUCER_REQUEST_TIMEOUT_S,
    _ConsumerThread,
    committed_offsets,
    faust_app,
    keep_beating,
)
from streams.changelog import _encoded_chunks
from streams.config import MetricConfig, RuntimeConfig
from streams.delivery import (
    DEAD_LETTER_KEEP_BYTES,
    RECORD_MAX_BYTES,
    DurableSender,
    Record,
    dead_letter,
    withhold_acks,
)
from streams.worker import CATCH_UP_CHECKS, PulseWorker
from tests.workers import wait_for


def test_consumer_fetch_wait_is_short_unless_configured_otherwise() -> None:
    # Faust builds its aiokafka consumer with fetch_max_wait_ms=1500; a fetch that asks
    # only for idle partitions then holds back busy ones that long (benchmarks.md).
    # RuntimeConfig.fetch_max_wait_ms (PULSE_FETCH_MAX_WAIT_MS) shortens it; 0 keeps it.
    async def created_consumer_wait(wait_ms: int) -> int:
        app = faust_app("test-fetch-wait", "kafka://127.0.0.1:9", 1, wait_ms)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(created_consumer_wait(0)) == 1500
    assert asyncio.run(created_consumer_wait(RuntimeConfig().fetch_max_wait_ms)) == 100


def test_a_fetch_that_outlasts_a_rebalance_hands_its_records_back() -> None:
    # Faust passes its live set of active partitions to a fetch that waits up to 1 s.
    # A rebalance empties the set meanwhile; aiokafka reads an empty set as "all", and
    # Faust used to drop what came back, changelog records included: table recovery
    # then waited forever. The worker's consumer asks for a copy and seeks back instead.
    changelog, source = TP("community-events-changelog", 2), TP("community.posts", 2)
    active = {changelog, source}
    seeks: list[tuple[TP, int]] = []
    asked: list[set[TP]] = []
    owner = SimpleNamespace(flow_active=True, _buffered_partitions=set())
    kafka = SimpleNamespace(assignment=lambda: {changelog, source},
                            seek=lambda tp, offset: seeks.append((tp, offset)))

    async def fetch_during_a_rebalance(self: Any, consumer: Any, partitions: set[TP],
                                       **_: Any) -> dict[TP, list[Any]]:
        asked.append(set(partitions))
        active.clear()  # the rebalance starts while the fetch waits
        owner.flow_active = False
        return {tp: [SimpleNamespace(offset=7), SimpleNamespace(offset=8)] for tp in partitions}

    thread = object.__new__(_ConsumerThread)
    thread.consumer = owner  # type: ignore[assignment]
    with patch.object(faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records",
                      fetch_during_a_rebalance):
        kept = asyncio.run(thread._fetch_records(kafka, active))  # type: ignore[arg-type]
        assert asked == [{changelog, source}]
        assert kept == {} and sorted(seeks) == sorted([(changelog, 7), (source, 7)])
        # With nothing active, nothing is fetched: an empty set would mean "all" to aiokafka.
        assert asyncio.run(thread._fetch_records(kafka, set())) == {}  # type: ignore[arg-type]
        assert len(asked) == 1


NOW_S = 1_795_000_000.0


def batch_of(events: list[dict], timestamp_s: float = NOW_S) -> list[Any]:
    """Faust-like stream events for PulseWorker.handle_batch (topic from the type)."""
    return [SimpleNamespace(message=SimpleNamespace(
        topic=TOPIC_OF[e["type"]], value=msgspec.json.encode(e), key=e["community_id"].encode(),
        partition=0, offset=i, timestamp=timestamp_s)) for i, e in enumerate(events)]


def community_events(community: str, n_members: int, posts: int, seq: str) -> list[dict]:
    ts = int(NOW_S * 1000) - 60_000
    joins = [{"event_id": f"{community}-j{i}", "type": "join", "community_id": community,
              "user_id": f"u{i}", "ts": ts} for i in range(n_members)]
    return joins + [{"event_id": f"{community}-p{seq}{i}", "type": "post",
                     "community_id": community, "user_id": "u0", "ts": ts,
                     "post_id": f"{community}-p{seq}{i}"} for i in range(posts)]


def gauge(worker: PulseWorker, community: str) -> float | None:
    for family in text_string_to_metric_families(worker.metrics.exposition().decode()):
        for sample in family.samples:
            if (sample.name == "community_pulse_window_events"
                    and sample.labels == {"community": community, "window": "7d",
                                          "type": "post"}):
                return float(sample.value)
    return None


def refresh(worker: PulseWorker) -> None:
    worker._next_refresh = 0.0  # pacing is about wall time; not under test here
    for _ in worker.refresh_steps():
        pass


def test_refresh_shows_changed_communities_and_waits_while_catching_up(tmp_path: Path) -> None:
    worker = PulseWorker(MetricConfig(), RuntimeConfig(data_dir=tmp_path), clock=lambda: NOW_S)
    worker.handle_batch(batch_of(community_events("a", 6, 1, "x")
                                 + community_events("b", 6, 0, "x")))
    refresh(worker)
    assert (gauge(worker, "a"), gauge(worker, "b")) == (1.0, 0.0)

    worker.handle_batch(batch_of(community_events("b", 0, 2, "y")))
    assert list(worker.dirty) == ["b"]
    refresh(worker)
    assert (gauge(worker, "a"), gauge(worker, "b")) == (1.0, 2.0) and not worker.dirty

    # Messages a minute old: the worker is catching up, the gauges wait for a snapshot.
    worker.handle_batch(batch_of(community_events("a", 0, 3, "z"), NOW_S - 60))
    refresh(worker)
    assert gauge(worker, "a") == 1.0 and list(worker.dirty) == ["a"]
    worker.take_snapshot()
    assert gauge(worker, "a") == 4.0 and not worker.dirty


def test_snapshots_thin_out_while_catching_up(tmp_path: Path) -> None:
    worker = PulseWorker(MetricConfig(), RuntimeConfig(data_dir=tmp_path), clock=lambda: NOW_S)
    worker.handle_batch(batch_of(community_events("a", 6, 1, "x")))
    assert [worker.snapshot_due() for _ in range(3)] == [True] * 3
    worker.handle_batch(batch_of(community_events("a", 0, 1, "y"), NOW_S - 60))  # behind
    assert [worker.snapshot_due() for _ in range(6)].count(True) == 2


def test_a_withheld_message_keeps_its_offset_and_later_ones_from_the_commit() -> None:
    # Faust's take_events acks a batch in a `finally`, also when handling it raised.
    # withhold_acks relies on two Faust internals, checked here on the installed Faust:
    # Message.ack skips a message already marked acked (so Consumer.ack never hears of
    # it), and Consumer._new_offset never commits past an offset that was not acked.
    app = faust_app("test-withhold", "kafka://127.0.0.1:9", 1)
    consumer: Any = app.consumer
    app.topics._acking_topics.add("t")  # type: ignore[attr-defined]  # as an agent on "t"
    tp = TP("t", 0)
    messages = [ConsumerMessage("t", 0, offset, NOW_S, 0, [], b"k", b"v", None)
                for offset in range(6)]
    consumer._committed_offset[tp] = None
    for message in messages[:2]:
        message.ack(consumer)
    withhold_acks([SimpleNamespace(message=m) for m in messages[2:4]])  # type: ignore[misc]
    for message in messages:
        message.ack(consumer)  # what take_events' finally does
    assert consumer._new_offset(tp) == 2  # offsets 0 and 1 only


def test_faust_commits_past_a_withheld_message_at_the_head_of_a_partition() -> None:
    # The gap withhold_acks leaves is not enough on its own: Consumer._new_offset checks
    # the head of the acked offsets only once something was committed, and then lets a
    # gap of exactly one message through (`min(acked) - committed > 1`). Acks after a
    # withheld batch would commit past it; the worker exits in the same step instead
    # (exit_unclean), before anything else is acked. If Faust fixes this, this test says so.
    app = faust_app("test-withhold-head", "kafka://127.0.0.1:9", 1)
    consumer: Any = app.consumer
    app.topics._acking_topics.add("t")  # type: ignore[attr-defined]  # as an agent on "t"
    tp = TP("t", 0)

    def new_offset(committed: int | None, withheld: set[int]) -> int | None:
        consumer._acked.pop(tp, None)
        consumer._acked_index.pop(tp, None)
        consumer._committed_offset[tp] = committed
        messages = [ConsumerMessage("t", 0, offset, NOW_S, 0, [], b"k", b"v", None)
                    for offset in range(10, 16)]
        withhold_acks([SimpleNamespace(message=m)  # type: ignore[misc]
                       for m in messages if m.offset in withheld])
        for message in messages:
            message.ack(consumer)
        return consumer._new_offset(tp)  # type: ignore[no-any-return]

    assert new_offset(10, {12}) == 12  # a gap after the head: never passed
    assert new_offset(10, {10, 11}) is None  # two at the head: not passed
    assert new_offset(10, {10}) == 16  # one at the head: passed
    assert new_offset(None, {10, 11}) == 16  # nothing committed yet: passed


def test_faust_clears_the_stream_buffers_whenever_flow_control_resumes() -> None:
    # At the end of a recovery Faust resumes the source partitions, seeks them to the
    # committed offsets and then resumes flow control, which empties every stream buffer
    # even when flow was on already (recovery turned it on to read the changelog). What the
    # fetcher delivered meanwhile is gone, though Faust counts it as read: the worker's
    # on_recover holds flow control until then (tests/test_faults.py, slow-seek).
    app = faust_app("test-flow-clear", "kafka://127.0.0.1:9", 1)
    queue = app.channel().queue
    app.flow_control.resume()
    queue.put_nowait("a fetched record")
    app.flow_control.resume()
    assert queue.empty()


class _FlakyProducer:
    """A producer whose first attempt at each record fails, as during a broker outage."""

    def __init__(self) -> None:
        self.attempts: list[bytes | None] = []
        self.failed: set[bytes | None] = set()

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None, headers: Any) -> Any:
        self.attempts.append(key)
        future = asyncio.get_running_loop().create_future()
        if key in self.failed:
            future.set_result(None)
        else:
            self.failed.add(key)
            future.set_exception(KafkaTimeoutError("no broker"))
        return future


def test_durable_sender_returns_only_once_every_record_is_on_the_broker() -> None:
    producer = _FlakyProducer()
    retried: list[int] = []
    records = [Record("t", b"a", b"1", 0), Record("t", b"b", b"2", 1)]
    with patch("streams.delivery.SEND_RETRY_FIRST_S", 0.0):
        asyncio.run(DurableSender(producer, retried.append).send(records))
    assert producer.attempts == [b"a", b"b", b"a", b"b"] and retried == [2]


def test_dead_letter_of_an_oversized_message_keeps_its_head_size_and_digest() -> None:
    raw = b"[" + b" " * 2_000_000 + b"]"
    msg = SimpleNamespace(topic="community.posts", partition=3, offset=17, key=b"c")
    record = dead_letter("dl", msg, Rejection(raw, "oversized", "too big"), 0)
    headers = dict(record.headers or [])
    assert record.value == raw[:DEAD_LETTER_KEEP_BYTES] and record.key == b"c"
    assert headers["original_size"] == b"2000002"
    assert headers["original_sha256"] == hashlib.sha256(raw).hexdigest().encode()
    assert headers["dead_letter_id"] == b"community.posts/3/17/0"
    small = dead_letter("dl", msg, Rejection(b"{}", "missing_field", "no id"), 1)
    assert small.value == b"{}" and "original_size" not in dict(small.headers or [])


def test_deltas_are_cut_by_bytes_as_well_as_by_count() -> None:
    long = "x" * 256
    events = [Event(f"{i}".ljust(128, "e"), "post", long, long, 1_795_000_000_000,
                    post_id=long) for i in range(2000)]
    chunks = list(_encoded_chunks(events))
    assert len(chunks) > 1 and all(len(value) <= RECORD_MAX_BYTES for _, value in chunks)
    assert [e for chunk, _ in chunks for e in chunk] == events


def test_healthz_fails_once_the_event_loop_stops_beating(tmp_path: Path) -> None:
    worker = PulseWorker(MetricConfig(), RuntimeConfig(data_dir=tmp_path,
                                                       liveness_timeout_s=1.5))
    port = free_port()
    server = worker.metrics.serve(port, host="127.0.0.1")
    try:
        def status() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as reply:
                    return int(reply.status)
            except urllib.error.HTTPError as error:
                return error.code

        loop = asyncio.new_event_loop()
        keep_beating(loop, worker.metrics.beat)
        loop.run_until_complete(asyncio.sleep(0.1))  # the loop turns: beats
        assert status() == 200
        loop.run_until_complete(asyncio.sleep(0))
        wait_for(lambda: status() == 503, 10, "/healthz to fail while the loop is stuck")
        loop.run_until_complete(asyncio.sleep(0.1))  # turning again: the overdue beat
        assert status() == 200
        loop.close()
    finally:
        server.shutdown()


def test_a_worker_cut_off_from_kafka_stops_exporting_and_writing(tmp_path: Path) -> None:
    worker = PulseWorker(MetricConfig(), RuntimeConfig(data_dir=tmp_path), clock=lambda: NOW_S)
    worker.handle_batch(batch_of(community_events("a", 6, 1, "x")))
    worker.in_contact({"community.posts": 0}, 4)
    worker.take_snapshot()
    assert gauge(worker, "a") == 1.0 and worker.snapshot_due()
    assert worker.last_contact is not None
    worker.last_contact -= worker.session_timeout_s + 1  # no answer since
    assert worker.cut_off() and gauge(worker, "a") is None and not worker.snapshot_due()
    refresh(worker)
    assert gauge(worker, "a") is None
    worker.in_contact({"community.posts": 3}, 4)  # the broker answers again
    assert not worker.cut_off() and worker.snapshot_due()
    refresh(worker)
    assert gauge(worker, "a") == 1.0


class _SmallTopicProducer(_FlakyProducer):
    """A dead-letter topic whose max.message.bytes refuses anything but a bare record."""

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None, headers: Any) -> Any:
        self.attempts.append(value)
        future = asyncio.get_running_loop().create_future()
        if value:
            future.set_exception(MessageSizeTooLargeError())
        else:
            future.set_result(None)
        return future


def test_a_dead_letter_the_topic_refuses_as_too_large_is_written_bare() -> None:
    msg = SimpleNamespace(topic="community.posts", partition=1, offset=5, key=b"c")
    letter = dead_letter("dl", msg, Rejection(b"x" * 1000, "wrong_topic", "d" * 500), 0)
    producer = _SmallTopicProducer()
    with patch("streams.delivery.SEND_RETRY_FIRST_S", 0.0):
        asyncio.run(DurableSender(producer).send([letter]))
    assert producer.attempts == [b"x" * 1000, b""]
    bare = letter.smaller
    assert bare is not None and bare.key is None
    headers = dict(bare.headers or [])
    assert headers["dead_letter_id"] == b"community.posts/1/5/0"
    assert headers["original_size"] == b"1000" and len(headers["detail"]) == 100


def test_caught_up_when_what_was_there_a_few_checks_ago_is_processed(tmp_path: Path) -> None:
    worker = PulseWorker(MetricConfig(), RuntimeConfig(data_dir=tmp_path), clock=lambda: NOW_S)
    posts, likes = ("community.posts", 0), ("community.likes", 0)
    worker.observe_offsets({posts: 1}, {}, 1000)
    assert worker.mark is None  # nothing to compare with yet
    worker.handle_batch(batch_of(community_events("a", 0, 1, "x")))  # posts@0 -> next 1
    worker.observe_offsets({posts: 5, likes: 3}, {}, 2000)
    assert worker.mark is None  # another set of partitions (a rebalance): not yet
    worker.observe_offsets({posts: 9, likes: 3}, {likes: 3}, 3000)
    assert worker.mark is None  # posts: 1 of 5 processed
    worker.processed_next[posts] = 9  # (as handle_batch does)
    worker.observe_offsets({posts: 12, likes: 3}, {likes: 3}, 4000)
    assert worker.mark == 3000  # all that was there at 3000: posts by processing,
    assert worker.metrics.catching_up._value.get() == 0  # likes by committed offsets
    # Keeping up a little behind (the check at 4000 not yet read): still caught up, the
    # mark stays where everything is read.
    worker.observe_offsets({posts: 15, likes: 3}, {likes: 3}, 5000)
    assert worker.mark == 3000
    # Falling behind by more than CATCH_UP_CHECKS checks: catching up.
    for i in range(CATCH_UP_CHECKS):
        worker.observe_offsets({posts: 20 + i, likes: 3}, {likes: 3}, 6000 + i * 1000)
    assert worker.mark is None and worker.metrics.catching_up._value.get() == 1
    worker.processed_next[posts] = 40
    worker.observe_offsets({posts: 40, likes: 3}, {likes: 3}, 20_000)
    assert worker.mark == 6000 + (CATCH_UP_CHECKS - 1) * 1000
    worker.observe_offsets(None, {}, 21_000)  # rebalancing or no broker: catching up
    assert worker.mark is None and worker.metrics.catching_up._value.get() == 1


def test_faust_keeps_the_committed_offsets_the_catch_up_check_reads() -> None:
    # streams.app.committed_offsets reads Faust's private Consumer._committed_offset.
    app = faust_app("test-committed", "kafka://127.0.0.1:9", 1)
    committed = committed_offsets(app)
    assert committed is app.consumer._committed_offset  # type: ignore[attr-defined]
    assert committed[TP("community.posts", 0)] is None  # a defaultdict: None when unknown


def test_snapshots_while_catching_up_update_gauges_but_are_not_reported_written(
        tmp_path: Path) -> None:
    worker = PulseWorker(MetricConfig(), RuntimeConfig(data_dir=tmp_path), clock=lambda: NOW_S)
    worker.handle_batch(batch_of(community_events("a", 6, 1, "x")))
    worker.take_snapshot()  # no end offsets seen yet: catching up
    assert worker.mark is None and gauge(worker, "a") == 1.0
    assert worker.metrics.last_snapshot._value.get() == 0  # (the timer writes no rows)
    for _ in range(2):
        worker.observe_offsets(dict(worker.processed_next), {}, int(NOW_S * 1000))
    worker.take_snapshot()
    assert worker.metrics.last_snapshot._value.get() == NOW_S


def test_the_producer_waits_for_every_in_sync_replica_but_not_for_a_silent_broker() -> None:
    # acks=all (Faust's producer_acks -1; Faust's PRODUCER_ACKS variable is ignored): with
    # min.insync.replicas 2 a record the broker acknowledged survives the loss of its
    # leader. The request timeout gives up a send to a stalled leader, so it is re-sent to
    # the new one (test_faults_cluster.py) instead of waiting Faust's 20 minutes.
    async def created_producer() -> tuple[int, int]:
        app = faust_app("test-producer", "kafka://127.0.0.1:9", 1)
        producer = app.producer._new_producer()  # type: ignore[attr-defined]
        try:
            return producer._sender._acks, producer._request_timeout_ms
        finally:
            await producer.stop()

    with patch.dict("os.environ", {"PRODUCER_ACKS": "1"}):
        acks, timeout_ms = asyncio.run(created_producer())
    assert acks == -1
    assert timeout_ms == PRODUCER_REQUEST_TIMEOUT_S * 1000
