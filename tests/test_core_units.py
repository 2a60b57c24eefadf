"""Unit tests for the domain core with hand-computed expectations (SPEC sections 2-3).

Every test builds a tiny event log, applies it to a `PulseCore` and checks one
definition, with the boundary cases spelled out: windows are `(t - W, t]`, continuity
periods are `(t - (k+1) d, t - k d]`, SLA eligibility is `ts <= t - SLA`.
"""

from __future__ import annotations

import itertools

import msgspec
import pytest

from schemas.events import Event
from streams.config import DAY_MS, HOUR_MS, MetricConfig
from streams.core import PulseCore, SnapshotRow

T = 1_710_028_800_000  # 2024-03-10T00:00:00Z, the as_of of most tests
D = DAY_MS
H = HOUR_MS
C = "c"

_ids = itertools.count()


def _eid() -> str:
    return f"e{next(_ids)}"


def post(user: str, ts: int, post_id: str, community: str = C) -> Event:
    return Event(_eid(), "post", community, user, ts, post_id=post_id)


def reply(user: str, ts: int, post_id: str, parent_type: str = "post",
          parent_id: str | None = None, community: str = C) -> Event:
    parent = parent_id or (post_id if parent_type == "post" else "r-parent")
    return Event(_eid(), "reply", community, user, ts, post_id=post_id,
                 reply_id=_eid(), parent_id=parent, parent_type=parent_type)


def like(user: str, ts: int, target_id: str, target_type: str = "post",
         community: str = C) -> Event:
    return Event(_eid(), "like", community, user, ts, target_id=target_id,
                 target_type=target_type)


def view(user: str, ts: int, target_id: str = "p", target_type: str = "post",
         community: str = C) -> Event:
    return Event(_eid(), "view", community, user, ts, target_id=target_id,
                 target_type=target_type)


def join(user: str, ts: int, community: str = C) -> Event:
    return Event(_eid(), "join", community, user, ts)


def leave(user: str, ts: int, community: str = C) -> Event:
    return Event(_eid(), "leave", community, user, ts)


def snap(events: list[Event], t: int = T, window: int = 7,
         config: MetricConfig | None = None, community: str = C) -> SnapshotRow:
    core = PulseCore(config or MetricConfig())
    core.apply(events)
    rows = [r for r in core.snapshot(t) if r.community_id == community and r.window_days == window]
    assert len(rows) == 1
    return rows[0]


def roles(row: SnapshotRow) -> tuple[int, ...]:
    return (row.creators, row.conversationalists, row.critics, row.joiners, row.spectators,
            row.inactives)


# ---- roles ----------------------------------------------------------------------------


def test_primary_role_is_the_highest_rung_held() -> None:
    events = [
        post("a", T - D, "p1"), reply("a", T - D, "p1", "reply"), like("a", T - D, "p1"),
        reply("b", T - D, "p1", "reply"), reply("b", T - D, "p1", "post"), view("b", T - D),
        reply("c", T - D, "p1", "post"), like("c", T - D, "p1"),
        like("d", T - D, "p1", "reply"), view("d", T - D),
        view("e", T - D, "r1", "reply"),
        join("f", T - 30 * D),
    ]
    row = snap(events)
    assert row.members == 6
    assert roles(row) == (1, 1, 1, 1, 1, 1)
    assert sum(roles(row)) == row.members
    assert row.contributors == 3
    assert row.contributor_share == 0.5


def test_role_only_counts_activity_in_the_window() -> None:
    events = [post("a", T - 7 * D, "p1"), view("a", T - D)]  # the post is at exactly t - 7d
    assert roles(snap(events, window=7)) == (0, 0, 0, 0, 1, 0)
    assert roles(snap(events, window=28)) == (1, 0, 0, 0, 0, 0)
    # a member whose only activity is before the window is inactive in it
    events = [post("a", T - 20 * D, "p1")]
    assert roles(snap(events, window=7)) == (0, 0, 0, 0, 0, 1)


def test_roles_are_counted_among_members_only() -> None:
    # b posted, then left (strictly later): the post counts, b is no member and no creator
    events = [post("a", T - D, "p1"), post("b", T - 2 * D, "p2"), leave("b", T - D)]
    row = snap(events)
    assert row.posts == 2
    assert row.members == 1
    assert row.creators == 1


# ---- members --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "is_member"),
    [
        pytest.param([join("u", T - 200 * D)], True, id="join-long-ago"),
        pytest.param([join("u", T)], True, id="join-exactly-at-t"),
        pytest.param([join("u", T + 1)], False, id="join-in-the-future"),
        pytest.param([join("u", T - 5 * D), leave("u", T - D)], False, id="join-then-leave"),
        pytest.param([leave("u", T - 5 * D), join("u", T - D)], True, id="leave-then-join"),
        pytest.param([join("u", T - D), leave("u", T - D)], False, id="leave-sorts-after-join"),
        pytest.param([view("u", T - 10 * D), leave("u", T - 5 * D)], False,
                     id="leave-after-activity"),
        pytest.param([leave("u", T - 10 * D), view("u", T - 5 * D)], True,
                     id="leave-before-activity"),
        pytest.param([leave("u", T - 5 * D), view("u", T - 5 * D)], True,
                     id="leave-at-same-ts-as-activity"),
        pytest.param([view("u", T - 90 * D)], False, id="activity-exactly-at-horizon"),
        pytest.param([view("u", T - 90 * D + 1)], True, id="activity-inside-horizon"),
        pytest.param([like("u", T + 1, "p")], False, id="activity-in-the-future"),
        pytest.param([join("u", T - 100 * D), view("u", T - 60 * D), leave("u", T - 50 * D)],
                     False, id="join-activity-leave"),
        pytest.param([join("u", T - 100 * D), leave("u", T - 60 * D), post("u", T - 50 * D, "p")],
                     True, id="join-leave-activity"),
        pytest.param([view("u", T - D), leave("u", T + 1)], True, id="future-leave-ignored"),
    ],
)
def test_membership(events: list[Event], is_member: bool) -> None:
    assert snap(events).members == int(is_member)


def test_membership_horizon_is_configurable() -> None:
    config = MetricConfig(windows_days=(1, 3), membership_horizon_days=5)
    events = [view("u", T - 5 * D), view("v", T - 5 * D + 1)]
    assert snap(events, window=1, config=config).members == 1


def test_join_and_leave_are_not_activity() -> None:
    # the leave is the last membership event and comes after the last activity
    events = [join("u", T - 3 * D), leave("u", T - 2 * D), join("u", T - 100 * D)]
    row = snap(events)
    assert row.members == 0
    assert row.last_activity_ms is None


# ---- contributor share and tier --------------------------------------------------------


@pytest.mark.parametrize(
    ("writers", "share", "tier", "participation"),
    [
        (2, 0.10, "low", 0.10 / 0.30),
        (3, 0.15, "medium", 0.5),  # exactly 15% is medium
        (5, 0.25, "medium", 0.25 / 0.30),
        (6, 0.30, "high", 1.0),  # exactly 30% is high
        (10, 0.50, "high", 1.0),
    ],
)
def test_tier_thresholds(writers: int, share: float, tier: str, participation: float) -> None:
    events = [join(f"u{i}", T - 10 * D) for i in range(20)]
    events += [post(f"u{i}", T - D, f"p{i}") for i in range(writers)]
    row = snap(events)
    assert row.members == 20
    assert row.contributors == writers
    assert row.contributor_share == share
    assert row.tier == tier
    assert row.participation == pytest.approx(participation, abs=1e-12)


def test_no_members_share_zero_and_participation_undefined() -> None:
    row = snap([post("a", T - 100 * D, "p")])
    assert row.members == 0
    assert row.contributor_share == 0.0
    assert row.tier == "low"
    assert row.participation is None


def test_tier_thresholds_are_configurable() -> None:
    config = MetricConfig(tier_medium_share=0.5, tier_high_share=0.75)
    events = [join(f"u{i}", T - 10 * D) for i in range(4)]
    events += [post("u0", T - D, "p0"), post("u1", T - D, "p1")]
    row = snap(events, config=config)
    assert (row.contributor_share, row.tier) == (0.5, "medium")
    assert row.participation == pytest.approx(0.5 / 0.75)


# ---- activity counts --------------------------------------------------------------------


def test_counts_use_the_half_open_window() -> None:
    events = []
    for ts in (T - 7 * D, T - 7 * D + 1, T, T + 1):
        events += [post("a", ts, f"p{ts}"), reply("b", ts, "p"), like("c", ts, "p"),
                   view("d", ts)]
    row = snap(events, window=7)
    assert (row.posts, row.replies, row.likes, row.views) == (2, 2, 2, 2)
    row = snap(events, window=28)
    assert (row.posts, row.replies, row.likes, row.views) == (3, 3, 3, 3)


# ---- listening --------------------------------------------------------------------------


def _listening_log() -> list[Event]:
    return [
        # p1: the author's own reply does not count; b answers after 5 h
        post("a", T - 3 * D, "p1"), reply("a", T - 3 * D + H, "p1"),
        reply("b", T - 3 * D + 5 * H, "p1"), reply("c", T - 3 * D + 6 * H, "p1"),
        # p2: answered after exactly the SLA: within it
        post("a", T - 2 * D, "p2"), reply("b", T - 2 * D + 24 * H, "p2"),
        # p3: answered 1 ms after the SLA: eligible, not answered, not unanswered
        post("a", T - 2 * D, "p3"), reply("c", T - 2 * D + 24 * H + 1, "p3"),
        # p4: posted exactly at t - SLA: eligible; only the author likes it: unanswered
        post("a", T - D, "p4"), like("a", T - H, "p4"),
        # p5: 1 ms too young to be eligible; liked by someone else (reciprocity)
        post("a", T - D + 1, "p5"), like("c", T - H, "p5"),
        # p6: the only other reply lies after t
        post("b", T - 4 * D, "p6"), reply("a", T + H, "p6"),
        # a like on a reply never counts for the post
        like("c", T - H, "r-of-p6", "reply"),
    ]


def test_listening_service_level() -> None:
    row = snap(_listening_log())
    assert row.posts == 6
    assert row.posts_eligible == 5  # p1, p2, p3, p4, p6
    assert row.posts_answered_in_sla == 2  # p1, p2
    assert row.unanswered_posts == 2  # p4, p6
    assert row.median_first_reply_seconds == pytest.approx(86_400.0, abs=1e-9)  # 5h, 24h, 24h+1ms
    assert row.responsiveness == pytest.approx(2 / 5)
    assert row.reciprocity == pytest.approx(4 / 6)  # p1, p2, p3 (replies), p5 (like)


def test_listening_once_the_future_reply_arrives() -> None:
    row = snap(_listening_log(), t=T + H)
    # p6 now has a reply (4 d + 1 h late); p5 became eligible (no reply): unanswered
    assert row.posts_eligible == 6
    assert row.posts_answered_in_sla == 2
    assert row.unanswered_posts == 2  # p4, p5
    # delays 5h, 24h, 24h+1ms, 97h: the two middle ones
    assert row.median_first_reply_seconds == pytest.approx(86_400.0005, abs=1e-9)
    assert row.reciprocity == pytest.approx(5 / 6)


def test_median_is_the_mean_of_the_two_middle_values() -> None:
    events = [post("a", T - 3 * D, "p1"), reply("b", T - 3 * D + 10_000, "p1"),
              post("a", T - 3 * D, "p2"), reply("b", T - 3 * D + 21_000, "p2")]
    assert snap(events).median_first_reply_seconds == pytest.approx(15.5)


def test_first_reply_includes_replies_to_replies_in_the_thread() -> None:
    events = [post("a", T - 3 * D, "p1"),
              reply("b", T - 3 * D + 2 * H, "p1", "reply", parent_id="r0"),
              reply("c", T - 3 * D + 3 * H, "p1", "post")]
    row = snap(events)
    assert row.median_first_reply_seconds == pytest.approx(7200.0)
    assert row.posts_answered_in_sla == 1


def test_reply_before_its_post_counts_with_negative_delay() -> None:
    events = [post("a", T - 3 * D, "p1"), reply("b", T - 3 * D - 60_000, "p1")]
    row = snap(events)
    assert row.median_first_reply_seconds == pytest.approx(-60.0)
    assert row.posts_answered_in_sla == 1
    assert row.unanswered_posts == 0


def test_replies_without_a_post_in_the_window_are_not_listening() -> None:
    events = [post("a", T - 10 * D, "old"), reply("b", T - D, "old"), reply("b", T - D, "nope")]
    row = snap(events)
    assert row.posts == 0
    assert row.replies == 2
    assert (row.posts_eligible, row.unanswered_posts) == (0, 0)
    assert row.median_first_reply_seconds is None
    assert row.responsiveness is None
    assert row.reciprocity is None


def test_sla_per_community() -> None:
    config = MetricConfig(sla_hours=24.0, sla_hours_by_community={C: 2.0})
    events = [post("a", T - 3 * H, "p1"), reply("b", T - 3 * H + 2 * H, "p1"),
              post("a", T - 2 * H, "p2"), reply("b", T - H, "p2"),
              post("x", T - 3 * H, "q", community="other")]
    row = snap(events, config=config)
    assert (row.posts_eligible, row.posts_answered_in_sla, row.unanswered_posts) == (2, 2, 0)
    other = snap(events, config=config, community="other")
    assert (other.posts_eligible, other.unanswered_posts) == (0, 0)


# ---- sustainability components ----------------------------------------------------------


def test_retention() -> None:
    events = [
        post("a", T - 10 * D, "p1"), post("a", T - D, "p2"),
        reply("b", T - 8 * D, "p1"),
        post("c", T - 14 * D, "p0"),  # exactly t - 2W: not in the previous window
        like("e", T - 9 * D, "p1"),  # likes are no posting or replying
        post("d", T - 2 * D, "p3"),
    ]
    assert snap(events).retention == pytest.approx(0.5)  # previous {a, b}, kept {a}
    assert snap([post("a", T - D, "p")]).retention is None  # previous window empty


def test_retention_is_not_restricted_to_members() -> None:
    events = [post("a", T - 10 * D, "p1"), leave("a", T - 9 * D), post("a", T - D, "p2"),
              leave("a", T - D + 1), reply("b", T - 8 * D, "p1"), leave("b", T - 8 * D + 1)]
    row = snap(events)
    assert row.members == 0
    assert row.retention == pytest.approx(0.5)


def test_continuity_periods() -> None:
    events = [reply("a", ts, "p") for ts in (T, T - D + 1, T - D, T - 6 * D - 1, T - 7 * D)]
    # periods (t-(k+1)d, t-kd]: T and T-D+1 -> 0, T-D -> 1, T-6D-1 -> 6, T-7D -> 7
    assert snap(events, window=7).continuity == pytest.approx(3 / 7)
    assert snap(events, window=28).continuity == pytest.approx(4 / 28)
    assert snap([post("a", T, "p")]).continuity == 0.0  # posts are no conversation


def test_sustainability_score_is_the_mean_of_defined_components() -> None:
    events = [post("a", T - 2 * D, "p"), reply("b", T - 2 * D + H, "p")]
    row = snap(events)
    assert row.retention is None
    assert row.continuity == pytest.approx(1 / 7)  # one reply, in period 1
    assert row.responsiveness == 1.0
    assert row.participation == 1.0
    assert row.reciprocity == 1.0
    assert row.sustainability == pytest.approx(100 * (1 / 7 + 3) / 4)


def test_sustainability_weights() -> None:
    config = MetricConfig(weight_continuity=0.0, weight_participation=3.0)
    events = [post("a", T - 2 * D, "p"), join("c", T - 10 * D)]  # unanswered, unliked post
    row = snap(events, config=config)
    # responsiveness 0, reciprocity 0, participation min(1, 0.5 / 0.3) = 1 with weight 3
    assert (row.responsiveness, row.reciprocity, row.participation) == (0.0, 0.0, 1.0)
    assert row.sustainability == pytest.approx(100 * 3 / 5)


def test_sustainability_without_data() -> None:
    # only continuity (0) is defined
    assert snap([view("a", T + D)]).sustainability == 0.0
    # only a member: continuity 0, participation 0
    assert snap([join("a", T - D)]).sustainability == 0.0


# ---- stagnation -------------------------------------------------------------------------


def test_stagnation_when_quiet() -> None:
    assert snap([join("a", T - 30 * D), post("a", T - 7 * D, "p")]).stagnating
    assert not snap([join("a", T - 30 * D), post("a", T - 7 * D + 1, "p")]).stagnating
    # likes and views do not break the silence
    assert snap([join("a", T - 30 * D), like("a", T - D, "p"), view("a", T)]).stagnating


def test_stagnation_needs_members() -> None:
    assert not snap([post("a", T - 100 * D, "p")]).stagnating
    assert not snap([post("a", T + H, "p")]).stagnating


@pytest.mark.parametrize(("recent", "stagnating"), [(4, False), (3, False), (2, True)])
def test_stagnation_when_writers_drop(recent: int, stagnating: bool) -> None:
    # 4 writers in (t-28d, t-14d]; 3 is exactly 75% of 4, so not fewer
    events = [post(u, T - 20 * D, f"old-{u}") for u in "abcd"]
    events += [post("x", T - 28 * D, "too-old")]  # exactly t - 28d: in neither span
    events += [reply(u, T - D, f"old-{u}") for u in "abcd"[:recent]]
    assert snap(events).stagnating is stagnating


@pytest.mark.parametrize(("offset", "stagnating"), [(0, True), (1, False)])
def test_stagnation_span_boundary(offset: int, stagnating: bool) -> None:
    events = [post(u, T - 20 * D, f"old-{u}") for u in "abcd"]
    events += [reply(u, T - D, f"old-{u}") for u in "abc"]
    # at exactly t - 14d, y is a writer of the earlier span (3 < 0.75 * 5);
    # 1 ms later, of the recent one (4 is not < 0.75 * 4)
    events += [post("y", T - 14 * D + offset, "edge")]
    assert snap(events).stagnating is stagnating


def test_stagnation_counts_writers_who_are_no_members() -> None:
    config = MetricConfig()
    events = [post(u, T - 20 * D, f"p-{u}") for u in "abcd"]
    events += [leave(u, T - 19 * D) for u in "abcd"]
    events += [post("e", T - D, "p-e"), post("f", T - D, "p-f")]
    row = snap(events, config=config)
    assert row.members == 2
    assert row.stagnating  # 2 < 0.75 * 4


def test_stagnation_is_configurable() -> None:
    config = MetricConfig(windows_days=(1, 3), membership_horizon_days=5,
                          stagnation_quiet_days=2, stagnation_compare_days=3,
                          stagnation_drop_ratio=0.5)
    quiet = [join("a", T - 4 * D), post("a", T - 2 * D, "p")]
    assert snap(quiet, window=1, config=config).stagnating
    drop = [post(u, T - 4 * D, f"p{u}") for u in "abcd"] + [post("a", T - D, "q")]
    assert snap(drop, window=1, config=config).stagnating  # 1 < 0.5 * 4
    drop += [post("b", T - D, "q2")]
    assert not snap(drop, window=1, config=config).stagnating  # 2 is not < 2


# ---- duplicates, future events, last activity, expiry ------------------------------------


def test_duplicates_change_nothing() -> None:
    events = [post("a", T - D, "p"), reply("b", T - D + H, "p"), like("c", T - H, "p")]
    core = PulseCore(MetricConfig())
    assert core.apply(events) == 0
    once = core.snapshot(T)
    assert core.apply([*events, msgspec.structs.replace(events[1])]) == 4
    assert core.snapshot(T) == once
    assert once[0].posts == 1 and once[0].replies == 1 and once[0].likes == 1


def test_same_event_id_in_another_community_is_no_duplicate() -> None:
    a = Event("same", "post", "c1", "u", T - D, post_id="p")
    b = Event("same", "post", "c2", "u", T - D, post_id="p")
    core = PulseCore(MetricConfig())
    assert core.apply([a, b]) == 0
    assert [r.posts for r in core.snapshot(T)] == [1, 1, 1, 1]


def test_user_ids_are_stored_once_per_user() -> None:
    """Decoded events carry a new string per event; the state keeps one per user, shared
    by the user table and the threads (a third of the thread memory on long histories)."""
    decode = msgspec.json.Decoder(Event).decode
    raw = [b'{"event_id":"1","type":"post","community_id":"c","user_id":"author-1",'
           b'"ts":%d,"post_id":"p"}' % (T - D),
           b'{"event_id":"2","type":"reply","community_id":"c","user_id":"replier-1",'
           b'"ts":%d,"post_id":"p","reply_id":"r","parent_id":"p","parent_type":"post"}'
           % (T - D + H),
           b'{"event_id":"3","type":"like","community_id":"c","user_id":"author-1",'
           b'"ts":%d,"target_id":"p","target_type":"post"}' % (T - H)]
    core = PulseCore(MetricConfig())
    core.apply([decode(line) for line in raw])
    state = core.communities[C]
    keys = {user_id: user_id for user_id in state.users}
    thread = state.threads["p"]
    assert thread.author is keys["author-1"]
    assert list(thread.replies)[1] is keys["replier-1"]  # (ts, user)
    assert list(thread.likes)[1] is keys["author-1"]


def test_future_events_wait_until_as_of_reaches_them() -> None:
    core = PulseCore(MetricConfig())
    core.apply([post("a", T + H, "p"), join("b", T + 2 * H, community="later")])
    now = {(r.community_id, r.window_days): r for r in core.snapshot(T)}
    assert set(now) == {(C, 7), (C, 28), ("later", 7), ("later", 28)}  # rows, all zero
    assert now[C, 7].posts == 0 and now[C, 7].members == 0
    assert now[C, 7].last_activity_ms is None
    assert now["later", 7].members == 0
    later = {(r.community_id, r.window_days): r for r in core.snapshot(T + 2 * H)}
    assert later[C, 7].posts == 1 and later[C, 7].creators == 1
    assert later[C, 7].last_activity_ms == T + H
    assert later["later", 7].members == 1 and later["later", 7].inactives == 1


def test_last_activity_ignores_membership_events() -> None:
    row = snap([view("a", T - 3 * D), join("a", T - D), like("b", T + 1, "p")])
    assert row.last_activity_ms == T - 3 * D


def test_expire_keeps_last_activity_and_deciding_membership() -> None:
    config = MetricConfig()
    events = [post("a", T - 200 * D, "p"), join("a", T - 150 * D), join("b", T - 300 * D),
              leave("b", T - 250 * D)]
    core = PulseCore(config)
    core.apply(events)
    before = core.snapshot(T)
    core.expire(T - config.retention_ms)
    after = core.snapshot(T)
    assert after == before
    assert after[0].members == 1
    assert after[0].last_activity_ms == T - 200 * D


def test_rows_have_every_configured_window() -> None:
    config = MetricConfig(windows_days=(1, 3, 7), membership_horizon_days=7)
    core = PulseCore(config)
    core.apply([post("a", T - D, "p")])
    assert [r.window_days for r in core.snapshot(T)] == [1, 3, 7]
    assert [r.posts for r in core.snapshot(T)] == [0, 1, 1]  # t - 1d is outside (t - 1d, t]


def test_a_repeated_event_id_with_another_day_is_still_a_duplicate() -> None:
    # A producer that re-stamps a retry: dedup used to look only at the day of ts.
    config = MetricConfig()
    core = PulseCore(config)
    post = Event("e1", "post", "c", "u1", T - 3 * DAY_MS, post_id="p1")
    restamped = Event("e1", "post", "c", "u1", T - DAY_MS, post_id="p1")
    assert core.apply([post]) == 0
    assert core.apply([restamped]) == 1
    core.expire(T + 2 * DAY_MS - config.retention_ms)  # the post's day is over: frozen
    assert core.apply([Event("e1", "post", "c", "u1", T, post_id="p1")]) == 1
    assert [r.posts for r in core.snapshot(T)] == [1, 1]


def test_a_post_id_posted_twice_takes_its_first_post_whatever_the_arrival_order() -> None:
    # Two post events of one post id (a retry with a new event id): the thread's author and
    # time come from the first by event time, then by event id, in any arrival order.
    events = [Event("b", "post", C, "ann", T - 3 * D, post_id="p"),
              Event("a", "post", C, "bob", T - 3 * D, post_id="p"),  # same ts, smaller id
              Event("c", "post", C, "cy", T - 4 * D, post_id="q"),
              Event("d", "post", C, "dee", T - 5 * D, post_id="q"),  # earlier: it wins
              reply("bob", T - 2 * D, "p"), reply("dee", T - 4 * D + H, "q")]
    rows = {tuple(events.index(e) for e in order): snap(list(order))
            for order in itertools.permutations(events)}
    assert len(set(rows.values())) == 1
    row = next(iter(rows.values()))
    # p is bob's (id "a"): bob's own reply is no answer; q is dee's: dee's reply neither.
    assert row.unanswered_posts == 2 and row.median_first_reply_seconds is None


def test_long_user_ids_sharing_a_prefix_keep_their_own_carried_membership() -> None:
    # Expiry carries each deciding join as an event of its own: two user ids that share
    # their first 200 characters must not make one carry a duplicate of the other.
    first, second = "x" * 200 + "-one", "x" * 200 + "-two"
    config = MetricConfig()
    core = PulseCore(config)
    core.apply([join(first, T - 200 * D), join(second, T - 200 * D)])
    core.expire(T - config.retention_ms)
    carried = core.communities[C].memberships_through(T)
    assert len({event.event_id for event in carried}) == 2
    rebuilt = PulseCore(config)
    assert rebuilt.apply(carried) == 0  # no duplicate among them
    assert snap(carried).members == 2
