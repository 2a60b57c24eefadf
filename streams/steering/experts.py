"""Content experts (SPEC 5; the article's section 3: "betrek een inhoudsdeskundige bij
deze community en laat hem als critic optreden" — in every tier).

For a community with a roster of content experts, at `t` and per window `W`:

- `experts`: roster experts who are members at `t`;
- `experts_replying`: roster experts who wrote at least one reply (to a post or to a
  reply) in the window, members or not;
- `expert_replies`: the replies roster experts wrote in the window;
- `expert_needed`: the community has members and no roster expert replied in the window.

Fed by the core's per-user logs (what `CommunityState` keeps anyway): the roster picks
at most a handful of logs, so a snapshot costs O(roster) more. Only these counts leave
the product, never the roster's ids. A community's roster must name no experts or at
least the privacy threshold (`check_roster_sizes`): the counts of a roster of one are
that person's own replies. Pure: no I/O; rosters are read by `streams.steering.files`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from streams.config import ConfigError
from streams.steering.disclosure import small


class RosterTooSmallError(ConfigError):
    """A roster whose counts would describe fewer people than the privacy threshold."""


class ExpertLog(Protocol):
    """What the core keeps of one user in one community (`streams.core._UserLog`)."""

    def bounds(self) -> tuple[int, int]: ...

    def is_member(self, t: int, horizon_ms: int, contrib: int, act: int) -> bool: ...

    def replies_between(self, low: int, high: int, act: int) -> int: ...


@dataclass(frozen=True, slots=True)
class ExpertCounts:
    experts: int
    experts_replying: int
    expert_replies: int
    expert_needed: bool


def expert_counts(logs: Iterable[ExpertLog], t: int, horizon_ms: int,
                  windows_ms: Iterable[int], has_members: bool) -> list[ExpertCounts]:
    """Per window, the counts of the roster experts whose logs these are (experts with
    no log at all have never done anything in the community: they count nowhere)."""
    members = 0
    replies_by_window: list[list[int]] = []
    for log in logs:
        contrib, act = log.bounds()
        members += log.is_member(t, horizon_ms, contrib, act)
        replies_by_window.append([log.replies_between(t - w, t, act) for w in windows_ms])
    counts = []
    for replies in zip(*replies_by_window, strict=True) if replies_by_window else (
            () for _ in windows_ms):
        replying = sum(1 for n in replies if n)
        counts.append(ExpertCounts(members, replying, sum(replies),
                                   has_members and replying == 0))
    return counts


def check_roster_sizes(rosters: Mapping[str, frozenset[str]], min_experts: int, source: str
                       ) -> Mapping[str, frozenset[str]]:
    """The rosters, if each names no experts or at least `min_experts` (the privacy
    threshold, min_members_exported); else one line naming the first community (never
    a user id)."""
    too_small = sorted(c for c, experts in rosters.items() if small(len(experts), min_experts))
    if too_small:
        first, more = too_small[0], len(too_small) - 1
        raise RosterTooSmallError(
            f"{source}: community {first!r} lists {len(rosters[first])} expert(s), fewer "
            f"than min_members_exported ({min_experts}): their counts would be those "
            f"people's own replies; list at least {min_experts} or none"
            + (f" ({more} more communities like it)" if more else ""))
    return rosters
