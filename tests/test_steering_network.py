"""The network-wide steering view: two workers, each owning some communities, write
their sketches and follow-up counts; the owner of partition 0 forms merge suggestions,
focus and managers' follow-ups from the shared data dir. Replay writes the same tables,
and with sketches that hold every member they equal the exact commands."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import msgspec
import pytest

from bench.steering_sketches import events as family_events
from schemas.events import Event
from schemas.producer import TOPIC_OF
from streams.config import MetricConfig, RuntimeConfig
from streams.core import PulseCore
from streams.replay import Steering, parse_time, replay
from streams.steering.files import read_managers
from streams.steering.focus import Manager, focus_at, managers_of
from streams.steering.merges import member_sets, suggest_merges
from streams.steering.network import SteeringSettings, community_inputs
from streams.worker import PulseWorker

try:
    from tests.test_steering_merges_focus import followup_example
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from test_steering_merges_focus import followup_example  # type: ignore[no-redef]

AS_OF = "2026-11-30T00:00:00Z"
T = parse_time(AS_OF)
TABLES = ("merge_suggestions", "focus", "manager_followups")
MANAGERS_YAML = """managers:
  - {name: Mia, user_id: mia, follows: [ipad-apps, fam00-c1]}
  - {name: Noor, user_id: u1-7, follows: [fam01-c0, fam01-c2, fam00-c0]}
  - {name: Olaf, user_id: olaf}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("network")
    log, _ = followup_example()
    events = [msgspec.structs.asdict(e) for e in log.events]
    events = [{k: v for k, v in e.items() if v is not None} for e in events]
    events += family_events(3, 4, 300, random.Random(2))  # sketches hold whole sets
    rng = random.Random(4)
    for i in range(300):  # Noor (u1-7) takes part in family 1's threads; others answer
        community = f"fam01-c{rng.randrange(4)}"
        post = f"p-{community}-u1-{rng.randrange(60)}"
        user = "u1-7" if i % 3 == 0 else f"u1-{rng.randrange(60)}"
        events.append({"event_id": f"x{i}", "type": "reply", "community_id": community,
                       "user_id": user, "post_id": post, "reply_id": f"x{i}",
                       "parent_id": post, "parent_type": "post",
                       "ts": T - rng.randrange(1, 20 * 86_400_000)})
    source = folder / "events.jsonl"
    source.write_bytes(b"\n".join(map(msgspec.json.encode, events)) + b"\n")
    managers = folder / "managers.yaml"
    managers.write_text(MANAGERS_YAML)
    return SimpleNamespace(folder=folder, events=events, source=source, managers=managers)


def live_pass(worker: PulseWorker, as_of: int) -> None:
    """A snapshot with its live rows, then a steering pass with its tables, as the
    worker's timers run them."""
    worker.write_rows(worker.take_snapshot())
    inputs: list[Any] = []
    for _ in worker.steering_steps(as_of, inputs):
        pass
    worker.publish_steering(as_of, inputs)


def batch_of(events: list[dict], partition: int) -> list[Any]:
    return [SimpleNamespace(message=SimpleNamespace(
        topic=TOPIC_OF[e["type"]], value=msgspec.json.encode(e), key=e["community_id"].encode(),
        partition=partition, offset=i, timestamp=T / 1000)) for i, e in enumerate(events)]


def tables(data_dir: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(data_dir / "pulse.duckdb"), read_only=True) as con:
        return {name: sorted(con.sql(f"SELECT * EXCLUDE (date) FROM {name}").fetchall(),
                             key=repr) for name in TABLES}


SKETCH_KEY = "network-test-sketch-key-0123456789"


@pytest.fixture
def sketch_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PULSE_SKETCH_KEY", SKETCH_KEY)
    return SKETCH_KEY


def test_two_workers_form_the_network_view_replay_writes_it_too_and_both_are_exact(
        setup: SimpleNamespace, tmp_path: Path, sketch_key: str) -> None:
    runtime = RuntimeConfig(data_dir=tmp_path / "live", managers_file=setup.managers)
    workers = [PulseWorker(MetricConfig(), runtime, clock=lambda: T / 1000) for _ in range(2)]
    for partition, worker in enumerate(workers):
        mine = [e for e in setup.events if hash(e["community_id"]) % 2 == partition]
        worker.handle_batch(batch_of(mine, partition))
        worker.partitions = {partition}
    assert all(w.core.communities for w in workers)
    for worker in reversed(workers):  # the follower first, then the owner of partition 0
        live_pass(worker, T)
    live = tables(tmp_path / "live")

    replay([setup.source], tmp_path / "replay", MetricConfig(), T, jobs=2,
           steering=Steering(SteeringSettings.of(runtime), read_managers(setup.managers)))
    assert tables(tmp_path / "replay") == live

    # Every member fits its sketch here, so the view equals the exact commands.
    managers = read_managers(setup.managers)
    core = PulseCore(MetricConfig(windows_days=(28,)), managers_of(managers))
    core.apply(msgspec.convert(e, type=Event) for e in setup.events)
    exact = suggest_merges(member_sets(core.communities.values(), T, 28), T, 28, core.config,
                           min_group=runtime.min_members_exported)
    assert len(exact) > 10
    assert [(r[0], r[1], r[4], r[5], r[6], r[7], r[9]) for r in
            sorted(live["merge_suggestions"], key=lambda r: (r[0], -r[4], -r[8], r[1]))] == [
        (r.community_id, r.candidate_id, r.jaccard, r.shared_members, r.merged_members,
         r.merged_contributors, r.merged_tier) for r in exact]
    focus, followups = focus_at(core, managers, T, 28, min_group=runtime.min_members_exported)
    assert sorted((r[1], r[2]) for r in live["focus"]) == [
        (f.rank, f.community_id) for f in focus]
    assert sorted((r[1], r[2], r[3], r[4]) for r in live["manager_followups"]) == [
        (m.manager, m.open_followups, m.ready_for_next, m.next_community) for m in followups]
    assert {m.manager: m.open_followups for m in followups}["Noor"] > 0  # spans both workers
    assert len(focus) >= 2 and {f.community_id for f in focus} >= {"ipad-apps", "sales-cop"}

    exported = workers[0].metrics.exposition().decode()
    assert "community_pulse_focus_rank{" in exported
    assert "community_pulse_merge_suggestion_jaccard{" in exported
    assert "community_pulse_focus_rank{" not in workers[1].metrics.exposition().decode()
    assert "mia" not in exported and "u1-7" not in exported  # manager ids never leave


@pytest.mark.parametrize("omit_from_parquet", [False, True])
def test_communities_under_the_privacy_threshold_write_no_steering_inputs(
        sketch_key: str, omit_from_parquet: bool) -> None:
    """Whatever parquet_omit_small_communities says: sketches and follow-up counts are
    about groups of people, and the threshold holds for them always."""
    log, managers = followup_example()
    managers = [*managers, Manager("Olaf", "olaf", ("tiny-cop",))]
    core = PulseCore(MetricConfig(), managers_of(managers))
    core.apply(log.events)
    runtime = RuntimeConfig(parquet_omit_small_communities=omit_from_parquet,
                            min_members_exported=26)
    sketches, counts = community_inputs(core.communities.values(), managers, T,
                                        SteeringSettings.of(runtime))
    assert sorted(sketches["community_id"].to_pylist()) == ["big-low", "ipad-apps"]
    assert counts["community_id"].to_pylist() == ["ipad-apps"]  # not tiny-cop (10)
    everything, counted = community_inputs(core.communities.values(), managers, T,
                                           SteeringSettings.of(RuntimeConfig()))
    assert everything.num_rows == 4 and sorted(counted["manager"].to_pylist()) == [
        "Mia", "Olaf"]


def test_without_a_sketch_key_no_sketch_and_no_merge_is_written(
        setup: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("PULSE_SKETCH_KEY", raising=False)
    runtime = RuntimeConfig(data_dir=tmp_path / "live", managers_file=setup.managers)
    worker = PulseWorker(MetricConfig(), runtime, clock=lambda: T / 1000)
    worker.handle_batch(batch_of(setup.events, 0))
    worker.partitions = {0}
    live_pass(worker, T)
    written = {p.name for p in (tmp_path / "live").iterdir()}
    assert {"focus", "manager_followups", "followup_counts"} <= written
    assert not {"member_sketches", "merge_suggestions"} & written
    replay([setup.source], tmp_path / "replay", MetricConfig(), T,
           steering=Steering(SteeringSettings.of(runtime), read_managers(setup.managers)))
    assert not {"member_sketches", "merge_suggestions"} & {
        p.name for p in (tmp_path / "replay").iterdir()}


@pytest.mark.parametrize("retention_days", [7, 0])
def test_the_owner_of_partition_0_prunes_old_member_sketches(
        setup: SimpleNamespace, tmp_path: Path, retention_days: int, sketch_key: str) -> None:
    runtime = RuntimeConfig(data_dir=tmp_path / "live", managers_file=setup.managers,
                            sketch_retention_days=retention_days)
    worker = PulseWorker(MetricConfig(), runtime, clock=lambda: T / 1000)
    worker.handle_batch(batch_of(setup.events, 0))
    worker.partitions = {0}
    days_back = [9, 8, 7, 1, 0]  # steering passes at these days before T (at noon)
    for days in days_back:
        as_of = T - days * 86_400_000 + 43_200_000
        inputs: list[Any] = []
        for _ in worker.steering_steps(as_of, inputs):
            pass
        worker.publish_steering(as_of, inputs)
    dates = {name: sorted(p.name for p in (tmp_path / "live" / name).iterdir())
             for name in ("member_sketches", "followup_counts")}
    written = [f"date={d}" for d in ("2026-11-21", "2026-11-22", "2026-11-23",
                                     "2026-11-29", "2026-11-30")]
    assert dates["followup_counts"] == written  # small: kept whatever the retention
    assert dates["member_sketches"] == (written[2:] if retention_days else written)
    assert worker.metrics.sink_errors.labels("steering")._value.get() == 0
    with duckdb.connect(str(tmp_path / "live" / "pulse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM member_sketches").fetchall()[0][0] > 0
