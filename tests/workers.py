"""Run `community-pulse worker` as a real child process against the test broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from devkit.demo import scrape, stop_worker
from devkit.devkafka import die_with_parent, free_port

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
                 port: int | None = None):
        self.port = port or free_port()
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{data_dir.name}-worker.log"
        # TMPDIR: a worker killed hard leaves its scratch folder in the test's tmp, not /tmp.
        env = {**os.environ, "PULSE_TOPIC_PREFIX": prefix, "PULSE_APP_ID": app_id,
               "TMPDIR": str(data_dir.parent),
               **(extra_env or {})}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--broker", bootstrap,
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
