"""Side-by-side benchmark of the community-pulse worker against its peers (`make bench`).

One run, one real local Kafka broker (devkit.devkafka.LocalKafka):

1. generates >= --events events (devkit.generate: plan/history/messy_order, ~1%
   duplicates, 5 malformed messages) and loads them twice, as single-event messages
   and as batch envelopes (100 events per message, per topic and community), under two
   topic prefixes;
2. consumes everything from the beginning, one consumer process at a time, each with a
   fresh consumer group, `--rounds` times in alternating order, and measures events/s,
   CPU seconds per million events (/proc/<pid>/stat) and peak RSS (VmHWM), for
     raw    aiokafka getmany + msgspec decode (the client limit),
     faust  a bare Faust agent that only counts messages (the engine floor),
     quix   the same job in Quix Streams (own venv, bench/.venv-quix),
     worker our `community-pulse worker`;
3. freshness of our worker at a steady 2,000 events/s (produce -> /metrics);
4. replay vs DuckDB SQL computing the same snapshot (every column) from the same
   JSON-lines file, and a row-by-row comparison of the two outputs;
5. state memory of PulseCore, and cProfile profiles of our hot paths.

Rates are medians over the rounds; a ratio is the median of the ratios taken within
each round, because this machine's speed drifts by 10-30% between minutes.
Prints a table, writes bench/results/latest.json and bench/results/latest.md.
Usage: .venv/bin/python bench/run.py [--events N] [--communities N] [--users N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from bench.common import read_status  # noqa: E402
from devkit import generate as gen  # noqa: E402
from devkit.devkafka import KAFKA_VERSION, LocalKafka, free_port  # noqa: E402
from schemas import producer  # noqa: E402
from schemas.events import DEAD_LETTER_TOPIC, DEFAULT_TOPICS  # noqa: E402
from streams.config import RuntimeConfig  # noqa: E402
from streams.kafka_auth import KafkaSecurity  # noqa: E402

RESULTS = ROOT / "bench" / "results"
QUIX_VENV = ROOT / "bench" / ".venv-quix"
QUIX_REQUIREMENTS = ("quixstreams==3.28.1", "msgspec==0.22.0")
PARTITIONS = 4
ENVELOPE_SIZE = 100
MARKER = "bench-marker"
TOPIC_OF = producer.TOPIC_OF
BAD_MESSAGES = gen.BAD_MESSAGES  # what `community-pulse generate` mixes in
SNAPSHOT_INTERVAL_S = RuntimeConfig().snapshot_interval_s  # the product default
TARGETS = {
    "single_vs_faust": 0.8,
    "envelope_vs_quix": 2.0,
    "envelope_vs_raw": 0.3,
    "replay_vs_duckdb": 0.5,
    "freshness_p99_s": 2.0,
    "bytes_per_pair": 200.0,
}

_children: list[subprocess.Popen[bytes]] = []


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---- processes --------------------------------------------------------------------------


# The product's Kafka security settings (PULSE_KAFKA_*) for every child process; set by
# --secured (a SASL_SSL listener, SCRAM-SHA-512 over TLS), empty otherwise.
KAFKA_ENV: dict[str, str] = {}


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                env={**os.environ, **KAFKA_ENV, **(env or {})},
                                start_new_session=True)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything the child left in its group
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(_children):
        with contextlib.suppress(Exception):
            stop(proc, timeout=10)


def run_json(cmd: list[str], log_path: Path) -> dict[str, Any]:
    """Run a child to completion; its last stdout line is JSON."""
    with log_path.open("ab") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        _children.append(proc)
        out, _ = proc.communicate()
        _children.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}); see {log_path}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def scrape(port: int, names: tuple[str, ...]) -> list[tuple[str, float]]:
    """(series, value) of the samples whose name starts with one of `names`.

    The whole page is fetched: the worker's collectors have no names to describe, so
    prometheus_client's `?name[]=` filter would return nothing.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if line.startswith(names):
            series, _, value = line.rpartition(" ")
            out.append((series, float(value)))
    return out


def consumed_total(port: int) -> int:
    return int(sum(v for _, v in scrape(port, ("community_pulse_events_consumed_total",))))


# ---- machine ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kafka": KAFKA_VERSION,
        "java": java.splitlines()[0] if java else "unknown",
        "kernel": platform.release(),
    }


def package_versions(python: str, names: list[str]) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) "
            "for n in sys.argv[1:]}))")
    out = subprocess.run([python, "-c", code, *names], capture_output=True, text=True)
    return dict(json.loads(out.stdout)) if out.returncode == 0 else {}


def ensure_quix_venv() -> str:
    python = QUIX_VENV / "bin" / "python"
    if not python.exists():
        log(f"creating {QUIX_VENV} with {', '.join(QUIX_REQUIREMENTS)}")
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *QUIX_REQUIREMENTS], check=True)
    return str(python)


# ---- data -------------------------------------------------------------------------------


def make_events(n_events: int, n_communities: int, n_users: int, seed: int,
                now_ms: int) -> tuple[list[gen.Community], list[dict[str, Any]], int]:
    """At least n_events events (duplicates included), in messy arrival order."""
    communities = gen.plan(n_communities, n_users, random.Random(seed))

    def build(days: int) -> list[dict[str, Any]]:
        rng = random.Random(seed + 1)
        history = [e for c in communities for e in gen.history(c, now_ms, days, rng)]
        return gen.messy_order(history, random.Random(seed + 2))

    probe = build(4)
    fixed = sum(1 for e in probe if e["type"] in ("join", "leave"))
    per_day = max(1.0, (len(probe) - fixed) / 4)
    days = max(1, math.ceil((n_events - fixed * 1.01) / (per_day * 1.01)))
    while True:
        events = build(days)
        log(f"generated {len(events):,} events over {days} days")
        if len(events) >= n_events:
            return communities, events, days
        days = math.ceil(days * n_events / len(events)) + 1


def messages_of(events: list[dict[str, Any]], batch_size: int) -> list[tuple[str, bytes, bytes]]:
    messages = list(producer.envelopes(events, batch_size))  # what producers should do
    step = len(messages) // (len(BAD_MESSAGES) + 1)
    for i, (topic, value) in enumerate(BAD_MESSAGES):
        messages.insert((i + 1) * step, (topic, b"x", value))
    return messages


# ---- consumer runs ----------------------------------------------------------------------


def measure(name: str, proc: subprocess.Popen[bytes], expected: int, events: int,
            timeout: float, poll_s: float, status_file: str | None = None,
            port: int | None = None) -> dict[str, Any]:
    """Wait until the child has counted `expected`.

    The rate is taken from the child's first progress report to its last: children we
    wrote report their own count, CPU time and clock (bench.common.Status); for our
    worker the parent samples /proc and /metrics (every `poll_s`).
    """
    spawned = time.monotonic()
    first_t = first_n = first_cpu = None
    last_log = spawned
    n = 0
    status = "ok"
    reported = None
    while True:
        if proc.poll() is not None:
            status = f"exited with {proc.returncode}"
            break
        if status_file is not None:
            reported = read_status(status_file)
            n = reported[0] if reported else 0
        else:
            assert port is not None
            try:
                n = consumed_total(port)
            except OSError:
                n = 0
        now = time.monotonic()
        if n > 0 and first_t is None:
            first_t, first_n, first_cpu = now, n, cpu_seconds(proc.pid)
        if n >= expected:
            break
        if now - spawned > timeout:
            status = "timeout"
            break
        if now - last_log > 15:
            last_log = now
            log(f"  {name}: {n:,}/{expected:,}")
        time.sleep(poll_s)
    end = time.monotonic()
    result: dict[str, Any] = {"status": status, "counted": n, "expected": expected}
    if proc.poll() is None:
        result["cpu_total_s"] = round(cpu_seconds(proc.pid), 2)
        result["peak_rss_mb"] = round(peak_rss_mb(proc.pid), 1)
    end_cpu = result.get("cpu_total_s")
    if reported is not None:  # the child's own clock and CPU time
        _, first_n, first_t, first_cpu, end, end_cpu = reported
    if first_t is not None and first_n is not None and first_cpu is not None and end > first_t:
        done = n - first_n
        # Events = what the implementation counted; for the message-counting Faust
        # floor, messages are scaled to events (events per message is known).
        scale = events / expected
        result["startup_s"] = round(first_t - spawned, 2)
        result["seconds"] = round(end - first_t, 2)
        result["events_measured"] = round(done * scale)
        result["events_per_s"] = round(done * scale / (end - first_t))
        if end_cpu is not None and done:
            result["cpu_s_per_million"] = round((end_cpu - first_cpu) / (done * scale) * 1e6, 2)
    log(f"  {name}: {result}")
    return result


def run_one(ctx: dict[str, Any], topic_set: str, prefix: str, impl: str, n_messages: int,
            n_events: int, keep_worker: bool) -> tuple[dict[str, Any], Any]:
    """One implementation consuming one topic set from the start, in a fresh group."""
    work: Path = ctx["work"]
    bootstrap: str = ctx["bootstrap"]
    topics = [prefix + t for t in DEFAULT_TOPICS]
    timeout = ctx["timeout"]
    tag = f"{topic_set}-{impl}-{int(time.time())}"
    status_file = str(work / f"{tag}.status")
    logf = work / f"{tag}.log"
    log(f"{topic_set}: {impl} consuming {n_events:,} events ({n_messages:,} messages)")
    worker_handle = None
    if impl == "raw":
        proc = spawn([sys.executable, "-m", "bench.raw_client", bootstrap, tag, status_file,
                      *topics], logf)
        res = measure(impl, proc, n_events, n_events, timeout, 0.2, status_file)
    elif impl == "faust":
        proc = spawn([sys.executable, "-m", "bench.faust_floor", bootstrap, tag, status_file,
                      str(PARTITIONS), *topics], logf)
        res = measure(impl, proc, n_messages, n_events, timeout, 0.2, status_file)
    elif impl == "quix":
        state_dir = work / f"{tag}-state"
        proc = spawn([ctx["quix_python"], "-m", "bench.quix_job", bootstrap, tag,
                      status_file, str(state_dir), *topics], logf)
        res = measure(impl, proc, n_events, n_events, timeout, 0.2, status_file)
    else:
        port = free_port()
        proc = spawn([str(ROOT / ".venv" / "bin" / "community-pulse"), "worker",
                      "--broker", f"kafka://{bootstrap}", "--data-dir",
                      str(work / f"{tag}-data"), "--metrics-port", str(port),
                      "--snapshot-interval", str(SNAPSHOT_INTERVAL_S)],
                     logf, env={"PULSE_TOPIC_PREFIX": prefix, "PULSE_APP_ID": tag})
        res = measure(impl, proc, n_events, n_events, timeout, 1.0, port=port)
        res["metrics_poll_s"] = 1.0
        if keep_worker and res["status"] == "ok":
            worker_handle = (proc, port)
    if worker_handle is None:
        stop(proc)
    return res, worker_handle


def run_consumers(ctx: dict[str, Any], topic_set: str, prefix: str, n_messages: int,
                  n_events: int, which: list[str], keep_worker: bool, rounds: int
                  ) -> tuple[dict[str, Any], Any]:
    """Every implementation, `rounds` times, in alternating order (forward, then
    backward), so that drift in the machine's speed during the run hits all of them
    alike; ratios are then taken within each round (`paired_ratio`)."""
    per_impl: dict[str, list[dict[str, Any]]] = {impl: [] for impl in which}
    worker_handle = None
    for round_no in range(rounds):
        order = which if round_no % 2 == 0 else which[::-1]
        for impl in order:
            keep = keep_worker and impl == "worker" and round_no == rounds - 1
            res, handle = run_one(ctx, topic_set, prefix, impl, n_messages, n_events, keep)
            per_impl[impl].append({"round": round_no + 1, **res})
            worker_handle = handle or worker_handle
    return {impl: summarize(runs) for impl, runs in per_impl.items()}, worker_handle


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds that finished (peak RSS: the largest), and every round."""
    ok = [run for run in runs if run["status"] == "ok" and run.get("events_per_s")]
    failed = [run["status"] for run in runs if run["status"] != "ok"]
    summary: dict[str, Any] = {"status": failed[0] if failed else "ok", "rounds": runs}
    for key in ("events_per_s", "cpu_s_per_million", "startup_s"):
        values = [run[key] for run in ok if run.get(key) is not None]
        if values:
            median = statistics.median(values)
            summary[key] = round(median) if key == "events_per_s" else round(median, 2)
    rss = [run["peak_rss_mb"] for run in runs if run.get("peak_rss_mb") is not None]
    if rss:
        summary["peak_rss_mb"] = max(rss)
    return summary


# ---- freshness --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def _freshness(ctx: dict[str, Any], prefix: str, port: int,
                     communities: list[gen.Community], rate: int, duration: float,
                     poll_s: float) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    encode = msgspec.json.encode
    producer = AIOKafkaProducer(bootstrap_servers=ctx["bootstrap"], linger_ms=5, acks=1,
                                **ctx["security"].client_kwargs())
    await producer.start()
    try:
        # The marker community: six members joining now, so it passes min_members.
        now_ms = int(time.time() * 1000)
        for i in range(6):
            await producer.send_and_wait(prefix + "community.memberships", encode(
                {"event_id": f"{MARKER}-join-{i}", "type": "join", "community_id": MARKER,
                 "user_id": f"marker-user-{i}", "ts": now_ms}), key=MARKER.encode())
        marker_labels = (f'community="{MARKER}"', 'type="post"', 'window="7d"')

        def is_marker(series: str) -> bool:
            return series.startswith("community_pulse_window_events{") and all(
                label in series for label in marker_labels)

        def marker_posts() -> float | None:
            for series, value in scrape(port, ("community_pulse_window_events",)):
                if is_marker(series):
                    return value
            return None

        deadline = time.monotonic() + 60
        while await asyncio.to_thread(marker_posts) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("marker community never appeared on /metrics")
            await asyncio.sleep(0.5)
        base = await asyncio.to_thread(consumed_total, port)

        samples: list[tuple[float, int, float]] = []  # (time, consumed - base, marker posts)
        stop_polling = threading.Event()

        def poll() -> None:
            while not stop_polling.is_set():
                started = time.monotonic()
                try:
                    rows = scrape(port, ("community_pulse_events_consumed_total",
                                         "community_pulse_window_events"))
                except OSError:  # a reset connection now and then; try again
                    continue
                consumed = sum(v for s, v in rows if s.startswith(
                    "community_pulse_events_consumed_total"))
                posts = next((v for s, v in rows if is_marker(s)), 0.0)
                samples.append((time.monotonic(), int(consumed) - base, posts))
                stop_polling.wait(max(0.0, poll_s - (time.monotonic() - started)))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        live = gen.live_events(communities, now_ms, int(rate * duration) + rate,
                               random.Random(11), seq=0)
        tick_s = 0.02
        per_tick = max(1, round(rate * tick_s))
        sent = 0
        ticks: list[tuple[float, int]] = []
        posts_sent: list[float] = []
        started = time.monotonic()
        next_tick = started
        tick = 0
        while time.monotonic() - started < duration:
            now_ms = int(time.time() * 1000)
            send_t = time.monotonic()
            for _ in range(per_tick):
                event: dict[str, Any]
                if tick % 50 == 0 and _ == 0:  # one marker post per second
                    k = len(posts_sent)
                    event = {"event_id": f"{MARKER}-post-{k}", "type": "post",
                             "community_id": MARKER, "user_id": "marker-user-0",
                             "ts": now_ms, "post_id": f"{MARKER}-p{k}"}
                    posts_sent.append(send_t)
                else:
                    event = live[sent % len(live)]
                    event["ts"] = now_ms
                await producer.send(prefix + TOPIC_OF[event["type"]], encode(event),
                                    key=event["community_id"].encode())
                sent += 1
            ticks.append((send_t, sent))
            tick += 1
            next_tick += tick_s
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        elapsed = time.monotonic() - started
        await producer.flush()
        # Let the worker catch up (and one more snapshot reflect the last marker post).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if samples and samples[-1][1] >= sent and samples[-1][2] >= len(posts_sent):
                break
            await asyncio.sleep(0.5)
        stop_polling.set()
        poller.join()
    finally:
        await producer.stop()

    def latencies(sent_at: list[tuple[float, int]], column: int) -> tuple[list[float], int]:
        out, missing, j = [], 0, 0
        for t, target in sent_at:
            while j < len(samples) and (samples[j][column] < target or samples[j][0] < t):
                j += 1
            if j == len(samples):
                missing += 1
                continue
            out.append(samples[j][0] - t)
        return out, missing

    counter_lat, counter_missing = latencies(ticks, 1)
    gauge_lat, gauge_missing = latencies([(t, i + 1) for i, t in enumerate(posts_sent)], 2)

    def summary(values: list[float], missing: int) -> dict[str, Any]:
        if not values:
            return {"n": 0, "missing": missing}
        return {"n": len(values), "missing": missing,
                "p50_s": round(percentile(values, 0.5), 3),
                "p99_s": round(percentile(values, 0.99), 3),
                "max_s": round(max(values), 3), "mean_s": round(statistics.fmean(values), 3)}

    return {
        "rate_target": rate, "events_sent": sent, "seconds": round(elapsed, 1),
        "rate_achieved": round(sent / elapsed), "poll_interval_s": poll_s,
        "scrapes": len(samples),
        "counter": {"metric": "community_pulse_events_consumed_total (sum over topics)",
                    **summary(counter_lat, counter_missing)},
        "gauge": {"metric": f'community_pulse_window_events{{community="{MARKER}",'
                            'window="7d",type="post"}', "snapshot_interval_s": SNAPSHOT_INTERVAL_S,
                  **summary(gauge_lat, gauge_missing)},
    }


# ---- report -----------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def paired_ratio(runs: dict[str, Any], impl: str, base: str) -> tuple[float | None, list[float]]:
    """The median over rounds of impl/base, each taken within one round, and the ratios."""
    def by_round(name: str) -> dict[int, float]:
        return {run["round"]: run["events_per_s"] for run in runs.get(name, {}).get("rounds", [])
                if run["status"] == "ok" and run.get("events_per_s")}

    mine, theirs = by_round(impl), by_round(base)
    ratios = [round(mine[n] / theirs[n], 2) for n in sorted(mine) if n in theirs]
    return (round(statistics.median(ratios), 2) if ratios else None), ratios


def verdicts(r: dict[str, Any]) -> list[dict[str, Any]]:
    c = r["consume"]
    rows = []

    def add(name: str, value: float | None, target: float, higher_is_better: bool,
            unit: str, rounds: list[float] | None = None) -> None:
        met = None if value is None else (value >= target if higher_is_better
                                          else value <= target)
        op = ">=" if higher_is_better else "<="
        rows.append({"target": name, "value": value, "goal": f"{op} {target}{unit}",
                     "met": met, **({"rounds": rounds} if rounds else {})})

    for label, topic_set, impl, base, target in (
        ("worker single / bare Faust single", "single", "worker", "faust", "single_vs_faust"),
        ("worker envelopes / Quix envelopes", "envelope", "worker", "quix", "envelope_vs_quix"),
        ("worker envelopes / raw client envelopes", "envelope", "worker", "raw",
         "envelope_vs_raw"),
    ):
        value, per_round = paired_ratio(c.get(topic_set, {}), impl, base)
        add(label, value, TARGETS[target], True, "x", per_round)
    rp = r.get("replay", {})
    value, per_round = paired_ratio(rp, "replay", "duckdb")
    add("replay / DuckDB SQL (wall, default processes and threads)", value,
        TARGETS["replay_vs_duckdb"], True, "x", per_round)
    value, per_round = paired_ratio(rp, "replay1", "duckdb1")
    add("replay / DuckDB SQL (wall, one process, one thread)", value,
        TARGETS["replay_vs_duckdb"], True, "x", per_round)
    fr = r.get("freshness", {})
    add("freshness p99, counter (s)", fr.get("counter", {}).get("p99_s"),
        TARGETS["freshness_p99_s"], False, " s")
    add("freshness p99, community gauge (s)", fr.get("gauge", {}).get("p99_s"),
        TARGETS["freshness_p99_s"], False, " s")
    for key, where in (("memory", "bench set"), ("memory_generated", "generated users")):
        mem = r.get(key, {})
        if not mem:
            continue
        label = f"({mem['users']:,} users, {where})"
        add(f"user state per (community,user), all {label}",
            round(mem["bytes_per_pair_all_user_state"]), TARGETS["bytes_per_pair"], False, " B")
        add(f"user state per (community,user), fixed part {label}",
            round(mem["bytes_per_pair_fixed"]), TARGETS["bytes_per_pair"], False, " B")
        add(f"whole core / (community,user) pairs {label}",
            round(mem["bytes_total_per_pair"]), TARGETS["bytes_per_pair"], False, " B")
    return rows


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    d = r["data"]
    lines = [
        f"### Run {r['started']}", "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['ram_gb']} GB RAM; "
        f"Python {m['python']}, Kafka {m['kafka']} ({m['java']}); "
        f"Quix Streams {r['versions'].get('quixstreams', '?')}, confluent-kafka "
        f"{r['versions'].get('confluent-kafka', '?')}, faust-streaming "
        f"{r['versions'].get('faust-streaming', '?')}, aiokafka "
        f"{r['versions'].get('aiokafka', '?')}, DuckDB {r['versions'].get('duckdb', '?')}.  ",
        f"Data: {d['events']:,} events ({d['days']} days, {d['communities']} communities, "
        f"{d['users']:,} users, ~1% duplicates, {d['bad_messages']} malformed messages). "
        f"Envelope topics: all of them in {d['envelope_messages']:,} messages "
        f"({ENVELOPE_SIZE} events per topic and community); single-event topics: the first "
        f"{d['single_events']:,} events in arrival order, {d['single_messages']:,} messages; "
        f"{PARTITIONS} partitions per topic.", "",
        "| topics | implementation | events/s, median (each round) | CPU s / M events "
        "| peak RSS MB | startup s | status |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    names = {"raw": "raw aiokafka + msgspec", "faust": "bare Faust agent (count only)",
             "quix": "Quix Streams job", "worker": "community-pulse worker"}
    for topic_set, runs in r["consume"].items():
        for impl, res in runs.items():
            rates = [f"{run['events_per_s']:,}" for run in res.get("rounds", [])
                     if run.get("events_per_s")]
            each = f" ({' / '.join(rates)})" if len(rates) > 1 else ""
            lines.append(
                f"| {topic_set} | {names[impl]} | {res.get('events_per_s', '-'):,}{each} | "
                f"{res.get('cpu_s_per_million', '-')} | {res.get('peak_rss_mb', '-')} | "
                f"{res.get('startup_s', '-')} | {res['status']} |")
    fr = r.get("freshness")
    if fr:
        lines += ["", f"Freshness at {fr['rate_achieved']:,} events/s for {fr['seconds']} s "
                  f"(/metrics polled every {fr['poll_interval_s']} s):", ""]
        for key in ("counter", "gauge"):
            f = fr[key]
            lines.append(f"- `{f['metric']}`: p50 {f.get('p50_s')} s, p99 {f.get('p99_s')} s, "
                         f"max {f.get('max_s')} s (n={f['n']}, not reflected {f['missing']})")
    rp = r.get("replay")
    if rp:
        lines += ["", "| batch computation | events/s (wall), median (each round) | wall s "
                      "| CPU s |",
                  "| --- | ---: | ---: | ---: |"]
        for key, label in (("replay", "streams.replay.replay (one process per CPU)"),
                           ("duckdb", "DuckDB SQL (default threads)"),
                           ("replay1", "streams.replay.replay (one process)"),
                           ("duckdb1", "DuckDB SQL (1 thread)")):
            x = rp.get(key)
            if x:
                rounds = x["rounds"]
                each = " / ".join(f"{run['events_per_s']:,}" for run in rounds)
                seconds = statistics.median(run["seconds"] for run in rounds)
                cpu = statistics.median(run["cpu_seconds"] for run in rounds)
                lines.append(f"| {label} | {x['events_per_s']:,} ({each}) | {seconds:.1f} | "
                             f"{cpu:.1f} |")
        agreement = rp.get("agreement")
        if agreement:
            lines += ["", f"Replay vs DuckDB snapshot rows: {agreement['rows_replay']} vs "
                          f"{agreement['rows_duckdb']}, values differing per column: "
                          f"{agreement['differing_values'] or 'none'}"]
    for key in ("memory", "memory_generated"):
        mem = r.get(key)
        if not mem:
            continue
        parts = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in mem["walk_parts"].items())
        lines += ["", f"State ({key}): {mem['users']:,} users, "
                  f"{mem['community_user_pairs']:,} (community, user) pairs, "
                  f"{mem['retained_event_ids']:,} retained event ids, "
                  f"{mem['logged_entries']:,} logged user entries, {mem['threads']:,} threads; "
                  f"tracemalloc {mem['tracemalloc_bytes'] / 1e6:.1f} MB, deep walk "
                  f"{mem['walk_bytes'] / 1e6:.1f} MB ({parts}).",
                  "",
                  f"- per (community, user), all user state: "
                  f"{mem['bytes_per_pair_all_user_state']:.0f} B; fixed part (without its "
                  f"{mem['entries_per_pair']:.1f} logged entries of 8 B): "
                  f"{mem['bytes_per_pair_fixed']:.0f} B",
                  f"- per retained event id: {mem['bytes_per_event_id']:.0f} B",
                  f"- whole core / pairs: {mem['bytes_total_per_pair']:.0f} B"]
    lines += ["", "| target | measured | goal | met |", "| --- | ---: | --- | --- |"]
    for v in r["verdicts"]:
        met = "n/a" if v["met"] is None else ("yes" if v["met"] else "**no**")
        value = v["value"]
        if len(v.get("rounds", [])) > 1:
            value = f"{value} (rounds: {', '.join(map(str, v['rounds']))})"
        lines.append(f"| {v['target']} | {value} | {v['goal']} | {met} |")
    return "\n".join(lines) + "\n"


def table(r: dict[str, Any]) -> str:
    rows = [f"{'topics':9} {'impl':7} {'events/s':>10} {'CPUs/M':>8} {'RSS MB':>8} status"]
    for topic_set, runs in r["consume"].items():
        for impl, res in runs.items():
            rows.append(f"{topic_set:9} {impl:7} {res.get('events_per_s', '-'):>10} "
                        f"{res.get('cpu_s_per_million', '-'):>8} "
                        f"{res.get('peak_rss_mb', '-'):>8} {res['status']}")
    for v in r["verdicts"]:
        met = "n/a" if v["met"] is None else ("MET" if v["met"] else "MISSED")
        rows.append(f"{v['target']:52} {v['value']!s:>8} {v['goal']:>10} {met}")
    return "\n".join(rows)


# ---- main -------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--communities", type=int, default=500)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--single-events", type=int, default=300_000,
                        help="events in the single-event topic set (a prefix of the same "
                             "arrival order; 0 = all)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=int, default=2000, help="freshness: events/s")
    parser.add_argument("--fresh-seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=420.0, help="per consumer run")
    parser.add_argument("--only", default="raw,faust,quix,worker",
                        help="comma-separated implementations to consume with")
    parser.add_argument("--secured", action="store_true",
                        help="every client over SASL_SSL (SCRAM-SHA-512, TLS); not quix")
    parser.add_argument("--rounds", type=_positive, default=3,
                        help="consumer runs per implementation, in alternating order; "
                             "rates are medians, ratios the median of per-round ratios")
    parser.add_argument("--profile-events", type=int, default=200_000)
    parser.add_argument("--memory-users", type=int, default=0,
                        help="also measure state memory with this many generated users "
                             "(3 days of history; 1,000,000 takes ~8 minutes)")
    args = parser.parse_args(argv)
    which = [w for w in args.only.split(",") if w and not (args.secured and w == "quix")]

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pulse-bench-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.monotonic()
    result: dict[str, Any] = {"started": started,
                              "command": " ".join(["bench/run.py", *sys.argv[1:]]),
                              "machine": machine(), "consume": {}}
    try:
        quix_python = "" if "quix" not in which else ensure_quix_venv()
        result["versions"] = {
            **package_versions(sys.executable, ["faust-streaming", "aiokafka", "msgspec",
                                                "duckdb"]),
            **(package_versions(quix_python, ["quixstreams", "confluent-kafka"])
               if quix_python else {}),
        }
        producer_python = quix_python or ensure_quix_venv()
        now_ms = int(time.time() * 1000)
        communities, events, days = make_events(args.events, args.communities, args.users,
                                                args.seed, now_ms)
        single_events = events[:args.single_events] if args.single_events else events
        single = messages_of(single_events, 1)
        envelope = messages_of(events, ENVELOPE_SIZE)
        counted = {"single": len(single_events) + len(BAD_MESSAGES),  # a malformed
                   "envelope": len(events) + len(BAD_MESSAGES)}  # message counts once
        result["data"] = {"events": len(events), "days": days, "communities": args.communities,
                          "users": args.users, "bad_messages": len(BAD_MESSAGES),
                          "single_events": len(single_events), "counted_per_run": counted,
                          "single_messages": len(single),
                          "envelope_messages": len(envelope)}
        files = {}
        for name, msgs in (("single", single), ("envelope", envelope)):
            files[name] = work / f"{name}.msgpack"
            files[name].write_bytes(msgspec.msgpack.encode(msgs))
        jsonl = work / "events.jsonl"
        with jsonl.open("wb") as fh:
            encode = msgspec.json.encode
            for e in events:
                fh.write(encode(e) + b"\n")
        del single, envelope
        log(f"data ready in {time.monotonic() - t0:.0f}s ({work})")

        run_id = f"b{int(time.time())}"
        prefixes = {"single": f"{run_id}-single.", "envelope": f"{run_id}-env."}
        with LocalKafka(run_dir=work / "kafka", heap="1g", num_partitions=PARTITIONS,
                        secured=args.secured) as kafka:
            bootstrap, security = kafka.bootstrap, KafkaSecurity()
            if kafka.secured is not None:
                bootstrap, security = kafka.secured.sasl_ssl_bootstrap, kafka.secured.security()
                KAFKA_ENV.update(kafka.secured.settings_env())
            result["kafka_security"] = security.protocol
            ctx = {"work": work, "bootstrap": bootstrap, "quix_python": quix_python,
                   "timeout": args.timeout, "security": security}
            for name, prefix in prefixes.items():
                kafka.create_topics([prefix + t for t in (*DEFAULT_TOPICS, DEAD_LETTER_TOPIC)],
                                    partitions=PARTITIONS)
                log(f"loading {name} messages into {prefix}*")
                subprocess.run([producer_python, "-m", "bench.fast_produce", bootstrap,
                                str(files[name]), prefix], cwd=ROOT, check=True,
                               env={**os.environ, **KAFKA_ENV})
            n_msgs = result["data"]
            for name in ("single", "envelope"):
                keep = name == "single" and "worker" in which
                runs, handle = run_consumers(ctx, name, prefixes[name],
                                             n_msgs[f"{name}_messages"], counted[name], which,
                                             keep, args.rounds)
                result["consume"][name] = runs
                if handle is not None:
                    proc, port = handle
                    try:
                        log(f"freshness: {args.rate} events/s for {args.fresh_seconds:.0f}s")
                        result["freshness"] = asyncio.run(_freshness(
                            ctx, prefixes["single"], port, communities, args.rate,
                            args.fresh_seconds, 0.25))
                        log(f"  freshness: {result['freshness']}")
                    except Exception as exc:  # report, keep going
                        result["freshness"] = {"error": repr(exc)}
                        log(f"  freshness failed: {exc!r}")
                    finally:
                        stop(proc)
        log("broker stopped; replay vs DuckDB")
        replay: dict[str, Any] = {}
        modes = ["replay", "duckdb", "replay1", "duckdb1"]
        for round_no in range(args.rounds):  # alternating order, like the consumers
            for mode in modes if round_no % 2 == 0 else modes[::-1]:
                x = run_json([sys.executable, "-m", "bench.replay_duckdb", mode, str(jsonl),
                              str(work / f"replay-{mode}")], work / "replay.log")
                x.update(round=round_no, status="ok",
                         events_per_s=round(x["events"] / x["seconds"]))
                replay.setdefault(mode, {"rounds": []})["rounds"].append(x)
                log(f"  {mode}: {x}")
        for mode in modes:
            replay[mode].update(summarize(replay[mode]["rounds"]))
        replay["agreement"] = run_json(
            [sys.executable, "-m", "bench.replay_duckdb", "compare", str(work / "replay-replay"),
             str(work / "replay-duckdb")], work / "replay.log")
        log(f"  replay vs DuckDB rows: {replay['agreement']}")
        result["replay"] = replay
        log("state memory")
        result["memory"] = run_json([sys.executable, "-m", "bench.state_memory", str(jsonl)],
                                    work / "memory.log")
        log(f"  memory: { {k: v for k, v in result['memory'].items() if k != 'walk_parts'} }")
        if args.memory_users:
            log(f"state memory, {args.memory_users:,} generated users")
            result["memory_generated"] = run_json(
                [sys.executable, "-m", "bench.state_memory", "--users", str(args.memory_users),
                 "--days", "3"], work / "memory_generated.log")
            shown = {k: v for k, v in result["memory_generated"].items() if k != "walk_parts"}
            log(f"  memory: {shown}")
        log(f"profiles ({args.profile_events:,} events)")
        result["profiles"] = run_json([sys.executable, "-m", "bench.profile_hot",
                                       str(files["single"]), str(files["envelope"]),
                                       str(args.profile_events)], work / "profile.log")
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        result["interrupted"] = True
        return 130
    finally:
        stop_all()
        result["total_seconds"] = round(time.monotonic() - t0)
        logs = RESULTS / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True, exist_ok=True)
        for path in work.glob("*.log"):
            shutil.copy(path, logs / path.name)
        if "data" in result:
            result["verdicts"] = []
            with contextlib.suppress(Exception):
                result["verdicts"] = verdicts(result)
            (RESULTS / "latest.json").write_text(json.dumps(result, indent=2))
            with contextlib.suppress(Exception):
                (RESULTS / "latest.md").write_text(markdown(result))
        shutil.rmtree(work, ignore_errors=True)
    print(table(result))
    for label in ("single", "envelope"):
        prof = result["profiles"][label]
        print(f"\nhandle_batch on {label}: {prof['handle_batch_events_per_cpu_s']:,.0f} "
              f"events per CPU second; snapshot {prof['snapshot_cpu_s']:.2f} CPU s")
    print(f"\nresults: {RESULTS / 'latest.json'}, {RESULTS / 'latest.md'} "
          f"({result['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
