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
the product, never the roster's ids. A community whose roster names fewer experts than
the privacy threshold gets empty expert columns (`small_rosters`): the counts of a
roster of one are that person's own replies. No file I/O: rosters are read by
`streams.steering.files`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from streams.config import MetricConfig
from streams.steering.disclosure import small

log = logging.getLogger(__name__)


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


def with_rosters(config: MetricConfig, rosters: Mapping[str, frozenset[str]],
                 min_experts: int, source: str) -> MetricConfig:
    """The config with these rosters and the privacy threshold they are held to; logs
    which communities' rosters are too small to export counts (`small_rosters`)."""
    small_rosters(rosters, min_experts, source)
    return replace(config, experts=rosters, experts_min_roster=min_experts)


def small_rosters(rosters: Mapping[str, frozenset[str]], min_experts: int, source: str
                  ) -> list[str]:
    """The communities whose roster names 1 to `min_experts` - 1 experts (the privacy
    threshold, min_members_exported): their expert columns stay empty, since the counts
    would be those few people's own replies. One log line names them (never a user id)."""
    too_small = sorted(c for c, experts in rosters.items() if small(len(experts), min_experts))
    if too_small:
        log.warning("%s: %d communit%s list fewer than %d experts (min_members_exported), so "
                    "their expert columns stay empty: %s", source, len(too_small),
                    "y" if len(too_small) == 1 else "ies", min_experts,
                    ", ".join(too_small[:10]) + (" ..." if len(too_small) > 10 else ""))
    return too_small
