"""Members and roles taken at once (numpy, large communities) equal the user-by-user
count that the oracle-tested snapshot uses for small ones: the same members, the same
role counts per window and the same posters, at every snapshot time the property tests
use, before and after expiry."""

from __future__ import annotations

import random

import pytest
from hypothesis import strategies as st

from schemas.events import Event
from streams.config import DAY_MS, HOUR_MS, MetricConfig
from streams.core import CommunityState, PulseCore

try:
    from tests import test_core_properties as props
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    import test_core_properties as props  # type: ignore[no-redef]


def assert_both_ways_agree(state: CommunityState, times: list[int]) -> None:
    config = state.config
    horizon = config.membership_horizon_days * DAY_MS
    windows = [days * DAY_MS for days in config.windows_days]
    for t in times:
        by_user = state._members_and_roles(t, horizon, windows)
        posters = state._posters
        at_once = state._members_and_roles_at_once(t, horizon, windows)
        assert at_once == by_user, (state.community_id, t)
        assert state._posters == posters


TIMES = [*props.AS_OFS, props.T0 + 3 * DAY_MS, props.T0 - 60 * DAY_MS, props.T0 + 400 * DAY_MS]


@props.on_random_logs_with_expiry
def test_at_once_equals_user_by_user_on_the_property_logs(
        config: MetricConfig, data: st.DataObject, rnd: random.Random,
        expire_days: int | None) -> None:
    core = PulseCore(config)
    core.apply(props._with_duplicates(data.draw(props.event_logs(config), label="events"),
                                      rnd))
    if expire_days is not None:
        core.expire(props.AS_OFS[0] - expire_days * DAY_MS)
    for state in core.communities.values():
        assert_both_ways_agree(state, TIMES)


@pytest.mark.parametrize("seed", range(6))
def test_at_once_equals_user_by_user_on_a_large_community(seed: int) -> None:
    """Hundreds of users with joins, leaves and every activity, at equal times too."""
    rnd = random.Random(seed)
    config = props.CONFIGS[seed % 2]
    kinds = ("post", "reply", "reply", "like", "view", "view", "join", "leave")
    events = []
    for i in range(3000):
        kind = rnd.choice(kinds)
        fields: dict[str, object] = {}
        if kind in ("post", "reply"):
            fields["post_id"] = f"p{rnd.randrange(50)}"
        if kind == "reply":
            fields |= {"reply_id": f"r{i}", "parent_id": "x",
                       "parent_type": rnd.choice(("post", "reply"))}
        if kind in ("like", "view"):
            fields |= {"target_id": f"p{rnd.randrange(50)}",
                       "target_type": rnd.choice(("post", "reply"))}
        ts = props.T0 + rnd.choice((0, HOUR_MS, -DAY_MS)) * rnd.randrange(-40, 3)
        events.append(Event(f"e{i}", kind, "big", f"u{rnd.randrange(400)}", ts,
                            **fields))  # type: ignore[arg-type]
    core = PulseCore(config)
    core.apply(events)
    state = core.communities["big"]
    assert len(state.users) > 300
    assert_both_ways_agree(state, TIMES)
    core.expire(props.T0 - 5 * DAY_MS)
    assert_both_ways_agree(state, TIMES)
