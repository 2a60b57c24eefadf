"""`community-pulse`: worker, replay, generate, demo, compact, grafana push, steering.

Bad arguments and bad files end with one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from streams import config as config_module
from streams.config import ConfigError, MetricConfig, RuntimeConfig

if TYPE_CHECKING:
    from streams.steering.goals import Goal

PROG = "community-pulse"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class UsageError(Exception):
    """Expected failure: reported as one line, exit code 2."""


def port(text: str) -> int:
    """An argparse type: a TCP port number (0: any free port)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} is outside 0-65535")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML config file (see docs/metrics.md)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    worker = sub.add_parser("worker", help="run the streaming worker (Faust)")
    worker.add_argument("--broker", help="kafka://host:port (default from config)")
    worker.add_argument("--data-dir", help="snapshot output folder or URI")
    worker.add_argument("--metrics-port", type=port)
    worker.add_argument("--partitions", type=int)
    worker.add_argument("--snapshot-interval", type=float, help="seconds between snapshots")
    worker.add_argument("--loglevel", default="warning")

    replay = sub.add_parser("replay", help="compute snapshots from event files")
    replay.add_argument("files", nargs="+", type=Path, metavar="FILE")
    replay.add_argument("--data-dir", required=True)
    replay.add_argument("--as-of", help="RFC 3339 time of the snapshot")
    replay.add_argument("--snapshot-every", help="e.g. 1h, 1d: snapshots through the history")
    replay.add_argument("--jobs", type=int, help="processes, each computing a share of the "
                        "communities (default: one per CPU for inputs over 200,000 events)")

    gen = sub.add_parser("generate", help="synthetic community activity")
    target = gen.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write JSON lines to this file")
    target.add_argument("--bootstrap", help="produce to Kafka at host:port")
    gen.add_argument("--communities", type=int, default=40)
    gen.add_argument("--users", type=int, default=5000)
    gen.add_argument("--days", type=int, default=35)
    gen.add_argument("--batch-size", type=int, default=1, help="events per message")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--no-bad", action="store_true", help="omit the malformed messages")
    gen.add_argument("--now", help="RFC 3339 end of the history (default: now)")

    demo = sub.add_parser("demo", help="run the whole pipeline locally")
    demo.add_argument("--communities", type=int, default=60)
    demo.add_argument("--rate", type=float, default=200.0, help="live events per second")
    demo.add_argument("--duration", type=float, default=0, help="seconds (0: until Ctrl-C)")
    demo.add_argument("--data-dir", default="data/demo")
    demo.add_argument("--metrics-port", type=port, default=9464)
    demo.add_argument("--secured", action="store_true",
                      help="SASL_SSL (SCRAM-SHA-512 over TLS) between every client and Kafka")

    sql = sub.add_parser("sql", help="query the history (the views of DATA_DIR/pulse.duckdb)")
    sql.add_argument("query", nargs="?", help="SQL (default: read from standard input)")
    sql.add_argument("--data-dir", help="the worker's, demo's or replay's data folder "
                     "(default from config)")
    sql.add_argument("--max-rows", type=int, default=40, help="rows to print")

    redrive = sub.add_parser("redrive", help="re-produce dead letters to their source topics "
                             "once the cause is fixed (docs/reliability.md)")
    redrive.add_argument("--broker", help="host:port (default from config)")
    redrive.add_argument("--reason", action="append", default=[],
                         help="only letters with this reason (repeatable; default "
                              "wrong_partition)")
    redrive.add_argument("--all-reasons", action="store_true", help="every reason")

    compact = sub.add_parser("compact", help="merge small snapshot files per date")
    compact.add_argument("--data-dir", required=True)

    backfill = sub.add_parser(
        "backfill", help="snapshot history as OpenMetrics, for promtool tsdb create-blocks")
    backfill.add_argument("--data-dir", required=True)
    backfill.add_argument("--out", type=Path, required=True)
    backfill.add_argument("--label", action="append", default=[], metavar="NAME=VALUE",
                          help="extra label on every series, e.g. job=community-pulse")

    merges = sub.add_parser(
        "suggest-merges", help="communities to merge: low and medium ones with the "
        "communities that share most members (SPEC 5)")
    merges.add_argument("files", nargs="+", type=Path, metavar="EVENTS")
    merges.add_argument("--as-of", required=True, help="RFC 3339 time")
    merges.add_argument("--window", type=int, help="days (default: steering_window_days, 28)")
    merges.add_argument("--min-overlap", type=float,
                        help="least Jaccard index of the members (default 0.10)")
    merges.add_argument("--top", type=int, help="suggestions per community (default 3)")
    merges.add_argument("--out", type=Path, help="also write them: .parquet, else CSV")

    focus = sub.add_parser(
        "focus", help="where to start: large, active communities of practice, and each "
        "manager's open follow-ups (SPEC 5)")
    focus.add_argument("files", nargs="+", type=Path, metavar="EVENTS")
    focus.add_argument("--as-of", required=True, help="RFC 3339 time")
    focus.add_argument("--managers", type=Path,
                       help="managers file (YAML, docs/steering.md; default: managers_file)")
    focus.add_argument("--window", type=int, help="days (default: steering_window_days, 28)")
    focus.add_argument("--min-members", type=int, help="of a candidate (default 20)")
    focus.add_argument("--max-open", type=int, help="most open follow-ups of a manager ready "
                       "for the next community (default 5)")
    goals = sub.add_parser("goals", help="SMART goals (docs/steering.md)")
    goals_sub = goals.add_subparsers(dest="goals_command", required=True, parser_class=_Parser)
    check = goals_sub.add_parser(
        "check", help="validate a goals file and print each goal's status from the snapshots")
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument("--data-dir", help="snapshot folder (default: the data_dir setting)")
    check.add_argument("--events", nargs="+", type=Path, metavar="EVENTS",
                       help="instead of a data dir: event files, computed like replay")
    check.add_argument("--as-of", help="with --events: RFC 3339 time (default: the newest "
                       "event)")

    experts = sub.add_parser(
        "experts", help="content experts per community from event files (docs/steering.md)")
    experts.add_argument("files", nargs="+", type=Path, metavar="EVENTS")
    experts.add_argument("--as-of", help="RFC 3339 time (default: the newest event)")
    experts.add_argument("--experts", type=Path, metavar="ROSTER",
                         help="experts roster (default: the experts_file setting)")

    grafana = sub.add_parser("grafana", help="Grafana tooling")
    grafana.add_argument("action", choices=["push"])
    grafana.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        metrics, runtime = config_module.load(args.config)
        return _COMMANDS[args.command](args, metrics, runtime)
    except (ConfigError, UsageError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug, not bad input: still one line unless asked
        if os.environ.get("PULSE_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(set PULSE_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


def one_line(exc: BaseException) -> str:
    """An error's message on one line, whatever a library put in it."""
    return " ".join(str(exc).split())


def _worker(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    from dataclasses import replace

    from streams.app import run

    overrides = {
        "broker": args.broker,
        "data_dir": Path(args.data_dir) if args.data_dir else None,
        "metrics_port": args.metrics_port,
        "partitions": args.partitions,
        "snapshot_interval_s": args.snapshot_interval,
    }
    runtime = replace(runtime, **{k: v for k, v in overrides.items() if v is not None})
    if "://" not in runtime.broker:
        runtime = replace(runtime, broker=f"kafka://{runtime.broker}")
    config_module.tune_gc()
    run(metrics, runtime, loglevel=args.loglevel)
    return 0


def _replay(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    from streams.privacy import Pseudonymiser
    from streams.replay import Steering, parse_duration, parse_time, replay
    from streams.steering.files import read_goals, read_managers
    from streams.steering.network import SKETCHES_OFF, SteeringSettings

    pseudonymise = Pseudonymiser.from_runtime(runtime)
    steering = Steering(SteeringSettings.of(runtime), read_managers(
        runtime.managers_file, pseudonymise) if runtime.managers_file else [])
    as_of = parse_time(args.as_of) if args.as_of else None
    every = parse_duration(args.snapshot_every) if args.snapshot_every else None
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be positive")
    goals = read_goals(runtime.goals_file, metrics.windows_days) if runtime.goals_file else []
    config_module.tune_gc()
    started = time.monotonic()
    result = replay(args.files, args.data_dir, metrics, as_of, every,
                    show_progress=sys.stderr.isatty(), jobs=args.jobs, goals=goals,
                    pseudonymise=pseudonymise, steering=steering,
                    parquet_min_members=runtime.min_members_exported
                    if runtime.parquet_omit_small_communities else 0)
    s = result.stats
    seconds = time.monotonic() - started
    bad = ", ".join(f"{reason} {n}" for reason, n in sorted(s.dead_lettered.items())) or "none"
    where = "; ".join(result.invalid.described())
    first = f"; first: {where}" if where else ""
    if not result.rows_written:
        raise UsageError(f"no valid events in {len(args.files)} file(s) ({s.consumed:,} "
                         f"messages, {s.dead_lettered.total():,} invalid{first}); nothing "
                         f"written to {args.data_dir}")
    if steering.settings.sketch_key is None:  # (after any error: that stays one line)
        print(f"{PROG}: note: {SKETCHES_OFF}", file=sys.stderr)
    print(f"replayed {s.consumed:,} events in {seconds:.1f}s: {s.processed:,} processed, "
          f"{s.duplicates:,} duplicates, {s.dead_lettered.total():,} invalid ({bad}{first}); "
          f"{len(result.snapshot_times)} snapshot time(s), {result.rows_written:,} rows "
          f"in {args.data_dir}")
    return 0


def _generate(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    from devkit import generate as gen
    from streams.kafka_auth import KafkaSecurity
    from streams.replay import parse_time

    if args.communities < 1 or args.users < 1 or args.days < 1 or args.batch_size < 1:
        raise UsageError("--communities, --users, --days and --batch-size must be positive")
    now_ms = parse_time(args.now) if args.now else int(time.time() * 1000)
    rng = random.Random(args.seed)
    communities = gen.plan(args.communities, args.users, rng)
    events = [e for c in communities for e in gen.history(c, now_ms, args.days, rng)]
    events = gen.messy_order(events, rng)
    messages = list(gen.to_messages(events, args.batch_size))
    if not args.no_bad:
        step = len(messages) // (len(gen.BAD_MESSAGES) + 1)
        for i, (topic, value) in enumerate(gen.BAD_MESSAGES):
            messages.insert((i + 1) * step, (topic, b"x", value))
    if args.out:
        with args.out.open("wb") as out:
            for _, _, value in messages:
                out.write(value + b"\n")
    else:
        from kafka.errors import KafkaError

        try:
            gen.produce(args.bootstrap, messages, KafkaSecurity.from_runtime(runtime),
                        runtime.topic_prefix)
        except KafkaError as exc:
            raise UsageError(f"cannot produce to Kafka at {args.bootstrap}: {exc}; is the "
                             "broker running?") from None
    where = args.out or (f"{args.bootstrap} (topics {runtime.topic_prefix}community.*)"
                         if runtime.topic_prefix else args.bootstrap)
    print(f"generated {len(events):,} events in {len(messages):,} messages for "
          f"{len(communities)} communities -> {where}")
    return 0


def _demo(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    from devkit.demo import run_demo

    if args.communities < 1 or args.rate <= 0 or args.duration < 0:
        raise UsageError("--communities and --rate must be positive, --duration at least 0")
    return run_demo(args.communities, args.rate, args.duration, Path(args.data_dir),
                    args.metrics_port, args.secured)


def _sql(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    import duckdb

    from sinks.parquet import read_history

    catalogue = Path(args.data_dir or runtime.data_dir) / "pulse.duckdb"
    if not catalogue.is_file():
        raise UsageError(f"no {catalogue}: run the demo, the worker or replay first, or pass "
                         "--data-dir")
    query = args.query if args.query is not None else sys.stdin.read()

    def run() -> None:
        with duckdb.connect(str(catalogue), read_only=True) as con:
            result = con.sql(query)
            if result is not None:
                table = result.to_arrow_table()
                con.from_arrow(table).show(max_rows=args.max_rows)
                print(f"{table.num_rows:,} row(s)")

    try:  # (a torn file that breaks the views goes to quarantine and the query runs again)
        read_history(catalogue.parent, run)
    except duckdb.Error as exc:
        raise UsageError(f"SQL: {' '.join(str(exc).split())}") from None
    return 0


def _redrive(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    from schemas.events import Reason
    from streams.kafka_auth import KafkaSecurity
    from streams.redrive import redrive

    unknown = set(args.reason) - set(Reason.ALL)
    if unknown:
        raise UsageError(f"unknown --reason {', '.join(sorted(unknown))}")
    reasons = frozenset() if args.all_reasons else frozenset(
        args.reason or [Reason.WRONG_PARTITION])
    broker = (args.broker or runtime.broker).removeprefix("kafka://")
    print(redrive(broker, runtime.app_id, runtime.topic_prefix, reasons,
                  security=KafkaSecurity.from_runtime(runtime)))
    return 0


def _compact(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    from sinks.compact import compact

    report = compact(args.data_dir)
    print(report)
    return 0


def _backfill(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    from sinks.parquet import read_rows
    from sinks.prometheus import openmetrics_history

    labels = dict(item.split("=", 1) for item in args.label if "=" in item)
    if len(labels) != len(args.label):
        raise UsageError("--label takes NAME=VALUE")
    import duckdb

    try:
        rows = read_rows(args.data_dir)
    except duckdb.Error:
        raise UsageError(f"no snapshots in {args.data_dir}: run the demo, the worker or "
                         "replay first") from None
    args.out.write_bytes(openmetrics_history(rows, runtime.min_members_exported, labels))
    print(f"wrote {len(rows):,} snapshot rows to {args.out}; load them with: promtool tsdb "
          f"create-blocks-from openmetrics {args.out} PROMETHEUS_DATA_DIR")
    return 0


def _steering_defaults(args: argparse.Namespace, runtime: RuntimeConfig) -> None:
    """Fill in the options left out from the settings (streams.config)."""
    defaults = {"window": runtime.steering_window_days, "min_overlap": runtime.merge_min_overlap,
                "top": runtime.merge_top, "min_members": runtime.focus_min_members,
                "max_open": runtime.max_open_followups, "managers": runtime.managers_file}
    for name, value in defaults.items():
        if getattr(args, name, value) is None:
            setattr(args, name, value)
    if args.window < 1:
        raise UsageError("--window must be a positive number of days")


def _suggest_merges(args: argparse.Namespace, metrics: MetricConfig,
                    runtime: RuntimeConfig) -> int:
    from sinks.parquet import records_table
    from streams.replay import core_from_files, parse_time
    from streams.steering.merges import check_arguments, member_sets, suggest_merges
    from streams.steering.network import MERGE_SCHEMA

    as_of = parse_time(args.as_of)
    _steering_defaults(args, runtime)
    check_arguments(args.min_overlap, args.top)
    core, _ = core_from_files(args.files, metrics)
    rows = suggest_merges(member_sets(core.communities.values(), as_of, args.window), as_of,
                          args.window, metrics, args.min_overlap, args.top,
                          min_group=runtime.min_members_exported)
    print(table_text(rows, ("community_id", "candidate_id", "jaccard", "shared_members",
                            "merged_members", "merged_contributors", "merged_share",
                            "merged_tier")) if rows else "no merge suggestions")
    if args.out:
        _write_table(records_table(rows, MERGE_SCHEMA), args.out)
    return 0


def _focus(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    from dataclasses import replace

    from streams.privacy import Pseudonymiser
    from streams.replay import core_from_files, parse_time
    from streams.steering.files import read_managers
    from streams.steering.focus import focus_at, managers_of

    as_of = parse_time(args.as_of)
    _steering_defaults(args, runtime)
    if args.min_members < 0 or args.max_open < 0:
        raise UsageError("--min-members and --max-open must not be negative")
    pseudonymise = Pseudonymiser.from_runtime(runtime)  # (events and managers alike)
    managers = read_managers(args.managers, pseudonymise) if args.managers else []
    config = replace(metrics, windows_days=(args.window,))
    core, _ = core_from_files(args.files, config, managers_of(managers),
                              pseudonymise=pseudonymise)
    candidates, followups = focus_at(core, managers, as_of, args.window, args.min_members,
                                     args.max_open, min_group=runtime.min_members_exported)
    print(f"where to start ({args.window}-day window): tier high, at least "
          f"{max(args.min_members, runtime.min_members_exported)} members, not stagnating")
    print(table_text(candidates, ("rank", "community_id", "members", "contributors",
                                  "contributor_share", "sustainability"))
          if candidates else "  no candidates")
    if managers:
        print(f"\nmanagers' open follow-ups (ready for the next community at <= "
              f"{args.max_open})")
        print(table_text(followups, ("manager", "open_followups", "ready_for_next",
                                     "next_community")))
    return 0


def table_text(rows: Sequence[object], columns: Sequence[str]) -> str:
    """Rows as aligned text columns (floats with 3 decimals, None as -)."""
    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    cells = [list(columns), *([cell(getattr(row, c)) for c in columns] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths,
                                                                         strict=True)).rstrip()
                     for line in cells)


def _write_table(table: object, out: Path) -> None:
    """An Arrow table as Parquet (.parquet) or CSV."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if out.suffix == ".parquet":
        pq.write_table(table, out)
    else:
        pacsv.write_csv(table, out)


def _replayed(files: Sequence[Path], as_of: str | None, metrics: MetricConfig,
              runtime: RuntimeConfig, data_dir: str) -> None:
    """Snapshot the event files at `as_of` into `data_dir`, as `replay --as-of` does."""
    from streams.privacy import Pseudonymiser
    from streams.replay import parse_time, replay

    replay(files, data_dir, metrics, parse_time(as_of) if as_of else None,
           pseudonymise=Pseudonymiser.from_runtime(runtime))


def _goals(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    import tempfile

    from streams.steering.files import read_goals

    goals = read_goals(args.file, metrics.windows_days)
    if args.as_of and not args.events:
        raise UsageError("--as-of needs --events (a data dir shows its newest snapshots)")
    if not args.events:
        return _goal_status(args.file, goals, args.data_dir or runtime.data_dir)
    with tempfile.TemporaryDirectory(prefix="community-pulse-goals-") as data_dir:
        _replayed(args.events, args.as_of, metrics, runtime, data_dir)
        return _goal_status(args.file, goals, data_dir, "the events")


def _goal_status(path: Path, goals: list[Goal], data_dir: str | Path,
                 source: str | None = None) -> int:
    from sinks.parquet import latest_rows
    from streams.steering.goals import communities, evaluate, to_utc

    rows = latest_rows(data_dir, sorted(communities(goals)))
    print(f"{path}: {len(goals)} goal(s), valid; status from the newest snapshots in "
          f"{source or data_dir}" + ("" if rows else " (none of these communities)"))
    newest = max((row["as_of_ms"] for row in rows), default=None)
    table = [("goal", "community", "metric", "window", "as_of", "value", "expected",
              "progress", "status")]
    for goal in goals:
        mine = [r for r in rows if (r["community_id"], r["window_days"])
                == (goal.community, goal.window_days)]
        t = mine[0]["as_of_ms"] if mine else newest
        if t is None:
            table.append((goal.id, goal.community, goal.metric, f"{goal.window_days}d",
                          "-", "-", "-", "-", "no_data"))
            continue
        (row,) = evaluate([goal], mine, t)
        table.append((goal.id, goal.community, goal.metric, f"{goal.window_days}d",
                      to_utc(t), _number(row.value), _number(row.expected),
                      "-" if row.progress is None else f"{row.progress:.0%}", row.status))
    _print_table(table)
    return 0


def _experts(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    import tempfile

    from sinks.parquet import read_rows
    from streams.privacy import Pseudonymiser
    from streams.steering.experts import with_rosters
    from streams.steering.files import read_experts
    from streams.steering.goals import to_utc

    if args.experts:
        metrics = with_rosters(metrics, read_experts(
            args.experts, Pseudonymiser.from_runtime(runtime)), runtime.min_members_exported,
            str(args.experts))
    if metrics.experts is None:
        raise UsageError("no experts roster: pass --experts FILE or set experts_file")
    with tempfile.TemporaryDirectory(prefix="community-pulse-experts-") as data_dir:
        _replayed(args.files, args.as_of, metrics, runtime, data_dir)
        rows = read_rows(data_dir) if any(Path(data_dir).glob("snapshots/*/*")) else []
    table = [("community", "window", "as_of", "members", "tier", "experts", "replying",
              "replies", "expert_needed")]
    # ("-": the community's roster is under the privacy threshold, its counts withheld)
    table += [(r.community_id, f"{r.window_days}d", to_utc(r.as_of_ms), str(r.members), r.tier,
               _count(r.experts), _count(r.experts_replying), _count(r.expert_replies),
               "-" if r.expert_needed is None else "yes" if r.expert_needed else "no")
              for r in rows]
    _print_table(table)
    return 0


def _print_table(table: Sequence[Sequence[str]]) -> None:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
              .rstrip())


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _grafana(args: argparse.Namespace, metrics: MetricConfig, runtime: RuntimeConfig) -> int:
    from sinks import grafana

    return grafana.main([args.action, *args.rest])


_COMMANDS = {
    "worker": _worker,
    "replay": _replay,
    "generate": _generate,
    "demo": _demo,
    "sql": _sql,
    "compact": _compact,
    "redrive": _redrive,
    "backfill": _backfill,
    "grafana": _grafana,
    "suggest-merges": _suggest_merges,
    "focus": _focus,
    "goals": _goals,
    "experts": _experts,
}

if __name__ == "__main__":
    sys.exit(main())
