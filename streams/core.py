"""The pure domain core: events in -> per-community state -> snapshot rows out.

No Kafka, no I/O, no clock. The Faust agents are thin adapters that feed
`CommunityState.apply` and call `CommunityState.snapshot(as_of)`; the replay command
builds the same state in bulk from columns (`streams.bulk`) and takes the same snapshots.

Design for exactness under any arrival order: state keeps the (deduplicated) timestamps
it needs, sorted lazily, and every query at `as_of = t` only looks at events with
`ts <= t`. So a snapshot at `t` is a function of the *set* of events, never of the
order they came in, and events from the future (a producer's clock running ahead)
simply wait until `t` reaches them. `expire(before)` drops what no snapshot at or
after `before + retention` can see, which keeps memory bounded.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from schemas.events import Event
from streams.config import DAY_MS, MetricConfig
from streams.steering.experts import ExpertCounts, expert_counts

# Activity categories, in ladder order: the lowest code a user holds is their role.
POST, REPLY_TO_REPLY, REPLY_TO_POST, LIKE, VIEW = range(5)
ROLES = ("creators", "conversationalists", "critics", "joiners", "spectators")
CONTRIBUTING = (POST, REPLY_TO_REPLY, REPLY_TO_POST)
TIERS = ("low", "medium", "high")
AT_ONCE_FROM = 24  # users: from here a snapshot takes members and roles with numpy

_CAT_BITS = 3  # activity entries are packed as ts << 3 | category, so one sort orders both
_CAT_MASK = (1 << _CAT_BITS) - 1
# Follow-up entries (followed communities only) are packed as ts << 8 | who: who is 0 for
# anyone but a followed community's managers, else the manager's place among them + 1.
WHO_BITS = 8
MAX_MANAGERS = (1 << WHO_BITS) - 1  # per community


def _contains(items: array[int], value: int) -> bool:
    """Membership test in a sorted array."""
    idx = bisect_left(items, value)
    return idx < len(items) and items[idx] == value


def _upper(ts: int) -> int:
    """Packed key just above every entry at `ts`: bisect_right(x, _upper(t)) counts ts <= t."""
    return (ts << _CAT_BITS) | _CAT_MASK


class _SortedLog:
    """Append-mostly int64 array, sorted on first read after an out-of-order append.

    An array holds 8 bytes per entry where a list of ints costs 40 (pointer + int object).
    """

    __slots__ = ("_dirty", "items")

    def __init__(self) -> None:
        self.items = array("q")
        self._dirty = False

    def add(self, value: int) -> None:
        items = self.items
        if items and value < items[-1]:
            self._dirty = True
        items.append(value)

    def extend(self, values: bytes, ascending: bool) -> None:
        """Append int64 values (raw bytes); `ascending`: sorted among themselves."""
        items = self.items
        before = len(items)
        items.frombytes(values)
        if not ascending or (0 < before < len(items) and items[before] < items[before - 1]):
            self._dirty = True

    def view(self) -> array[int]:
        if self._dirty:
            self.items = array("q", sorted(self.items))
            self._dirty = False
        return self.items

    def count_between(self, low: int, high: int) -> int:
        """Entries with low < value <= high."""
        items = self.view()
        return bisect_right(items, high) - bisect_right(items, low)

    def drop_through(self, value: int) -> None:
        items = self.view()
        del items[: bisect_right(items, value)]

    def __len__(self) -> int:
        return len(self.items)


# A user's whole retained history is one sorted int64 array in three regions, so a
# (community, user) costs one dict entry and one array (no per-user objects):
_REGION = 1 << 60  # far above any packed timestamp (ts << 3 < 2**60 until the year 36000)
MEMBERSHIP, CONTRIBUTION, ACTIVITY = 0, _REGION, 2 * _REGION
# MEMBERSHIP + (ts << 1 | is_leave): a leave sorts after a join at the same ts
# CONTRIBUTION + ts: posts and replies, for retention and stagnation
# ACTIVITY + (ts << 3 | category): every non-membership event, for roles and membership


class _UserLog(array):  # type: ignore[type-arg]  # array('q') subclass, no extra fields
    """One user's retained events in one community (see the regions above)."""

    __slots__ = ()

    def add(self, value: int) -> None:
        if not self or value >= self[-1]:
            self.append(value)  # the usual case: activity, in time order
        else:
            insort(self, value)

    def bounds(self) -> tuple[int, int]:
        """Start of the contribution and of the activity region."""
        return bisect_left(self, CONTRIBUTION), bisect_left(self, ACTIVITY)

    def best_roles(self, t: int, windows_ms: list[int], act: int) -> list[int | None]:
        """Per window W, the lowest category with t - W < ts <= t (None: no activity)."""
        end = bisect_right(self, ACTIVITY + _upper(t), act)
        roles: list[int | None] = []
        for w in windows_ms:
            start = bisect_right(self, ACTIVITY + _upper(t - w), act, end)
            roles.append(min([e & _CAT_MASK for e in self[start:end]]) if start < end else None)
        return roles

    def is_member(self, t: int, horizon_ms: int, contrib: int, act: int) -> bool:
        idx = bisect_right(self, (t << 1) | 1, 0, contrib)
        last_membership = self[idx - 1] if idx else None
        if last_membership is not None and not last_membership & 1:
            return True  # last membership event at or before t is a join
        idx = bisect_right(self, ACTIVITY + _upper(t), act)
        if idx == act:
            return False
        last_activity = (self[idx - 1] - ACTIVITY) >> _CAT_BITS
        if last_activity <= t - horizon_ms:
            return False
        return last_membership is None or (last_membership >> 1) <= last_activity

    def replies_between(self, low: int, high: int, act: int) -> int:
        """Replies (to a post or a reply) with low < ts <= high."""
        start = bisect_right(self, ACTIVITY + _upper(low), act)
        end = bisect_right(self, ACTIVITY + _upper(high), start)
        return sum(1 for e in self[start:end]
                   if REPLY_TO_REPLY <= e & _CAT_MASK <= REPLY_TO_POST)

    def contributed(self, low: int, high: int, contrib: int, act: int) -> bool:
        """Posted or replied with low < ts <= high."""
        return bisect_right(self, CONTRIBUTION + high, contrib, act) > bisect_right(
            self, CONTRIBUTION + low, contrib, act)

    def expire(self, before_ms: int) -> None:
        """Drop what is at or before the cut, except the membership event that still
        decides (the last one at or before it)."""
        contrib, act = self.bounds()
        # Top region first, so the bounds below stay valid.
        del self[act:bisect_right(self, ACTIVITY + _upper(before_ms), act)]
        del self[contrib:bisect_right(self, CONTRIBUTION + before_ms, contrib, act)]
        del self[:max(bisect_right(self, (before_ms << 1) | 1, 0, contrib) - 1, 0)]

    def memberships(self) -> array[int]:
        return self[: bisect_left(self, CONTRIBUTION)]


Earliest = tuple[()] | tuple[int, str] | tuple[int, str, int, str]


def carry_id(kind: str, ts: int, user_id: str) -> str:
    """The event id of a carried membership event (CommunityState.memberships_through):
    one per (kind, time, user) whatever the length of the user id (a digest of it, so
    two long ids that share a prefix never meet as duplicates)."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()
    return f"carry:{kind}:{ts}:{digest}"


class _Thread:
    """A post and the earliest reply/like by two distinct users (enough to find
    the earliest one by someone other than the author, whoever the author is).

    Several post events may name one post_id (a producer's retry with a new event id):
    the thread's post is the first of them by event time, then by event id, so its
    author and time do not depend on the order they arrive in."""

    __slots__ = ("author", "likes", "managed", "newest", "post_event", "post_ts", "replies")

    def __init__(self, post_ts: int | None = None, author: str | None = None,
                 replies: Earliest = (), likes: Earliest = (), newest: int = 0,
                 managed: bool = False, post_event: str = "") -> None:
        self.post_ts = post_ts
        self.author = author
        self.post_event = post_event  # the event id of the post (ties in post_ts)
        self.managed = managed  # the post is managed (hard) content, not ugc (soft)
        # Flat (ts, user[, ts, user]): the earliest, then the earliest by another user.
        self.replies = replies
        self.likes = likes
        self.newest = newest  # newest timestamp touching this thread, for expiry

    def posted(self, ts: int, author: str, event_id: str, managed: bool) -> None:
        """A post event of this thread: it names the thread's post if it is the first."""
        if self.post_ts is None or (ts, event_id) < (self.post_ts, self.post_event):
            self.post_ts, self.author, self.post_event = ts, author, event_id
            self.managed = managed

    def first_by_other(self, entries: Earliest, t: int) -> int | None:
        for i in range(0, len(entries), 2):
            if entries[i + 1] != self.author:
                ts: int = entries[i]  # type: ignore[assignment]
                return ts if ts <= t else None
        return None


def _keep_two_earliest(entries: Earliest, ts: int, user: str) -> Earliest:
    """The earliest entry, and the earliest entry by a different user than it."""
    if not entries:
        return (ts, user)
    first = (entries[0], entries[1])
    if (ts, user) < first:
        return (ts, user, *first) if user != first[1] else (ts, user, *entries[2:])
    if user != first[1] and (len(entries) == 2 or (ts, user) < (entries[2], entries[3])):
        return (*first, ts, user)
    return entries


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """One row of the snapshot table (SPEC section 4). No user ids, ever."""

    community_id: str
    as_of_ms: int
    window_days: int
    members: int
    creators: int
    conversationalists: int
    critics: int
    joiners: int
    spectators: int
    inactives: int
    contributors: int
    contributor_share: float
    tier: str
    posts: int
    replies: int
    likes: int
    views: int
    posts_eligible: int
    posts_answered_in_sla: int
    unanswered_posts: int
    median_first_reply_seconds: float | None
    retention: float | None
    continuity: float
    responsiveness: float | None
    participation: float | None
    reciprocity: float | None
    sustainability: float
    stagnating: bool
    last_activity_ms: int | None
    # Steering (SPEC 5). Expert counts are None without a roster (`MetricConfig.experts`).
    experts: int | None = None
    experts_replying: int | None = None
    expert_replies: int | None = None
    expert_needed: bool | None = None
    managed_posts: int = 0
    ugc_posts: int = 0
    managed_engagement: float | None = None
    ugc_engagement: float | None = None

    @property
    def tier_level(self) -> int:
        return TIERS.index(self.tier)


class CommunityState:
    """Everything one community's snapshots need; fed in any order, any batch size."""

    __slots__ = (
        "_expired_last_activity",
        "_frozen",
        "_frozen_by_day",
        "_posters",
        "_seen",
        "_seen_by_day",
        "community_id",
        "config",
        "followups",
        "kinds",
        "managers",
        "threads",
        "users",
    )

    def __init__(self, community_id: str, config: MetricConfig,
                 managers: Sequence[str] = ()) -> None:
        self.community_id = community_id
        self.config = config
        # Only where managers follow this community (streams.steering.focus): per thread,
        # the times of its posts and replies and who of the managers wrote them.
        self.managers = {user_id: who for who, user_id in enumerate(managers, start=1)}
        self.followups: dict[str, array[int]] | None = {} if managers else None
        self.users: dict[str, _UserLog] = {}
        self.threads: dict[str, _Thread] = {}
        # Community-wide timestamps per event type (for counts and continuity).
        self.kinds = {kind: _SortedLog() for kind in ("post", "reply", "like", "view")}
        # event ids bucketed by the UTC day of their ts, so expiry drops whole days.
        # Ids are kept as their 64-bit str hash (process-local, like this state; a core
        # fed only by streams.bulk may use DuckDB's): a quarter of the memory of the
        # strings; a collision needs ~4e9 ids in one day.
        self._seen_by_day: dict[int, set[int]] = {}
        # Days that are over, and ids applied in bulk, are sorted int64 arrays (8 bytes
        # an id where a set costs ~100); ids arriving late for such a day go to a new
        # set in _seen_by_day.
        self._frozen_by_day: dict[int, array[int]] = {}
        # A repeated event_id is a duplicate whatever its ts (a producer may re-stamp a
        # retry): every kept id is looked up here, in the union of all days' sets and
        # of all days' arrays (sorted); the days above only tell expiry what to drop.
        self._seen: set[int] = set()
        self._frozen: array[int] = array("q")
        # Newest activity timestamp that expiry dropped: it still is the last activity of
        # a community that has been quiet for longer than the retention.
        self._expired_last_activity: int | None = None
        # Per snapshot: (user, contribution times) of everyone who posted or replied.
        self._posters: list[tuple[str, _UserLog, int, int]] = []

    # ---- ingest ---------------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> int:
        """Apply events of this community; return how many were duplicates."""
        duplicates = 0
        seen_by_day, seen, frozen = self._seen_by_day, self._seen, self._frozen
        for event in events:
            ts: int = event.ts  # type: ignore[assignment]  # normalised by decode_message
            event_hash = hash(event.event_id)
            if event_hash in seen or (frozen and _contains(frozen, event_hash)):
                duplicates += 1
                continue
            seen.add(event_hash)
            day = ts // DAY_MS
            of_day = seen_by_day.get(day)
            if of_day is None:
                seen_by_day[day] = {event_hash}
            else:
                of_day.add(event_hash)
            self._apply_one(event, ts)
        return duplicates

    def _apply_one(self, event: Event, ts: int) -> None:
        kind = event.type
        # One string per user, shared by every community and thread that names them
        # (msgspec decodes a new one per event).
        user_id = sys.intern(event.user_id)
        user = self.users.get(user_id)
        if user is None:
            user = self.users[user_id] = _UserLog("q")
        if kind == "join" or kind == "leave":
            user.add(MEMBERSHIP + ((ts << 1) | (kind == "leave")))
            return
        self.kinds[kind].add(ts)
        if kind == "post":
            category = POST
            self._thread(event.post_id, ts).posted(ts, user_id, event.event_id,
                                                   event.content_kind == "managed")
        elif kind == "reply":
            category = REPLY_TO_REPLY if event.parent_type == "reply" else REPLY_TO_POST
            thread = self._thread(event.post_id, ts)
            thread.replies = _keep_two_earliest(thread.replies, ts, user_id)
        elif kind == "like":
            category = LIKE
            if event.target_type == "post":
                thread = self._thread(event.target_id, ts)
                thread.likes = _keep_two_earliest(thread.likes, ts, user_id)
        else:
            category = VIEW
        user.add(ACTIVITY + ((ts << _CAT_BITS) | category))
        if category <= REPLY_TO_POST:
            insort(user, CONTRIBUTION + ts)  # below the activity region: never an append
            if self.followups is not None:
                self._follow(event.post_id, ts, user_id)

    def _follow(self, post_id: str | None, ts: int, user_id: str) -> None:
        followups = self.followups
        assert followups is not None and post_id is not None, "followed; validated"
        entries = followups.get(post_id)
        if entries is None:
            entries = followups[post_id] = array("q")
        insort(entries, (ts << WHO_BITS) | self.managers.get(user_id, 0))

    def _thread(self, post_id: str | None, ts: int) -> _Thread:
        assert post_id is not None, "validated by schemas.events"
        thread = self.threads.get(post_id)
        if thread is None:
            thread = self.threads[post_id] = _Thread()
        thread.newest = max(thread.newest, ts)
        return thread

    # ---- expiry ---------------------------------------------------------------------

    def expire(self, before_ms: int) -> None:
        """Forget what only matters to snapshots earlier than `before_ms + retention`.

        Call with `newest_snapshot_time - config.retention_ms`. Events at or before
        `before_ms` that arrive later are still deduplicated only if their day is kept.
        """
        for day in [d for d in self._seen_by_day if (d + 1) * DAY_MS <= before_ms]:
            self._seen -= self._seen_by_day.pop(day)
        gone = [self._frozen_by_day.pop(day) for day in list(self._frozen_by_day)
                if (day + 1) * DAY_MS <= before_ms]
        if gone:
            self._frozen = array("q", np.setdiff1d(
                np.frombuffer(self._frozen, np.int64),
                np.concatenate([np.frombuffer(ids, np.int64) for ids in gone]),
                assume_unique=True).tobytes())
        self._freeze_ids(before_ms + self.config.retention_ms - DAY_MS)
        for log in self.kinds.values():
            items = log.view()
            idx = bisect_right(items, before_ms)
            if idx and (
                self._expired_last_activity is None
                or items[idx - 1] > self._expired_last_activity
            ):
                self._expired_last_activity = items[idx - 1]
            log.drop_through(before_ms)
        for post_id in [p for p, th in self.threads.items() if th.newest <= before_ms]:
            del self.threads[post_id]
        followups = self.followups or {}
        for post_id in list(followups):
            entries = followups[post_id]
            del entries[:bisect_right(entries, (before_ms << WHO_BITS) | MAX_MANAGERS)]
            if not entries:
                del followups[post_id]
        for user_id in list(self.users):
            user = self.users[user_id]
            user.expire(before_ms)
            # A user whose last word was a leave is kept (one entry): a re-delivered old
            # join, no longer recognisable as a duplicate, must not make them a member.
            if not user:
                del self.users[user_id]

    def _freeze_ids(self, cut_ms: int) -> None:
        """Move the ids of days that ended at or before the cut into sorted arrays."""
        moved: list[int] = []
        for day in [d for d in self._seen_by_day if (d + 1) * DAY_MS <= cut_ms]:
            ids = self._seen_by_day.pop(day)
            frozen = self._frozen_by_day.get(day)
            self._frozen_by_day[day] = array("q", sorted([*frozen, *ids] if frozen else ids))
            moved += ids
        if moved:
            self._seen.difference_update(moved)
            self.add_frozen(np.array(moved, np.int64))

    def add_frozen(self, ids: npt.NDArray[np.int64]) -> None:
        """Add ids (none known yet) to the sorted array of all frozen days' ids."""
        self._frozen = array("q", np.union1d(np.frombuffer(self._frozen, np.int64),
                                             ids).tobytes())

    def knows(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Which of the ids this community has seen (any day): bulk deduplication."""
        known = np.isin(ids, np.fromiter(self._seen, np.int64, len(self._seen)))
        frozen = np.frombuffer(self._frozen, np.int64)
        if len(frozen):
            at = np.minimum(np.searchsorted(frozen, ids), len(frozen) - 1)
            known |= frozen[at] == ids
        return known

    def memberships_through(self, cut_ms: int) -> list[Event]:
        """Retained membership events at or before the cut, as events to re-apply.

        After `expire`, these are what a rebuild from recent events would miss: the
        join (or leave) that still decides a user's membership.
        """
        kept = []
        for user_id, user in self.users.items():
            for entry in user.memberships():
                ts = entry >> 1
                if ts > cut_ms:
                    break
                kind = "leave" if entry & 1 else "join"
                kept.append(Event(carry_id(kind, ts, user_id), kind, self.community_id,
                                  user_id, ts))
        return kept

    def is_empty(self) -> bool:
        return not self.users

    def members_at(self, t: int, window_ms: int) -> tuple[list[str], list[str]]:
        """Who the members at t are and which of them contributed (posted or replied)
        in (t - window, t]: the sets behind `members` and `contributors` (steering)."""
        horizon = self.config.membership_horizon_days * DAY_MS
        members, contributors = [], []
        for user_id, user in self.users.items():
            contrib, act = user.bounds()
            if user.is_member(t, horizon, contrib, act):
                members.append(user_id)
                if user.contributed(t - window_ms, t, contrib, act):
                    contributors.append(user_id)
        return members, contributors

    def oldest_ts(self) -> int | None:
        """The oldest retained event time (activity or membership); None when empty."""
        firsts = [log.view()[0] for log in self.kinds.values() if len(log)]
        firsts += [user[0] >> 1 for user in self.users.values() if user and user[0] < CONTRIBUTION]
        return min(firsts, default=None)

    # ---- snapshot -------------------------------------------------------------------

    def snapshot(self, as_of_ms: int) -> list[SnapshotRow]:
        """One row per configured window, exactly as SPEC sections 2-3 define them."""
        t = as_of_ms
        cfg = self.config
        horizon = cfg.membership_horizon_days * DAY_MS
        windows_ms = [days * DAY_MS for days in cfg.windows_days]
        members_and_roles = (self._members_and_roles_at_once
                             if len(self.users) >= AT_ONCE_FROM else self._members_and_roles)
        n_members, roles_by_window = members_and_roles(t, horizon, windows_ms)
        stagnating = self._stagnating(t, bool(n_members))
        last_activity = self._last_activity(t)
        listening = self._listening(t, windows_ms)
        experts = self._experts(t, horizon, windows_ms, bool(n_members))
        return [
            self._window_row(t, w, days, n_members, counts, listening[i], stagnating,
                             last_activity, experts[i])
            for i, (w, days, counts) in enumerate(zip(windows_ms, cfg.windows_days,
                                                      roles_by_window, strict=True))
        ]

    def _experts(self, t: int, horizon: int, windows_ms: list[int], has_members: bool
                 ) -> list[ExpertCounts | None]:
        """Per window, the roster's expert counts (None each without a roster, and for a
        roster of fewer experts than the privacy threshold: its counts would be those
        few people's own replies)."""
        roster = self.config.experts
        experts = () if roster is None else roster.get(self.community_id, ())
        if roster is None or 0 < len(experts) < self.config.experts_min_roster:
            return [None] * len(windows_ms)
        users = self.users
        logs = [users[u] for u in experts if u in users]
        return list(expert_counts(logs, t, horizon, windows_ms, has_members))

    def _members_and_roles(self, t: int, horizon: int, windows_ms: list[int]
                           ) -> tuple[int, list[list[int]]]:
        """Members at t, and per window how many of them hold each role; records who
        posted or replied (`_posters`, for retention and stagnation). User by user."""
        roles_by_window: list[list[int]] = [[0] * len(ROLES) for _ in windows_ms]
        n_members = 0
        posters: list[tuple[str, _UserLog, int, int]] = []
        for user_id, user in self.users.items():
            contrib, act = user.bounds()
            if contrib < act:
                posters.append((user_id, user, contrib, act))
            if not user.is_member(t, horizon, contrib, act):
                continue
            n_members += 1
            for counts, role in zip(roles_by_window, user.best_roles(t, windows_ms, act),
                                    strict=True):
                if role is not None:
                    counts[role] += 1
        self._posters = posters
        return n_members, roles_by_window

    def _members_and_roles_at_once(self, t: int, horizon: int, windows_ms: list[int]
                                   ) -> tuple[int, list[list[int]]]:
        """`_members_and_roles` over all users' logs at once (numpy on their entries
        joined end to end), for communities large enough to repay the fixed cost."""
        logs = list(self.users.values())
        n = len(logs)
        lengths = np.fromiter(map(len, logs), np.int64, n)
        entries = np.frombuffer(b"".join(logs), np.int64)
        if not len(entries):  # (no user has an entry: nobody is a member)
            return self._members_and_roles(t, horizon, windows_ms)
        owner = np.repeat(np.arange(n), lengths)
        first = np.cumsum(lengths) - lengths

        def per_user(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
            return np.bincount(owner[mask], minlength=n)

        def last_of(count: npt.NDArray[np.int64], offset: npt.NDArray[np.int64]
                    ) -> npt.NDArray[np.int64]:  # the count-th entry from offset, or -1
            at = first + offset + count - 1
            return np.where(count > 0, entries[np.clip(at, 0, len(entries) - 1)], -1)

        is_membership, is_activity = entries < CONTRIBUTION, entries >= ACTIVITY
        contrib, act = per_user(is_membership), per_user(~is_activity)
        now = is_activity & (entries <= ACTIVITY + _upper(t))
        # As `_UserLog.is_member`: the last membership event at or before t is a join,
        # or the last activity is within the horizon and not before a leave.
        memberships = per_user(is_membership & (entries <= (t << 1) | 1))  # at or before t
        last_membership = last_of(memberships, np.zeros(n, np.int64))
        activities = per_user(now)
        last_activity = (last_of(activities, act) - ACTIVITY) >> _CAT_BITS
        member = (memberships > 0) & (last_membership & 1 == 0) | (
            (activities > 0) & (last_activity > t - horizon)
            & ((memberships == 0) | (last_membership >> 1 <= last_activity)))
        roles_by_window = []
        for w in windows_ms:  # as `_UserLog.best_roles`: the lowest category in (t-w, t]
            inside = now & (entries > ACTIVITY + _upper(t - w))
            role = np.full(n, len(ROLES), np.int64)
            np.minimum.at(role, owner[inside], entries[inside] & _CAT_MASK)
            roles_by_window.append(
                np.bincount(role[member], minlength=len(ROLES) + 1)[:len(ROLES)].tolist())
        user_ids, posting = list(self.users), np.flatnonzero(contrib < act)
        self._posters = [(user_ids[i], logs[i], c, a) for i, c, a in zip(
            posting.tolist(), contrib[posting].tolist(), act[posting].tolist(), strict=True)]
        return int(member.sum()), roles_by_window

    def _window_row(
        self,
        t: int,
        w: int,
        days: int,
        n_members: int,
        role_counts: list[int],
        listening: _Listening,
        stagnating: bool,
        last_activity: int | None,
        experts: ExpertCounts | None,
    ) -> SnapshotRow:
        cfg = self.config
        contributors = sum(role_counts[c] for c in CONTRIBUTING)
        share = contributors / n_members if n_members else 0.0
        tier = tier_of(share, cfg)

        retention = self._retention(t, w)
        continuity = self._continuity(t, days)
        responsiveness = (
            listening.answered / listening.eligible if listening.eligible else None
        )
        participation = min(1.0, share / cfg.tier_high_share) if n_members else None
        components = (
            (retention, cfg.weight_retention),
            (continuity, cfg.weight_continuity),
            (responsiveness, cfg.weight_responsiveness),
            (participation, cfg.weight_participation),
            (listening.reciprocity, cfg.weight_reciprocity),
        )
        defined = [(value, weight) for value, weight in components if value is not None]
        total_weight = sum(weight for _, weight in defined)
        score = (
            100.0 * sum(v * wt for v, wt in defined) / total_weight if total_weight else 0.0
        )
        return SnapshotRow(
            community_id=self.community_id,
            as_of_ms=t,
            window_days=days,
            members=n_members,
            creators=role_counts[POST],
            conversationalists=role_counts[REPLY_TO_REPLY],
            critics=role_counts[REPLY_TO_POST],
            joiners=role_counts[LIKE],
            spectators=role_counts[VIEW],
            inactives=n_members - sum(role_counts),
            contributors=contributors,
            contributor_share=share,
            tier=tier,
            posts=self.kinds["post"].count_between(t - w, t),
            replies=self.kinds["reply"].count_between(t - w, t),
            likes=self.kinds["like"].count_between(t - w, t),
            views=self.kinds["view"].count_between(t - w, t),
            posts_eligible=listening.eligible,
            posts_answered_in_sla=listening.answered,
            unanswered_posts=listening.unanswered,
            median_first_reply_seconds=listening.median_first_reply_s,
            retention=retention,
            continuity=continuity,
            responsiveness=responsiveness,
            participation=participation,
            reciprocity=listening.reciprocity,
            sustainability=score,
            stagnating=stagnating,
            last_activity_ms=last_activity,
            experts=None if experts is None else experts.experts,
            experts_replying=None if experts is None else experts.experts_replying,
            expert_replies=None if experts is None else experts.expert_replies,
            expert_needed=None if experts is None else experts.expert_needed,
            managed_posts=listening.managed_posts,
            ugc_posts=listening.ugc_posts,
            managed_engagement=listening.managed_engagement,
            ugc_engagement=listening.ugc_engagement,
        )

    def _listening(self, t: int, windows_ms: list[int]) -> list[_Listening]:
        """Listening figures per window, from one pass over the threads."""
        sla = self.config.sla_ms(self.community_id)
        widest = max(windows_ms, default=0)
        n = len(windows_ms)
        posts, with_response = [0] * n, [0] * n
        managed, managed_response = [0] * n, [0] * n
        eligible, answered, unanswered = [0] * n, [0] * n, [0] * n
        delays: list[list[int]] = [[] for _ in windows_ms]
        for thread in self.threads.values():
            post_ts = thread.post_ts
            if post_ts is None or not t - widest < post_ts <= t:
                continue
            first_reply = thread.first_by_other(thread.replies, t)
            responded = (first_reply is not None
                         or thread.first_by_other(thread.likes, t) is not None)
            is_managed = thread.managed
            for i, w in enumerate(windows_ms):
                if post_ts <= t - w:
                    continue
                posts[i] += 1
                if first_reply is not None:
                    delays[i].append(first_reply - post_ts)
                if responded:
                    with_response[i] += 1
                if is_managed:
                    managed[i] += 1
                    managed_response[i] += responded
                if post_ts <= t - sla:
                    eligible[i] += 1
                    if first_reply is None:
                        unanswered[i] += 1
                    elif first_reply - post_ts <= sla:
                        answered[i] += 1
        return [
            _Listening(
                eligible=eligible[i],
                answered=answered[i],
                unanswered=unanswered[i],
                median_first_reply_s=statistics.median(delays[i]) / 1000 if delays[i] else None,
                reciprocity=with_response[i] / posts[i] if posts[i] else None,
                managed_posts=managed[i],
                ugc_posts=posts[i] - managed[i],
                managed_engagement=managed_response[i] / managed[i] if managed[i] else None,
                ugc_engagement=((with_response[i] - managed_response[i])
                                / (posts[i] - managed[i]) if posts[i] > managed[i] else None),
            )
            for i in range(n)
        ]

    def _contributors(self, low: int, high: int) -> set[str]:
        """Users who posted or replied with low < ts <= high (uses `snapshot`'s list)."""
        return {uid for uid, user, contrib, act in self._posters
                if user.contributed(low, high, contrib, act)}

    def _retention(self, t: int, w: int) -> float | None:
        previous = self._contributors(t - 2 * w, t - w)
        if not previous:
            return None
        current = self._contributors(t - w, t)
        return len(previous & current) / len(previous)

    def _continuity(self, t: int, days: int) -> float:
        replies = self.kinds["reply"].view()
        start = bisect_right(replies, t - days * DAY_MS)
        end = bisect_right(replies, t)
        periods = {(t - ts) // DAY_MS for ts in replies[start:end]}
        return len(periods) / days

    def _stagnating(self, t: int, has_members: bool) -> bool:
        if not has_members:
            return False
        cfg = self.config
        quiet = cfg.stagnation_quiet_days * DAY_MS
        if not (
            self.kinds["post"].count_between(t - quiet, t)
            or self.kinds["reply"].count_between(t - quiet, t)
        ):
            return True
        span = cfg.stagnation_compare_days * DAY_MS
        recent = len(self._contributors(t - span, t))
        before = len(self._contributors(t - 2 * span, t - span))
        return recent < cfg.stagnation_drop_ratio * before

    def _last_activity(self, t: int) -> int | None:
        expired = self._expired_last_activity
        newest = expired if expired is not None and expired <= t else None
        for log in self.kinds.values():
            items = log.view()
            idx = bisect_right(items, t)
            if idx and (newest is None or items[idx - 1] > newest):
                newest = items[idx - 1]
        return newest


def tier_of(share: float, config: MetricConfig) -> str:
    """The tier of a contributor share (SPEC section 2)."""
    if share < config.tier_medium_share:
        return "low"
    return "medium" if share < config.tier_high_share else "high"


@dataclass(frozen=True, slots=True)
class _Listening:
    eligible: int
    answered: int
    unanswered: int
    median_first_reply_s: float | None
    reciprocity: float | None
    managed_posts: int
    ugc_posts: int
    managed_engagement: float | None
    ugc_engagement: float | None


class PulseCore:
    """All communities one process owns; the adapters' single entry point."""

    def __init__(self, config: MetricConfig,
                 managers_of: Mapping[str, Sequence[str]] | None = None) -> None:
        """`managers_of`: the user ids of the managers who follow a community, for the
        communities that have any (their threads keep what follow-ups need)."""
        self.config = config
        self.communities: dict[str, CommunityState] = {}
        self.managers_of = dict(managers_of or {})

    def apply(self, events: Iterable[Event]) -> int:
        """Apply events of any communities; return the number of duplicates."""
        by_community: dict[str, list[Event]] = {}
        for event in events:
            by_community.setdefault(event.community_id, []).append(event)
        return sum(self.state(cid).apply(batch) for cid, batch in by_community.items())

    def state(self, community_id: str) -> CommunityState:
        state = self.communities.get(community_id)
        if state is None:
            state = self.communities[community_id] = CommunityState(
                community_id, self.config, self.managers_of.get(community_id, ()))
        return state

    def snapshot(self, as_of_ms: int) -> list[SnapshotRow]:
        rows: list[SnapshotRow] = []
        for community_id in sorted(self.communities):
            rows.extend(self.communities[community_id].snapshot(as_of_ms))
        return rows

    def use_experts(self, experts: Mapping[str, frozenset[str]] | None) -> None:
        """Another experts roster (the file changed): snapshots from now on count it.
        Exact at once, since expert counts come from the users' logs at snapshot time."""
        self.config = replace(self.config, experts=experts)
        for state in self.communities.values():
            state.config = self.config

    def expire(self, before_ms: int) -> None:
        for community_id in list(self.communities):
            state = self.communities[community_id]
            state.expire(before_ms)
            if state.is_empty():
                del self.communities[community_id]

    def forget(self, community_ids: Iterable[str]) -> None:
        """Drop communities this process no longer owns (after a rebalance)."""
        for community_id in community_ids:
            self.communities.pop(community_id, None)
