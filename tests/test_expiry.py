"""State expires, so memory stays bounded however long the worker runs, and what is
kept in the changelog after expiry still rebuilds the same numbers."""

from __future__ import annotations

import random
from types import SimpleNamespace

import msgspec

from schemas.events import Event
from streams.changelog import DeltaLog
from streams.config import DAY_MS, MetricConfig
from streams.core import CommunityState, PulseCore
from streams.delivery import Record

START = 1_767_225_600_000  # 2026-01-01


def day_of_activity(day: int, rng: random.Random, users: int = 300) -> list[Event]:
    base = START + day * DAY_MS
    events = []
    for i in range(40):
        user = f"u{rng.randrange(users)}"
        ts = base + rng.randrange(DAY_MS)
        post_id = f"p{day}-{i}"
        events.append(Event(f"{day}-{i}-p", "post", "c", user, ts, post_id=post_id))
        events.append(Event(f"{day}-{i}-r", "reply", "c", f"u{rng.randrange(users)}", ts + 60_000,
                            post_id=post_id, reply_id=f"r{day}-{i}", parent_id=post_id,
                            parent_type="post"))
        events.append(Event(f"{day}-{i}-l", "like", "c", f"u{rng.randrange(users)}", ts + 1,
                            target_id=post_id, target_type="post"))
    if day == 0:
        events += [Event(f"join-{u}", "join", "c", f"u{u}", base) for u in range(users + 50)]
    return events


def size(state: CommunityState) -> int:
    return (sum(len(u) for u in state.users.values())
            + sum(len(ids) for ids in state._seen_by_day.values())
            + sum(len(ids) for ids in state._frozen_by_day.values())
            + len(state.threads) + sum(len(log) for log in state.kinds.values()))


def test_state_stays_bounded_over_a_long_run() -> None:
    config = MetricConfig()
    core = PulseCore(config)
    rng = random.Random(1)
    sizes = {}
    for day in range(240):
        core.apply(day_of_activity(day, rng))
        t = START + (day + 1) * DAY_MS
        core.snapshot(t)
        core.expire(t - config.retention_ms)
        sizes[day] = size(core.communities["c"])
    assert sizes[239] < 1.1 * sizes[140]  # flat once the retention is full
    unexpired = PulseCore(config)
    replay_rng = random.Random(1)
    for day in range(240):
        unexpired.apply(day_of_activity(day, replay_rng))
    assert sizes[239] < 0.5 * size(unexpired.communities["c"])


class RecordingTable:
    """Stands in for the Faust table's local store (DeltaLog returns the changelog
    records it wants written; tests keep them in `changelog`)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.changelog: list[Record] = []
        self.changelog_topic = SimpleNamespace(get_topic_name=lambda: "events-changelog")


def test_changelog_after_expiry_rebuilds_the_same_snapshot_and_keeps_old_joins() -> None:
    config = MetricConfig()
    table = RecordingTable()
    deltas = DeltaLog(table)  # type: ignore[arg-type]
    live = PulseCore(config)
    rng = random.Random(2)
    for day in range(150):
        events = day_of_activity(day, rng)
        live.apply(events)
        table.changelog += deltas.append(3, f"batch{day}", events)
        t = START + (day + 1) * DAY_MS
        live.expire(t - config.retention_ms)
        carry = live.communities["c"].memberships_through(t - config.retention_ms)
        carried, deletions = deltas.expire(3, t - config.retention_ms, carry)
        table.changelog += carried + deletions
    assert len(table.data) < 100  # old deltas were deleted, only recent ones and the carry
    assert any(r.value is None for r in table.changelog)  # tombstones for compaction
    assert all(r.topic == "events-changelog" and r.partition == 3 for r in table.changelog)
    compacted: dict[bytes | None, bytes] = {}  # what recovery reads back from the topic
    for record in table.changelog:
        if record.value is None:
            compacted.pop(record.key, None)
        else:
            compacted[record.key] = record.value
    assert compacted == table.data

    rebuilt = PulseCore(config)
    for _, events in DeltaLog(table).load({3}):  # type: ignore[arg-type]
        rebuilt.apply(events)
    t = START + 150 * DAY_MS
    assert rebuilt.snapshot(t) == live.snapshot(t)
    # The users who joined on day 0 and never acted are still members: their joins were
    # carried over when the day-0 delta expired.
    assert live.snapshot(t)[0].inactives > 0


def test_a_redelivered_old_join_does_not_bring_back_a_member_who_left() -> None:
    config = MetricConfig()
    core = PulseCore(config)
    t = START + 400 * DAY_MS
    join = Event("j", "join", "c", "gone", START)
    core.apply([join, Event("l", "leave", "c", "gone", START + 50 * DAY_MS),
                Event("k", "join", "c", "stays", START)])
    before = core.snapshot(t)
    core.expire(t - config.retention_ms)
    core.apply([join])  # redelivered long after its day expired
    assert core.snapshot(t) == before


def test_duplicates_of_days_that_are_over_are_still_caught() -> None:
    # Ids of days that ended a day before the newest snapshot move to compact arrays;
    # redelivered events of those days must still count as duplicates, and a late new
    # event of such a day still counts once.
    config = MetricConfig()
    state = CommunityState("c", config)
    old_days = [e for day in range(3) for e in day_of_activity(day, random.Random(day))]
    assert state.apply(old_days) == 0
    snapshot_at = START + 10 * DAY_MS
    state.expire(snapshot_at - config.retention_ms)
    assert state._frozen_by_day and not any(state._seen_by_day.values())
    before = state.snapshot(snapshot_at)
    assert state.apply(old_days) == len(old_days)
    late = Event("late-1", "post", "c", "u-late", START + DAY_MS + 5, post_id="p-late")
    assert state.apply([late]) == 0
    assert state.apply([late, *old_days[:10]]) == 11
    state.expire(snapshot_at - config.retention_ms)  # the late id joins the day's array
    assert state.apply([late]) == 1
    after = state.snapshot(snapshot_at)
    # the late post (day 1) is outside the 7-day window, inside the 28-day one
    assert [r.posts for r in after] == [before[0].posts, before[1].posts + 1]


def test_changelog_deltas_are_arrays_and_map_encoded_ones_still_load() -> None:
    events = day_of_activity(0, random.Random(4))
    table = RecordingTable()
    DeltaLog(table).append(1, "b", events)  # type: ignore[arg-type]
    (stored,) = (v for k, v in table.data.items() if not k.endswith(b"\x1fuser-ids"))
    assert stored[:1] == b"\xdc" and msgspec.msgpack.decode(stored)[0][0] == events[0].event_id
    table.data[b"1\x1fold#0"] = msgspec.msgpack.encode(events[:5])  # maps, as written before
    loaded = [e for _, batch in DeltaLog(table).load({1}) for e in batch]  # type: ignore[arg-type]
    fields = msgspec.structs.astuple
    assert sorted(map(fields, loaded), key=lambda t: t[0]) == sorted(
        map(fields, [*events, *events[:5]]), key=lambda t: t[0])


def test_a_topic_prefix_that_starts_like_a_carry_leaves_batches_as_batches() -> None:
    # Batch deltas are tagged `<topic>@<offset>`; with topic_prefix "carry" their tags
    # start like the carry's. Recovery must still index them as batches, so that expiry
    # deletes them (a carry key is never deleted by age).
    table = RecordingTable()
    deltas = DeltaLog(table)  # type: ignore[arg-type]
    events = day_of_activity(0, random.Random(3))
    deltas.append(3, "carrycommunity.posts@17", events)
    recovered = DeltaLog(table)  # type: ignore[arg-type]
    assert [len(e) for _, e in recovered.load({3})] == [len(events)]
    assert recovered.carry_keys == {} and recovered.has_expired(3, START + 2 * DAY_MS)
    _, deletions = recovered.expire(3, START + 2 * DAY_MS, [])
    assert [r.key for r in deletions] == [b"3\x1fcarrycommunity.posts@17#0"]
    assert not any(b"carrycommunity" in key for key in table.data)
