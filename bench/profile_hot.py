"""Profiles of our code on captured batches, without Kafka or Faust.

Feeds the loaded messages, in batches of BATCH_MAX_MESSAGES like the agent sees them,
to `PulseWorker.handle_batch` (with a DeltaLog on an in-memory stand-in for the Faust
table, so the changelog encoding is included, not the send), then takes one snapshot.
Each is timed once plainly and once under cProfile. Prints one JSON line.
Usage: profile_hot.py SINGLE_FILE ENVELOPE_FILE LIMIT_EVENTS
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from streams.app import BATCH_MAX_MESSAGES
from streams.changelog import DeltaLog
from streams.config import MetricConfig, RuntimeConfig
from streams.worker import PulseWorker


@dataclass
class _Message:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: float = field(default_factory=time.time)  # Kafka's, in seconds


@dataclass
class _EventT:
    message: _Message


class _ChangelogTopic:
    def get_topic_name(self) -> str:
        return "profile-community-events-changelog"


class _Table:
    """What DeltaLog uses of a Faust table: its data and its changelog topic's name (the
    worker builds the changelog records and sends them itself)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.changelog_topic = _ChangelogTopic()


def _worker(tmp: str) -> PulseWorker:
    worker = PulseWorker(MetricConfig(), RuntimeConfig(data_dir=Path(tmp)))
    worker.deltas = DeltaLog(_Table())  # type: ignore[arg-type]
    return worker


def _top(profile: cProfile.Profile, n: int = 18) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(n)
    text = out.getvalue()
    return text[text.index("   ncalls"):] if "   ncalls" in text else text


def run(batches: list[list[Any]], events: int, label: str) -> dict[str, Any]:
    result: dict[str, Any] = {"events": events, "messages": sum(len(b) for b in batches)}
    with tempfile.TemporaryDirectory() as tmp:
        worker = _worker(tmp)
        started = time.process_time()
        for batch in batches:
            worker.handle_batch(batch)
        cpu = time.process_time() - started
        result["handle_batch_cpu_s"] = cpu
        result["handle_batch_events_per_cpu_s"] = events / cpu
        started = time.process_time()
        rows = worker.take_snapshot()
        result["snapshot_cpu_s"] = time.process_time() - started
        result["snapshot_rows"] = len(rows)
        profile = cProfile.Profile()
        profile.enable()
        worker.take_snapshot()
        profile.disable()
        result["snapshot_profile"] = _top(profile)
    with tempfile.TemporaryDirectory() as tmp:
        worker = _worker(tmp)
        profile = cProfile.Profile()
        profile.enable()
        for batch in batches:
            worker.handle_batch(batch)
        profile.disable()
        result["handle_batch_profile"] = _top(profile)
    print(f"  profiled {label}", file=sys.stderr, flush=True)
    return result


def main(single_path: str, envelope_path: str, limit: int) -> None:
    out: dict[str, Any] = {}
    for label, path in (("single", single_path), ("envelope", envelope_path)):
        with open(path, "rb") as fh:
            messages = msgspec.msgpack.decode(fh.read())
        wrapped: list[Any] = []
        events = 0
        for offset, (topic, key, value) in enumerate(messages):
            wrapped.append(_EventT(_Message(topic, hash(key) % 4, offset, key, value)))
            events += value.count(b'"event_id"') or 1
            if events >= limit:
                break
        batches = [wrapped[i:i + BATCH_MAX_MESSAGES]
                   for i in range(0, len(wrapped), BATCH_MAX_MESSAGES)]
        out[label] = run(batches, events, label)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
