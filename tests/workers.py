"""Run `community-pulse worker` as a real child process against the test broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import duckdb
from kafka import KafkaProducer

from devkit.demo import scrape, stop_worker
from devkit.devkafka import die_with_parent, free_port
from sinks.parquet import snapshots_glob

T = TypeVar("T")
Samples = dict[str, list[tuple[dict[str, str], float]]]


def wait_for(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll until `condition()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


class WorkerProcess:
    def __init__(self, bootstrap: str, data_dir: Path, prefix: str, app_id: str,
                 snapshot_interval: float = 2.0, extra_env: dict[str, str] | None = None,
                 port: int | None = None, fault: str | None = None):
        """`fault` runs the worker through tests/fault_worker.py with that fault."""
        self.port = port or free_port()
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{data_dir.name}-worker.log"
        # TMPDIR: a worker killed hard leaves its scratch folder in the test's tmp, not /tmp.
        env = {**os.environ, "PULSE_TOPIC_PREFIX": prefix, "PULSE_APP_ID": app_id,
               "TMPDIR": str(data_dir.parent),
               **(extra_env or {})}
        launcher = ["-m", "streams.cli"] if fault is None else [
            str(Path(__file__).with_name("fault_worker.py")), fault]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *launcher, "worker", "--broker", bootstrap,
                 "--data-dir", str(data_dir), "--metrics-port", str(self.port),
                 "--snapshot-interval", str(snapshot_interval), "--loglevel", "info"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def scrape(self) -> Samples:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker died; log:\n{self.log.read_text()[-3000:]}")
        return scrape(self.port)

    def value(self, samples: Samples, name: str, **labels: str) -> float | None:
        for sample_labels, value in samples.get(name, []):
            if all(sample_labels.get(k) == v for k, v in labels.items()):
                return value
        return None

    def total(self, samples: Samples, name: str) -> float:
        return sum(v for _, v in samples.get(name, []))

    def stop(self) -> None:
        stop_worker(self.proc)

    def freeze(self) -> None:
        """SIGSTOP: the whole process stands still (what a starved machine does to it)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """kill -9: no shutdown, no last commit."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


def produce(bootstrap: str, prefix: str, messages: Iterable[tuple[str, bytes, bytes]],
            max_request_size: int = 1_048_576, acks: int | str = 1, **client: Any) -> None:
    """Produce the messages and make sure every one is on the broker (`client`: more
    KafkaProducer settings, e.g. security). `acks="all"` on a replicated cluster: with 1,
    a leader stalled or killed right after its answer may take messages with it that the
    test then expects."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10,
                             max_request_size=max_request_size, acks=acks, **client)
    sent = [producer.send(prefix + topic, key=key, value=value)
            for topic, key, value in messages]
    producer.flush()
    producer.close()
    # flush() waits but does not raise: a send that failed (e.g. its delivery timed out on
    # a loaded broker) would be a message the worker never saw and replay counts.
    failed = [future for future in sent if not future.succeeded()]
    if failed:
        raise AssertionError(f"{len(failed)} of {len(sent)} messages were not produced: "
                             f"{failed[0].exception!r}")


def settled_snapshot(worker: WorkerProcess, timeout: float = 60) -> tuple[float, Samples]:
    """A scrape whose snapshot was taken after everything was consumed."""
    consumed_at = time.time()

    def fresh() -> tuple[float, Samples] | None:
        first = worker.scrape()
        as_of = worker.value(first, "community_pulse_last_snapshot_timestamp_seconds")
        if as_of is None or as_of <= consumed_at:
            return None
        again = worker.scrape()
        if worker.value(again, "community_pulse_last_snapshot_timestamp_seconds") != as_of:
            return None  # a snapshot landed between the two scrapes; try again
        return as_of, first

    return wait_for(fresh, timeout, "a snapshot after consumption")


def parquet_rows(data_dir: Path, as_of_s: float) -> list[dict]:
    """The snapshot rows written for `as_of_s` (waits until they are on disk)."""
    as_of_ms = round(as_of_s * 1000)
    query = f"""SELECT * EXCLUDE (date) FROM read_parquet('{snapshots_glob(data_dir)}',
                hive_partitioning = true)
                WHERE epoch_ms(as_of) = {as_of_ms} ORDER BY community_id, window_days"""

    def rows() -> list[dict] | None:
        try:
            rel = duckdb.sql(query)
        except duckdb.IOException:
            return None
        assert rel is not None  # a SELECT always gives a relation
        return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()] or None

    return wait_for(rows, 30, f"parquet rows at {as_of_ms}")


def comparable(row: dict) -> dict:
    return {k: (round(v, 9) if isinstance(v, float) else v) for k, v in row.items()}
