"""Bulk ingest (streams.bulk) builds exactly the state that per-event `apply` builds.

Same random logs as the property tests (duplicates, ties, threads without posts, likes
of replies, joins and leaves), split at a random point: both cores apply the first part
one event at a time, optionally expire, then one applies the rest one by one and the
other in bulk. Every user log, event-type log, thread and day's known ids must agree,
and so must the duplicate counts and the snapshots.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

from schemas.columnar import events_table
from schemas.events import Event
from streams.bulk import EventColumns, _stable_order, apply_columns
from streams.config import DAY_MS, MetricConfig
from streams.core import CommunityState, PulseCore
from streams.privacy import Pseudonymiser

try:
    from tests import test_core_properties as props
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    import test_core_properties as props  # type: ignore[no-redef]


def state_of(core: PulseCore) -> dict[str, Any]:
    """Everything a community keeps, in comparable form."""
    return {
        cid: {
            "users": {uid: list(log) for uid, log in s.users.items()},
            "kinds": {kind: list(log.view()) for kind, log in s.kinds.items()},
            "threads": {pid: (th.post_ts, th.author, th.post_event, th.replies, th.likes,
                              th.newest, th.managed)
                        for pid, th in s.threads.items()},
            "ids": ids_by_day(s),
        }
        for cid, s in core.communities.items()
    }


def ids_by_day(state: CommunityState) -> dict[int, set[int]]:
    """The ids a community knows per day, whether in a set (per-event apply, a day in
    progress) or in a sorted array (bulk apply, a day that is over): both deduplicate."""
    ids: dict[int, set[int]] = {}
    for day, frozen in state._frozen_by_day.items():
        assert list(frozen) == sorted(set(frozen)), "bisect needs sorted, distinct ids"
        ids[day] = set(frozen)
    for day, seen in state._seen_by_day.items():
        if seen:
            assert not seen & ids.get(day, set()), "an id kept twice"
            ids[day] = ids.get(day, set()) | seen
    # The lookup structures hold exactly the days' ids, each id once (under one day).
    assert state._seen == set().union(*state._seen_by_day.values())
    all_frozen = [i for day in state._frozen_by_day.values() for i in day]
    assert list(state._frozen) == sorted(all_frozen) and len(set(all_frozen)) == len(all_frozen)
    assert not state._seen & set(all_frozen), "an id kept twice"
    return ids


def columns(events: list[Event]) -> EventColumns:
    return EventColumns.from_table(events_table(events))


@props.on_random_logs_with_expiry
def test_bulk_apply_builds_the_same_state_as_per_event_apply(
        config: MetricConfig, data: st.DataObject, rnd: random.Random,
        expire_days: int | None) -> None:
    arrived = props._with_duplicates(data.draw(props.event_logs(config), label="events"), rnd)
    split = rnd.randint(0, len(arrived))
    one_by_one, bulk = PulseCore(config), PulseCore(config)
    for core in (one_by_one, bulk):
        core.apply(arrived[:split])
        if expire_days is not None:
            core.expire(props.AS_OFS[0] - expire_days * DAY_MS)
    rest = arrived[split:]
    # Columns of every event, then only the rest: names of other events are shared.
    every = columns(arrived)
    assert apply_columns(bulk, every.take(np.arange(split, len(arrived)))) == \
        one_by_one.apply(rest)
    assert state_of(bulk) == state_of(one_by_one)
    for as_of in props.AS_OFS:
        assert props._rows(bulk, as_of) == props._rows(one_by_one, as_of)


@props.on_random_logs_with_expiry
def test_pseudonyms_in_bulk_match_pseudonyms_per_event(
        config: MetricConfig, data: st.DataObject, rnd: random.Random,
        expire_days: int | None) -> None:
    """Replay hashes the distinct user ids of its columns; the worker hashes each decoded
    event's: the same state, and the snapshots of the raw ids."""
    arrived = props._with_duplicates(data.draw(props.event_logs(config), label="events"), rnd)
    pseudonymise = Pseudonymiser(props.PSEUDONYM_KEY)
    hashed = props.pseudonymised_config(config)
    raw, per_event, bulk = PulseCore(config), PulseCore(hashed), PulseCore(hashed)
    raw.apply(arrived)
    per_event.apply(props.pseudonymised(arrived))
    every = columns(arrived)
    apply_columns(bulk, replace(every, users=pseudonymise.many(every.users)))
    if expire_days is not None:
        for core in (raw, per_event, bulk):
            core.expire(props.AS_OFS[0] - expire_days * DAY_MS)
    assert state_of(bulk) == state_of(per_event)
    for as_of in props.AS_OFS:
        assert props._rows(bulk, as_of) == props._rows(raw, as_of)


def test_bulk_apply_is_exact_on_the_tie_breaks() -> None:
    """First sighting wins a duplicate id; the first post of a post id by (ts, event id)
    names its author;
    (ts, user) ties order users as Python compares them, non-ASCII included."""
    t = 1_710_028_800_000
    events = [
        Event("e1", "post", "c", "zoë", t, post_id="p"),
        Event("e1", "post", "c", "bob", t, post_id="q"),  # duplicate id: ignored
        Event("e2", "post", "c", "ann", t, post_id="p"),  # same post, a later event id
        Event("e3", "reply", "c", "zoë", t + 5, post_id="p", reply_id="r1", parent_id="p",
              parent_type="post"),
        Event("e4", "reply", "c", "Zed", t + 5, post_id="p", reply_id="r2", parent_id="p",
              parent_type="post"),
        Event("e5", "reply", "c", "Émile", t + 5, post_id="p", reply_id="r3", parent_id="r1",
              parent_type="reply"),
        Event("e6", "like", "c", "ann", t + 1, target_id="p", target_type="post"),
        Event("e7", "like", "c", "bob", t + 2, target_id="r1", target_type="reply"),
    ]
    one_by_one, bulk = PulseCore(MetricConfig()), PulseCore(MetricConfig())
    assert one_by_one.apply(events) == apply_columns(bulk, columns(events)) == 1
    assert state_of(bulk) == state_of(one_by_one)
    thread = bulk.communities["c"].threads["p"]
    assert (thread.author, thread.post_event) == ("zoë", "e1")
    assert thread.replies == (t + 5, "Zed", t + 5, "zoë")  # "É" sorts after "z"
    assert thread.likes == (t + 1, "ann")


def test_ids_hashed_by_duckdb_deduplicate_alike() -> None:
    """Columns for a core that takes only columns hash ids with DuckDB: the same
    duplicates (first sighting wins, per community and day) and the same snapshots."""
    t = 1_710_028_800_000
    events = [Event(f"e{i % 7}", "post", f"c{i % 3}", f"u{i % 4}", t + i // 30 * DAY_MS + i,
                    post_id=f"p{i}") for i in range(60)]
    table = events_table(events)
    by_python, by_duckdb = PulseCore(MetricConfig()), PulseCore(MetricConfig())
    duplicates = apply_columns(by_python, EventColumns.from_table(table))
    assert duplicates == PulseCore(MetricConfig()).apply(events) > 0
    assert apply_columns(by_duckdb, EventColumns.from_table(table, only_columns=True)) \
        == duplicates
    python_state, duckdb_state = state_of(by_python), state_of(by_duckdb)
    for state in (python_state, duckdb_state):
        for community in state.values():
            community["ids"] = {day: len(ids) for day, ids in community["ids"].items()}
    assert duckdb_state == python_state
    for as_of in props.AS_OFS:
        assert props._rows(by_duckdb, as_of) == props._rows(by_python, as_of)


@pytest.mark.parametrize("high", [1, 300, 1 << 16, 1 << 20, 1 << 32, 1 << 40])
def test_radix_order_is_numpys_stable_order(high: int) -> None:
    """Keys of one 16-bit pass, of two, and past 32 bits (numpy's own sort); many ties."""
    keys = np.random.default_rng(high).integers(0, high, 50_000, dtype=np.int64)
    assert np.array_equal(_stable_order(keys), np.argsort(keys, kind="stable"))
    assert len(_stable_order(keys[:0])) == 0
