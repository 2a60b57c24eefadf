"""Issue 21 (files and settings): every steering file and every setting either reads or
is refused in one line that names the file (or the environment variable), the entry and
the field; the CLI exits non-zero without a traceback, and a running worker keeps the
version it read before, whatever went wrong with the new one."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import Event
from sinks.prometheus import GoalSeries
from streams import config
from streams.closing import ClosingBook
from streams.config import RANGES, ConfigError, MetricConfig, RuntimeConfig
from streams.core import PulseCore
from streams.replay import parse_time
from streams.steering import goals as steering_goals
from streams.steering.files import read_experts, read_goals, read_managers
from streams.steering.merges import check_arguments
from streams.steering.network import SteeringSettings
from streams.worker import PulseWorker

T = parse_time("2027-03-01T12:00:00Z")
GOAL = """\
  - id: {id}
    community: it-support
    metric: members
    baseline: 1
    target: {target}
    start: {start}
    deadline: 2027-03-30
    sustain_until: 2027-04-30
"""
DEEP = "[" * 3000 + "]" * 3000  # 3,000 levels: PyYAML's composer overflowed the stack
HUGE = "9" * 5000  # more digits than Python turns into an int (4,300)
READERS: dict[str, Callable[[Path], object]] = {
    "goals": lambda path: read_goals(path, (7, 28)), "experts": read_experts,
    "managers": read_managers}


def goals_text(id: str = "g1", target: str = "2", start: str = "2027-03-01") -> str:
    return "goals:\n" + GOAL.format(id=id, target=target, start=start)


# (kind of file, its text, what the one line must say besides the file's name)
BAD_FILES = [
    ("goals", goals_text(start="2027-02-30"), ["goal 'g1': start: bad time '2027-02-30'"]),
    ("goals", goals_text(start="2027-01-01T24:30:00Z"), ["goal 'g1': start: bad time"]),
    ("goals", f"goals: {DEEP}\n", ["not valid YAML (line 1): nested deeper than 64 levels"]),
    ("goals", goals_text(id=HUGE), ["goal #1: id: expected a text of 1-256 characters",
                                    "(5,002 characters)"]),
    ("goals", goals_text(target=HUGE), ["goal 'g1': target: expected a finite number"]),
    ("goals", goals_text(target=".nan"), ["goal 'g1': target: expected a finite number"]),
    ("experts", f"experts: {DEEP}\n", ["not valid YAML (line 1): nested deeper"]),
    # (a plain key of over 1,024 characters is not YAML: the line of the key)
    ("experts", f"experts:\n  {HUGE}: [u1]\n", ["not valid YAML (line 2)"]),
    ("experts", f"experts:\n  {'9' * 300}: [u1]\n", ["experts: community 9999",
                                                     "expected a community id"]),
    ("experts", "experts:\n  2027-02-28: [u1]\n", ["experts: community datetime.date"]),
    ("experts", f"experts:\n  c1: [{HUGE}]\n", ["community 'c1': entry #1: expected a user id"]),
    ("managers", f"managers: {DEEP}\n", ["not valid YAML (line 1): nested deeper"]),
    ("managers", f"managers:\n  - name: {HUGE}\n    user_id: u1\n",
     ["manager #1: 'name' must be a string of 1-256 characters"]),
    ("managers", "managers:\n  - name: ann\n    user_id: u1\n    follows: [2027-02-30, "
                 f"{HUGE}]\n", ["manager 'ann': 'follows' must be a list of community ids"]),
]


def one_line_naming(error: BaseException, path: Path) -> str:
    message = str(error)
    assert isinstance(error, ConfigError), repr(error)
    assert "\n" not in message and str(path) in message and len(message) < 1000, message
    return message


@pytest.mark.parametrize(("kind", "text", "says"), BAD_FILES)
def test_a_bad_steering_file_is_one_line_naming_the_file_entry_and_field(
        tmp_path: Path, kind: str, text: str, says: list[str]) -> None:
    path = tmp_path / f"{kind}.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as failure:
        READERS[kind](path)
    message = one_line_naming(failure.value, path)
    assert all(part in message for part in says), message
    assert "u1" not in message  # (user ids never)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a command that was refused (exit 2, no traceback)."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("community-pulse: error: ") and "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize(("kind", "text", "says"), [
    case for case in BAD_FILES if case[1] in (
        goals_text(start="2027-02-30"), f"goals: {DEEP}\n", goals_text(id=HUGE),
        f"experts:\n  {'9' * 300}: [u1]\n", f"managers: {DEEP}\n")])
def test_the_cli_refuses_a_bad_steering_file_in_one_line(
        tmp_path: Path, kind: str, text: str, says: list[str]) -> None:
    path = tmp_path / f"{kind}.yml"
    path.write_text(text)
    events = tmp_path / "events.jsonl"
    events.write_text("")
    command = {"goals": ["goals", "check", str(path), "--data-dir", str(tmp_path)],
               "experts": ["experts", str(events), "--experts", str(path)],
               "managers": ["focus", str(events), "--as-of", "2027-03-01T00:00:00Z",
                            "--managers", str(path)]}[kind]
    line = refused(cli(*command))
    assert str(path) in line and all(part in line for part in says), line


def test_the_worker_refuses_to_start_on_a_bad_goals_file_naming_it(tmp_path: Path) -> None:
    """At the next start (what the reload kept running on): the same one line, before
    the broker is asked (the roster is read with the settings; the goals here)."""
    goals = tmp_path / "goals.yml"
    goals.write_text(goals_text(start="2027-02-30"))
    line = refused(cli("worker", "--broker", "127.0.0.1:1", "--data-dir", str(tmp_path),
                       env={"PULSE_GOALS_FILE": str(goals)}))
    assert f"{goals}: goal 'g1': start: bad time '2027-02-30'" in line


# Raw YAML scalars (unquoted, as a manager types them): impossible dates, numbers past
# float and int, NaN, tags, aliases, long text.
TOKENS = st.sampled_from([
    "2027-02-30", "2027-03-01", "2027-03-01T00:00:00Z", "2027-13-01", "2027-03-01T25:00:00Z",
    "2001-12-14 21:59:43.10 -5", ".nan", ".inf", "-.inf", "1e999", "-1", "0", "7", "28",
    "0.5", HUGE, "0b" + "1" * 5000, "0x" + "f" * 1200, "1:30", "true", "null", "~", "''",
    "[]", "{}", "[a, b]", "members", "sustainability", "it-support", "x" * 300,
    "!!binary aGk=", "!!set {a}", "!!python/name:os.system", "&a 1", "*a", "*b", "'a\\nb'",
    "\"\\u0000\"", "{id: 1}", DEEP[:200] + DEEP[-200:], "? [a]\n  : 1"])
GOAL_FIELDS = ["id", "community", "metric", "window_days", "baseline", "target", "start",
               "deadline", "sustain_until", "description", "owner"]


@st.composite
def yaml_documents(draw: st.DrawFn, kind: str | None = None) -> str:
    """Text shaped like a goals, experts or managers file (of `kind`, or any) with
    random values, or not."""
    def mapping(keys: list[str]) -> str:
        chosen = draw(st.lists(st.sampled_from(keys), max_size=len(keys), unique=True))
        return "{" + ", ".join(f"{k}: {draw(TOKENS)}" for k in chosen) + "}"

    shapes = {"goals": ["goal", "goal", "goals"], "experts": ["experts"],
              "managers": ["managers"]}.get(kind or "", ["goal", "goals", "experts", "managers"])
    shape = draw(st.sampled_from([*shapes, *shapes, "raw"]))
    items = range(draw(st.integers(0, 3)))
    if shape == "goal":  # a good goal with a field or two changed: mostly valid
        good = {"id": "g1", "community": "it-support", "metric": "members",
                "baseline": "1", "target": "2", "start": "2027-03-01",
                "deadline": "2027-03-30", "sustain_until": "2027-04-30"}
        changed = draw(st.dictionaries(st.sampled_from(GOAL_FIELDS), TOKENS, max_size=2))
        goal = {**good, **changed}
        return "goals:\n  - {" + ", ".join(f"{k}: {v}" for k, v in goal.items()) + "}\n"
    if shape == "goals":
        return "goals:\n" + "".join(f"  - {mapping(GOAL_FIELDS)}\n" for _ in items)
    if shape == "experts":
        return "experts:\n" + "".join(
            f"  {draw(TOKENS)}: [{', '.join(draw(st.lists(TOKENS, max_size=3)))}]\n"
            for _ in items)
    if shape == "managers":
        return "managers:\n" + "".join(
            f"  - {mapping(['name', 'user_id', 'follows', 'x'])}\n" for _ in items)
    return draw(st.text(max_size=200))


def reads_or_refuses(kind: str, path: Path) -> object:
    """The file read, or None when refused in one line naming it; any other exception
    fails the test."""
    try:
        return READERS[kind](path)
    except ConfigError as exc:
        one_line_naming(exc, path)
        return None


def usable(goals: list[steering_goals.Goal]) -> None:
    """Goals that were accepted evaluate and export without an error (the snapshot
    timer does this)."""
    row = {"community_id": "it-support", "window_days": 28, **{
        metric: 3.0 for metric in steering_goals.METRICS}}
    for at in (T - 10**11, T, T + 10**11):
        rows = steering_goals.evaluate(goals, [row], at)
        GoalSeries().update(goals, rows)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(READERS)), data=st.data())
def test_any_steering_file_reads_or_is_refused_in_one_line(
        tmp_path_factory: pytest.TempPathFactory, kind: str, data: st.DataObject) -> None:
    content = data.draw(yaml_documents(kind).map(str.encode) | st.binary(max_size=300))
    path = tmp_path_factory.mktemp("files") / f"{kind}.yml"
    path.write_bytes(content)
    read = reads_or_refuses(kind, path)
    if kind == "goals" and read is not None:
        usable(read)  # type: ignore[arg-type]


# ---- the running worker: a bad reload keeps the previous version -------------------


def watched_worker(tmp_path: Path) -> tuple[PulseWorker, Path, Path]:
    goals, experts = tmp_path / "goals.yml", tmp_path / "experts.yml"
    goals.write_text(goals_text())
    experts.write_text("experts:\n  it-support: [erik]\n")
    runtime = RuntimeConfig(data_dir=tmp_path / "data", goals_file=goals, experts_file=experts)
    worker = PulseWorker(MetricConfig(experts=read_experts(experts)), runtime,
                         clock=lambda: T / 1000)
    worker.core.apply([Event("j1", "join", "it-support", "erik", T - 1000)])
    return worker, goals, experts


def rewrite(path: Path, content: bytes) -> None:
    """New content, seen as a change even within the file system's clock tick."""
    stamp = path.stat().st_mtime_ns
    path.write_bytes(content)
    os.utime(path, ns=(stamp + 1_000_000, stamp + 1_000_000))


def invalid(worker: PulseWorker, name: str) -> float:
    return worker.metrics.steering_file_invalid.labels(name)._value.get()


@pytest.mark.parametrize("content", [
    goals_text(start="2027-02-30"), f"goals: {DEEP}\n", goals_text(id=HUGE), "\xff\xfe",
    "experts:\n  it-support: [erik, 7]\n"])
def test_a_bad_reload_keeps_the_goals_and_roster_read_before(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str) -> None:
    worker, goals, experts = watched_worker(tmp_path)
    before = (list(worker.goals), dict(worker.config.experts or {}))
    path = experts if content.startswith("experts") else goals
    rewrite(path, content.encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        worker.use_steering_files(worker.read_changed_steering_files())
    assert (worker.goals, worker.config.experts) == before
    name = "experts" if path == experts else "goals"
    assert invalid(worker, name) == 1
    (line,) = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]
    assert str(path) in line and "erik" not in line
    worker.take_snapshot()  # the snapshot timer goes on
    mended = "experts:\n  it-support: [erik]\n" if name == "experts" else goals_text(id="g2")
    rewrite(path, mended.encode())
    worker.use_steering_files(worker.read_changed_steering_files())
    assert invalid(worker, name) == 0


def test_a_reload_that_raises_anything_keeps_the_previous_version(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """Not only a ConfigError: a bug in a check (here a stand-in that raises, quoting a
    user id) keeps the version read before, and the log line shows only its type."""
    worker, goals, _ = watched_worker(tmp_path)
    before = list(worker.goals)

    def broken(*_: Any) -> None:
        raise RecursionError("while reading user erik")

    monkeypatch.setattr("streams.worker.read_goals", broken)
    rewrite(goals, goals_text(id="g2").encode())
    with caplog.at_level(logging.WARNING):
        worker.use_steering_files(worker.read_changed_steering_files())
    assert worker.goals == before and invalid(worker, "goals") == 1
    (line,) = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]
    assert str(goals) in line and "RecursionError" in line and "erik" not in line


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_reload_keeps_the_worker_going(tmp_path_factory: pytest.TempPathFactory,
                                           data: st.DataObject) -> None:
    worker, goals, experts = watched_worker(tmp_path_factory.mktemp("reload"))
    for _ in range(3):
        path = data.draw(st.sampled_from([goals, experts]))
        content = data.draw(yaml_documents("goals" if path == goals else "experts").map(
            str.encode) | st.binary(max_size=200))
        kept = (list(worker.goals), dict(worker.config.experts or {}))
        rewrite(path, content)
        read = worker.read_changed_steering_files()
        name = "goals" if path == goals else "experts"
        assert (name in read) == (invalid(worker, name) == 0)
        worker.use_steering_files(read)
        if name not in read:
            assert (worker.goals, worker.config.experts) == kept
        worker.take_snapshot()


# ---- settings ----------------------------------------------------------------------


@pytest.mark.parametrize(("toml", "env", "says"), [
    ("[metrics]\nsla_hours = nan\n", {}, "[metrics] sla_hours: expected a number above 0"),
    ("[metrics]\nsla_hours = inf\n", {}, "[metrics] sla_hours: expected a number above 0"),
    ("", {"PULSE_SLA_HOURS": "nan"}, "PULSE_SLA_HOURS (sla_hours): expected a number above"),
    ("[metrics]\nsla_hours_by_community = {c = nan}\n", {},
     "[metrics] sla_hours_by_community: community 'c': expected a number above 0"),
    ("", {"PULSE_SLA_HOURS_BY_COMMUNITY": "a=1,b=inf"},
     "PULSE_SLA_HOURS_BY_COMMUNITY (sla_hours_by_community): community 'b': expected"),
    ("[metrics]\nsla_hours_by_community = 5\n", {},
     "[metrics] sla_hours_by_community: expected a table of community = hours, not 5"),
    ("metrics = 5\n", {}, ": [metrics]: expected a table, not 5"),
    ("[runtime]\npartitions = inf\n", {}, "[runtime] partitions: expected a whole number"),
    ("[runtime]\npartitions = 2.5\n", {}, "[runtime] partitions: expected a whole number"),
    ("[runtime]\npartitions = 100000\n", {}, "[runtime] partitions: expected a number from "
                                             "1 to 10,000, not 100000"),
    ("", {"PULSE_PARTITIONS": HUGE}, "PULSE_PARTITIONS (partitions): expected a whole number"),
    ("[metrics]\nweight_retention = -1\n", {}, "[metrics] weight_retention: expected a "
                                               "number from 0 to 1,000,000, not -1.0"),
    ("[metrics]\n" + "".join(f"weight_{c} = 0\n" for c in config.WEIGHTED), {},
     "at least one of weight_retention"),
    ("[metrics]\nwindows_days = [7, true]\n", {}, "windows_days: expected a whole number"),
    ("", {"PULSE_WINDOWS_DAYS": "7,7"}, "(windows_days): expected one or more windows, each "
                                        "once, not [7, 7]"),
    ("[runtime]\napp_id = 2027-01-01\n", {}, "[runtime] app_id: expected text, not a date"),
    ("[metrics]\ntier_medium_share = 0.5\ntier_high_share = 0.4\n", {},
     "need 0 < tier_medium_share <= tier_high_share <= 1"),
    ("[runtime]\nbroker = 5\n", {}, "[runtime] broker: expected text, not a whole number"),
    ("[runtime]\nkafka_sasl_mechanism = [1]\n", {},
     "[runtime] kafka_sasl_mechanism: expected text, not a list"),
    ("[runtime]\nsketch_key = \"x\"\n", {}, "[runtime] sketch_key: no longer a setting"),
    ("[runtime]\ntopic_min_insync_replicas = 2\n", {},
     "topic_min_insync_replicas must not exceed topic_replication_factor"),
    ("[runtime]\nsink_max_pending_mib = 0\n", {}, "sink_max_pending_mib: expected a number"),
    ("[runtime]\ngoals_file = 7\n", {}, "[runtime] goals_file: expected a file or folder"),
    ("[runtme]\npartitions = 2\n", {}, "unknown table [runtme]"),
])
def test_a_bad_setting_is_one_line_naming_where_and_which(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, env: dict[str, str],
        says: str) -> None:
    path = tmp_path / "pulse.toml"
    path.write_text(toml)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as failure:
        config.load(path)
    message = str(failure.value)
    assert says in message and "\n" not in message, message
    assert (str(path) in message) if toml else ("PULSE_" in message or "environment" in message)


def test_the_cli_refuses_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pulse.toml"
    path.write_text("metrics = 5\n")
    line = refused(cli("--config", str(path), "sql", "SELECT 1", "--data-dir", str(tmp_path)))
    assert f"config {path}: [metrics]: expected a table" in line
    line = refused(cli("sql", "SELECT 1", "--data-dir", str(tmp_path),
                       env={"PULSE_SLA_HOURS": "nan"}))
    assert "PULSE_SLA_HOURS (sla_hours)" in line and "internal error" not in line
    line = refused(cli("worker", "--partitions", "0", "--broker", "127.0.0.1:1"))
    assert "partitions: expected a number from 1 to 10,000, not 0" in line


def test_configs_built_in_code_are_checked_too() -> None:
    """(The snapshot timer crashed on a NaN SLA: it can no longer get one.)"""
    for bad in ({"sla_hours": math.nan}, {"sla_hours_by_community": {"c": math.inf}},
                {"weight_reciprocity": -0.5}, {"windows_days": (7, 0)}):
        with pytest.raises(ConfigError):
            MetricConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="snapshot_interval_s"):
        RuntimeConfig(snapshot_interval_s=math.inf)


NASTY = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -1, -1.5, 0, 0.0, 1, 2, 7, 0.5, 1e300,
                     10**30, -(10**30), 2**63, True, False, "", "x", "nan", "inf", "-1",
                     HUGE, "7,28", "c=1", "c=nan", "1e999", [], [7], [7, 28], [True],
                     ["7"], [1.5], {}, {"c": 2}, {"c": math.nan}, {"c": "x"}]),
    st.integers(), st.floats(), st.text(max_size=8))
NAMES = sorted({f.name for cls in (MetricConfig, RuntimeConfig) for f in fields(cls)
                if f.metadata.get("setting", True) and not f.name.endswith("_file")})
TABLE_OF = {f.name: "metrics" for f in fields(MetricConfig)}


def toml_value(value: Any) -> str:
    """A TOML literal (tomllib reads but does not write)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):  # (JSON's escapes are TOML's, but for DEL)
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"


def works(metrics: MetricConfig, runtime: RuntimeConfig) -> None:
    """Settings that were accepted work where they are used (no error, finite)."""
    for cfg in (metrics, runtime):
        for item in fields(cfg):
            value, allowed = getattr(cfg, item.name), RANGES.get(item.name)
            for one in (value if isinstance(value, tuple) else (value,)):
                if allowed is not None:
                    assert allowed.low <= one <= allowed.high and math.isfinite(one)
    core = PulseCore(metrics)
    core.apply([Event("p1", "post", "c", "u1", T - 3_600_000, post_id="p1"),
                Event("j1", "join", "c", "u2", T - 7_200_000)])
    for row in core.snapshot(T):
        assert math.isfinite(row.sustainability) and 0 <= row.sustainability <= 100
    core.expire(T - metrics.retention_ms)
    SteeringSettings.of(runtime)
    check_arguments(runtime.merge_min_overlap, runtime.merge_top)
    ClosingBook(runtime.closing_grace_ms, runtime.closing_backfill_days)


@st.composite
def setting_values(draw: st.DrawFn) -> dict[str, Any]:
    """Some settings, each nasty or (as often) within its range."""
    values = {}
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=4, unique=True)):
        allowed = RANGES.get(name)
        fitting = NASTY if allowed is None else (
            st.integers(int(allowed.low) + allowed.above, int(allowed.high))
            if isinstance(getattr(DEFAULTS, name, 0), int) or name == "windows_days"
            else st.floats(allowed.low, allowed.high, exclude_min=allowed.above))
        if name == "windows_days":  # (within the default membership horizon: 90 days)
            fitting = st.lists(st.integers(1, 90), min_size=1, max_size=3)
        values[name] = draw(st.one_of(NASTY, fitting, fitting))
    return values


DEFAULTS = type("Defaults", (), {**vars(MetricConfig()), **vars(RuntimeConfig())})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=setting_values(), through_env=st.booleans())
def test_any_settings_are_used_or_refused_naming_the_setting(
        tmp_path_factory: pytest.TempPathFactory, values: dict[str, Any],
        through_env: bool) -> None:
    path = tmp_path_factory.mktemp("settings") / "pulse.toml"
    tables: dict[str, list[str]] = {"metrics": [], "runtime": []}
    env: dict[str, str] = {}
    for name, value in values.items():
        if through_env:
            env[f"PULSE_{name.upper()}"] = value if isinstance(value, str) else (
                toml_value(value).strip("[]{}\""))
        else:
            tables[TABLE_OF.get(name, "runtime")].append(f"{name} = {toml_value(value)}")
    path.write_text("".join(f"[{t}]\n" + "\n".join(lines) + "\n"
                            for t, lines in tables.items() if lines))
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("PULSE_")]:
            patch.delenv(name)
        for name, text in env.items():
            patch.setenv(name, text.replace("\0", ""))
        try:
            metrics, runtime = config.load(path)
        except ConfigError as exc:
            message = str(exc)
            assert "\n" not in message and len(message) < 400, message
            assert [name for name in values if name in message], message
            return
    works(metrics, runtime)


def test_the_docs_give_every_range() -> None:
    """docs/metrics.md#checks lists each setting with its range as RANGES has it."""
    text = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    table = text.split("| settings | allowed |", 1)[1].split("\n\n", 1)[0]
    for name in RANGES:
        documented = f"`{name}`" in table or ("`weight_*`" in table and name.startswith("weight_"))
        assert documented, name
