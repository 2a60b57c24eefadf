"""Merge suggestions, where to start and managers' follow-ups (SPEC 5): the worked
examples of docs/steering.md, the independent SQL oracle on random logs, the follow-up
state built alike per event and in bulk, sketches against the exact command, the CLI."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import Event
from streams.bulk import EventColumns, apply_columns
from streams.config import DAY_MS, ConfigError, MetricConfig
from streams.core import PulseCore
from streams.steering.files import read_managers
from streams.steering.focus import (
    Manager,
    focus_at,
    managers_of,
    open_followups,
)
from streams.steering.merges import (
    MemberSets,
    MemberSketch,
    estimate_merges,
    member_sets,
    suggest_merges,
)

try:
    from tests import test_core_properties as props
    from tests.oracle import oracle_snapshots
    from tests.oracle_steering_merges_focus import (
        oracle_focus,
        oracle_merges,
        oracle_open_followups,
    )
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    import test_core_properties as props  # type: ignore[no-redef]
    from oracle import oracle_snapshots  # type: ignore[no-redef]
    from oracle_steering_merges_focus import (  # type: ignore[no-redef]
        oracle_focus,
        oracle_merges,
        oracle_open_followups,
    )

from schemas.columnar import events_table

KEY = b"test-sketch-key"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


class Log:
    """Events for the worked examples, with ids made up as they are added."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, kind: str, community: str, user: str, when: str, **fields: str) -> None:
        self.events.append(Event(f"e{len(self.events)}", kind, community, user, ms(when),
                                 **fields))

    def join(self, community: str, users: str) -> None:
        for user in users:
            self.add("join", community, user, "2026-06-01T00:00")

    def post(self, community: str, user: str, when: str, post_id: str) -> None:
        self.add("post", community, user, when, post_id=post_id)

    def reply(self, community: str, user: str, when: str, post_id: str) -> None:
        self.add("reply", community, user, when, post_id=post_id, reply_id=f"r{len(self.events)}",
                 parent_id=post_id, parent_type="post")


# ---- the worked examples of docs/steering.md ---------------------------------------------

T = "2026-11-30T00:00"


def users(first: int, last: int) -> list[str]:
    """u01 ... u80: the users of the merge example, by number."""
    return [f"u{n:02d}" for n in range(first, last + 1)]


def merge_example() -> Log:
    log = Log()
    for community, members, contributors in (
            ("ipad-tips", users(1, 40), users(1, 5)),  # 40 members, 5 contribute: low
            ("ipad-apps", users(21, 50), users(34, 45)),  # 30 (20 shared with ipad-tips), 12
            ("mobile-help", users(1, 10) + users(51, 80), users(51, 55))):  # 40 (10 shared), 5
        for user in members:
            log.add("join", community, user, "2026-06-01T00:00")
        for user in contributors:
            log.post(community, user, "2026-11-20T09:00", f"{community}-{user}")
    return log


def test_worked_example_of_merge_suggestions() -> None:
    core = PulseCore(MetricConfig())
    core.apply(merge_example().events)
    t = ms(T)
    sets = member_sets(core.communities.values(), t, 28)
    rows = suggest_merges(sets, t, 28, core.config, min_group=5)
    got = [(r.community_id, r.candidate_id, r.shared_members, r.merged_members,
            r.merged_contributors, r.merged_tier) for r in rows]
    assert got == [
        ("ipad-tips", "ipad-apps", 20, 50, 17, "high"),
        ("ipad-tips", "mobile-help", 10, 70, 10, "low"),
        ("mobile-help", "ipad-tips", 10, 70, 10, "low"),
    ]
    assert [round(r.jaccard, 3) for r in rows] == [0.4, 0.143, 0.143]
    assert [round(r.merged_share, 3) for r in rows] == [0.34, 0.143, 0.143]
    # ipad-apps (12 of 30 contribute: high) gets no suggestions of its own; with a higher
    # bar only the iPad pair is left
    strict = suggest_merges(sets, t, 28, core.config, min_overlap=0.2, min_group=5)
    assert [(r.community_id, r.candidate_id) for r in strict] == [("ipad-tips", "ipad-apps")]


def followup_example() -> tuple[Log, list[Manager]]:
    log = Log()
    c = "ipad-apps"
    log.post(c, "mia", "2026-11-25T10:00", "p1")  # Mia asks; Bob answers: open
    log.reply(c, "bob", "2026-11-25T11:00", "p1")
    log.post(c, "ann", "2026-11-26T09:00", "p2")  # Mia answered last: not open
    log.reply(c, "mia", "2026-11-26T12:00", "p2")
    log.post(c, "ann", "2026-11-27T09:00", "p3")  # Ann came back, Mia answered again
    log.reply(c, "mia", "2026-11-27T10:00", "p3")
    log.reply(c, "ann", "2026-11-27T11:00", "p3")
    log.reply(c, "mia", "2026-11-27T12:00", "p3")
    log.post(c, "bob", "2026-10-10T09:00", "p4")  # nothing in the last 28 days
    log.reply(c, "mia", "2026-10-11T09:00", "p4")
    log.reply(c, "bob", "2026-10-12T09:00", "p4")
    log.post(c, "bob", "2026-11-28T09:00", "p5")  # Mia never took part
    log.reply(c, "cat", "2026-11-28T10:00", "p5")
    log.post(c, "mia", "2026-10-20T09:00", "p6")  # an old question of Mia's, answered now
    log.reply(c, "bob", "2026-11-29T09:00", "p6")
    # Two communities of practice (30% or more contribute), one too small, one low.
    for community, members, contributors in (("ipad-apps", 30, 12), ("sales-cop", 25, 10),
                                             ("tiny-cop", 10, 5), ("big-low", 40, 4)):
        users = [f"{community}-{i}" for i in range(members)]
        for user in users:
            log.add("join", community, user, "2026-06-01T00:00")
        for i, user in enumerate(users[:contributors]):
            log.post(community, user, f"2026-11-{24 + i % 5}T08:00", f"{community}-post-{i}")
    managers = [Manager("Mia", "mia", ("ipad-apps",)), Manager("Noor", "noor", ())]
    return log, managers


def test_worked_example_of_focus_and_followups() -> None:
    log, managers = followup_example()
    core = PulseCore(MetricConfig(windows_days=(28,)), managers_of(managers))
    core.apply(log.events)
    focus, followups = focus_at(core, managers, ms(T), 28, min_group=5)
    assert [(f.rank, f.community_id, f.members, f.contributors) for f in focus] == [
        (1, "ipad-apps", 34, 16), (2, "sales-cop", 25, 10)]
    assert [(m.manager, m.open_followups, m.ready_for_next, m.next_community)
            for m in followups] == [("Mia", 2, True, "sales-cop"), ("Noor", 0, True, "ipad-apps")]
    strict = focus_at(core, managers, ms(T), 28, max_open_followups=1, min_group=5)[1]
    assert strict[0].ready_for_next is False


# ---- the oracle on random logs -------------------------------------------------------------

MANAGERS = [Manager("Mia", "u1", ("c1", "c2")), Manager("Noor", "u2", ("c1",)),
            Manager("Olaf", "u3", ("ü/3", "nowhere")), Manager("Pim", "u4", ())]


def _fed(config: MetricConfig, events: list[Event], rnd: random.Random, bulk: bool,
         managers: list[Manager] | None = None) -> PulseCore:
    core = PulseCore(config, managers_of(managers or []))
    if bulk:
        apply_columns(core, EventColumns.from_table(events_table(events)))
    else:
        for batch in props._batches(events, rnd):
            core.apply(batch)
    return core


@pytest.mark.parametrize("config", props.CONFIGS, ids=props.CONFIG_IDS)
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), rnd=st.randoms(use_true_random=False), bulk=st.booleans(),
       min_overlap=st.sampled_from((0.1, 0.25, 0.5, 1.0)), top=st.integers(1, 3))
def test_merges_match_the_oracle_and_sketches_of_small_sets_are_exact(
        config: MetricConfig, data: st.DataObject, rnd: random.Random, bulk: bool,
        min_overlap: float, top: int) -> None:
    arrived = props._with_duplicates(data.draw(props.event_logs(config), label="events"), rnd)
    core = _fed(config, arrived, rnd, bulk)
    for t in props.AS_OFS:
        for window in config.windows_days:
            sets = member_sets(core.communities.values(), t, window)
            # (min_group 1: the oracle is SPEC 5 without the privacy rule)
            rows = suggest_merges(sets, t, window, config, min_overlap, top, min_group=1)
            expected = oracle_merges(arrived, t, window, config, min_overlap, top)
            assert [(r.community_id, r.candidate_id, r.shared_members, r.merged_members,
                     r.merged_contributors, r.merged_tier) for r in rows] == [
                (e["community_id"], e["candidate_id"], e["shared_members"],
                 e["merged_members"], e["merged_contributors"], e["merged_tier"])
                for e in expected]
            assert all(math.isclose(r.jaccard, e["jaccard"]) and
                       math.isclose(r.merged_share, e["merged_share"])
                       for r, e in zip(rows, expected, strict=True))
            sketches = [MemberSketch.of(s, KEY, size=4) for s in sets]  # <= 4 users
            assert estimate_merges(sketches, t, window, config, min_overlap, top,
                                   min_group=1) == rows


@pytest.mark.parametrize("config", props.CONFIGS, ids=props.CONFIG_IDS)
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), rnd=st.randoms(use_true_random=False), bulk=st.booleans(),
       expire_days=st.sampled_from((None, 0, 2, 40)))
def test_open_followups_and_focus_match_the_oracle(
        config: MetricConfig, data: st.DataObject, rnd: random.Random, bulk: bool,
        expire_days: int | None) -> None:
    arrived = props._with_duplicates(data.draw(props.event_logs(config), label="events"), rnd)
    core = _fed(config, arrived, rnd, bulk, MANAGERS)
    if expire_days is not None:  # then only snapshots from the cut + retention on are exact
        cut = props.AS_OFS[0] - expire_days * DAY_MS - config.retention_ms
        core.expire(cut)
    rows = oracle_snapshots(arrived, props.AS_OFS, config)
    follows = [(m.name, m.user_id, c) for m in MANAGERS for c in m.follows]
    for t in props.AS_OFS:
        if expire_days is not None and t < props.AS_OFS[0] - expire_days * DAY_MS:
            continue
        for window in config.windows_days:
            candidates, followups = focus_at(core, MANAGERS, t, window, min_members=1,
                                             min_group=1)
            expected = oracle_focus([r for r in rows if r["as_of_ms"] == t], window, 1)
            assert [c.community_id for c in candidates] == expected
            open_ = oracle_open_followups(arrived, follows, t, window, config.retention_ms)
            assert {m.manager: m.open_followups for m in followups} == {
                m.name: open_.get(m.name, 0) for m in MANAGERS}
            for m in followups:
                followed = next(x.follows for x in MANAGERS if x.name == m.manager)
                assert m.next_community == next(
                    (c for c in expected if c not in followed), None)
                assert m.ready_for_next == (m.open_followups <= 5)


@props.on_random_logs_with_expiry
def test_bulk_apply_keeps_the_same_followups_as_per_event_apply(
        config: MetricConfig, data: st.DataObject, rnd: random.Random,
        expire_days: int | None) -> None:
    arrived = props._with_duplicates(data.draw(props.event_logs(config), label="events"), rnd)
    split = rnd.randint(0, len(arrived))
    one_by_one = PulseCore(config, managers_of(MANAGERS))
    bulk = PulseCore(config, managers_of(MANAGERS))
    for core in (one_by_one, bulk):
        core.apply(arrived[:split])
        if expire_days is not None:
            core.expire(props.AS_OFS[0] - expire_days * DAY_MS)
    every = EventColumns.from_table(events_table(arrived))
    apply_columns(bulk, every.take(np.arange(split, len(arrived))))
    one_by_one.apply(arrived[split:])

    def followups(core: PulseCore) -> dict[str, Any]:
        return {cid: {p: list(e) for p, e in s.followups.items()}
                for cid, s in core.communities.items() if s.followups is not None}

    assert followups(bulk) == followups(one_by_one)
    assert set(followups(one_by_one)) <= {"c1", "c2", "ü/3"}  # followed ones only


def test_unfollowed_communities_keep_no_followup_state() -> None:
    core = PulseCore(MetricConfig(), managers_of([Manager("Mia", "mia", ("a",))]))
    log = Log()
    log.post("a", "bob", "2026-11-25T10:00", "p1")
    log.post("b", "bob", "2026-11-25T10:00", "p1")
    core.apply(log.events)
    assert core.communities["a"].followups and core.communities["b"].followups is None
    assert open_followups(core.communities["b"], "mia", ms(T), 28 * DAY_MS, 90 * DAY_MS) == 0


# ---- sketches against the exact suggestions ------------------------------------------------

def overlapping_communities(rng: random.Random, n: int, users: int) -> list[MemberSets]:
    """Families of similar communities: each draws most members from its family's pool."""
    sets = []
    for i in range(n):
        family = range((i // 4) * users, (i // 4) * users + users)
        size = rng.randint(users // 4, users)
        members = {f"user-{u}" for u in rng.sample(family, size)}
        members |= {f"user-{rng.randrange(10**6)}" for _ in range(size // 10)}
        contributors = {m for m in members if rng.random() < rng.choice((0.05, 0.2, 0.4))}
        sets.append(MemberSets(f"c{i:03d}", frozenset(members), frozenset(contributors)))
    return sets


def test_sketches_estimate_large_overlaps_closely() -> None:
    rng = random.Random(11)
    sets = overlapping_communities(rng, 24, 3000)
    config = MetricConfig()
    exact = suggest_merges(sets, 0, 28, config, min_overlap=0.05, top=10, min_group=1)
    sketches = [MemberSketch.of(s, KEY, size=1024) for s in sets]
    estimate = {(r.community_id, r.candidate_id): r
                for r in estimate_merges(sketches, 0, 28, config, min_overlap=0.05, top=10,
                                         min_group=1)}
    assert len(exact) > 20 and max(len(s.members) for s in sets) > 1024  # not all exact
    errors = [abs(estimate[r.community_id, r.candidate_id].jaccard - r.jaccard)
              for r in exact if (r.community_id, r.candidate_id) in estimate]
    assert len(errors) >= 0.9 * len(exact)
    # The bottom-k standard error is about sqrt(J (1 - J) / k) <= 0.016 for k = 1024.
    assert float(np.mean(errors)) < 0.02 and max(errors) < 0.08


# ---- the managers file and the command line ------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("managers: {}", "needs a list 'managers:'"),
    ("managers:\n  - user_id: u1\n", "manager #1: 'name' must be"),
    ("managers:\n  - {name: Mia, follows: [a]}\n", "manager 'Mia': 'user_id' must be"),
    ("managers:\n  - {name: Mia, user_id: u1, follows: a}\n", "manager 'Mia': 'follows'"),
    ("managers:\n  - {name: Mia, user_id: u1, email: x}\n", "unknown field(s) email"),
    ("managers:\n  - {name: Mia, user_id: u1}\n  - {name: Mia, user_id: u2}\n",
     "manager 'Mia': 'name' appears twice"),
    ("managers:\n  - {name: Mia, user_id: u1}\n  - {name: Noor, user_id: u1}\n",
     "manager 'Noor': 'user_id' appears twice"),
    ("managers: [\n", "is not valid YAML"),
])
def test_bad_managers_files_are_refused_naming_the_manager_and_field(
        tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "managers.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        read_managers(path)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def cli(*args: str | Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def example_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("steering")
    merges, follow = folder / "merges.jsonl", folder / "followups.jsonl"
    merges.write_bytes(b"\n".join(map(msgspec.json.encode, merge_example().events)) + b"\n")
    log, _ = followup_example()
    follow.write_bytes(b"\n".join(map(msgspec.json.encode, log.events)) + b"\n{broken\n")
    managers = folder / "managers.yaml"
    managers.write_text("managers:\n  - name: Mia\n    user_id: mia\n    follows: [ipad-apps]\n"
                        "  - {name: Noor, user_id: noor}\n")
    return {"merges": merges, "followups": follow, "managers": managers}


def test_suggest_merges_command_prints_and_writes_the_suggestions(
        example_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merges.parquet"
    done = cli("suggest-merges", example_files["merges"], "--as-of", "2026-11-30T00:00:00Z",
               "--out", out)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["community_id", "candidate_id", "jaccard", "shared_members",
                                "merged_members", "merged_contributors", "merged_share",
                                "merged_tier"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["ipad-tips", "ipad-apps"], ["ipad-tips", "mobile-help"], ["mobile-help", "ipad-tips"]]
    table = pq.read_table(out)
    assert table.column_names == ["community_id", "candidate_id", "as_of", "window_days",
                                  "jaccard", "shared_members", "merged_members",
                                  "merged_contributors", "merged_share", "merged_tier"]
    assert table["merged_members"].to_pylist() == [50, 70, 70]
    top1 = cli("suggest-merges", example_files["merges"], "--as-of", "2026-11-30T00:00:00Z",
               "--top", "1", "--min-overlap", "0.2")
    assert top1.stdout.splitlines()[1:] and len(top1.stdout.splitlines()) == 2
    none = tmp_path / "none.csv"
    cli("suggest-merges", example_files["merges"], "--as-of", "2026-11-30T00:00:00Z",
        "--min-overlap", "1", "--out", none)
    assert none.read_text().splitlines() == [",".join(f'"{c}"' for c in table.column_names)]


@pytest.mark.parametrize("pseudonymised", [False, True])
def test_focus_command_prints_candidates_and_followups_by_name_only(
        example_files: dict[str, Path], pseudonymised: bool) -> None:
    # With pseudonymised user ids, the managers' ids are hashed like the events' and meet.
    env = {"PULSE_PSEUDONYMISE_USER_IDS": "true",
           "PULSE_PSEUDONYM_KEY": "0123456789abcdef0123"} if pseudonymised else {}
    done = cli("focus", "--as-of", "2026-11-30T00:00:00Z", example_files["followups"],
               "--managers", example_files["managers"], env=env)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "1     ipad-apps" in text and "2     sales-cop" in text and "tiny-cop" not in text
    assert any(line.split() == ["Mia", "2", "True", "sales-cop"] for line in text.splitlines())
    assert "mia" not in text.replace("Mia", "")  # the user id never shows


@pytest.mark.parametrize("args", [
    ["suggest-merges", "{merges}", "--as-of", "yesterday"],
    ["suggest-merges", "{merges}"],
    ["suggest-merges", "{merges}", "--as-of", "2026-11-30T00:00:00Z", "--min-overlap", "0"],
    ["suggest-merges", "{merges}", "--as-of", "2026-11-30T00:00:00Z", "--top", "0"],
    ["suggest-merges", "{merges}", "--as-of", "2026-11-30T00:00:00Z", "--window", "0"],
    ["suggest-merges", "missing.jsonl", "--as-of", "2026-11-30T00:00:00Z"],
    ["focus", "{merges}", "--as-of", "2026-11-30T00:00:00Z", "--managers", "missing.yaml"],
    ["focus", "{merges}", "--as-of", "2026-11-30T00:00:00Z", "--managers", "{merges}"],
    ["focus", "{merges}", "--as-of", "2026-11-30T00:00:00Z", "--window", "400"],
])
def test_bad_steering_arguments_give_one_line_and_nonzero_exit(
        example_files: dict[str, Path], args: list[str]) -> None:
    done = cli(*(a.format(**example_files) for a in args))
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("community-pulse") and " error: " in done.stderr
