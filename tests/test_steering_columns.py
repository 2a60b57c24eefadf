"""Content experts and soft/hard content (SPEC 5): the worked example of
docs/steering.md by hand, replay and worker on the new columns, schema version 2 next
to version 1 files, and the roster's ids never leaving the process. (The SQL oracle
covers both in tests/test_core_properties.py; bulk = per-event in tests/test_bulk.py.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import duckdb
import msgspec
import pyarrow.parquet as pq
import pytest

from schemas.events import Event
from sinks.compact import compact
from sinks.parquet import SCHEMA_VERSION, SnapshotWriter, rows_to_table
from sinks.prometheus import CommunitySeries
from streams.config import DAY_MS, MetricConfig, RuntimeConfig
from streams.core import PulseCore, SnapshotRow
from streams.replay import parse_time, replay
from streams.steering.files import read_experts
from streams.worker import PulseWorker

T = parse_time("2026-11-18T12:00:00Z")
# Five experts, the privacy threshold (min_members_exported): gert, hugo and ines never
# appear in the community.
ROSTER = {"it-support": frozenset({"erik", "fatima", "gert", "hugo", "ines"})}
CONFIG = MetricConfig(experts=ROSTER)
HOUR = 3_600_000


def _at(text: str) -> int:
    return parse_time(f"2026-{text}:00Z")


def worked_example() -> list[Event]:
    """docs/steering.md, "Worked example: content experts and soft/hard content"."""
    c = "it-support"
    return [
        Event("j1", "join", c, "erik", _at("01-05T09:00")),
        Event("j2", "join", c, "fatima", _at("01-05T09:00")),
        # 28-day window only: an old ugc post nobody answered; erik replies to another.
        Event("p0", "post", c, "ann", _at("10-25T10:00"), post_id="p0"),
        Event("r0", "reply", c, "erik", _at("10-26T10:00"), post_id="q0", reply_id="r0",
              parent_id="q0", parent_type="post"),
        # The last 7 days:
        Event("p1", "post", c, "hanna", _at("11-13T10:00"), post_id="p1",
              content_kind="managed"),
        Event("r1", "reply", c, "erik", _at("11-13T11:00"), post_id="p1", reply_id="r1",
              parent_id="p1", parent_type="post"),
        Event("r2", "reply", c, "bob", _at("11-13T12:00"), post_id="p1", reply_id="r2",
              parent_id="r1", parent_type="reply"),
        Event("r3", "reply", c, "erik", _at("11-13T13:00"), post_id="p1", reply_id="r3",
              parent_id="r2", parent_type="reply"),
        Event("p2", "post", c, "bob", _at("11-15T09:00"), post_id="p2", content_kind="ugc"),
        Event("l1", "like", c, "fatima", _at("11-15T10:00"), target_id="p2",
              target_type="post"),
        Event("p3", "post", c, "cas", _at("11-17T09:00"), post_id="p3"),
        Event("l2", "like", c, "cas", _at("11-17T10:00"), target_id="p3",
              target_type="post"),  # the author's own like: no engagement
    ]


def _rows(config: MetricConfig = CONFIG) -> dict[int, SnapshotRow]:
    core = PulseCore(config)
    core.apply(worked_example())
    return {row.window_days: row for row in core.snapshot(T)}


def test_the_worked_example_by_hand() -> None:
    week, month = _rows()[7], _rows()[28]
    # erik (joined, replies) and fatima (joined, only likes) are members; gert never
    # appears in the community.
    assert (week.experts, week.experts_replying, week.expert_replies, week.expert_needed) == (
        2, 1, 2, False)
    assert (month.experts, month.experts_replying, month.expert_replies) == (2, 1, 3)
    # p1 managed, answered by erik; p2 ugc, liked by fatima; p3 ugc, only its author's like.
    assert (week.managed_posts, week.ugc_posts) == (1, 2)
    assert (week.managed_engagement, week.ugc_engagement) == (1.0, 0.5)
    # p0 too (ugc, nobody answered): 1 of 3 ugc posts engaged.
    assert (month.managed_posts, month.ugc_posts) == (1, 3)
    assert month.ugc_engagement == pytest.approx(1 / 3)
    assert week.managed_posts + week.ugc_posts == week.posts


def test_expert_needed_without_replies_and_without_a_roster() -> None:
    core = PulseCore(MetricConfig(experts={"elsewhere": frozenset({"erik"})}))
    core.apply(worked_example())
    for row in core.snapshot(T):  # a roster, but not for this community
        assert (row.experts, row.experts_replying, row.expert_needed) == (0, 0, True)
    assert core.snapshot(_at("01-01T00:00"))[0].expert_needed is False  # no members yet
    for row in _rows(MetricConfig()).values():  # no roster at all: unknown, not "needed"
        assert (row.experts, row.experts_replying, row.expert_replies,
                row.expert_needed) == (None, None, None, None)
    later = PulseCore(CONFIG)
    later.apply(worked_example())
    week = {r.window_days: r for r in later.snapshot(T + 7 * DAY_MS)}[7]
    assert (week.experts_replying, week.expert_needed, week.managed_engagement) == (
        0, True, None)


def test_replay_and_the_worker_write_the_same_new_columns(tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(msgspec.json.encode(e) for e in worked_example()))
    replay([source], tmp_path / "replay", CONFIG, as_of_ms=T)
    worker = PulseWorker(CONFIG, RuntimeConfig(data_dir=tmp_path / "worker"),
                         clock=lambda: T / 1000)
    worker.core.apply(worked_example())
    worker.write_rows(worker.take_snapshot())
    columns = ("window_days, experts, experts_replying, expert_replies, expert_needed, "
               "managed_posts, ugc_posts, managed_engagement, ugc_engagement")
    found = []
    for name in ("replay", "worker"):
        with duckdb.connect(str(tmp_path / name / "pulse.duckdb"), read_only=True) as con:
            found.append(con.sql(f"SELECT {columns} FROM snapshots ORDER BY 1").fetchall())
    assert found[0] == found[1] == [
        (7, 2, 1, 2, False, 1, 2, 1.0, 0.5), (28, 2, 1, 3, False, 1, 3, 1.0, pytest.approx(1 / 3))]
    (path,) = (tmp_path / "replay" / "snapshots").rglob("*.parquet")
    assert pq.read_schema(path).metadata[b"community_pulse.schema_version"] == b"2" == \
        SCHEMA_VERSION.encode()


def test_version_1_files_mix_with_version_2_in_the_views_and_compaction(tmp_path: Path
                                                                         ) -> None:
    rows = list(_rows().values())
    table = rows_to_table(rows)
    old = table.drop_columns([c for c in table.column_names if c in (
        "experts", "experts_replying", "expert_replies", "expert_needed", "managed_posts",
        "ugc_posts", "managed_engagement", "ugc_engagement")])
    writer = SnapshotWriter(tmp_path)
    writer.write_table(T - HOUR, old.set_column(
        1, "as_of", rows_to_table([dataclasses.replace(r, as_of_ms=T - HOUR)
                                   for r in rows])["as_of"]))
    writer.write_table(T, table)
    query = "SELECT epoch_ms(as_of), window_days, managed_posts FROM snapshots ORDER BY 1, 2"
    with duckdb.connect(str(tmp_path / "pulse.duckdb"), read_only=True) as con:
        before = con.sql(query).fetchall()
    assert before == [(T - HOUR, 7, None), (T - HOUR, 28, None), (T, 7, 1), (T, 28, 1)]
    assert compact(tmp_path).rows == 4
    with duckdb.connect(str(tmp_path / "pulse.duckdb"), read_only=True) as con:
        assert con.sql(query).fetchall() == before


def test_roster_ids_never_leave_the_process(tmp_path: Path) -> None:
    roster = tmp_path / "experts.yml"
    roster.write_text(json.dumps({"experts": {c: sorted(u) for c, u in ROSTER.items()}}))
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(msgspec.json.encode(e) for e in worked_example()))
    replay([source], tmp_path / "data", CONFIG, as_of_ms=T, every_ms=DAY_MS)
    series = CommunitySeries(min_members=1)
    series.update("it-support", list(_rows().values()))
    written = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    for user in ROSTER["it-support"]:
        assert user.encode() not in written
        assert user not in series.render()
        assert user not in repr(CONFIG)
    assert "community_pulse_expert_needed" in series.render()


def test_the_experts_command_prints_the_counts_and_no_id(tmp_path: Path) -> None:
    import subprocess
    import sys

    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(msgspec.json.encode(e) for e in worked_example()))
    roster = tmp_path / "experts.yml"
    roster.write_text("experts:\n  it-support: [erik, fatima, gert, hugo, ines]\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streams.cli", "experts", str(source),
                               *args], capture_output=True, text=True, check=False)

    done = cli("--as-of", "2026-11-18T12:00:00Z", "--experts", str(roster))
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert lines[0][-4:] == ["experts", "replying", "replies", "expert_needed"]
    assert [line[-4:] for line in lines[1:]] == [["2", "1", "2", "no"], ["2", "1", "3", "no"]]
    assert not any(u in done.stdout + done.stderr for u in ROSTER["it-support"])
    missing = cli()
    assert missing.returncode == 2 and missing.stderr.startswith("community-pulse: error: ")
    # A roster under the privacy threshold: its community's counts are withheld ("-"),
    # the other communities' shown; no id anywhere.
    roster.write_text("experts:\n  it-support: [erik, fatima, gert]\n")
    small = cli("--as-of", "2026-11-18T12:00:00Z", "--experts", str(roster))
    assert small.returncode == 0, small.stderr
    assert [line.split()[-4:] for line in small.stdout.splitlines()[1:]] == [["-"] * 4] * 2
    assert not any(u in small.stdout + small.stderr for u in ROSTER["it-support"])


GOAL = """\
  - id: {id}
    community: it-support
    metric: unanswered_posts
    window_days: 7
    baseline: 3
    target: 0
    start: 2026-11-01
    deadline: 2026-12-15
    sustain_until: 2027-01-15
"""


def test_the_worker_reloads_changed_goals_and_experts_files(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    goals, experts = tmp_path / "goals.yml", tmp_path / "experts.yml"
    goals.write_text("goals:\n" + GOAL.format(id="answer-all"))
    experts.write_text(json.dumps({"experts": {"it-support": ["erik"]}}))
    runtime = RuntimeConfig(data_dir=tmp_path / "data", goals_file=goals,
                            experts_file=experts)
    worker = PulseWorker(MetricConfig(experts=read_experts(experts)), runtime,
                         clock=lambda: T / 1000)
    worker.core.apply(worked_example())
    # (one expert, under the privacy threshold of 5: no counts)
    assert {r.window_days: r.experts for r in worker.take_snapshot()} == {7: None, 28: None}
    assert [g.goal_id for g in worker.goal_rows] == ["answer-all"]
    assert worker.read_changed_steering_files() == {}  # nothing changed: nothing read

    # A manager edits both files: the next snapshot counts the new roster exactly as a
    # worker started with it, and shows both goals.
    goals.write_text("goals:\n" + GOAL.format(id="answer-all") + GOAL.format(id="answer-2"))
    experts.write_text(json.dumps({"experts": {c: sorted(u) for c, u in ROSTER.items()}}))
    worker.use_steering_files(worker.read_changed_steering_files())
    assert {r.window_days: r for r in worker.take_snapshot()} == {
        w: dataclasses.replace(r, as_of_ms=T) for w, r in _rows().items()}
    assert sorted(g.goal_id for g in worker.goal_rows) == ["answer-2", "answer-all"]

    # A file that no longer reads: the one read before stays, counted, one log line
    # with the reason and no user id.
    goals.write_text("goals: {reach: 1}\n")
    experts.write_text("experts:\n  it-support: [erik, 7]\n")
    worker.use_steering_files(worker.read_changed_steering_files())
    assert sorted(g.goal_id for g in worker.goal_rows) == ["answer-2", "answer-all"]
    assert worker.take_snapshot()[0].experts == 2
    invalid = worker.metrics.steering_file_invalid
    assert invalid.labels("goals")._value.get() == invalid.labels("experts")._value.get() == 1
    reasons = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(reasons) == 2 and "goals: expected a list" in reasons[0]
    assert not any(user in m for m in reasons for user in ("erik", "fatima", "gert"))
    goals.write_text("goals:\n" + GOAL.format(id="answer-3"))  # mended: read again
    worker.use_steering_files(worker.read_changed_steering_files())
    assert sorted(g.goal_id for g in worker.goal_rows) == ["answer-2", "answer-all"]  # (until
    worker.take_snapshot()  # the next snapshot)
    assert [g.goal_id for g in worker.goal_rows] == ["answer-3"]
    assert invalid.labels("goals")._value.get() == 0
    # A roster under the privacy threshold (min_members_exported, 5): its community's
    # expert columns go empty, one log line names the community (one expert's counts
    # would be that person's own replies).
    experts.write_text(json.dumps({"experts": {"it-support": ["erik", "fatima"]}}))
    worker.use_steering_files(worker.read_changed_steering_files())
    assert invalid.labels("experts")._value.get() == 0
    row = worker.take_snapshot()[0]
    assert (row.experts, row.experts_replying, row.expert_replies, row.expert_needed) == (
        None, None, None, None)
    message = caplog.records[-1].getMessage()
    assert "fewer than 5 experts" in message and "it-support" in message
    assert "erik" not in message


@pytest.mark.parametrize("size", [1, 2, 4])
def test_rosters_under_the_privacy_threshold_export_no_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        size: int) -> None:
    # The threshold is per community: a roster of 1 to k-1 experts (k = 5) leaves its own
    # community's expert columns empty; the others keep theirs.
    from streams import config as config_module

    roster = tmp_path / "experts.yml"
    names = ["erik", "fatima", "gert", "hugo", "ines"]
    roster.write_text(json.dumps({"experts": {"it-support": names, "hr": names[:size],
                                              "empty": []}}))
    monkeypatch.setenv("PULSE_EXPERTS_FILE", str(roster))
    metrics, _ = config_module.load()
    assert "hr" in caplog.text and not any(name in caplog.text for name in names)
    core = PulseCore(metrics)
    events = worked_example()
    core.apply(events + [msgspec.structs.replace(e, community_id=c, event_id=f"{c}-{e.event_id}")
                         for c in ("hr", "empty") for e in events])
    rows = {(r.community_id, r.window_days): r for r in core.snapshot(T)}
    for window in (7, 28):
        assert rows["hr", window].experts is rows["hr", window].expert_needed is None
        assert rows["it-support", window].experts is not None
        assert rows["empty", window].experts == 0 and rows["empty", window].expert_needed
