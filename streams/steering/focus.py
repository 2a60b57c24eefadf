"""Where to start, and when to take the next community (SPEC 5; the article's 4.1-4.3).

The article: start small, with one large and active community of practice (30% or more
of its members creator or critic), and take on the next community only when you can
keep up with the follow-up there. So:

- `focus_candidates`: the communities worth starting with, best first: tier `high`,
  at least `min_members` members, not stagnating; by contributors, then sustainability.
- `open_followups`: for a manager, the threads in their followed communities, active in
  the window, where someone else wrote after the manager's last post or reply: a
  conversation waiting for them. It reads the follow-up entries the core keeps for
  followed communities only (`CommunityState.followups`).
- `manager_followups`: per manager, open follow-ups, `ready_for_next` (at most
  `max_open_followups`) and the best candidate they do not follow yet.

Pure like the core. The managers file is read by `streams.steering.files.read_managers`
(where all rosters of user ids enter the process); outputs carry the manager's `name`
only.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

from streams.config import DAY_MS, ConfigError, shown
from streams.core import MAX_MANAGERS, WHO_BITS, CommunityState, PulseCore

DEFAULT_MIN_MEMBERS = 20
DEFAULT_MAX_OPEN_FOLLOWUPS = 5
MAX_TEXT_CHARS = 256  # a name, user id or community id, as event ids (schemas.events)
_WHO_MASK = (1 << WHO_BITS) - 1


class ManagersFileError(ConfigError):
    """A managers file that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class Manager:
    """A community manager who agreed to have their follow-ups counted."""

    name: str
    user_id: str
    follows: tuple[str, ...]


def parse_managers(doc: Any, source: str) -> list[Manager]:
    """`managers: [{name, user_id, follows: [community_id, ...]}]`, checked (a message
    names the manager and the field, never a user id)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("managers"), list):
        raise ManagersFileError(f"{source}: needs a list 'managers:'")
    managers: list[Manager] = []
    for place, item in enumerate(doc["managers"], start=1):
        label = f"manager #{place}"
        if not isinstance(item, dict):
            raise ManagersFileError(f"{source}: {label} is not a mapping")
        name = item.get("name")
        if _is_text(name):
            label = f"manager {name!r}"
        else:
            raise ManagersFileError(f"{source}: {label}: 'name' must be a string of 1-"
                                    f"{MAX_TEXT_CHARS} characters")
        unknown = set(item) - {"name", "user_id", "follows"}
        if unknown:
            raise ManagersFileError(f"{source}: {label}: unknown field(s) "
                                    f"{', '.join(sorted(shown(k, quote=False) for k in unknown))}")
        user_id = item.get("user_id")
        if not _is_text(user_id):  # (never shown: a user id)
            raise ManagersFileError(f"{source}: {label}: 'user_id' must be a string of 1-"
                                    f"{MAX_TEXT_CHARS} characters")
        follows = item.get("follows", [])
        if not isinstance(follows, list) or not all(map(_is_text, follows)):
            raise ManagersFileError(
                f"{source}: {label}: 'follows' must be a list of community ids")
        if any(m.name == name for m in managers):
            raise ManagersFileError(f"{source}: {label}: 'name' appears twice")
        if any(m.user_id == user_id for m in managers):
            raise ManagersFileError(f"{source}: {label}: 'user_id' appears twice")
        managers.append(Manager(name, user_id, tuple(dict.fromkeys(follows))))
    crowded = [c for c, ids in managers_of(managers).items() if len(ids) > MAX_MANAGERS]
    if crowded:
        raise ManagersFileError(f"{source}: community {crowded[0]!r}: 'follows': more than "
                                f"{MAX_MANAGERS} managers")
    return managers


def _is_text(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT_CHARS


def managers_of(managers: Iterable[Manager]) -> dict[str, list[str]]:
    """Community -> the user ids of the managers who follow it (for `PulseCore`)."""
    followed: dict[str, list[str]] = {}
    for manager in managers:
        for community_id in manager.follows:
            followed.setdefault(community_id, []).append(manager.user_id)
    return followed


# ---- where to start ---------------------------------------------------------------------

class _CommunityRow(Protocol):
    """What a candidate needs of a snapshot row (`SnapshotRow` has it)."""

    @property
    def community_id(self) -> str: ...
    @property
    def window_days(self) -> int: ...
    @property
    def members(self) -> int: ...
    @property
    def contributors(self) -> int: ...
    @property
    def contributor_share(self) -> float: ...
    @property
    def sustainability(self) -> float: ...
    @property
    def tier(self) -> str: ...
    @property
    def stagnating(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class FocusRow:
    """One row of the `focus` table."""

    as_of_ms: int
    rank: int
    community_id: str
    members: int
    contributors: int
    contributor_share: float
    sustainability: float


def focus_candidates(rows: Iterable[_CommunityRow], as_of_ms: int, window_days: int,
                     min_members: int = DEFAULT_MIN_MEMBERS) -> list[FocusRow]:
    """Large, active communities of practice, best first (ranks from 1)."""
    chosen = [r for r in rows if r.window_days == window_days and r.tier == "high"
              and r.members >= min_members and not r.stagnating]
    # Scores equal but for float rounding (the same value reached by other sums) tie.
    chosen.sort(key=lambda r: (-r.contributors, -round(r.sustainability, 9), r.community_id))
    return [FocusRow(as_of_ms, rank, r.community_id, r.members, r.contributors,
                     r.contributor_share, r.sustainability)
            for rank, r in enumerate(chosen, start=1)]


# ---- follow-ups -------------------------------------------------------------------------

def open_followups(state: CommunityState, user_id: str, t: int, window_ms: int,
                   lookback_ms: int) -> int:
    """Threads of this community with a post or reply in (t - window, t] in which the
    manager posted or replied, and someone else later than the manager's last post or
    reply. Posts and replies count back to t - lookback (the core's retention)."""
    who = state.managers.get(user_id)
    if who is None or state.followups is None:
        return 0
    oldest = ((t - lookback_ms) << WHO_BITS) | _WHO_MASK
    newest = (t << WHO_BITS) | _WHO_MASK
    window_start = t - window_ms
    n = 0
    for entries in state.followups.values():
        end = bisect_right(entries, newest)
        start = bisect_right(entries, oldest, 0, end)
        if start == end or entries[end - 1] >> WHO_BITS <= window_start:
            continue  # nothing in the window
        for i in range(end - 1, start - 1, -1):  # the manager's last entry
            if entries[i] & _WHO_MASK == who:
                # Entries after it are others', in time order: open if the newest is later.
                n += i < end - 1 and entries[end - 1] >> WHO_BITS > entries[i] >> WHO_BITS
                break
    return n


@dataclass(frozen=True, slots=True)
class ManagerFollowups:
    """One row of the `manager_followups` table: a manager's own counts, by name."""

    as_of_ms: int
    manager: str
    open_followups: int
    ready_for_next: bool
    next_community: str | None


def manager_followups(managers: Sequence[Manager], open_by_manager: Mapping[str, int],
                      candidates: Sequence[FocusRow], as_of_ms: int,
                      max_open_followups: int = DEFAULT_MAX_OPEN_FOLLOWUPS
                      ) -> list[ManagerFollowups]:
    """Per manager (by name): open follow-ups summed over the followed communities,
    whether they are ready for the next one, and which (the best-ranked candidate they
    do not follow; None when every candidate is followed already)."""
    rows = []
    for manager in sorted(managers, key=lambda m: m.name):
        open_ = open_by_manager.get(manager.name, 0)
        followed = set(manager.follows)
        nxt = next((c.community_id for c in candidates if c.community_id not in followed), None)
        rows.append(ManagerFollowups(as_of_ms, manager.name, open_,
                                     open_ <= max_open_followups, nxt))
    return rows


def open_followups_by_manager(managers: Sequence[Manager],
                              states: Mapping[str, CommunityState], t: int, window_ms: int,
                              lookback_ms: int) -> dict[tuple[str, str], int]:
    """(manager name, community) -> open follow-ups, for the followed communities
    among `states` (a worker's own)."""
    return {(m.name, c): open_followups(states[c], m.user_id, t, window_ms, lookback_ms)
            for m in managers for c in m.follows if c in states}


def focus_at(core: PulseCore, managers: Sequence[Manager], as_of_ms: int, window_days: int,
             min_members: int = DEFAULT_MIN_MEMBERS,
             max_open_followups: int = DEFAULT_MAX_OPEN_FOLLOWUPS, *, min_group: int
             ) -> tuple[list[FocusRow], list[ManagerFollowups]]:
    """Both tables from one core that holds every community (the exact commands). As in
    the worker's tables, communities of fewer than `min_group` members (the privacy
    threshold) are no candidates and their follow-ups are not counted."""
    rows = [row for state in core.communities.values() for row in state.snapshot(as_of_ms)]
    candidates = focus_candidates(rows, as_of_ms, window_days, max(min_members, min_group))
    large = {row.community_id for row in rows if row.members >= min_group}
    counts = open_followups_by_manager(
        managers, {c: s for c, s in core.communities.items() if c in large}, as_of_ms,
        window_days * DAY_MS, core.config.retention_ms)
    per_manager: dict[str, int] = {}
    for (name, _), n in counts.items():
        per_manager[name] = per_manager.get(name, 0) + n
    return candidates, manager_followups(managers, per_manager, candidates, as_of_ms,
                                         max_open_followups)
