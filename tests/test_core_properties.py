"""Property tests: the domain core agrees with the independent SQL oracle.

Random event logs (a few communities and users; posts, replies to posts and to
replies, threads whose post may not exist, likes and views on posts and replies,
joins and leaves) with timestamps clustered on the boundaries the SPEC cares about
(exactly t, t - W, t - 2W, t - SLA, t - horizon, day boundaries, the future), applied
shuffled, duplicated and in random batch sizes.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import Event
from streams.config import DAY_MS, HOUR_MS, MetricConfig
from streams.core import PulseCore
from streams.privacy import Pseudonymiser

try:
    from tests.oracle import ROW_KEYS, oracle_snapshots
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from oracle import ROW_KEYS, oracle_snapshots  # type: ignore[no-redef]

T0 = 1_710_028_800_000  # 2024-03-10T00:00:00Z
AS_OFS = (T0, T0 + 7 * HOUR_MS + 1, T0 - 2 * DAY_MS)

DEFAULT = MetricConfig()
SMALL = MetricConfig(
    windows_days=(1, 3),
    sla_hours=2.0,
    sla_hours_by_community={"c2": 0.5},
    membership_horizon_days=5,
    stagnation_quiet_days=2,
    stagnation_compare_days=3,
    stagnation_drop_ratio=0.5,  # ties (1 of 2, 2 of 4 writers) are then common
    # content experts (SPEC 5): a roster for two communities, none for the third
    experts={"c1": frozenset({"u1", "u2"}), "c2": frozenset({"u3", "nobody"})},
)
CONFIGS = (DEFAULT, SMALL)

COMMUNITIES = ("c1", "c1", "c2", "ü/3")  # c1 is the busy one
USERS = ("u1", "u2", "u3", "u4")
PSEUDONYM_KEY = b"property-test-key-0123456789"
POST_POOL = tuple(f"p{i}" for i in range(5))  # posts are created p0, p1, ...; p4 rarely exists
REPLY_POOL = tuple(f"r{i}" for i in range(6))


def _interesting_offsets(config: MetricConfig) -> list[int]:
    """Offsets from an as_of where the SPEC's boundaries lie for this config."""
    offsets = {0, HOUR_MS, DAY_MS, -DAY_MS, -2 * DAY_MS, -3 * DAY_MS}
    for w in config.windows_days:
        offsets |= {-w * DAY_MS, -2 * w * DAY_MS, (1 - w) * DAY_MS}
    offsets |= {
        -config.membership_horizon_days * DAY_MS,
        -config.stagnation_quiet_days * DAY_MS,
        -config.stagnation_compare_days * DAY_MS,
        -2 * config.stagnation_compare_days * DAY_MS,
    }
    offsets |= {-config.sla_ms(c) for c in COMMUNITIES}
    return sorted(offsets)


def _timestamps(config: MetricConfig) -> st.SearchStrategy[int]:
    return st.builds(
        lambda anchor, offset, jitter: anchor + offset + jitter,
        st.sampled_from(AS_OFS),
        st.sampled_from(_interesting_offsets(config)),
        st.one_of(
            st.just(0),
            st.sampled_from((-1, 1, -HOUR_MS, HOUR_MS)),
            st.integers(-2 * DAY_MS, 2 * DAY_MS),
        ),
    )


@st.composite
def event_logs(draw: st.DrawFn, config: MetricConfig) -> list[Event]:
    """A log without duplicates; the tests add (identical) duplicates themselves.

    Timestamps mostly come from a small per-log pool, so that equal timestamps (a join
    and a leave, a leave and an activity, a reply and its post) are common."""
    fresh = _timestamps(config)
    pool = draw(st.lists(fresh, min_size=1, max_size=8))
    timestamps = st.one_of(st.sampled_from(pool), fresh)
    n = draw(st.integers(0, 50))
    next_event = dict.fromkeys(COMMUNITIES, 0)
    next_post = dict.fromkeys(COMMUNITIES, 0)
    posts: dict[str, list[tuple[str, int]]] = {c: [] for c in COMMUNITIES}
    events: list[Event] = []
    for i in range(n):
        community = draw(st.sampled_from(COMMUNITIES))
        kind = draw(st.sampled_from(("post", "post", "reply", "reply", "reply", "like",
                                     "like", "view", "join", "leave")))
        # event ids repeat across communities on purpose: dedup is per community
        event_id = f"e{next_event[community]}"
        next_event[community] += 1
        fields: dict[str, Any] = {
            "event_id": event_id,
            "type": kind,
            "community_id": community,
            "user_id": draw(st.sampled_from(USERS)),
            "ts": draw(timestamps),
        }
        if kind == "post":
            fields["post_id"] = f"p{next_post[community]}"
            next_post[community] += 1
            fields["content_kind"] = draw(st.sampled_from((None, "ugc", "managed")))
            posts[community].append((fields["post_id"], fields["ts"]))
        elif kind == "reply":
            fields["post_id"] = draw(st.sampled_from(POST_POOL))
            if posts[community] and draw(st.booleans()):  # type: ignore[arg-type]  # (mypy takes the `and`'s left type as context)
                # answer a known post at a delay on the SLA's edges
                fields["post_id"], post_ts = draw(st.sampled_from(posts[community]))
                sla = config.sla_ms(community)
                fields["ts"] = post_ts + draw(st.sampled_from((0, -1, 1, sla - 1, sla, sla + 1)))
            fields["reply_id"] = f"r{i}"
            parent_type = draw(st.sampled_from(("post", "reply")))
            fields["parent_type"] = parent_type
            fields["parent_id"] = (
                fields["post_id"] if parent_type == "post" else draw(st.sampled_from(REPLY_POOL))
            )
        elif kind in ("like", "view"):
            target_type = draw(st.sampled_from(("post", "reply")))
            fields["target_type"] = target_type
            pool_ids = POST_POOL if target_type == "post" else REPLY_POOL
            fields["target_id"] = draw(st.sampled_from(pool_ids))
        events.append(Event(**fields))
    return events


def _with_duplicates(events: list[Event], rnd: random.Random) -> list[Event]:
    extra = [msgspec.structs.replace(e) for e in events if rnd.random() < 0.2]
    out = events + extra
    rnd.shuffle(out)
    return out


def _batches(events: list[Event], rnd: random.Random) -> list[list[Event]]:
    out: list[list[Event]] = []
    i = 0
    while i < len(events):
        size = rnd.randint(1, 12)
        out.append(events[i : i + size])
        i += size
    return out


def _feed(config: MetricConfig, batches: Sequence[Sequence[Event]]) -> tuple[PulseCore, int]:
    core = PulseCore(config)
    duplicates = sum(core.apply(batch) for batch in batches)
    return core, duplicates


def _rows(core: PulseCore, as_of: int) -> list[dict[str, Any]]:
    rows = [dataclasses.asdict(r) for r in core.snapshot(as_of)]
    return sorted(rows, key=lambda r: (r["community_id"], r["window_days"]))


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return False
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return (a == b and type(a) is type(b)) or (a == b and {type(a), type(b)} <= {int, bool})


def assert_rows_match(core_rows: list[dict[str, Any]], oracle_rows: list[dict[str, Any]],
                      context: str) -> None:
    core_keys = [(r["community_id"], r["window_days"]) for r in core_rows]
    oracle_keys = [(r["community_id"], r["window_days"]) for r in oracle_rows]
    assert core_keys == oracle_keys, f"{context}: row keys differ"
    for core_row, oracle_row in zip(core_rows, oracle_rows, strict=True):
        assert set(ROW_KEYS) == set(core_row), "SnapshotRow columns changed; update the oracle"
        diffs = {
            key: (core_row[key], oracle_row[key])
            for key in ROW_KEYS
            if not _same_value(core_row[key], oracle_row[key])
        }
        assert not diffs, (
            f"{context} community={core_row['community_id']!r} "
            f"window={core_row['window_days']} core vs oracle: {diffs}"
        )


CONFIG_IDS = ("default", "small")
_T = TypeVar("_T", bound=Callable[..., None])


def on_random_logs_with_expiry(test: _T) -> _T:
    """Runs `test(config, data, rnd, expire_days)` on both configs, 150 examples each:
    draw a log with `data.draw(event_logs(config))`, expire `expire_days` before
    AS_OFS[0] (None: not at all)."""
    return pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)(  # type: ignore[no-any-return]
        settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(
            given(data=st.data(), rnd=st.randoms(use_true_random=False),
                  expire_days=st.sampled_from((None, 0, 2, 40)))(test)))


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), rnd=st.randoms(use_true_random=False))
def test_core_matches_oracle(config: MetricConfig, data: st.DataObject,
                             rnd: random.Random) -> None:
    events = data.draw(event_logs(config), label="events")
    arrived = _with_duplicates(events, rnd)
    core, duplicates = _feed(config, _batches(arrived, rnd))
    assert duplicates == len(arrived) - len(events)
    expected = oracle_snapshots(arrived, AS_OFS, config)
    for as_of in AS_OFS:
        oracle_rows = [r for r in expected if r["as_of_ms"] == as_of]
        oracle_rows.sort(key=lambda r: (r["community_id"], r["window_days"]))
        assert_rows_match(_rows(core, as_of), oracle_rows, f"as_of={as_of}")


def pseudonymised(events: list[Event]) -> list[Event]:
    """Copies of the events with user ids as the worker's decoder leaves them when
    pseudonymisation is on (streams.privacy; Ingestor.counted applies it)."""
    copies = [msgspec.structs.replace(e) for e in events]
    Pseudonymiser(PSEUDONYM_KEY).events(copies)
    return copies


def pseudonymised_config(config: MetricConfig) -> MetricConfig:
    """The config with its experts roster hashed as `streams.steering.files` hashes it
    when pseudonymisation is on (so it names users as the pseudonymised events do)."""
    if config.experts is None:
        return config
    hashed = Pseudonymiser(PSEUDONYM_KEY)
    return dataclasses.replace(config, experts={
        c: frozenset(hashed.many(users)) for c, users in config.experts.items()})


@pytest.mark.parametrize("pseudonyms", [False, True], ids=["raw-ids", "pseudonymised"])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rnd1=st.randoms(use_true_random=False),
       rnd2=st.randoms(use_true_random=False))
def test_order_and_batching_do_not_matter(
    config: MetricConfig, pseudonyms: bool, data: st.DataObject, rnd1: random.Random,
    rnd2: random.Random
) -> None:
    """Two arrival orders and batchings give the same snapshots; with `pseudonyms`, the
    second core sees every user id replaced by its keyed hash: still the same numbers."""
    events = data.draw(event_logs(config), label="events")
    first, _ = _feed(config, _batches(_with_duplicates(events, rnd1), rnd1))
    seen_second = pseudonymised(events) if pseudonyms else events
    second, _ = _feed(pseudonymised_config(config) if pseudonyms else config,
                      _batches(_with_duplicates(seen_second, rnd2), rnd2))
    if pseudonyms:
        held = {u for state in second.communities.values() for u in state.users}
        assert held.isdisjoint(USERS)
    for as_of in AS_OFS:
        assert _rows(first, as_of) == _rows(second, as_of)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rnd=st.randoms(use_true_random=False),
       shift_days=st.sampled_from((0, 1, 5, 30, 60, 100)))
def test_expire_does_not_change_snapshots(
    config: MetricConfig, data: st.DataObject, rnd: random.Random, shift_days: int
) -> None:
    events = data.draw(event_logs(config), label="events")
    arrived = _with_duplicates(events, rnd)
    for as_of in AS_OFS:
        # snapshots later than the events too, so that expiry really drops things
        t = as_of + shift_days * DAY_MS
        full, _ = _feed(config, _batches(arrived, rnd))
        expired, _ = _feed(config, _batches(arrived, rnd))
        expired.expire(t - config.retention_ms)
        for when in (t, t + DAY_MS):  # any snapshot at or after t stays exact
            before, after = _rows(full, when), _rows(expired, when)
            kept = {r["community_id"] for r in after}
            # a community may be forgotten entirely, but only when it has nothing to show
            for row in before:
                if row["community_id"] not in kept:
                    assert row["members"] == 0 and row["posts"] == 0, row
            assert [r for r in before if r["community_id"] in kept] == after
