"""SMART goals (SPEC 5): the definitions by hand, against the SQL oracle, the file's
validation, and the goals table and gauges of replay, the worker and `goals check`."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from devkit import generate as gen
from schemas.events import Event
from streams.config import DAY_MS, MetricConfig, RuntimeConfig
from streams.replay import parse_time, replay
from streams.steering.files import read_goals
from streams.steering.goals import METRICS, STATUSES, Goal, GoalsError, evaluate, parse_goals
from streams.worker import PulseWorker
from tests.oracle import oracle_goals

NOV1 = parse_time("2026-11-01T00:00:00Z")
DEC1 = parse_time("2026-12-01T00:00:00Z")
MAR1 = parse_time("2027-03-01T00:00:00Z")
SHARE = Goal("reach-15", "it-support", "contributor_share", 28, 0.10, 0.20, NOV1, DEC1, MAR1)
UNANSWERED = Goal("answer-all", "it-support", "unanswered_posts", 7, 10, 2, NOV1, DEC1, MAR1)


def _row(**values: Any) -> dict[str, Any]:
    return {"community_id": "it-support", "window_days": 28, **values}


def test_an_up_goal_by_hand() -> None:
    mid = NOV1 + 15 * DAY_MS  # halfway from start to deadline: expected 0.15
    (row,) = evaluate([SHARE], [_row(contributor_share=0.14)], mid)
    assert row.expected == pytest.approx(0.15) and row.progress == pytest.approx(0.4)
    assert row.status == "behind" and row.value == 0.14
    assert evaluate([SHARE], [_row(contributor_share=0.15)], mid)[0].status == "on_track"
    assert evaluate([SHARE], [_row(contributor_share=0.5)], NOV1 - 1)[0].status == "not_started"
    assert evaluate([SHARE], [_row(contributor_share=0.1)], NOV1)[0].status == "on_track"
    assert evaluate([SHARE], [_row(contributor_share=0.2)], DEC1)[0].status == "met"
    assert evaluate([SHARE], [_row(contributor_share=0.19)], DEC1)[0].status == "missed"
    assert evaluate([SHARE], [_row(contributor_share=0.2)], MAR1)[0].status == "met"
    assert evaluate([SHARE], [_row(contributor_share=0.2)], MAR1 + 1)[0].status == "ended"
    assert evaluate([SHARE], [_row(contributor_share=0.3)], DEC1)[0].expected == 0.2
    # No snapshot row of that community and window: no_data, whatever the time.
    for t in (NOV1 - 1, mid, MAR1 + 1):
        (row,) = evaluate([SHARE], [{**_row(contributor_share=0.3), "window_days": 7}], t)
        assert row.status == "no_data" and row.value is None and row.progress is None


def test_a_down_goal_by_hand() -> None:
    mid = NOV1 + 15 * DAY_MS  # expected 10 + (2 - 10) * 0.5 = 6
    rows = [{**_row(unanswered_posts=6), "window_days": 7}]
    (row,) = evaluate([UNANSWERED], rows, mid)
    assert (row.expected, row.progress, row.status) == (6.0, 0.5, "on_track")
    rows = [{**_row(unanswered_posts=7), "window_days": 7}]
    assert evaluate([UNANSWERED], rows, mid)[0].status == "behind"
    rows = [{**_row(unanswered_posts=2), "window_days": 7}]
    assert evaluate([UNANSWERED], rows, DEC1)[0].status == "met"
    rows = [{**_row(unanswered_posts=3), "window_days": 7}]
    assert evaluate([UNANSWERED], rows, DEC1)[0].status == "missed"


def test_an_undefined_metric_is_no_data_while_the_goal_runs() -> None:
    goal = Goal("keep", "it-support", "retention", 28, 0.5, 0.8, NOV1, DEC1, MAR1)
    assert [evaluate([goal], [_row(retention=None)], t)[0].status
            for t in (NOV1 - 1, NOV1, DEC1, MAR1 + 1)] == [
        "not_started", "no_data", "no_data", "ended"]


_T = NOV1 + 10 * DAY_MS


@st.composite
def _goals_and_values(draw: st.DrawFn) -> tuple[list[Goal], list[tuple], list[int]]:
    """Goals with times around a few as_of moments, and values on their boundaries."""
    as_ofs = [_T, _T + DAY_MS, _T - 3 * DAY_MS]
    around = st.sampled_from(as_ofs).flatmap(
        lambda t: st.sampled_from([-2 * DAY_MS, -1, 0, 1, DAY_MS]).map(lambda d: t + d))
    goals = []
    for i in range(draw(st.integers(1, 4))):
        start = draw(around)
        deadline = start + draw(st.sampled_from([1, DAY_MS, 3 * DAY_MS]))
        sustain = deadline + draw(st.sampled_from([0, 1, DAY_MS]))
        baseline = draw(st.sampled_from([0.0, 0.1, 10.0]))
        target = baseline + draw(st.sampled_from([-5.0, -0.05, 0.1, 3.0]))
        goals.append(Goal(f"g{i}", draw(st.sampled_from(["a", "b"])),
                          draw(st.sampled_from(["contributor_share", "retention", "members"])),
                          draw(st.sampled_from([7, 28])), baseline, target, start, deadline,
                          sustain))
    values = []
    for community in ("a", "b"):
        for window in (7, 28):
            for t in as_ofs:
                if draw(st.booleans()) and draw(st.booleans()):
                    continue  # no snapshot row
                for metric in ("contributor_share", "retention", "members"):
                    candidates = [None, 0.0, 0.1, 10.0, 13.0]
                    candidates += [g.expected(t) for g in goals] + [g.target for g in goals]
                    values.append((community, window, metric, t,
                                   draw(st.sampled_from(candidates))))
    return goals, values, as_ofs


@settings(max_examples=100, deadline=None)
@given(_goals_and_values())
def test_goals_agree_with_the_sql_oracle(case: tuple[list[Goal], list[tuple], list[int]]
                                         ) -> None:
    goals, values, as_ofs = case
    expected = oracle_goals(goals, values, as_ofs)
    mine = []
    for t in as_ofs:
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for community, window, metric, at, value in values:
            if at == t:
                rows.setdefault((community, window), {"community_id": community,
                                                      "window_days": window})[metric] = value
        mine += [r.__getattribute__ for r in evaluate(goals, list(rows.values()), t)]
    got = sorted(({k: get(k) for k in expected[0]} for get in mine),
                 key=lambda r: (r["goal_id"], r["as_of_ms"]))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g["status"] == e["status"], (g, e)
        for k in ("expected", "progress", "value"):
            assert (g[k] is None) == (e[k] is None) and (
                g[k] is None or g[k] == pytest.approx(e[k], rel=1e-12, abs=1e-12)), (k, g, e)


# ---- the file -------------------------------------------------------------------------

GOOD = """\
goals:
  - id: reach-15
    community: it-support
    metric: contributor_share
    baseline: 0.10
    target: 0.15
    start: 2026-11-01
    deadline: 2027-03-01T00:00:00Z
    sustain_until: "2027-06-01"
    description: Reach the medium tier and hold it for three months.
  - id: answer-all
    community: it-support
    metric: unanswered_posts
    window_days: 7
    baseline: 12
    target: 0
    start: 2026-11-01T09:00:00+01:00
    deadline: 2026-12-01
    sustain_until: 2027-03-01
"""


def test_a_good_file() -> None:
    share, answer = parse_goals(__import__("yaml").safe_load(GOOD), "goals.yml", (7, 28))
    assert share.window_days == 28 and share.start_ms == NOV1 and share.deadline_ms == MAR1
    assert share.direction == "up" and answer.direction == "down"
    assert answer.start_ms == NOV1 + 8 * 3_600_000
    assert share.description.startswith("Reach")


def _bad(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize(("text", "message"), [
    (_bad("metric: contributor_share", "metric: happiness"),
     "goal 'reach-15': metric: unknown metric 'happiness'"),
    (_bad("metric: contributor_share", "metric: tier"), "goal 'reach-15': metric: unknown"),
    (_bad("deadline: 2027-03-01T00:00:00Z", "deadline: 2026-10-01"),
     "goal 'reach-15': deadline: must be after start"),
    (_bad('sustain_until: "2027-06-01"', "sustain_until: 2027-02-01"),
     "goal 'reach-15': sustain_until: must not be before the deadline"),
    (_bad("target: 0.15", "target: 0.10"), "goal 'reach-15': target: equals the baseline"),
    (_bad("id: answer-all", "id: reach-15"), "goal 'reach-15': id: duplicate id"),
    (_bad("    baseline: 12\n", ""), "goal 'answer-all': baseline: missing"),
    (_bad("window_days: 7", "window_days: 14"),
     "goal 'answer-all': window_days: 14 is not a configured window"),
    (_bad("start: 2026-11-01T09:00:00+01:00", "start: 2026-11-01T09:00:00"),
     "goal 'answer-all': start: time 2026-11-01T09:00:00 needs an offset"),
    (_bad("deadline: 2026-12-01", "deadline: soon"), "goal 'answer-all': deadline: bad time"),
    (_bad("target: 0\n", "target: lots\n"),
     "goal 'answer-all': target: expected a finite number, not 'lots'"),
    (_bad("target: 0\n", "target: .nan\n"), "goal 'answer-all': target: expected a finite"),
    (_bad("baseline: 12\n", "baseline: -.inf\n"), "goal 'answer-all': baseline: expected a"),
    (_bad("baseline: 12\n", f"baseline: {10**400}\n"),  # (float() of it overflows)
     r"goal 'answer-all': baseline: expected a finite number, not '1000.*\(403 characters\)"),
    # PyYAML reads 2027-02-30 as a date and raised ValueError past the file's checks
    (_bad("deadline: 2026-12-01", "deadline: 2027-02-30"),
     "goal 'answer-all': deadline: bad time '2027-02-30'"),
    (_bad("start: 2026-11-01T09:00:00+01:00", "start: 2026-11-01T25:00:00Z"),
     "goal 'answer-all': start: bad time '2026-11-01T25:00:00Z'"),
    # ... and an integer of more than 4,300 digits the same (str() of it is refused too)
    (_bad("id: answer-all", f"id: {'9' * 5000}"),
     r"goal #2: id: expected a text of 1-256 characters, not '9999.*\(5,002 characters\)"),
    (_bad("id: answer-all", f"id: 0b{'1' * 5000}"), "goal #2: id: expected a text"),
    (_bad("id: answer-all", f"id: {'x' * 257}"), "goal #2: id: expected a text of 1-256"),
    (_bad("community: it-support", f"community: {'c' * 257}"),
     "goal 'reach-15': community: expected a community id"),
    (_bad("metric: unanswered_posts", "metric: [a, b]"),
     r"goal 'answer-all': metric: unknown metric \['a', 'b'\]"),
    (_bad("    target: 0\n", "    target: 0\n    owner: me\n"),
     "goal 'answer-all': owner: unknown field"),
    (_bad("  - id: answer-all\n", "  - community: x\n"), "goal #2: id: missing"),
    ("goals: {reach: 1}\n", "goals: expected a list"),
    ("goals:\n  - [1, 2]\n", "goal #1: expected a mapping"),
])
def test_an_invalid_file_is_refused_naming_the_goal_and_the_field(
        tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "goals.yml"
    path.write_text(text)
    with pytest.raises(GoalsError, match=message) as failure:
        read_goals(path, (7, 28))
    assert "\n" not in str(failure.value) and str(failure.value).startswith(str(path))


def test_every_numeric_snapshot_column_is_a_metric() -> None:
    assert {"contributor_share", "sustainability", "unanswered_posts", "members",
            "retention", "median_first_reply_seconds"} <= set(METRICS)
    assert not {"community_id", "tier", "stagnating", "as_of_ms", "window_days"} & set(METRICS)


# ---- replay, worker, CLI --------------------------------------------------------------

END = "2026-11-18T12:00:00Z"
HISTORY_GOALS = """\
goals:
  - id: healthy-share
    community: healthy-0000
    metric: contributor_share
    baseline: 0.2
    target: 0.6
    start: 2026-11-01
    deadline: 2026-12-01
    sustain_until: 2027-01-01
  - id: quiet-unanswered
    community: stagnating-0003
    metric: unanswered_posts
    window_days: 7
    baseline: 5
    target: 0
    start: 2026-10-01
    deadline: 2026-11-10
    sustain_until: 2027-01-01
  - id: future
    community: healthy-0000
    metric: sustainability
    baseline: 50
    target: 80
    start: 2027-01-01
    deadline: 2027-02-01
    sustain_until: 2027-03-01
  - id: nowhere
    community: no-such-community
    metric: members
    baseline: 0
    target: 10
    start: 2026-11-01
    deadline: 2026-12-01
    sustain_until: 2027-01-01
"""


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("goals")
    rng = random.Random(5)
    events = [e for c in gen.plan(5, 250, rng) for e in gen.history(c, parse_time(END), 30, rng)]
    source = tmp / "events.jsonl"
    source.write_bytes(b"\n".join(msgspec.json.encode(e) for e in gen.messy_order(events, rng)))
    goals = tmp / "goals.yml"
    goals.write_text(HISTORY_GOALS)
    return source, goals


def test_replay_writes_a_goal_row_per_goal_and_snapshot_time(
        tmp_path: Path, history: tuple[Path, Path]) -> None:
    source, goals_file = history
    goals = read_goals(goals_file)
    result = replay([source], tmp_path, MetricConfig(), as_of_ms=parse_time(END),
                    every_ms=DAY_MS, goals=goals)
    assert result.goal_rows_written == len(goals) * len(result.snapshot_times)
    with duckdb.connect(str(tmp_path / "pulse.duckdb"), read_only=True) as con:
        rows = con.sql("""SELECT g.goal_id, g.status, g.value, g.expected, g.progress,
                                 CASE g.metric WHEN 'contributor_share' THEN s.contributor_share
                                     WHEN 'unanswered_posts' THEN s.unanswered_posts
                                     WHEN 'sustainability' THEN s.sustainability END
                          FROM goals g LEFT JOIN snapshots s
                            ON s.community_id = g.community_id
                           AND s.window_days = g.window_days AND s.as_of = g.as_of
                          WHERE g.as_of = ?::TIMESTAMPTZ""", params=[END]).fetchall()
    by_id = {r[0]: r for r in rows}
    assert set(by_id) == {g.id for g in goals}
    for goal_id in ("healthy-share", "quiet-unanswered", "future"):
        assert by_id[goal_id][2] == pytest.approx(by_id[goal_id][5])  # the snapshot's value
    assert by_id["future"][1] == "not_started"
    assert by_id["nowhere"][1:3] == ("no_data", None)
    assert by_id["quiet-unanswered"][1] in ("met", "missed")  # past its deadline
    assert by_id["healthy-share"][3] == pytest.approx(0.2 + 0.4 * 17.5 / 30)


def test_the_worker_shows_the_same_goals_as_replay(
        tmp_path: Path, history: tuple[Path, Path]) -> None:
    """The goals table: replay's at its midnights (closing rows) equals the worker's,
    which it writes with its closing rows; the gauges show the goals now."""
    from tests.test_closing_worker import Clock, Feeder, feed

    source, goals_file = history
    as_of = parse_time(END)
    replay([source], tmp_path / "replay", MetricConfig(), as_of_ms=as_of, every_ms=DAY_MS,
           goals=read_goals(goals_file))
    worker = PulseWorker(MetricConfig(), RuntimeConfig(
        data_dir=tmp_path / "worker", goals_file=goals_file, partitions=2), clock=Clock(as_of))
    feed(worker, Feeder(), [msgspec.json.decode(line) for line in
                            source.read_bytes().splitlines()])
    assert worker.close_midnights()
    queries = ("SELECT goal_id, epoch_ms(as_of), status, value, expected, progress FROM goals "
               "WHERE epoch_ms(as_of) % 86400000 = 0 ORDER BY ALL")
    with duckdb.connect(str(tmp_path / "replay" / "pulse.duckdb"), read_only=True) as con:
        from_replay = con.sql(queries).fetchall()
    with duckdb.connect(str(tmp_path / "worker" / "pulse.duckdb"), read_only=True) as con:
        from_worker = con.sql(queries).fetchall()
    midnights = {row[1] for row in from_worker}  # (the worker backfills 35 days)
    assert len(midnights) >= 25 and len(from_worker) == 4 * len(midnights)
    assert from_worker == [row for row in from_replay if row[1] in midnights]
    worker.take_snapshot()
    # Gauges: a status series per status (one of them 1), value against expected.
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(worker.metrics.exposition().decode())
               for s in f.samples if s.name.startswith("community_pulse_goal")}
    statuses = {labels: v for (name, labels), v in samples.items()
                if name == "community_pulse_goal_status"}
    assert len(statuses) == 4 * len(STATUSES)
    for goal in worker.goal_rows:  # (now, not a midnight: the live goals)
        mine = {dict(k)["status"]: v for k, v in statuses.items()
                if dict(k)["goal"] == goal.goal_id}
        assert mine[goal.status] == 1 and sum(mine.values()) == 1
        got = {name: v for (name, labels), v in samples.items()
               if dict(labels).get("goal") == goal.goal_id and "status" not in dict(labels)}
        assert got["community_pulse_goal_expected"] == pytest.approx(goal.expected)
        assert got.get("community_pulse_goal_value") == (
            pytest.approx(goal.value) if goal.value is not None else None)
    assert sorted((g.goal_id, g.status) for g in worker.goal_rows) == con_rows(
        tmp_path / "replay", "SELECT goal_id, status FROM goals WHERE as_of = ?::TIMESTAMPTZ "
        "ORDER BY goal_id", END)
    assert all("user" not in dict(labels) for _, labels in samples)


def con_rows(data_dir: Path, sql: str, *params: Any) -> list[tuple]:
    with duckdb.connect(str(data_dir / "pulse.duckdb"), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args],
                          capture_output=True, text=True, check=False)


def test_goals_check_prints_each_status_and_refuses_a_bad_file(
        tmp_path: Path, history: tuple[Path, Path]) -> None:
    source, goals_file = history
    replay([source], tmp_path / "data", MetricConfig(), as_of_ms=parse_time(END))
    done = _cli("goals", "check", str(goals_file), "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "4 goal(s), valid" in lines[0]
    by_goal = {line.split()[0]: line.split() for line in lines[2:]}
    assert by_goal["future"][-1] == "not_started" and by_goal["nowhere"][-1] == "no_data"
    assert by_goal["healthy-share"][4] == "2026-11-18T12:00:00Z"
    assert by_goal["healthy-share"][-1] in ("on_track", "behind")
    empty = _cli("goals", "check", str(goals_file), "--data-dir", str(tmp_path / "none"))
    assert empty.returncode == 0 and "(none of these communities)" in empty.stdout
    # From event files, exactly at --as-of (as replay computes it): the same statuses.
    exact = _cli("goals", "check", str(goals_file), "--events", str(source), "--as-of", END)
    assert exact.returncode == 0, exact.stderr
    assert exact.stdout.splitlines()[1:] == lines[1:]
    bad = tmp_path / "bad.yml"
    bad.write_text(HISTORY_GOALS.replace("metric: members", "metric: memberz"))
    refused = _cli("goals", "check", str(bad))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == (f"community-pulse: error: {bad}: goal 'nowhere': metric: "
                              f"unknown metric 'memberz' (numeric snapshot columns: "
                              f"{', '.join(METRICS)})\n")


def test_the_worked_example_of_the_docs() -> None:
    """docs/steering.md: the goal of its goals-file example, at the moments of its worked
    example's table, gives every number of that table."""
    import re

    import yaml

    doc = (Path(__file__).parent.parent / "docs" / "steering.md").read_text()
    section = doc.split("## SMART goals", 1)[1].split("## Content experts", 1)[0]
    (goal,) = parse_goals(yaml.safe_load(re.findall(r"```yaml\n(.*?)```", section, re.S)[0]),
                          "docs/steering.md", (7, 28))
    table = section.split("### Worked example", 1)[1]
    lines = re.findall(r"^\| (\d{4}-\S+) \| (\S+) \| (\S+) \| (\S+) \| (\w+) \|$", table, re.M)
    assert len(lines) == 6
    for as_of, value, expected, progress, status in lines:
        (row,) = evaluate([goal], [_row(contributor_share=float(value))], parse_time(as_of))
        assert row.expected == pytest.approx(float(expected)), as_of
        assert row.progress == pytest.approx(float(progress)), as_of
        assert row.status == status, (as_of, value)


def test_a_goal_without_data_comes_from_the_worker_owning_its_partition(
        tmp_path: Path) -> None:
    """Workers of one group each own some partitions; a goal whose community has no rows
    there is reported (no_data) only by the worker whose partition its key goes to, as
    the producers' partitioner (kafka-python's default: murmur2) sends it."""
    from types import SimpleNamespace

    from kafka.partitioner.default import DefaultPartitioner

    cluster = SimpleNamespace(topics=lambda: {"t"}, partitions_for_topic=lambda _: {0, 1, 2, 3},
                              available_partitions_for_topic=lambda _: {0, 1, 2, 3})

    def partition_of(community: str) -> int:
        key = community.encode()
        return int(DefaultPartitioner().partition("t", key, key, None, None, cluster))

    goals = tmp_path / "goals.yml"
    goals.write_text(HISTORY_GOALS)
    by_worker = {}
    for partition in range(4):  # four workers, no events: every goal has no data
        worker = PulseWorker(MetricConfig(), RuntimeConfig(
            data_dir=tmp_path / str(partition), goals_file=goals, partitions=4))
        worker.assigned = {partition}
        worker.take_snapshot()
        by_worker[partition] = {g.goal_id: g.status for g in worker.goal_rows}
    for goal in read_goals(goals):
        owners = [p for p, found in by_worker.items() if goal.id in found]
        assert owners == [partition_of(goal.community)], goal.id
        assert by_worker[owners[0]][goal.id] == "no_data"


def test_a_small_community_left_out_of_parquet_leaves_its_goal_without_data(
        tmp_path: Path) -> None:
    """parquet_omit_small_communities: the goals table shows no value of a community the
    snapshots leave out, in replay and the worker alike; nor do the gauges."""
    from tests.test_closing_worker import Clock, Feeder, feed

    as_of = parse_time(END)
    midnight = as_of - as_of % DAY_MS
    events = [Event(f"e{i}", "post", "tiny", f"u{i}", midnight - 1000 * (i + 1),
                    post_id=f"p{i}") for i in range(2)]
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(msgspec.json.encode(e) for e in events))
    goals = tmp_path / "goals.yml"
    goals.write_text(HISTORY_GOALS.replace("community: no-such-community", "community: tiny"))
    replay([source], tmp_path / "replay", MetricConfig(), as_of_ms=midnight,
           goals=read_goals(goals), parquet_min_members=5)
    runtime = RuntimeConfig(data_dir=tmp_path / "worker", goals_file=goals, partitions=2,
                            parquet_omit_small_communities=True, min_members_exported=5)
    worker = PulseWorker(MetricConfig(), runtime, clock=Clock(as_of))
    feed(worker, Feeder(), [msgspec.to_builtins(e) for e in events])
    worker.close_midnights()
    worker.take_snapshot()
    query = ("SELECT goal_id, status, value FROM goals WHERE community_id = 'tiny' "
             "AND as_of = ?::TIMESTAMPTZ")
    at = "2026-11-18T00:00:00Z"
    assert con_rows(tmp_path / "replay", query, at) == [("nowhere", "no_data", None)]
    assert con_rows(tmp_path / "worker", query, at) == [("nowhere", "no_data", None)]
    assert 'community="tiny"' not in worker.metrics.exposition().decode()
