"""The privacy threshold of the steering outputs (docs/security.md#small-groups): no
published count, and no count that follows from published counts, describes a group of
1 to k-1 people, k being `min_members_exported`.

Community-level outputs (sketches, focus, follow-up counts, expert rosters) are simply
left out below k (`small`). Merge suggestions need more: a row publishes
`|M_A n M_B|`, `|M_A u M_B|` and `|C_A u C_B|` next to each side's published members
`|M_X|` and contributors `|C_X|`, and differences between those counts single people out
(`shared_members = 9, merged_members = 10`: one member of A is not in B). So a
suggestion is published only when

1. both communities have at least k members;
2. every group whose size follows from the pair's seven counts by any arithmetic (a
   union of cells of the pair's Venn diagram whose indicator lies in the span of the
   seven counts' indicators: `A - B`, `C_A n C_B`, `(A u B) - (C_A u C_B)`, ... 29 in
   all, `DERIVED`), other than those of one community's own counts, is empty or has at
   least k people;
3. across suggestions, with the groups already published (`Published`): for any two
   published groups S > T, `|S - T|` is 0 or at least k, and for published S, T and
   S u T, `|S n T|` is 0 or at least k (nested groups and inclusion-exclusion:
   `A >= B` makes `|A n C| - |B n C|` a count of people).

Rule 3 needs the groups themselves (user ids, or the keyed hashes of sketches that hold
whole sets); a suggestion estimated from a sketch that holds part of its set is checked
by rules 1 and 2 on its estimates. Pure: no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from itertools import product

import numpy as np


def small(n: int, k: int) -> bool:
    """Whether a count describes a group too small to publish: 1 to k-1 people."""
    return 0 < n < k


# ---- rule 2: the pair's Venn cells ------------------------------------------------------
# A person in A u B is in a cell (member of A, of B, contributor to A, to B); contributors
# are members, so 8 cells. The published counts are sums of cells.

def _derived_sets() -> np.ndarray:
    """Coefficients over PAIR_COUNTS of every group that follows from them (and not from
    one community's own counts alone)."""
    cells = [c for c in product((0, 1), repeat=4)
             if any(c) and (c[0] or not c[2]) and (c[1] or not c[3])]

    def indicator(test: int) -> np.ndarray:
        return np.array([float(bool(test & sum(b << i for i, b in enumerate(c))))
                         for c in cells])

    ma, mb, ca, cb = (indicator(1 << i) for i in range(4))
    published = np.array([ma, mb, ca, cb, ma * mb, np.maximum(ma, mb), np.maximum(ca, cb)])
    own = published[:4]
    rank, own_rank = np.linalg.matrix_rank(published), np.linalg.matrix_rank(own)
    derived = []
    for mask in range(1, 1 << len(cells)):
        group = np.array([float(mask >> i & 1) for i in range(len(cells))])
        if (np.linalg.matrix_rank(np.vstack([published, group])) == rank
                and np.linalg.matrix_rank(np.vstack([own, group])) > own_rank):
            derived.append(np.linalg.lstsq(published.T, group, rcond=None)[0])
    return np.array(derived)


# |M_A|, |M_B|, |C_A|, |C_B|, |M_A n M_B|, |M_A u M_B|, |C_A u C_B|
PAIR_COUNTS = ("members_a", "members_b", "contributors_a", "contributors_b",
               "shared_members", "merged_members", "merged_contributors")
DERIVED = _derived_sets()


def pair_publishable(counts: Sequence[float], k: int) -> bool:
    """Rules 1 and 2 for one suggestion's counts (in PAIR_COUNTS order; estimates are
    rounded, and an estimate below 0 counts as a small group)."""
    if k <= 1:
        return True
    if counts[0] < k or counts[1] < k:
        return False
    sizes = np.rint(DERIVED @ np.asarray(counts, dtype=float))
    return not bool(np.any((sizes != 0) & (sizes < k)))


# ---- rule 3: across suggestions ---------------------------------------------------------

Group = frozenset[Hashable]


class Published:
    """The groups published so far (communities' members and contributors, suggestions'
    shared, merged and merged contributors), to check the groups of another suggestion
    against (rule 3). Violations among communities' own groups alone are not ours: the
    snapshot rows publish those counts anyway."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.groups: dict[Group, bool] = {}  # group -> whether a community's own
        self._by_size: dict[int, list[Group]] = defaultdict(list)
        self._by_first: dict[Hashable, list[Group]] = defaultdict(list)  # by _first()

    def admit(self, own: Iterable[Group], derived: Iterable[Group]) -> bool:
        """Publish these groups (each side's members and contributors, the suggestion's
        three) if rule 3 holds with them; whether they were. Each triple and pair of
        groups is checked when the last of them comes."""
        if self.k <= 1:
            return True
        new = {g: True for g in own if g and g not in self.groups}
        new.update((g, False) for g in derived if g and g not in self.groups and g not in new)
        staged = Published(self.k)
        views = (self, staged)
        for group, is_own in new.items():
            if self._violates(group, is_own, views):
                return False
            staged._add(group, is_own)
        for group, is_own in new.items():
            self._add(group, is_own)
        for group in own:  # a group first out as a suggestion's is a community's own too
            if group:
                self.groups[group] = True
        return True

    def _add(self, group: Group, is_own: bool) -> None:
        self.groups[group] = is_own
        self._by_size[len(group)].append(group)
        self._by_first[_first(group)].append(group)

    def _violates(self, group: Group, is_own: bool, views: Sequence[Published]) -> bool:
        k, n = self.k, len(group)
        if not is_own and small(n, k):
            return True

        def own(other: Group) -> bool:
            return any(view.groups.get(other, False) for view in views)

        for d in range(1, k):  # nested groups whose sizes differ by 1 to k-1
            for view in views:
                if any(other < group and not (is_own and own(other))
                       for other in view._by_size.get(n - d, ())):
                    return True
                if any(group < other and not (is_own and own(other))
                       for other in view._by_size.get(n + d, ())):
                    return True
        # group = S u T of known S, T with |S n T| = |S| + |T| - |group| small
        parts = _subsets(group, views)
        for i, s in enumerate(parts):
            for t in parts[i + 1:]:
                if small(len(s) + len(t) - n, k) and s | t == group and not (
                        is_own and own(s) and own(t)):
                    return True
        # a known U = group u T of a known T, with |group n T| small
        for union in _supersets(group, views):
            for other in _subsets(union, views):
                if (other != group and small(n + len(other) - len(union), k)
                        and group | other == union
                        and not (is_own and own(union) and own(other))):
                    return True
        return False


def _first(group: Group) -> Hashable:
    """The element a group is indexed by: any one that is the same for equal groups."""
    return min(group, key=hash)


def _subsets(group: Group, views: Sequence[Published]) -> list[Group]:
    """The known groups strictly inside `group` (each has its _first element in it)."""
    return [other for view in views for first in view._by_first.keys() & group
            for other in view._by_first[first] if other != group and other <= group]


def _supersets(group: Group, views: Sequence[Published]) -> list[Group]:
    """The known groups strictly around `group`."""
    n = len(group)
    return [other for view in views for size, others in view._by_size.items() if size > n
            for other in others if group < other]
