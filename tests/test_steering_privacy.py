"""The privacy of the steering outputs (docs/security.md#small-groups and
#member-sketches): member sketches cannot be probed with a known user id, and no output
that describes a group of people describes 1 to k-1 of them (k = min_members_exported):
the membership attack of the audit, each output of security.md's table on small
communities and on a one-person difference, and a property test of the merge
suggestions against an attacker who knows every published row."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import config as config_module
from streams.config import ConfigError, MetricConfig, RuntimeConfig
from streams.privacy import sketch_key
from streams.replay import Steering, parse_time, replay
from streams.steering.focus import Manager
from streams.steering.merges import (
    MemberSets,
    MemberSketch,
    MergeSuggestion,
    estimate_merges,
    suggest_merges,
    user_hashes,
)
from streams.steering.network import SteeringSettings
from streams.worker import PulseWorker
from tests.test_steering_network import batch_of, live_pass

ROOT = Path(__file__).resolve().parent.parent
AS_OF = "2026-11-30T00:00:00Z"
T = parse_time(AS_OF)
DAY = 86_400_000
K = RuntimeConfig().min_members_exported  # 5
ALICE = "alice@corp.example"
PUBLIC_DEFAULT_KEY = b"community-pulse"  # the sketch key every install had before
SECRET = "a-sketch-secret-of-the-deployment-0123456789"


class Events:
    """Joins, posts and replies, with ids made up as they are added."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def add(self, kind: str, community: str, user: str, days_before: float,
            **fields: str) -> None:
        self.events.append({"event_id": f"e{len(self.events)}", "type": kind,
                            "community_id": community, "user_id": user,
                            "ts": T - int(days_before * DAY), **fields})

    def community(self, name: str, members: Iterable[str], contributors: Iterable[str] = ()
                  ) -> None:
        for user in members:
            self.add("join", name, user, 60)
        for user in contributors:
            self.add("post", name, user, 3, post_id=f"p-{name}-{user}")

    def thread(self, community: str, manager: str, other: str) -> None:
        """A thread where `other` answered the manager: an open follow-up."""
        post = f"t-{community}-{len(self.events)}"
        self.add("post", community, manager, 2, post_id=post)
        self.add("reply", community, other, 1, post_id=post, reply_id=f"r{len(self.events)}",
                 parent_id=post, parent_type="post")

    def write(self, path: Path) -> Path:
        path.write_bytes(b"\n".join(map(msgspec.json.encode, self.events)) + b"\n")
        return path


def users(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(n)]


def parquet_values(data_dir: Path) -> dict[str, list[Any]]:
    """Every value of every Parquet file under data_dir, lists flattened, by table."""
    found: dict[str, list[Any]] = {}
    for path in data_dir.rglob("*.parquet"):
        table = pq.read_table(path)
        values = found.setdefault(path.relative_to(data_dir).parts[0], [])
        for column in table.columns:
            while pa.types.is_list(column.type):
                column = pa.chunked_array([c.flatten() for c in column.chunks], column.type
                                          .value_type)
            values.extend(column.to_pylist())
    return found


# ---- the membership oracle -----------------------------------------------------------------

def membership_example() -> Events:
    log = Events()
    for c in range(4):  # alice in communities 0 and 2, contributing in 0
        members = users(f"m{c}-", 30) + ([ALICE] if c % 2 == 0 else [])
        log.community(f"team-{c}", members, members[:3] + ([ALICE] if c == 0 else []))
    return log


def attack(data_dir: Path, key: bytes) -> list[str]:
    """The audit's attack: hash a known user id with a key, look it up everywhere."""
    (wanted,) = user_hashes([ALICE], key).tolist()
    return [table for table, values in parquet_values(data_dir).items() if wanted in values]


def test_the_membership_attack_finds_nothing_with_the_default_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PULSE_SKETCH_KEY", raising=False)
    source = membership_example().write(tmp_path / "events.jsonl")
    runtime = RuntimeConfig()  # the defaults: no sketch key is set
    replay([source], tmp_path / "default", MetricConfig(), T,
           steering=Steering(SteeringSettings.of(runtime)))
    assert (tmp_path / "default" / "snapshots").is_dir()
    assert not (tmp_path / "default" / "member_sketches").exists()
    for key in (PUBLIC_DEFAULT_KEY, b""):
        assert attack(tmp_path / "default", key) == []

    # With a secret, sketches are written, and a known key finds nothing in them ...
    monkeypatch.setenv("PULSE_SKETCH_KEY", SECRET)
    replay([source], tmp_path / "keyed", MetricConfig(), T,
           steering=Steering(SteeringSettings.of(RuntimeConfig())))
    assert (tmp_path / "keyed" / "member_sketches").is_dir()
    for key in (PUBLIC_DEFAULT_KEY, b"", SECRET.encode()):
        assert attack(tmp_path / "keyed", key) == []
    # ... while the deployment's own key does: the attack itself works.
    derived = sketch_key(RuntimeConfig())
    assert derived is not None and attack(tmp_path / "keyed", derived) == ["member_sketches"]
    with duckdb.connect() as con:
        found = con.sql(f"""SELECT community_id FROM read_parquet(
            '{tmp_path}/keyed/member_sketches/*/*.parquet') WHERE list_contains(
            member_hashes, {user_hashes([ALICE], derived)[0]}) ORDER BY 1""").fetchall()
    assert found == [("team-0",), ("team-2",)]


def test_sketch_keys_of_any_length_from_16_bytes(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {}
    for secret in ("s" * 16, "long-" * 40, "ü" * 100):  # 16, 200 and 200 bytes
        monkeypatch.setenv("PULSE_SKETCH_KEY", secret)
        keys[secret] = sketch_key(RuntimeConfig())
    assert all(key is not None and len(key) == 64 for key in keys.values())
    assert len(set(keys.values())) == 3
    key_file = tmp_path / "sketch.key"
    key_file.write_text("long-" * 40 + "\n")
    monkeypatch.delenv("PULSE_SKETCH_KEY")
    assert sketch_key(RuntimeConfig(sketch_key_file=key_file)) == keys["long-" * 40]
    assert sketch_key(RuntimeConfig()) is None  # no secret: no sketches
    monkeypatch.setenv("PULSE_SKETCH_KEY", "too-short")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        sketch_key(RuntimeConfig())


def test_the_sketch_key_is_a_secret_not_a_setting(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "pulse.toml"
    toml.write_text('[runtime]\nsketch_key = "in-a-settings-file"\n')
    with pytest.raises(ConfigError) as refused:
        config_module.load(toml)
    assert str(refused.value) == (
        f"config {toml}: [runtime] sketch_key: no longer a setting: put the secret in "
        "PULSE_SKETCH_KEY or in the file that sketch_key_file names (docs/security.md)")
    assert SECRET not in repr(SteeringSettings(sketch_key=SECRET.encode()))


def cli(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    return subprocess.run([sys.executable, "-m", "streams.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**clean, **env})


def test_replay_says_in_one_line_that_sketches_are_off_and_refuses_a_short_key(
        tmp_path: Path) -> None:
    source = membership_example().write(tmp_path / "events.jsonl")
    off = cli("replay", source, "--data-dir", tmp_path / "off", "--as-of", AS_OF, env={})
    assert off.returncode == 0, off.stderr
    assert off.stderr.splitlines() == [
        "community-pulse: note: no sketch key (PULSE_SKETCH_KEY or sketch_key_file): no member "
        "sketches and no merge suggestions are written (docs/security.md#member-sketches)"]
    short = cli("replay", source, "--data-dir", tmp_path / "short", "--as-of", AS_OF,
                env={"PULSE_SKETCH_KEY": "short"})
    assert short.returncode == 2 and len(short.stderr.splitlines()) == 1, short.stderr
    assert "sketch key must have at least 16 bytes" in short.stderr and "short\n" not in (
        short.stderr.replace("community-pulse", ""))


# ---- small groups in every steering output --------------------------------------------------

SMALL = {"solo": 1, "duo": 2, f"group-of-{K - 1}": K - 1}


def small_groups_example() -> tuple[Events, list[Manager]]:
    """Communities of 1, 2 and k-1 members (all contributing: tier high) whose members are
    members of a large one; the audit's `low-b` (7 members, one contributor) that shares
    solo's member; twins that differ by one person; a manager, Mia, who follows them all
    and has an open follow-up in each but solo (a thread needs two people)."""
    log = Events()
    big = users("big-", 40)
    log.community("big-cop", [*big, "mia"], big[:15])  # high, large
    log.thread("big-cop", "mia", "big-01")
    log.community("solo", ["big-00"], ["big-00"])
    for name, others in (("duo", big[1:2]), (f"group-of-{K - 1}", big[2:K])):
        log.community(name, ["mia", *others], others)
        log.thread(name, "mia", others[0])
    log.community("low-b", ["big-00", *users("b-", 6)], ["b-00"])  # 1 of 7: low
    twin = users("twin-", 10)
    log.community("twin-a", twin)  # 10 members, nobody contributes: low
    log.community("twin-b", twin[:9])  # 9 of them
    m = users("m", 51)  # and the worked example of docs/steering.md: a suggestion that is out
    log.community("ipad-tips", m[1:41], m[1:6])
    log.community("ipad-apps", m[21:51], m[34:46])
    return log, [Manager("Mia", "mia", (*SMALL, "big-cop"))]


MANAGERS_YAML = f"""managers:
  - {{name: Mia, user_id: mia, follows: [{", ".join([*SMALL, "big-cop"])}]}}
"""


def tables(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    with duckdb.connect(str(data_dir / "pulse.duckdb"), read_only=True) as con:
        for (name,) in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal"
                               ).fetchall():
            table = con.sql(f"SELECT * FROM {name}").to_arrow_table()
            out[name] = table.to_pylist()
    return out


@pytest.mark.parametrize("omit_from_parquet", [True, False])
def test_no_steering_output_describes_a_small_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, omit_from_parquet: bool) -> None:
    monkeypatch.setenv("PULSE_SKETCH_KEY", SECRET)
    log, _ = small_groups_example()
    source = log.write(tmp_path / "events.jsonl")
    managers = tmp_path / "managers.yaml"
    managers.write_text(MANAGERS_YAML)
    runtime = RuntimeConfig(data_dir=tmp_path / "live", managers_file=managers,
                            focus_min_members=1,  # the threshold, not this, keeps them out
                            parquet_omit_small_communities=omit_from_parquet)
    worker = PulseWorker(MetricConfig(), runtime, clock=lambda: T / 1000)
    worker.handle_batch(batch_of(log.events, 0))
    worker.partitions = {0}
    live_pass(worker, T)
    steering = Steering(SteeringSettings.of(runtime), worker.managers)
    replay([source], tmp_path / "replay", MetricConfig(), T, steering=steering,
           parquet_min_members=K if omit_from_parquet else 0)

    steering_tables = ("member_sketches", "followup_counts", "merge_suggestions", "focus",
                       "manager_followups")
    for data_dir in (tmp_path / "live", tmp_path / "replay"):
        found = tables(data_dir)
        assert set(steering_tables) <= set(found)
        named = {table: {v for row in rows for k, v in row.items()
                         if k in ("community_id", "candidate_id", "next_community")}
                 for table, rows in found.items()}
        for table in steering_tables:
            assert not set(SMALL) & named[table], (table, named[table])
        assert (set(SMALL) <= named["snapshots"]) is not omit_from_parquet
        # the audit's rows: low-b -> solo (shared 1), twin-a -> twin-b (shared 9, merged 10)
        pairs = {(r["community_id"], r["candidate_id"]) for r in found["merge_suggestions"]}
        assert pairs == {("ipad-tips", "ipad-apps")}  # not low-b/solo, not the twins
        assert {"twin-a", "twin-b", "low-b"} <= {r["community_id"]
                                                 for r in found["member_sketches"]}
        # Mia's open follow-ups: only big-cop's thread counts, not the small ones'
        assert [(r["manager"], r["open_followups"]) for r in found["manager_followups"]] == [
            ("Mia", 1)]
        assert {r["community_id"] for r in found["focus"]} == {"big-cop", "ipad-apps"}
        low_b = next(r for r in found["member_sketches"] if r["community_id"] == "low-b")
        assert (low_b["contributors"], low_b["contributor_hashes"]) == (1, [])  # withheld
    exported = worker.metrics.exposition().decode()
    assert "community_pulse_focus_rank{" in exported
    assert not any(f'"{name}"' in exported for name in SMALL)


def test_the_same_outputs_without_the_threshold_would_show_the_small_groups(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the test above: with k = 1 (no threshold) the example does give
    the audit's rows, so their absence there is the threshold's doing."""
    monkeypatch.setenv("PULSE_SKETCH_KEY", SECRET)
    log, managers = small_groups_example()
    source = log.write(tmp_path / "events.jsonl")
    runtime = RuntimeConfig(min_members_exported=1, focus_min_members=1)
    replay([source], tmp_path / "all", MetricConfig(), T,
           steering=Steering(SteeringSettings.of(runtime), managers))
    found = tables(tmp_path / "all")
    rows = {(r["community_id"], r["candidate_id"]): r for r in found["merge_suggestions"]}
    assert (rows["low-b", "solo"]["shared_members"], rows["low-b", "solo"][
        "merged_contributors"]) == (1, 2)
    assert (rows["twin-a", "twin-b"]["shared_members"],
            rows["twin-a", "twin-b"]["merged_members"]) == (9, 10)
    assert set(SMALL) <= {r["community_id"] for r in found["focus"]}
    assert set(SMALL) <= {r["community_id"] for r in found["followup_counts"]}
    assert found["manager_followups"][0]["open_followups"] == 3  # duo, group-of-4 too


# ---- merge suggestions against an attacker who knows every published row --------------------

# The cells of a pair's Venn diagram: (member of A, of B, contributor to A, to B).
CELLS = [c for c in itertools.product((0, 1), repeat=4)
         if any(c) and (c[0] or not c[2]) and (c[1] or not c[3])]


def _published_indicators() -> np.ndarray:
    def of(test: Any) -> list[int]:
        return [int(bool(test(*c))) for c in CELLS]

    return np.array([of(lambda a, b, ca, cb: a), of(lambda a, b, ca, cb: b),
                     of(lambda a, b, ca, cb: ca), of(lambda a, b, ca, cb: cb),
                     of(lambda a, b, ca, cb: a and b), of(lambda a, b, ca, cb: a or b),
                     of(lambda a, b, ca, cb: ca or cb)])


def _derivable() -> list[tuple[int, ...]]:
    """The groups (unions of cells) an attacker gets by adding and subtracting a row's
    counts and its communities' counts, at most twice each: found by trying all such
    sums, not by the product's linear algebra. Those of one community's counts alone
    are the snapshot rows' business."""
    published = _published_indicators()
    sums = np.array(list(itertools.product(range(-2, 3), repeat=7)))

    def groups(rows: np.ndarray, coefficients: np.ndarray) -> set[tuple[int, ...]]:
        made = coefficients @ rows
        ok = np.all((made == 0) | (made == 1), axis=1) & made.any(axis=1)
        return {tuple(v) for v in made[ok].tolist()}

    own = groups(published[[0, 2]], sums[:, :2]) | groups(published[[1, 3]], sums[:, :2])
    return sorted(groups(published, sums) - own)


DERIVABLE = _derivable()


def _cell(user: str, a: MemberSets, b: MemberSets) -> tuple[int, ...]:
    return (int(user in a.members), int(user in b.members), int(user in a.contributors),
            int(user in b.contributors))


def leaks(rows: Sequence[MergeSuggestion], sets: dict[str, MemberSets], k: int) -> list[str]:
    """Every count of 1 to k-1 people the published rows give away: a row's own counts and
    any group they give with the two communities' member and contributor counts; across
    rows, |S - T| of published groups S > T and |S n T| of published S, T and S u T
    (groups of communities' own counts among themselves excepted: snapshots publish
    those)."""
    found: list[str] = []
    own: set[frozenset[str]] = set()
    derived: set[frozenset[str]] = set()
    for r in rows:
        a, b = sets[r.community_id], sets[r.candidate_id]
        assert (r.shared_members, r.merged_members, r.merged_contributors) == (
            len(a.members & b.members), len(a.members | b.members),
            len(a.contributors | b.contributors))
        if min(len(a.members), len(b.members)) < k:
            found.append(f"{r.community_id}/{r.candidate_id}: a side below k")
        cells = {c: 0 for c in CELLS}
        for user in a.members | b.members:
            cells[_cell(user, a, b)] += 1
        for group in DERIVABLE:
            n = sum(cells[c] for c, inside in zip(CELLS, group, strict=True) if inside)
            if 0 < n < k:
                found.append(f"{r.community_id}/{r.candidate_id}: {group} has {n}")
        own.update((a.members, a.contributors, b.members, b.contributors))
        derived.update((a.members & b.members, a.members | b.members,
                        a.contributors | b.contributors))
    groups = {g: g in own for g in own | derived if g}
    for (s, s_own), (t, t_own) in itertools.permutations(groups.items(), 2):
        if t < s and 0 < len(s - t) < k and not (s_own and t_own):
            found.append(f"nested groups of {len(s)} and {len(t)}")
        union = s | t
        if union in groups and 0 < len(s & t) < k and not (
                s_own and t_own and groups[union]):
            found.append(f"groups of {len(s)} and {len(t)} and their union")
    return found


@st.composite
def communities(draw: st.DrawFn) -> list[MemberSets]:
    """Communities made of blocks of users (0 to 12 each, so some differences are small
    and some are not) and a few loose users, with contributors among their members."""
    blocks = [users(f"b{i}-", n) for i, n in enumerate(draw(
        st.lists(st.integers(0, 12), min_size=2, max_size=7)))]
    loose = users("x-", 6)
    out = []
    for c in range(draw(st.integers(2, 6))):
        chosen = draw(st.sets(st.integers(0, len(blocks) - 1), min_size=1))
        members = {u for i in chosen for u in blocks[i]}
        members |= set(draw(st.sets(st.sampled_from(loose), max_size=3)))
        contributing = draw(st.sets(st.sampled_from(sorted(chosen))))
        contributors = {u for i in contributing for u in blocks[i]}
        loose_contributors: bool = draw(st.booleans())
        if members and loose_contributors:
            contributors |= set(draw(st.sets(st.sampled_from(sorted(members)), max_size=2)))
        out.append(MemberSets(f"c{c}", frozenset(members), frozenset(contributors)))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sets=communities(), k=st.sampled_from((2, 3, 5)), top=st.integers(1, 3),
       min_overlap=st.sampled_from((0.05, 0.1, 0.3)))
def test_no_published_merge_count_or_difference_singles_out_fewer_than_k(
        sets: list[MemberSets], k: int, top: int, min_overlap: float) -> None:
    config = MetricConfig()
    rows = suggest_merges(sets, T, 28, config, min_overlap, top, min_group=k)
    by_id = {s.community_id: s for s in sets}
    assert leaks(rows, by_id, k) == []
    # The sketch path (every set whole in its sketch) publishes the very same rows.
    sketches = [MemberSketch.of(s, b"k" * 32, size=1024) for s in sets]
    assert estimate_merges(sketches, T, 28, config, min_overlap, top, min_group=k) == rows
    # Withheld rows only: what is published is what SPEC 5 computes, best first.
    every = {(r.community_id, r.candidate_id): r for r in suggest_merges(
        sets, T, 28, config, min_overlap, top=len(sets), min_group=1)}
    assert all(every[r.community_id, r.candidate_id] == r for r in rows)
    for _, mine in itertools.groupby(rows, key=lambda r: r.community_id):
        ranked = list(mine)
        assert len(ranked) <= top
        assert ranked == sorted(ranked, key=lambda r: (-r.jaccard, -r.merged_share,
                                                       r.candidate_id))


def test_the_attacker_finds_the_audit_s_leaks_in_unguarded_suggestions() -> None:
    """The attacker above is not toothless: without the threshold (k = 1) the audit's
    cases leak, with it nothing is published for them."""
    twins = [MemberSets("twin-a", frozenset(users("t", 10)), frozenset()),
             MemberSets("twin-b", frozenset(users("t", 9)), frozenset())]
    solo = [MemberSets("low-b", frozenset(["s00", *users("b", 6)]), frozenset(["b00"])),
            MemberSets("solo", frozenset(["s00"]), frozenset(["s00"]))]
    # b is inside a (shared 20 = b's members), and both share with c: |a n c| - |b n c|
    # is two people (of a, not of b, in c), though each pair alone gives nothing away.
    a = users("u", 30)
    nested = [MemberSets("a", frozenset(a), frozenset()),
              MemberSets("b", frozenset(a[:20]), frozenset()),
              MemberSets("c", frozenset([*a[5:22], *users("v", 20)]), frozenset())]
    for sets in (twins, solo, nested):
        by_id = {s.community_id: s for s in sets}
        unguarded = suggest_merges(sets, T, 28, MetricConfig(), top=3, min_group=1)
        assert leaks(unguarded, by_id, K), [s.community_id for s in sets]
        guarded = suggest_merges(sets, T, 28, MetricConfig(), top=3, min_group=K)
        assert leaks(guarded, by_id, K) == []
    assert suggest_merges(twins + solo, T, 28, MetricConfig(), min_group=K) == []
    kept = suggest_merges(nested, T, 28, MetricConfig(), top=3, min_group=K)
    assert {(r.community_id, r.candidate_id) for r in kept} == {  # (a, c) is held back
        ("a", "b"), ("b", "a"), ("b", "c"), ("c", "b")}


def test_the_rule_is_written_out_in_the_security_docs() -> None:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    for needed in ("min_members_exported", "member_sketches", "merge_suggestions", "focus",
                   "followup_counts", "manager_followups", "expert_replies", "PULSE_SKETCH_KEY"):
        assert needed in text, needed
