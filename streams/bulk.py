"""Bulk ingest for the core: a large batch of events as numpy columns, applied at once.

`apply_columns` leaves a `PulseCore` in the state that `PulseCore.apply` of the same
events, one by one in column order, would: the same deduplication (first wins, per
community and id hash, whatever the day; the ids are kept as sorted arrays per UTC day
of their ts rather than sets), the same sorted user logs, event-type logs and thread
summaries. It works per community, user and thread where `CommunityState.apply` works
per event, so a replay of history costs a few sorts instead of ~15,000 interpreter
instructions per event. Pure like the core: no I/O, no clock. It is the core's second
way in, so it fills `CommunityState`'s stores directly; `tests/test_bulk.py` holds it to
the first.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import pairwise, repeat
from typing import Final

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from streams.config import DAY_MS
from streams.core import (
    _CAT_BITS,
    ACTIVITY,
    CONTRIBUTION,
    LIKE,
    MEMBERSHIP,
    POST,
    REPLY_TO_POST,
    REPLY_TO_REPLY,
    VIEW,
    WHO_BITS,
    CommunityState,
    Earliest,
    PulseCore,
    _keep_two_earliest,
    _Thread,
    _UserLog,
)

Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
JOIN, LEAVE = VIEW + 1, VIEW + 2  # event codes beyond the activity categories
_CODES: Final = {"post": POST, "reply": REPLY_TO_POST, "like": LIKE, "view": VIEW,
                 "join": JOIN, "leave": LEAVE}  # a reply to a reply is refined below
_KIND_OF: Final = ("post", "reply", "reply", "like", "view")  # per activity category


def _encoded(column: pa.ChunkedArray | pa.Array) -> tuple[Ints, list[str]]:
    """Dictionary codes of a string column (null: -1), and the strings they stand for."""
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)
    return codes, encoded.dictionary.to_pylist()


def _is(column: pa.ChunkedArray, value: str) -> Mask:
    return pc.fill_null(pc.equal(column, value), False).to_numpy(zero_copy_only=False)


def _hashes(event_ids: pa.ChunkedArray | pa.Array) -> Ints:
    """hash() of each id, as CommunityState keeps them (None, of a dropped row: fine)."""
    return np.fromiter(map(hash, event_ids.to_pylist()), np.int64, len(event_ids))


def _duckdb_hashes(event_ids: pa.ChunkedArray | pa.Array) -> Ints:
    """DuckDB's 64-bit hash of each id: on every core, without a Python string each."""
    with duckdb.connect() as con:  # (rows keep their order: DuckDB keeps insertion order)
        ids = con.from_arrow(pa.table({"event_id": event_ids}))
        hashes = ids.select("hash(event_id) AS h").to_arrow_table()["h"]
    return hashes.to_numpy().view(np.int64)


def _thread_items(table: pa.Table) -> tuple[Ints, Ints, list[str]]:
    """Per row: the event code, and the thread it touches (codes into the names)."""
    types, type_names = _encoded(table["type"])
    # (Rows of other types, or with nulls, may be present: the caller drops them.)
    code = np.array([*(_CODES.get(t, -1) for t in type_names), -1])[types]  # null: -1
    code[(code == REPLY_TO_POST) & _is(table["parent_type"], "reply")] = REPLY_TO_REPLY
    # A post or reply names its thread in post_id, a like of a post in target_id.
    by_post = np.flatnonzero((code >= POST) & (code <= REPLY_TO_POST))
    by_target = np.flatnonzero((code == LIKE) & _is(table["target_type"], "post"))
    item_codes, items = _encoded(pa.chunked_array(
        [*table["post_id"].take(by_post).chunks, *table["target_id"].take(by_target).chunks],
        type=pa.string()))
    item = np.full(table.num_rows, -1, dtype=np.int64)
    item[by_post], item[by_target] = item_codes[:len(by_post)], item_codes[len(by_post):]
    return code, item, items


def _post_events(event_ids: pa.ChunkedArray, code: Ints) -> tuple[Ints, list[str]]:
    """Per row, the post's event id as a code into the sorted ids of the posts (-1 for
    other rows): codes compare as the ids do."""
    posts = np.flatnonzero(code == POST)
    ids = event_ids.take(posts)
    names = pc.unique(ids)
    names = names.take(pc.sort_indices(names))
    codes = np.full(len(code), -1, dtype=np.int64)
    codes[posts] = pc.index_in(ids, value_set=names).to_numpy(zero_copy_only=False)
    return codes, names.to_pylist()


@dataclass(frozen=True)
class EventColumns:
    """Validated events as columns; strings are codes into shared name lists."""

    community: Ints
    communities: list[str]
    user: Ints
    users: list[str]  # interned, like the per-event path's user ids
    ts: Ints  # epoch ms
    id_hash: Ints  # a 64-bit hash of event_id: the key of deduplication
    code: Ints  # activity category (core.POST ... core.VIEW), JOIN or LEAVE
    item: Ints  # the thread a post, reply or like of a post touches; -1: none
    items: list[str]
    managed: Mask  # a post of managed (hard) content, not ugc
    # Of a post: its event id as a code into `post_events`, which is sorted, so codes
    # order as the ids do (a thread's post is its first by time, then event id); -1: none.
    post_event: Ints
    post_events: list[str]

    @classmethod
    def from_table(cls, table: pa.Table, only_columns: bool = False) -> EventColumns:
        """From schemas.columnar.EVENT_SCHEMA columns (`ts` in epoch ms). Arrow encodes
        the strings in other threads (it releases the GIL) while this one hashes ids:
        with Python's `hash`, as per-event `apply` does, so that both may feed one core;
        or, for a core that takes `only_columns` (a replay's), with DuckDB's, 3x faster."""
        with ThreadPoolExecutor(3) as pool:
            communities = pool.submit(_encoded, table["community_id"])
            users = pool.submit(_encoded, table["user_id"])
            threads = pool.submit(_thread_items, table)
            id_hash = (_duckdb_hashes if only_columns else _hashes)(table["event_id"])
            (community, community_names), (user, user_names) = communities.result(), users.result()
            code, item, items = threads.result()
        post_event, post_events = _post_events(table["event_id"], code)
        return cls(
            community=community, communities=community_names,
            user=user, users=[sys.intern(u) for u in user_names],
            ts=pc.fill_null(table["ts"], 0).to_numpy().astype(np.int64),
            id_hash=id_hash, code=code, item=item, items=items,
            managed=_is(table["content_kind"], "managed"),
            post_event=post_event, post_events=post_events)

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, rows: Ints | slice) -> EventColumns:
        """These rows, in this order (the name lists are shared)."""
        return replace(self, community=self.community[rows], user=self.user[rows],
                       ts=self.ts[rows], id_hash=self.id_hash[rows], code=self.code[rows],
                       item=self.item[rows], managed=self.managed[rows],
                       post_event=self.post_event[rows])


def _stable_order(keys: Ints) -> Ints:
    """np.argsort(keys, kind="stable"), as one or two radix passes of 16 bits when the
    keys fit 32 (numpy sorts 16-bit keys by radix: 2-3x faster than its timsort)."""
    if len(keys) == 0 or keys.min() < 0 or keys.max() >= 1 << 32:
        return np.argsort(keys, kind="stable")
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    if keys.max() < 1 << 16:
        return order
    return order[np.argsort((keys[order] >> 16).astype(np.uint16), kind="stable")]


def _runs(keys: Ints) -> list[int]:
    """Start offsets of the runs of equal keys in a sorted array, then its length."""
    if len(keys) == 0:
        return []
    return [0, *(np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist(), len(keys)]


def apply_columns(core: PulseCore, events: EventColumns) -> int:
    """Apply the events in column order; return how many were duplicates."""
    if len(events) == 0:
        return 0
    states: list[CommunityState] = [None] * len(events.communities)  # type: ignore[list-item]
    present = np.bincount(events.community, minlength=len(events.communities))
    for code in np.flatnonzero(present).tolist():  # only communities with events
        states[code] = core.state(events.communities[code])
    kept = events.take(np.flatnonzero(_first_sightings(states, events)))
    if len(kept):
        _merge_user_logs(states, kept)
        _merge_kind_logs(states, kept)
        _merge_threads(states, kept)
        if any(state is not None and state.followups is not None for state in states):
            _merge_followups(states, kept)
    return len(events) - len(kept)


def _first_sightings(states: list[CommunityState], events: EventColumns) -> Mask:
    """Which events are no duplicates: first of their (community, id hash) in the
    columns, and not known to their community before, whatever their day (a repeated
    id with another ts is a duplicate too). Records the new ids there, as a sorted array
    per day of their ts (like the days that are over: 8 bytes an id, not a set's ~100)
    for expiry, and in the community's sorted array of all such ids (`CommunityState
    .apply` looks an id up there)."""
    order = pc.sort_indices(  # stable: a first sighting leads (2x numpy's lexsort)
        pa.table({"community": events.community, "id": events.id_hash}),
        sort_keys=[("community", "ascending"), ("id", "ascending")]).to_numpy()
    community, ids = events.community[order], events.id_hash[order]
    new = np.ones(len(order), dtype=np.bool_)
    new[1:] = (community[1:] != community[:-1]) | (ids[1:] != ids[:-1])
    for start, end, code in _bucket_runs(community):
        state = states[code]
        if state._seen or state._frozen:  # ids known already: only the others are new
            new[start:end] &= ~state.knows(ids[start:end])
    kept = order[new]  # by community, then id
    days = events.ts[kept] // DAY_MS
    first_day = int(days.min()) if len(kept) else 0
    bucket = events.community[kept] * (int(days.max(initial=0)) - first_day + 1) \
        + (days - first_day)
    by_day = np.argsort(bucket, kind="stable")  # ids stay sorted within a bucket
    kept_ids, bucket = events.id_hash[kept][by_day], bucket[by_day]
    span = int(days.max(initial=0)) - first_day + 1
    packed = kept_ids.tobytes()
    for start, end, key in _bucket_runs(bucket):
        state, day = states[key // span], key % span + first_day
        frozen = state._frozen_by_day.get(day)
        state._frozen_by_day[day] = array("q", packed[start * 8:end * 8]) if not frozen \
            else array("q", np.union1d(np.frombuffer(frozen, np.int64),
                                       kept_ids[start:end]).tobytes())
    new_community = events.community[kept]
    for start, end, code in _bucket_runs(new_community):
        states[code].add_frozen(events.id_hash[kept[start:end]])
    keep = np.zeros(len(events), dtype=np.bool_)
    keep[kept] = True
    return keep


def _bucket_runs(keys: Ints) -> Iterator[tuple[int, int, int]]:
    """(start, end, key) of each run of equal keys in a sorted array."""
    runs = _runs(keys)
    return zip(runs, runs[1:], keys[runs[:-1]].tolist(), strict=False)


def _merge_user_logs(states: list[CommunityState], events: EventColumns) -> None:
    """Each event's user-log entries (the regions in streams.core), merged per
    (community, user) into that user's sorted log."""
    code, ts = events.code, events.ts
    activity, contributing = code <= VIEW, code <= REPLY_TO_POST
    membership = ~activity
    # Region by region, so entries of time-ordered events are mostly in order already.
    entries = np.concatenate([
        MEMBERSHIP + ((ts[membership] << 1) | (code[membership] == LEAVE)),
        CONTRIBUTION + ts[contributing],
        ACTIVITY + ((ts[activity] << _CAT_BITS) | code[activity]),
    ])
    n_users = len(events.users)
    pair = events.community * n_users + events.user
    pairs = np.concatenate([pair[membership], pair[contributing], pair[activity]])
    order = _stable_order(pairs)
    pairs, entries = pairs[order], entries[order]
    runs = np.array(_runs(pairs))
    disorder = np.flatnonzero((entries[1:] < entries[:-1]) & (pairs[1:] == pairs[:-1]))
    for run in np.unique(np.searchsorted(runs, disorder, side="right") - 1).tolist():
        entries[runs[run]:runs[run + 1]].sort()  # (in place: a view)
    packed, bounds = entries.tobytes(), (runs * 8).tolist()
    logs_of = [packed[a:b] for a, b in pairwise(bounds)]
    keys = pairs[runs[:-1]]
    user_ids = [events.users[u] for u in (keys % n_users).tolist()]
    for start, end, community in _bucket_runs(keys // n_users):
        logs = states[community].users
        if not logs:  # the usual case in a replay: a community's first batch
            logs.update(zip(user_ids[start:end], map(_UserLog, repeat("q"), logs_of[start:end]),
                            strict=True))
            continue
        for user_id, entries_of in zip(user_ids[start:end], logs_of[start:end], strict=True):
            log = logs.get(user_id)
            chunk = np.frombuffer(entries_of, dtype=np.int64)
            if log is None:
                logs[user_id] = _UserLog("q", entries_of)
            elif not log or chunk[0] >= log[-1]:
                log.frombytes(entries_of)
            else:
                merged = np.concatenate([np.frombuffer(log, dtype=np.int64), chunk])
                merged.sort()
                logs[user_id] = _UserLog("q", merged.tobytes())


def _merge_kind_logs(states: list[CommunityState], events: EventColumns) -> None:
    """Each activity's time into its community's log of that event type, in order."""
    rows = np.flatnonzero(events.code <= VIEW)
    kind = np.where(events.code[rows] == REPLY_TO_REPLY, REPLY_TO_POST, events.code[rows])
    key = events.community[rows] * 8 + kind
    order = _stable_order(key)
    key, stamps = key[order], events.ts[rows][order]
    for start, end, k in _bucket_runs(key):
        chunk = stamps[start:end]
        states[k // 8].kinds[_KIND_OF[k % 8]].extend(
            chunk.tobytes(), ascending=not np.any(chunk[1:] < chunk[:-1]))


def _merge_threads(states: list[CommunityState], events: EventColumns) -> None:
    """Posts, replies and likes of posts into their threads (see core._Thread)."""
    rows = np.flatnonzero(events.item >= 0)
    if len(rows) == 0:
        return
    n_items = len(events.items)
    key = events.community[rows] * n_items + events.item[rows]
    # (ts, user) as Python orders the pair: user ids by code point (= UTF-8 byte order).
    rank = np.empty(len(events.users), dtype=np.int64)
    rank[pc.array_sort_indices(pa.array(events.users)).to_numpy()] = np.arange(len(rank))
    by_time = rows[_order_by(key, events.ts[rows], rank[events.user[rows]])]
    k, ts, user, code = (events.community[by_time] * n_items + events.item[by_time],
                         events.ts[by_time], events.user[by_time], events.code[by_time])
    runs = _runs(k)
    keys, newest = k[runs[:-1]], ts[np.array(runs[1:]) - 1]
    replies = _earliest_pairs(keys, k, ts, user, (code != POST) & (code != LIKE), events.users)
    likes = _earliest_pairs(keys, k, ts, user, code == LIKE, events.users)
    # The first post by (time, event id) names the thread's time and author (_Thread).
    posts = rows[events.code[rows] == POST]
    post_keys = events.community[posts] * n_items + events.item[posts]
    order = np.lexsort((events.post_event[posts], events.ts[posts], post_keys))
    posts, post_keys = posts[order], post_keys[order]
    firsts = np.flatnonzero(np.r_[True, post_keys[1:] != post_keys[:-1]]) if len(posts) else posts
    first = np.full(len(keys), -1, dtype=np.int64)
    first[np.searchsorted(keys, post_keys[firsts])] = posts[firsts]
    has_post = first >= 0
    post_ts = [t if t >= 0 else None for t in np.where(has_post, events.ts[first], -1).tolist()]
    authors = [events.users[u] if u >= 0 else None
               for u in np.where(has_post, events.user[first], -1).tolist()]
    post_event = [events.post_events[e] if e >= 0 else ""
                  for e in np.where(has_post, events.post_event[first], -1).tolist()]
    managed = (has_post & events.managed[first]).tolist()
    post_ids = [events.items[i] for i in (keys % n_items).tolist()]
    newest_ts = newest.tolist()
    for start, end, community in _bucket_runs(keys // n_items):
        threads = states[community].threads
        if not threads:  # the usual case in a replay: a community's first batch
            threads.update(zip(post_ids[start:end], map(
                _Thread, post_ts[start:end], authors[start:end], replies[start:end],
                likes[start:end], newest_ts[start:end], managed[start:end],
                post_event[start:end]), strict=True))
            continue
        for post_id, newest_, reply, like, posted, author, hard, event_id in zip(
                post_ids[start:end], newest_ts[start:end], replies[start:end],
                likes[start:end], post_ts[start:end], authors[start:end], managed[start:end],
                post_event[start:end], strict=True):
            thread = threads.get(post_id)
            if thread is None:
                threads[post_id] = _Thread(posted, author, reply, like, newest_, hard,
                                           event_id)
                continue
            thread.newest = max(thread.newest, newest_)
            if reply:
                thread.replies = _merged(thread.replies, reply)
            if like:
                thread.likes = _merged(thread.likes, like)
            if posted is not None and author is not None:
                thread.posted(posted, author, event_id, hard)


def _merge_followups(states: list[CommunityState], events: EventColumns) -> None:
    """Posts and replies of followed communities into their threads' follow-up entries
    (see CommunityState.followups), merged in sorted order."""
    followed = np.array([state is not None and state.followups is not None
                         for state in states])
    rows = np.flatnonzero((events.code <= REPLY_TO_POST) & followed[events.community])
    n_items = len(events.items)
    key = events.community[rows] * n_items + events.item[rows]
    order = _stable_order(key)
    rows, key = rows[order], key[order]
    for start, end, k in _bucket_runs(key):
        state = states[k // n_items]
        followups, managers = state.followups, state.managers
        assert followups is not None
        who = [managers.get(events.users[u], 0) for u in events.user[rows[start:end]].tolist()]
        chunk = np.sort((events.ts[rows[start:end]] << WHO_BITS) | np.array(who, np.int64))
        post_id = events.items[k % n_items]
        entries = followups.get(post_id)
        if entries:
            chunk = np.sort(np.concatenate([np.frombuffer(entries, np.int64), chunk]))
        followups[post_id] = array("q", chunk.tobytes())


def _order_by(key: Ints, ts: Ints, rank: Ints) -> Ints:
    """Row order by (key, ts, rank). Rows already in time order (a replay's) need only
    a stable sort by key; anything else gets the full three-key sort."""
    order = _stable_order(key)
    k, t, r = key[order], ts[order], rank[order]
    same = k[1:] == k[:-1]
    if np.any(same & ((t[1:] < t[:-1]) | ((t[1:] == t[:-1]) & (r[1:] < r[:-1])))):
        return np.lexsort((rank, ts, key))
    return order


def _merged(entries: Earliest, found: Earliest) -> Earliest:
    """A thread's summary of its earliest entries, with more entries' summary folded in."""
    for i in range(0, len(found), 2):
        entries = _keep_two_earliest(entries, found[i], found[i + 1])  # type: ignore[arg-type]
    return entries


def _earliest_pairs(keys: Ints, k: Ints, ts: Ints, user: Ints, mask: Mask,
                    users: list[str]) -> list[Earliest]:
    """Per key of `keys`, among the masked rows (sorted by key, ts, user): the first
    (ts, user), then the first by another user, as core._keep_two_earliest keeps them;
    () for none."""
    rows = np.flatnonzero(mask)
    k, t, u = k[rows], ts[rows], user[rows]
    first = np.ones(len(k), dtype=np.bool_)
    first[1:] = k[1:] != k[:-1]
    leader = np.maximum.accumulate(np.where(first, np.arange(len(k)), 0))
    other = u != u[leader]
    # The first row of each key's group whose user differs from the group's first.
    seen_other = np.cumsum(other)
    before = np.where(first, seen_other - other, 0)
    second = other & (seen_other - before[leader] == 1)
    t0, u0, t1, u1 = (np.full(len(keys), -1, dtype=np.int64) for _ in range(4))
    at = np.searchsorted(keys, k[first])
    t0[at], u0[at] = t[first], u[first]
    at = np.searchsorted(keys, k[second])
    t1[at], u1[at] = t[second], u[second]
    earliest = np.empty(len(keys), dtype=object)
    earliest.fill(())
    one, two = (t0 >= 0) & (t1 < 0), t1 >= 0
    earliest[one] = _tuples(t0[one], [users[i] for i in u0[one].tolist()])
    earliest[two] = _tuples(t0[two], [users[i] for i in u0[two].tolist()],
                            t1[two], [users[i] for i in u1[two].tolist()])
    return earliest.tolist()  # type: ignore[no-any-return]


def _tuples(*columns: Ints | list[str]) -> npt.NDArray[np.object_]:
    """The rows of these columns as tuples, in an object array (built in C)."""
    lists = [column.tolist() if isinstance(column, np.ndarray) else column
             for column in columns]
    return np.fromiter(zip(*lists, strict=True), dtype=object, count=len(lists[0]))
