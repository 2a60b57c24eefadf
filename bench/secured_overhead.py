"""What TLS + SASL and pseudonymised user ids cost the worker, side by side in one run.

One local broker with a plain and a SASL_SSL listener; the same messages (envelopes of
100 events) consumed from the start by a fresh worker (new consumer group) per run, in
alternating order: plain, SASL_SSL (SCRAM-SHA-512), SASL_SSL with pseudonymised user ids.
Rates are events per second between the first and the last progress seen on /metrics,
CPU is the worker's (all threads); ratios are medians of per-round ratios.

    .venv/bin/python -m bench.secured_overhead [--events 300000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.run import RESULTS, ROOT, free_port, log, measure, spawn, stop
from devkit import generate as gen
from devkit.devkafka import LocalKafka
from schemas.events import DEAD_LETTER_TOPIC, DEFAULT_TOPICS

VARIANTS = ("plain", "sasl_ssl", "sasl_ssl+pseudonyms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    rng = random.Random(7)
    now_ms = int(time.time() * 1000)
    communities = gen.plan(200, 50_000, rng)
    events: list[dict] = []
    for community in communities:
        events.extend(gen.history(community, now_ms, 35, rng))
        if len(events) >= args.events:
            break
    events = gen.messy_order(events[: args.events], rng)
    messages = list(gen.to_messages(events, 100))
    work = Path(tempfile.mkdtemp(prefix="pulse-secured-bench-"))
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with LocalKafka(run_dir=work / "kafka", secured=True, heap="1g") as kafka:
        assert kafka.secured is not None
        prefix = f"so{uuid.uuid4().hex[:6]}."
        kafka.create_topics([prefix + t for t in (*DEFAULT_TOPICS, DEAD_LETTER_TOPIC)])
        gen.produce(kafka.bootstrap, [(prefix + t, k, v) for t, k, v in messages])
        log(f"loaded {len(events):,} events in {len(messages):,} messages")
        for round_no in range(args.rounds):
            order = VARIANTS if round_no % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                env = {"PULSE_TOPIC_PREFIX": prefix, "PULSE_APP_ID": f"so-{uuid.uuid4().hex[:8]}"}
                bootstrap = kafka.bootstrap
                if variant != "plain":
                    bootstrap = kafka.secured.sasl_ssl_bootstrap
                    env.update(kafka.secured.settings_env("SCRAM-SHA-512"))
                if variant.endswith("pseudonyms"):
                    env.update({"PULSE_PSEUDONYMISE_USER_IDS": "true",
                                "PULSE_PSEUDONYM_KEY": "bench-pseudonym-key-0123456789"})
                port = free_port()
                tag = f"{variant}-{round_no}"
                proc = spawn([str(ROOT / ".venv" / "bin" / "community-pulse"), "worker",
                              "--broker", bootstrap, "--data-dir", str(work / f"so-{tag}"),
                              "--metrics-port", str(port), "--snapshot-interval", "30"],
                             work / f"so-{tag}.log", env=env)
                try:
                    res = measure(variant, proc, len(events), len(events), args.timeout, 0.5,
                                  port=port)
                finally:
                    stop(proc)
                results[variant].append(res)
    summary = {"events": len(events), "messages": len(messages), "runs": results}
    for variant in VARIANTS[1:]:
        pairs = zip(results["plain"], results[variant], strict=True)
        rate = [b["events_per_s"] / a["events_per_s"] for a, b in pairs
                if a.get("events_per_s") and b.get("events_per_s")]
        pairs = zip(results["plain"], results[variant], strict=True)
        cpu = [b["cpu_s_per_million"] / a["cpu_s_per_million"] for a, b in pairs
               if a.get("cpu_s_per_million") and b.get("cpu_s_per_million")]
        summary[f"{variant}_vs_plain"] = {
            "rate_ratio": round(statistics.median(rate), 3) if rate else None,
            "cpu_ratio": round(statistics.median(cpu), 3) if cpu else None}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"secured-overhead-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
