"""`make demo` (`community-pulse demo`) as a new user runs it, end to end, and what it
leaves: every query of docs/querying.md returns rows on its data (issue 13, points 3
and 6). The pieces without Kafka (clean start, "and N more", live patterns) are below."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import msgspec
import pyarrow as pa
import pytest

from devkit import generate as gen
from devkit.demo import MARKER, DemoError, cut, start_clean, steering_lines, summary
from devkit.devkafka import free_port
from devkit.generate import BAD_MESSAGES
from schemas.events import decode_message
from sinks.parquet import SnapshotWriter, rows_to_table
from streams.config import MetricConfig
from streams.core import PulseCore
from streams.replay import parse_time, replay

DOC = Path(__file__).parent.parent / "docs" / "querying.md"
NOW = "2026-11-18T12:00:00Z"
DEMO_SECONDS = 40  # the point is days of daily history at once, which needs no long run


def doc_queries() -> list[str]:
    """The documented queries, each with the statements it needs before it (a session of
    its own, as a user pasting it would have)."""
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)
    setup = [b for b in blocks if b.lstrip().upper().startswith("CREATE")]
    return ["".join(s for s in setup if s.split()[3] in b) + b
            for b in blocks if b not in setup]


@pytest.mark.kafka
def test_demo_from_a_fresh_directory_leaves_data_every_documented_query_answers(
        tmp_path: Path) -> None:
    data = tmp_path / "data" / "demo"
    # What an earlier run of another history left: it must not mix with this one.
    start_clean(data)
    SnapshotWriter(data).write_table(parse_time("2026-01-01T00:00:00Z"), stale_rows())
    (data / "run" / "kafka-1234-old").mkdir(parents=True)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--duration", str(DEMO_SECONDS),
         "--data-dir", "data/demo", "--metrics-port", str(free_port())],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    final = run.stdout.rsplit("community-pulse demo", 1)[-1]
    exported = re.search(r"communities exported: (\d+)", final)
    assert exported and int(exported.group(1)) > 0, final
    assert "creator, conversationalist or critic" in final
    assert 'community-pulse sql --data-dir data/demo "FROM latest_snapshots"' in final
    assert re.search(r"where to start \(communities of practice, best first\): 1\. ", final)
    counts = re.search(r"events consumed ([\d,]+)\s+processed ([\d,]+)\s+duplicates ([\d,]+)"
                       r"\s+dead-lettered ([\d,]+)", final)
    assert counts, final
    consumed, processed, duplicates, dead = (int(g.replace(",", "")) for g in counts.groups())
    assert dead == len(BAD_MESSAGES) and processed > 0 and duplicates > 0
    assert consumed >= processed + duplicates + dead  # read at one scrape, mid-batch at most

    with duckdb.connect(str(data / "pulse.duckdb"), read_only=True) as db:
        ids = {r[0] for r in db.sql("SELECT DISTINCT community_id FROM snapshots").fetchall()}
        days = db.sql("SELECT count(DISTINCT date) FROM snapshots").fetchall()[0][0]
    assert len(ids) == 60 and not any(i.startswith("stale") for i in ids)
    assert days >= 28
    # The example goals (deploy/examples/goals.yml, moved to now): status lines, and the
    # goals table from the worker's closing rows of the history's days and its snapshots.
    assert re.search(r"^goals: 4$", final, re.M), final
    assert len(re.findall(r"^  goal \S+ +(on_track|behind) ", final, re.M)) == 4, final
    with duckdb.connect(str(data / "pulse.duckdb"), read_only=True) as db:
        goals = db.sql("SELECT count(DISTINCT goal_id), count(DISTINCT date) FROM goals")
        assert goals.fetchall() == [(4, days)]
    for sql in doc_queries():  # as the doc says to run them
        result = subprocess.run(
            [sys.executable, "-m", "streams.cli", "sql", "--data-dir", "data/demo"],
            input=sql, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        shown = re.search(r"^([\d,]+) row\(s\)$", result.stdout, re.M)
        assert shown and int(shown.group(1).replace(",", "")) > 0, sql + result.stdout

    assert [p.name for p in (data / "run").iterdir()] == ["worker.log"]  # no broker data
    log = (data / "run" / "worker.log").read_bytes()
    assert b"\x1b" not in log, log[:300]
    assert not list(scratch.iterdir())  # the worker's Faust scratch folder went with it


def stale_rows() -> pa.Table:
    """A snapshot of a community that this demo's history does not have."""
    core = PulseCore(MetricConfig())
    post = (b'{"event_id":"s1","type":"post","community_id":"stale-x","user_id":"u",'
            b'"ts":"2025-12-31T12:00:00Z","post_id":"p"}')
    core.apply(decode_message(post, frozenset({"post"}), parse_time(NOW))[0])
    return rows_to_table(core.snapshot(parse_time("2026-01-01T00:00:00Z")))


def test_start_clean_empties_a_demo_folder_and_refuses_any_other(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    start_clean(demo)
    (demo / "snapshots" / "date=2026-01-01").mkdir(parents=True)
    (demo / "run" / "kafka-1-x").mkdir(parents=True)
    start_clean(demo)
    assert sorted(p.name for p in demo.iterdir()) == [MARKER]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DemoError, match="choose another --data-dir"):
        start_clean(other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_cut_lists_say_how_many_more_there_are() -> None:
    assert cut(["a", "b"], 4) == "a, b"
    assert cut([str(i) for i in range(10)], 4) == "0, 1, 2, 3, and 6 more"
    samples = {"community_pulse_tier": [({"community": f"c{i}", "window": "28d"}, 2.0)
                                        for i in range(9)],
               "community_pulse_sustainability_score": [
                   ({"community": f"c{i}", "window": "28d"}, 50.0) for i in range(9)],
               "community_pulse_stagnating": [({"community": f"c{i}"}, 1.0)
                                              for i in range(9)]}
    text = summary(samples, 10)
    assert "and 5 more" in text and "stagnating: 9" in text and "and 3 more" in text


def test_live_events_keep_declining_and_quiet_communities_as_they_were() -> None:
    """Two minutes of live traffic at the demo's rate on top of the history: communities
    that were stagnating at the end of the history still are (they recovered within
    ~30 s when the live generator ignored the profiles)."""
    rng = random.Random(7)
    now = parse_time(NOW)
    communities = gen.plan(20, 400, rng)
    events = [e for c in communities for e in gen.history(c, now, 35, rng)]
    before = stagnating(events, now)
    live = [e for second in range(120) for e in gen.live_events(
        communities, now + second * 1000, 200, rng, second * 200)]
    after = stagnating(events + live, now + 120_000)
    declining = {c.community_id for c in communities if c.profile.name == "declining"}
    assert before & declining  # the history makes them stagnate ...
    assert before <= after  # ... and the live minutes change nothing about it
    busiest = max(communities, key=lambda c: len(c.members) * c.profile.posts_per_member_day)
    per_community = {c.community_id: 0 for c in communities}
    for e in live:
        per_community[e["community_id"]] += 1
    assert max(per_community, key=lambda c: per_community[c]) in (
        busiest.community_id, *[c.community_id for c in communities
                                if c.profile.name == "healthy"])
    assert all(per_community[c.community_id] == 0 for c in communities
               if c.profile.quiet_last_days)


def stagnating(events: list[dict], as_of: int) -> set[str]:
    with tempfile.TemporaryDirectory(prefix="pulse-test-") as folder:
        source = Path(folder) / "events.jsonl"
        source.write_bytes(b"\n".join(msgspec.json.encode(e) for e in events))
        replay([source], Path(folder) / "out", MetricConfig(), as_of_ms=as_of)
        with duckdb.connect(str(Path(folder) / "out" / "pulse.duckdb"), read_only=True) as db:
            rows = db.sql("SELECT community_id FROM snapshots WHERE stagnating "
                          "AND window_days = 28").fetchall()
    return {r[0] for r in rows}


def test_a_merge_pair_suggested_from_both_sides_is_shown_once() -> None:
    def pair(a: str, b: str, jaccard: float) -> tuple[dict[str, str], float]:
        return {"community": a, "candidate": b}, jaccard

    lines = steering_lines({"community_pulse_merge_suggestion_jaccard": [
        pair("low-2", "medium-37", 0.13), pair("medium-37", "low-2", 0.13),
        pair("low-5", "low-9", 0.4), pair("low-9", "low-5", 0.4), pair("low-5", "low-2", 0.1)]})
    assert lines[1].endswith(": low-5 + low-9 (40% shared), low-2 + medium-37 (13% shared), "
                             "low-5 + low-2 (10% shared)")
