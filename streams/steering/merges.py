"""Merge suggestions (SPEC 5; the article's 3.2 and 3.3): for a community in tier `low`
or `medium`, the communities that share so many members that merging them makes one
larger group in which more of the members contribute.

Two ways to the same rows, both pure:

- `suggest_merges`: exact, from the member and contributor sets of every community
  (`CommunityState.members_at`): what `community-pulse suggest-merges EVENTS...` prints.
- `estimate_merges`: from `MemberSketch`es, so that a whole-network view can be formed
  from what each worker writes about its own communities, without user ids leaving the
  process. A sketch keeps the k smallest keyed 64-bit hashes of a set (a bottom-k or KMV
  sketch, the estimator behind Apache DataSketches' theta sketches) and the set's exact
  size; for sets of at most k users it holds every hash and the estimate is exact.
  docs/steering.md measures the error on generated data.

Both publish only suggestions that single out nobody: `min_group` is the privacy
threshold, and `streams.steering.disclosure` the rule (docs/security.md#small-groups).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import numpy.typing as npt

from streams.config import DAY_MS, MetricConfig
from streams.core import CommunityState, tier_of
from streams.steering.disclosure import Group, Published, pair_publishable, small

Hashes = npt.NDArray[np.uint64]
# A pair's groups for rule 3 (disclosure.Published): both sides' members and contributors,
# and the pair's shared, merged and merged contributors; None when only estimated.
PairGroups = Callable[[int, int], tuple[list[Group], list[Group]] | None]
DEFAULT_SKETCH_SIZE = 1024
ELIGIBLE_TIERS = ("low", "medium")


@dataclass(frozen=True, slots=True)
class MergeSuggestion:
    """One row of the `merge_suggestions` table. Counts only, no user ids."""

    community_id: str
    candidate_id: str
    as_of_ms: int
    window_days: int
    jaccard: float
    shared_members: int
    merged_members: int
    merged_contributors: int
    merged_share: float
    merged_tier: str


@dataclass(frozen=True, slots=True)
class MemberSets:
    """A community's members at t and its contributors in the window (user ids: these
    stay in the process)."""

    community_id: str
    members: frozenset[str]
    contributors: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Overlap:
    """What a suggestion needs about a pair: exact, or estimated from sketches."""

    jaccard: float
    shared_members: int
    merged_members: int
    merged_contributors: int


def check_arguments(min_overlap: float, top: int) -> None:
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must be in (0, 1], not {min_overlap}: "
                         "a suggestion needs shared members")
    if top < 1:
        raise ValueError(f"top must be at least 1, not {top}")


def _ranked(overlaps: dict[tuple[int, int], _Overlap], names: Sequence[str],
            eligible: Sequence[bool], sizes: Sequence[tuple[int, int]], groups: PairGroups,
            as_of_ms: int, window_days: int, config: MetricConfig, min_overlap: float,
            top: int, min_group: int) -> list[MergeSuggestion]:
    """Suggestions per eligible community, best first, at most `top` each, of those the
    privacy rule lets out. `overlaps` holds the pairs (a < b) that share anyone; others
    have jaccard 0. `sizes`: each community's (members, contributors). The rule across
    suggestions depends on what is out already, so they are checked best first over all
    communities: a close pair is not crowded out by a poorer one."""
    found: list[tuple[MergeSuggestion, tuple[int, int]]] = []
    for (a, b), overlap in overlaps.items():
        if overlap.jaccard < min_overlap or not pair_publishable(
                (sizes[a][0], sizes[b][0], sizes[a][1], sizes[b][1], overlap.shared_members,
                 overlap.merged_members, overlap.merged_contributors), min_group):
            continue
        share = (overlap.merged_contributors / overlap.merged_members
                 if overlap.merged_members else 0.0)
        for this, other in ((a, b), (b, a)):
            if eligible[this]:
                found.append((MergeSuggestion(
                    names[this], names[other], as_of_ms, window_days, overlap.jaccard,
                    overlap.shared_members, overlap.merged_members,
                    overlap.merged_contributors, share, tier_of(share, config)), (a, b)))
    found.sort(key=lambda f: (-f[0].jaccard, -f[0].merged_share, f[0].community_id,
                              f[0].candidate_id))
    published = Published(min_group)
    kept: dict[str, list[MergeSuggestion]] = {}
    for suggestion, pair in found:
        mine = kept.setdefault(suggestion.community_id, [])
        if len(mine) < top:
            pair_groups = groups(*pair)
            if pair_groups is None or published.admit(*pair_groups):
                mine.append(suggestion)
    return [s for community in sorted(kept) for s in kept[community]]


def _eligible(members: int, contributors: int, config: MetricConfig) -> bool:
    share = contributors / members if members else 0.0
    return tier_of(share, config) in ELIGIBLE_TIERS


def suggest_merges(communities: Sequence[MemberSets], as_of_ms: int, window_days: int,
                   config: MetricConfig, min_overlap: float = 0.10, top: int = 3, *,
                   min_group: int) -> list[MergeSuggestion]:
    """Exact suggestions (SPEC 5) from every community's member and contributor sets,
    those that describe no group of 1 to min_group - 1 people."""
    check_arguments(min_overlap, top)
    communities = sorted(communities, key=lambda c: c.community_id)
    names = [c.community_id for c in communities]
    eligible = [_eligible(len(c.members), len(c.contributors), config) for c in communities]
    where: dict[str, list[int]] = {}
    for index, community in enumerate(communities):
        for user in community.members:
            where.setdefault(user, []).append(index)
    shared = Counter(pair for places in where.values() if len(places) > 1
                     for pair in combinations(places, 2))
    overlaps = {}
    for (a, b), n in shared.items():
        if not (eligible[a] or eligible[b]):
            continue
        union = len(communities[a].members) + len(communities[b].members) - n
        contributors = len(communities[a].contributors | communities[b].contributors)
        overlaps[a, b] = _Overlap(n / union, n, union, contributors)

    def groups(a: int, b: int) -> tuple[list[Group], list[Group]]:
        one, two = communities[a], communities[b]
        return ([one.members, one.contributors, two.members, two.contributors],
                [one.members & two.members, one.members | two.members,
                 one.contributors | two.contributors])

    sizes = [(len(c.members), len(c.contributors)) for c in communities]
    return _ranked(overlaps, names, eligible, sizes, groups, as_of_ms, window_days, config,
                   min_overlap, top, min_group)


# ---- sketches ---------------------------------------------------------------------------

def user_hashes(user_ids: Iterable[str], key: bytes) -> Hashes:
    """Keyed 64-bit BLAKE2b hashes of user ids, sorted: without the key they cannot be
    matched to user ids (a dictionary of known ids gives nothing)."""
    hashes = np.fromiter(
        (int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8, key=key).digest(), "little")
         for u in user_ids), np.uint64)
    hashes.sort()
    return hashes


@dataclass(frozen=True, slots=True)
class MemberSketch:
    """A community's sketch at t: exact sizes, and the k smallest hashes of its member
    and contributor sets (all of them for a set of at most k users)."""

    community_id: str
    members: int
    contributors: int
    member_hashes: Hashes
    contributor_hashes: Hashes

    @classmethod
    def of(cls, sets: MemberSets, key: bytes, size: int = DEFAULT_SKETCH_SIZE) -> MemberSketch:
        return cls(sets.community_id, len(sets.members), len(sets.contributors),
                   user_hashes(sets.members, key)[:size],
                   user_hashes(sets.contributors, key)[:size])


def _estimated_union_overlap(a: Hashes, size_a: int, b: Hashes, size_b: int
                             ) -> tuple[float, int]:
    """Jaccard of two sets from their bottom-k sketches, and the shared users.

    Below tau (the smaller of the two sketches' largest hash, for a sketch that does not
    hold its whole set) a sketch holds exactly its set's hashes, so the union's hashes
    below tau are a uniform sample of the union: the share of them found in both sets
    estimates the Jaccard index. With both sets whole, it is exact."""
    if size_a == 0 or size_b == 0:
        return 0.0, 0
    tau = np.uint64(np.iinfo(np.uint64).max)
    if len(a) < size_a:
        tau = min(tau, a[-1])
    if len(b) < size_b:
        tau = min(tau, b[-1])
    a = a[: np.searchsorted(a, tau, side="right")]
    b = b[: np.searchsorted(b, tau, side="right")]
    both = len(np.intersect1d(a, b, assume_unique=True))
    jaccard = both / (len(a) + len(b) - both)
    if len(a) == size_a and len(b) == size_b:
        return jaccard, both  # whole sets: exact
    # |A n B| = J |A u B| = J (|A| + |B| - |A n B|), with the exact sizes.
    return jaccard, round(jaccard * (size_a + size_b) / (1 + jaccard))


def estimate_merges(sketches: Sequence[MemberSketch], as_of_ms: int, window_days: int,
                    config: MetricConfig, min_overlap: float = 0.10, top: int = 3, *,
                    min_group: int) -> list[MergeSuggestion]:
    """`suggest_merges` estimated from sketches (exact where every set fits its sketch).
    A community whose contributors' hashes were withheld (fewer than the threshold, see
    `streams.steering.network.community_inputs`) takes part in no suggestion: any would
    single its contributors out."""
    check_arguments(min_overlap, top)
    sketches = sorted(sketches, key=lambda s: s.community_id)
    names = [s.community_id for s in sketches]
    eligible = [_eligible(s.members, s.contributors, config) for s in sketches]
    usable = [s.members >= min_group and not small(s.contributors, min_group)
              and (s.contributors == 0 or len(s.contributor_hashes) > 0) for s in sketches]
    overlaps = {}
    for a, b in _pairs_sharing_a_hash(sketches):
        if not (eligible[a] or eligible[b]) or not (usable[a] and usable[b]):
            continue
        sa, sb = sketches[a], sketches[b]
        jaccard, shared = _estimated_union_overlap(
            sa.member_hashes, sa.members, sb.member_hashes, sb.members)
        _, shared_contributors = _estimated_union_overlap(
            sa.contributor_hashes, sa.contributors, sb.contributor_hashes, sb.contributors)
        overlaps[a, b] = _Overlap(jaccard, shared, sa.members + sb.members - shared,
                                  sa.contributors + sb.contributors - shared_contributors)
    whole: dict[int, tuple[Group, Group] | None] = {}

    def sets(i: int) -> tuple[Group, Group] | None:
        if i not in whole:
            s = sketches[i]
            whole[i] = ((frozenset(s.member_hashes.tolist()),
                         frozenset(s.contributor_hashes.tolist()))
                        if (len(s.member_hashes), len(s.contributor_hashes))
                        == (s.members, s.contributors) else None)
        return whole[i]

    def groups(a: int, b: int) -> tuple[list[Group], list[Group]] | None:
        one, two = sets(a), sets(b)
        if one is None or two is None:
            return None  # estimated: rules 1 and 2 only
        return [*one, *two], [one[0] & two[0], one[0] | two[0], one[1] | two[1]]

    sizes = [(s.members, s.contributors) for s in sketches]
    return _ranked(overlaps, names, eligible, sizes, groups, as_of_ms, window_days, config,
                   min_overlap, top, min_group)


def _pairs_sharing_a_hash(sketches: Sequence[MemberSketch]) -> set[tuple[int, int]]:
    """Pairs (a < b) of sketches with a member hash in common: any other pair's estimate
    is 0, below every min_overlap."""
    hashes = np.concatenate([s.member_hashes for s in sketches] or [np.array([], np.uint64)])
    owner = np.repeat(np.arange(len(sketches)), [len(s.member_hashes) for s in sketches])
    order = np.argsort(hashes, kind="stable")
    hashes, owner = hashes[order], owner[order]
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    ends = np.r_[starts[1:], len(hashes)]
    pairs: set[tuple[int, int]] = set()
    for start, end in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist(),
                          strict=True):
        pairs.update(combinations(owner[start:end].tolist(), 2))
    return pairs


def member_sets(states: Iterable[CommunityState], as_of_ms: int, window_days: int
                ) -> list[MemberSets]:
    """Every community's member and contributor sets at `as_of` (see `members_at`)."""
    sets = []
    for state in states:
        members, contributors = state.members_at(as_of_ms, window_days * DAY_MS)
        sets.append(MemberSets(state.community_id, frozenset(members), frozenset(contributors)))
    return sets
