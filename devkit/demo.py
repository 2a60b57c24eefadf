"""`community-pulse demo`: Kafka, a worker and a generator on this machine, live.

Starts a local Apache Kafka broker (KRaft), runs `community-pulse worker` as a child
process, loads five weeks of synthetic history, then keeps producing live events and
redraws a summary read from the worker's own /metrics. Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from devkit import generate as gen
from devkit.devkafka import LocalKafka, die_with_parent, free_port

TIER_NAMES = {0: "low (<15%)", 1: "medium (15-30%)", 2: "high (>=30%)"}
TIER_ACTIONS = {
    0: "merge similar communities, stimulate creators/critics, bring in a content expert",
    1: "worth joining and listening to; stimulate more creators and critics",
    2: "community of practice: be part of it; add a content expert as critic",
}


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def summary(samples: dict[str, list[tuple[dict[str, str], float]]], rate: float) -> str:
    def per_community(name: str, window: str | None = "28d") -> dict[str, float]:
        return {
            labels["community"]: value
            for labels, value in samples.get(name, [])
            if window is None or labels.get("window") == window
        }

    tiers = per_community("community_pulse_tier")
    scores = per_community("community_pulse_sustainability_score")
    stagnating = per_community("community_pulse_stagnating", None)
    lines = [f"communities exported: {len(tiers)}   (28-day window; tier = share of members "
             "who are creator or critic)"]
    for level in (2, 1, 0):
        names = sorted((c for c, t in tiers.items() if t == level), key=lambda c: -scores[c])
        shown = ", ".join(f"{c} ({scores[c]:.0f})" for c in names[:4])
        lines.append(f"  {TIER_NAMES[level]:<16} {len(names):>4}  {shown}")
        lines.append(f"  {'':<16}       -> {TIER_ACTIONS[level]}")
    stuck = sorted(c for c, v in stagnating.items() if v)
    lines.append(f"stagnating: {len(stuck)}  {', '.join(stuck[:6])}")
    lines.extend(steering_lines(samples))

    def total(name: str) -> float:
        return sum(value for _, value in samples.get(name, []))

    # The busiest topic's lag; quiet topics (memberships) say nothing about freshness.
    lag = min((v for _, v in samples.get("community_pulse_event_time_lag_seconds", [])),
              default=0.0)
    lines.append(f"events consumed {total('community_pulse_events_consumed_total'):,.0f}  "
                 f"processed {total('community_pulse_events_processed_total'):,.0f}  "
                 f"duplicates {total('community_pulse_events_duplicates_total'):,.0f}  "
                 f"dead-lettered {total('community_pulse_events_dead_lettered_total'):,.0f}")
    lines.append(f"live rate {rate:,.0f} events/s   event-time lag {lag:.1f}s")
    return "\n".join(lines)


def steering_lines(samples: dict[str, list[tuple[dict[str, str], float]]]) -> list[str]:
    """Where to start and what to merge (docs/steering.md), from the worker's gauges."""
    ranks = sorted((value, labels["community"]) for labels, value in
                   samples.get("community_pulse_focus_rank", []))
    merges = sorted(((-value, labels["community"], labels["candidate"]) for labels, value in
                     samples.get("community_pulse_merge_suggestion_jaccard", [])))
    if not ranks and not merges:
        return ["where to start / merge suggestions: waiting for the first steering pass"]
    start = ", ".join(f"{int(rank)}. {c}" for rank, c in ranks[:5]) or "none"
    merge = ", ".join(f"{a} + {b} ({-j:.0%} shared)" for j, a, b in merges[:3]) or "none"
    return [f"where to start (communities of practice, best first): {start}",
            f"merge suggestions (low/medium communities, member overlap): {merge}"]


def run_demo(
    n_communities: int, rate: float, duration: float, data_dir: Path, metrics_port: int
) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    run_dir = data_dir / "run"
    try:
        metrics_port = _usable_port(metrics_port)
    except OSError:
        metrics_port = free_port()
    print(f"starting Apache Kafka (KRaft) in {run_dir} ...", flush=True)
    with LocalKafka(run_dir=run_dir) as kafka:
        worker_log = (run_dir / "worker.log").open("ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--broker", kafka.bootstrap,
             "--data-dir", str(data_dir), "--metrics-port", str(metrics_port),
             "--snapshot-interval", "5"],
            # A steering pass (focus, merges) every 15 s unless set otherwise.
            env={"PULSE_STEERING_INTERVAL_S": "15", **os.environ},
            stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,  # no orphaned worker if the demo is killed hard
        )
        try:
            return _drive(kafka.bootstrap, worker, n_communities, rate, duration, data_dir,
                          metrics_port)
        except KeyboardInterrupt:
            print("\nstopping ...")
            return 0
        finally:
            stop_worker(worker)
            worker_log.close()


def _usable_port(port: int) -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
    return port


def stop_worker(worker: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the worker's process group, SIGKILL it if it has not left in `timeout`."""
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def _drive(
    bootstrap: str,
    worker: subprocess.Popen[bytes],
    n_communities: int,
    rate: float,
    duration: float,
    data_dir: Path,
    metrics_port: int,
) -> int:
    from kafka import KafkaProducer

    rng = random.Random(7)
    now_ms = int(time.time() * 1000)
    communities = gen.plan(n_communities, 20 * n_communities, rng)
    history = gen.messy_order(
        [e for c in communities for e in gen.history(c, now_ms, 35, rng)], rng)
    messages = list(gen.to_messages(history, batch_size=100))
    messages += [(topic, b"x", value) for topic, value in gen.BAD_MESSAGES]
    print(f"loading {len(history):,} historical events ({len(messages):,} messages) ...",
          flush=True)
    gen.produce(bootstrap, messages)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    interactive = sys.stdout.isatty()
    started = last_draw = time.monotonic()
    seq = 0
    try:
        while not duration or time.monotonic() - started < duration:
            if worker.poll() is not None:
                print(f"worker exited with {worker.returncode}; see {data_dir}/run/worker.log")
                return 1
            tick = time.monotonic()
            batch = gen.live_events(communities, int(time.time() * 1000), max(1, int(rate / 2)),
                                    rng, seq)
            seq += len(batch)
            for topic, key, value in gen.to_messages(batch, batch_size=1):
                producer.send(topic, key=key, value=value)
            producer.flush()
            if tick - last_draw >= (2 if interactive else 10):
                last_draw = tick
                _draw(metrics_port, rate, data_dir, interactive)
            time.sleep(max(0.0, 0.5 - (time.monotonic() - tick)))
    finally:
        producer.close()
    _draw(metrics_port, rate, data_dir, False)
    return 0


def _draw(metrics_port: int, rate: float, data_dir: Path, interactive: bool) -> None:
    try:
        text = summary(scrape(metrics_port), rate)
    except OSError:
        text = "waiting for the worker's first snapshot ..."
    where = (f"metrics: http://127.0.0.1:{metrics_port}/metrics   parquet: "
             f"{data_dir.resolve()}/snapshots   duckdb: {data_dir.resolve()}/pulse.duckdb")
    if interactive:
        sys.stdout.write("\x1b[2J\x1b[H")
    print(f"community-pulse demo  ({time.strftime('%H:%M:%S')}, Ctrl-C to stop)\n{text}\n"
          f"{where}\n", flush=True)
