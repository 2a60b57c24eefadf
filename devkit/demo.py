"""`community-pulse demo`: Kafka, a worker and a generator on this machine, live.

Each run starts clean: it empties its data folder (only one that a demo made), generates
five weeks of synthetic history, starts a local Apache Kafka broker (KRaft) and
`community-pulse worker` as a child process, loads the history into Kafka (the worker
writes the closing rows of its days once it has caught up, so trend queries have days to
show), then keeps producing live events in each community's pattern and redraws a summary
read from the worker's own /metrics. Ctrl-C stops everything; the broker's data goes
with it.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from devkit import generate as gen
from devkit.devkafka import DevKafkaError, LocalKafka, die_with_parent, free_port
from streams.config import DAY_MS
from streams.kafka_auth import KafkaSecurity

HISTORY_DAYS = 35
SHOWN = 4  # communities named per tier in the summary
MARKER = ".community-pulse-demo"  # a folder with this file was made by a demo
DEMO_ENTRIES = {MARKER, "run", "snapshots", "pulse.duckdb", "pulse.duckdb.wal", "goals",
                "goals.yml"}


class DemoError(ValueError):
    """The demo cannot start; the message is one line."""

TIER_NAMES = {0: "low (<15%)", 1: "medium (15-30%)", 2: "high (>=30%)"}
TIER_ACTIONS = {
    0: "merge similar communities, get more members posting and replying, bring in a "
       "content expert",
    1: "worth joining and listening to; get more members posting and replying",
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
    lines = [f"communities exported: {len(tiers)}   (28-day window; tier by the share of "
             "members who are creator, conversationalist or critic)"]
    for level in (2, 1, 0):
        names = sorted((c for c, t in tiers.items() if t == level), key=lambda c: -scores[c])
        shown = cut([f"{c} ({scores[c]:.0f})" for c in names], SHOWN)
        lines.append(f"  {TIER_NAMES[level]:<16} {len(names):>4}  {shown}")
        lines.append(f"  {'':<16}       -> {TIER_ACTIONS[level]}")
    stuck = sorted(c for c, v in stagnating.items() if v)
    lines.append(f"stagnating: {len(stuck)}  {cut(stuck, 6)}")
    lines.extend(goal_lines(samples))
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


def cut(items: list[str], limit: int) -> str:
    """The first `limit` items, and how many more there are."""
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


EXAMPLE_GOALS = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "goals.yml"


def demo_goals(data_dir: Path, now_ms: int) -> Path:
    """The example goals file with its dates moved so that every goal started 14 days
    before now (the demo's history is the last five weeks)."""
    import yaml

    from streams.steering.files import read_goals
    from streams.steering.goals import to_utc

    goals = read_goals(EXAMPLE_GOALS)
    document = yaml.safe_load(EXAMPLE_GOALS.read_text(encoding="utf-8"))
    for goal, item in zip(goals, document["goals"], strict=True):
        shift = now_ms - 14 * 86_400_000 - goal.start_ms
        for field, ms in (("start", goal.start_ms), ("deadline", goal.deadline_ms),
                          ("sustain_until", goal.sustain_until_ms)):
            item[field] = to_utc(ms + shift)
    path = data_dir / "goals.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def goal_lines(samples: dict[str, list[tuple[dict[str, str], float]]]) -> list[str]:
    """One line per goal: its status, value and expected value (docs/steering.md)."""
    def by_goal(name: str) -> dict[str, float]:
        return {labels["goal"]: value for labels, value in samples.get(name, [])}

    values, expected = by_goal("community_pulse_goal_value"), by_goal(
        "community_pulse_goal_expected")
    targets = by_goal("community_pulse_goal_target")
    lines = []
    for labels, value in sorted(samples.get("community_pulse_goal_status", []),
                                key=lambda s: s[0]["goal"]):
        if value == 1:
            goal = labels["goal"]
            now = f"{values[goal]:.3g}" if goal in values else "-"
            lines.append(f"  goal {goal:<16} {labels['status']:<11} {labels['metric']} of "
                         f"{labels['community']} ({labels['window']}): {now}, expected "
                         f"{expected.get(goal, 0):.3g}, target {targets.get(goal, 0):.3g}")
    return [f"goals: {len(lines)}", *lines] if lines else []


def steering_lines(samples: dict[str, list[tuple[dict[str, str], float]]]) -> list[str]:
    """Where to start and what to merge (docs/steering.md), from the worker's gauges."""
    ranks = sorted((value, labels["community"]) for labels, value in
                   samples.get("community_pulse_focus_rank", []))
    merges, pairs = [], set()  # a pair is suggested from both sides: shown once
    for overlap, a, b in sorted((-value, labels["community"], labels["candidate"]) for
                                labels, value in
                                samples.get("community_pulse_merge_suggestion_jaccard", [])):
        if frozenset((a, b)) not in pairs:
            pairs.add(frozenset((a, b)))
            merges.append((overlap, a, b))
    if not ranks and not merges:
        return ["where to start / merge suggestions: waiting for the first steering pass"]
    start = ", ".join(f"{int(rank)}. {c}" for rank, c in ranks[:5]) or "none"
    merge = ", ".join(f"{a} + {b} ({-j:.0%} shared)" for j, a, b in merges[:3]) or "none"
    return [f"where to start (communities of practice, best first): {start}",
            f"merge suggestions (low/medium communities, member overlap): {merge}"]


def run_demo(
    n_communities: int, rate: float, duration: float, data_dir: Path, metrics_port: int,
    secured: bool = False,
) -> int:
    """With `secured`, the broker gets a SASL_SSL listener and every client of the demo
    (worker, history loader, live producer) logs in with SCRAM-SHA-512 over TLS."""
    start_clean(data_dir)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    run_dir = data_dir / "run"
    run_dir.mkdir()
    try:
        metrics_port = _usable_port(metrics_port)
    except OSError:
        metrics_port = free_port()
    rng = random.Random(7)
    now_ms = int(time.time() * 1000)
    communities = gen.plan(n_communities, 20 * n_communities, rng)
    history = demo_history(communities, now_ms, rng)
    goals = demo_goals(data_dir, now_ms)
    print(f"starting Apache Kafka (KRaft{', SASL_SSL' if secured else ''}) ...", flush=True)
    with _broker(run_dir, secured) as kafka:
        bootstrap, security = kafka.bootstrap, KafkaSecurity()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_KAFKA_")}
        env["PULSE_METRICS_HOST"] = "127.0.0.1"  # a demo: this machine only
        env["PULSE_GOALS_FILE"] = str(goals)  # the example goals, moved to now
        env.setdefault("PULSE_STEERING_INTERVAL_S", "15")  # focus and merges soon
        # Merge suggestions need member sketches, and those a secret key: one per run.
        env.setdefault("PULSE_SKETCH_KEY", secrets.token_hex(32))
        if kafka.secured is not None:
            bootstrap, security = kafka.secured.sasl_ssl_bootstrap, kafka.secured.security()
            env.update(kafka.secured.settings_env())
        worker_log = (run_dir / "worker.log").open("ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--broker", bootstrap,
             "--data-dir", str(data_dir), "--metrics-port", str(metrics_port),
             "--snapshot-interval", "5"],
            stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            preexec_fn=die_with_parent,  # no orphaned worker if the demo is killed hard
        )
        try:
            return _drive(bootstrap, security, worker, communities, history, rng, rate, duration,
                          data_dir, metrics_port)
        except KeyboardInterrupt:
            print("\nstopping ...")
            return 0
        finally:
            stop_worker(worker)
            worker_log.close()


@contextmanager
def _broker(run_dir: Path, secured: bool) -> Iterator[LocalKafka]:
    """A local broker in a temporary folder, removed when it stops. A broker that does not
    start is one line; its details (the log's tail) go to run/broker-error.log."""
    kafka = LocalKafka(secured=secured)
    try:
        kafka.start()
    except DevKafkaError as exc:
        kafka.stop()
        details = run_dir / "broker-error.log"
        details.write_text(f"{exc}\n")
        raise DemoError(f"the Kafka broker did not start: {str(exc).splitlines()[0]} "
                        f"(details in {details})") from None
    try:
        yield kafka
    finally:
        kafka.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def demo_history(communities: list[gen.Community], now_ms: int, rng: random.Random
                 ) -> list[dict]:
    """Five weeks of history in arrival order. Members who joined before it begins join on
    its first day instead, so the daily snapshots start with the activity, not with
    weeks of communities that only have members."""
    start = now_ms - HISTORY_DAYS * DAY_MS
    events = [e for c in communities for e in gen.history(c, now_ms, HISTORY_DAYS, rng)]
    for event in events:
        if event["type"] == "join" and event["ts"] < start:
            event["ts"] = start
    return gen.messy_order(events, rng)


def start_clean(data_dir: Path) -> None:
    """Empty the data folder of an earlier demo run: each run generates a new history,
    and two histories in one folder make false tier changes where they meet. A folder
    that a demo did not make is left alone."""
    if data_dir.exists():
        entries = {entry.name for entry in data_dir.iterdir()}
        if entries and MARKER not in entries and not entries <= DEMO_ENTRIES:
            raise DemoError(f"{data_dir} holds files a demo did not write; the demo empties "
                            "its data folder, so choose another --data-dir")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    (data_dir / MARKER).write_text("made by `community-pulse demo`; emptied by the next one\n")


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
    security: KafkaSecurity,
    worker: subprocess.Popen[bytes],
    communities: list[gen.Community],
    history: list[dict],
    rng: random.Random,
    rate: float,
    duration: float,
    data_dir: Path,
    metrics_port: int,
) -> int:
    from kafka import KafkaProducer

    messages = list(gen.to_messages(history, batch_size=100))
    messages += [(topic, b"x", value) for topic, value in gen.BAD_MESSAGES]
    print(f"loading {len(history):,} historical events ({len(messages):,} messages) ...",
          flush=True)
    gen.produce(bootstrap, messages, security)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                             **security.client_kwargs())
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


def _command() -> str:
    """How to run `community-pulse` from here: it is in the venv, not on PATH."""
    command = Path(sys.executable).parent / "community-pulse"
    if not command.exists():
        return "community-pulse"
    return os.path.relpath(command) if command.is_relative_to(Path.cwd()) else str(command)


def _draw(metrics_port: int, rate: float, data_dir: Path, interactive: bool) -> None:
    try:
        text = summary(scrape(metrics_port), rate)
    except OSError:
        text = "waiting for the worker's first snapshot ..."
    where = (f"metrics: http://127.0.0.1:{metrics_port}/metrics   parquet: "
             f"{data_dir.resolve()}/snapshots   duckdb: {data_dir.resolve()}/pulse.duckdb\n"
             f"query it: {_command()} sql --data-dir {data_dir} \"FROM latest_snapshots\"   "
             "(more in docs/querying.md)")
    if interactive:
        sys.stdout.write("\x1b[2J\x1b[H")
    print(f"community-pulse demo  ({time.strftime('%H:%M:%S')}, Ctrl-C to stop)\n{text}\n"
          f"{where}\n", flush=True)
