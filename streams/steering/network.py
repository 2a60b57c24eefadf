"""The whole-network steering view: merge suggestions, where to start, managers'
follow-ups, formed from what each worker knows about its own communities.

Communities live on different workers (partitioned by community), but merge suggestions
compare every community with every other, focus ranks them all, and a manager may
follow communities on several workers. No new distributed mechanism and no user id
leaving a process: each worker writes, next to its snapshots, two small tables about its
own communities (`community_inputs`):

- `member_sketches`: per community, the exact member and contributor counts and a
  bottom-k sketch of each set (keyed hashes, `streams.steering.merges.MemberSketch`;
  only with a secret sketch key);
- `followup_counts`: per (manager name, followed community) its open follow-ups;

both only for communities of at least the privacy threshold (`SteeringSettings.min_group`,
`streams.steering.disclosure`); and the whole-network tables are a function of those
tables and the snapshots of one moment (`network_tables`). Who computes it, when: see
`sinks.network`. Pure: Arrow tables in, Arrow tables out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sinks.parquet import records_table
from streams.config import DAY_MS, MetricConfig, RuntimeConfig
from streams.core import CommunityState
from streams.privacy import sketch_key
from streams.steering.disclosure import small
from streams.steering.focus import (
    Manager,
    focus_candidates,
    manager_followups,
    open_followups_by_manager,
)
from streams.steering.merges import MemberSketch, check_arguments, estimate_merges, member_sets

TIME = pa.timestamp("ms", tz="UTC")
HASHES = pa.list_(pa.uint64())
SKETCH_SCHEMA = pa.schema([
    pa.field("community_id", pa.string(), nullable=False),
    pa.field("as_of", TIME, nullable=False),
    pa.field("window_days", pa.int32(), nullable=False),
    pa.field("members", pa.int64(), nullable=False),
    pa.field("contributors", pa.int64(), nullable=False),
    pa.field("member_hashes", HASHES, nullable=False),
    pa.field("contributor_hashes", HASHES, nullable=False),
])
FOLLOWUP_COUNTS_SCHEMA = pa.schema([
    pa.field("as_of", TIME, nullable=False),
    pa.field("manager", pa.string(), nullable=False),
    pa.field("community_id", pa.string(), nullable=False),
    pa.field("open_followups", pa.int64(), nullable=False),
])
MERGE_SCHEMA = pa.schema([
    pa.field("community_id", pa.string(), nullable=False),
    pa.field("candidate_id", pa.string(), nullable=False),
    pa.field("as_of", TIME, nullable=False),
    pa.field("window_days", pa.int32(), nullable=False),
    pa.field("jaccard", pa.float64(), nullable=False),
    pa.field("shared_members", pa.int64(), nullable=False),
    pa.field("merged_members", pa.int64(), nullable=False),
    pa.field("merged_contributors", pa.int64(), nullable=False),
    pa.field("merged_share", pa.float64(), nullable=False),
    pa.field("merged_tier", pa.string(), nullable=False),
])
FOCUS_SCHEMA = pa.schema([
    pa.field("as_of", TIME, nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("community_id", pa.string(), nullable=False),
    pa.field("members", pa.int64(), nullable=False),
    pa.field("contributors", pa.int64(), nullable=False),
    pa.field("contributor_share", pa.float64(), nullable=False),
    pa.field("sustainability", pa.float64(), nullable=False),
])
MANAGER_FOLLOWUPS_SCHEMA = pa.schema([
    pa.field("as_of", TIME, nullable=False),
    pa.field("manager", pa.string(), nullable=False),
    pa.field("open_followups", pa.int64(), nullable=False),
    pa.field("ready_for_next", pa.bool_(), nullable=False),
    pa.field("next_community", pa.string()),
])
SCHEMAS = {"member_sketches": SKETCH_SCHEMA, "followup_counts": FOLLOWUP_COUNTS_SCHEMA,
           "merge_suggestions": MERGE_SCHEMA, "focus": FOCUS_SCHEMA,
           "manager_followups": MANAGER_FOLLOWUPS_SCHEMA}


SKETCHES_OFF = ("no sketch key (PULSE_SKETCH_KEY or sketch_key_file): no member sketches "
                "and no merge suggestions are written (docs/security.md#member-sketches)")


@dataclass(frozen=True)
class SteeringSettings:
    """The parameters of SPEC 5's merge suggestions and focus, and of the sketches."""

    window_days: int = 28
    min_overlap: float = 0.10
    top: int = 3
    min_members: int = 20
    max_open_followups: int = 5
    sketch_size: int = 1024
    # The key of the sketches' hashes (streams.privacy.sketch_key); None: no sketches,
    # and so no merge suggestions.
    sketch_key: bytes | None = field(default=None, repr=False)
    # The privacy threshold k (min_members_exported): no steering table describes a
    # group of 1 to k-1 people (streams.steering.disclosure).
    min_group: int = RuntimeConfig.min_members_exported

    def __post_init__(self) -> None:
        check_arguments(self.min_overlap, self.top)
        if self.window_days < 1 or self.sketch_size < 1:
            raise ValueError("steering_window_days and sketch_size must be positive")
        if self.min_members < 0 or self.max_open_followups < 0:
            raise ValueError("focus_min_members and max_open_followups must not be negative")

    @classmethod
    def of(cls, runtime: RuntimeConfig) -> SteeringSettings:
        return cls(runtime.steering_window_days, runtime.merge_min_overlap, runtime.merge_top,
                   runtime.focus_min_members, runtime.max_open_followups, runtime.sketch_size,
                   sketch_key(runtime), runtime.min_members_exported)


def _times(as_of_ms: int, n: int) -> pa.Array:
    return pa.array(np.full(n, as_of_ms, dtype=np.int64), pa.int64()).cast(TIME)


def _hash_lists(arrays: Sequence[np.ndarray]) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int32)
    values = np.concatenate([*arrays, np.array([], np.uint64)]).astype(np.uint64)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.uint64()))


def community_inputs(states: Iterable[CommunityState], managers: Sequence[Manager],
                     as_of_ms: int, settings: SteeringSettings
                     ) -> tuple[pa.Table, pa.Table]:
    """What a worker writes about its own communities at `as_of`: their sketches and
    the open follow-ups of the managers who follow them (counts, by manager name). Only
    communities of at least `min_group` members: a smaller one's sketch would link its
    few members' hashes across communities, and a follow-up count there is about those
    few people's answers. A sketch keeps no contributor hashes when there are 1 to
    min_group - 1 contributors (no suggestion can name such a community anyway), and
    without a key there are no sketches."""
    k = settings.min_group
    states = list(states)
    sets = [s for s in member_sets(states, as_of_ms, settings.window_days)
            if len(s.members) >= k]
    kept = {s.community_id for s in sets}
    states = [s for s in states if s.community_id in kept]
    key = settings.sketch_key
    sketches = [] if key is None else [MemberSketch.of(s, key, settings.sketch_size)
                                       for s in sets]
    contributor_hashes = [np.array([], np.uint64) if small(s.contributors, k)
                          else s.contributor_hashes for s in sketches]
    n = len(sketches)
    sketch_table = pa.table({
        "community_id": [s.community_id for s in sketches],
        "as_of": _times(as_of_ms, n),
        "window_days": pa.array([settings.window_days] * n, pa.int32()),
        "members": pa.array([s.members for s in sketches], pa.int64()),
        "contributors": pa.array([s.contributors for s in sketches], pa.int64()),
        "member_hashes": _hash_lists([s.member_hashes for s in sketches]),
        "contributor_hashes": _hash_lists(contributor_hashes),
    }, schema=SKETCH_SCHEMA)
    lookback = states[0].config.retention_ms if states else 0
    counts = open_followups_by_manager(managers, {s.community_id: s for s in states},
                                       as_of_ms, settings.window_days * DAY_MS, lookback)
    keys = sorted(counts)
    count_table = pa.table({
        "as_of": _times(as_of_ms, len(keys)),
        "manager": [name for name, _ in keys],
        "community_id": [community for _, community in keys],
        "open_followups": pa.array([counts[pair] for pair in keys], pa.int64()),
    }, schema=FOLLOWUP_COUNTS_SCHEMA)
    return sketch_table, count_table


class _Candidate(NamedTuple):
    community_id: str
    window_days: int
    members: int
    contributors: int
    contributor_share: float
    sustainability: float
    tier: str
    stagnating: bool


def network_tables(snapshots: pa.Table, sketches: pa.Table, followup_counts: pa.Table,
                   managers: Sequence[Manager], as_of_ms: int, settings: SteeringSettings,
                   config: MetricConfig) -> dict[str, pa.Table]:
    """merge_suggestions, focus and manager_followups at `as_of`, from the newest
    snapshot rows, sketches and follow-up counts of every community (one row per
    community, or per manager and community)."""
    window = settings.window_days
    sketches = sketches.filter(pc.equal(sketches["window_days"], window))
    merges = estimate_merges(_sketches(sketches), as_of_ms, window, config,
                             settings.min_overlap, settings.top, min_group=settings.min_group)
    rows = snapshots.filter(pc.equal(snapshots["window_days"], window))
    candidates = focus_candidates(
        [_Candidate(*values) for values in zip(*(rows[name].to_pylist()
                                                 for name in _Candidate._fields), strict=True)],
        as_of_ms, window, max(settings.min_members, settings.min_group))
    open_by_manager: dict[str, int] = {}
    for name, n in zip(followup_counts["manager"].to_pylist(),
                       followup_counts["open_followups"].to_pylist(), strict=True):
        open_by_manager[name] = open_by_manager.get(name, 0) + n
    followups = manager_followups(managers, open_by_manager, candidates, as_of_ms,
                                  settings.max_open_followups)
    return {"merge_suggestions": records_table(merges, MERGE_SCHEMA),
            "focus": records_table(candidates, FOCUS_SCHEMA),
            "manager_followups": records_table(followups, MANAGER_FOLLOWUPS_SCHEMA)}


def _sketches(table: pa.Table) -> list[MemberSketch]:
    def hashes(column: str) -> list[np.ndarray]:
        return [np.array(h, dtype=np.uint64) for h in table[column].to_pylist()]

    return [MemberSketch(*fields) for fields in zip(
        table["community_id"].to_pylist(), table["members"].to_pylist(),
        table["contributors"].to_pylist(), hashes("member_hashes"),
        hashes("contributor_hashes"), strict=True)]
