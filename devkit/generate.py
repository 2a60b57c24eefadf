"""Synthetic community activity: healthy, medium, low and stagnating communities.

History is generated for the last `days` days up to `now` (so stagnation is visible at
once), emitted in a realistic, messy order: most events a little late, some very late,
about 1% duplicated, and a few bad messages that must end up in the dead-letter topic.
A live phase can follow, producing events stamped "now" at a steady rate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from schemas.producer import EnvelopeProducer
from schemas.producer import envelopes as to_messages
from streams.config import DAY_MS, HOUR_MS
from streams.kafka_auth import KafkaSecurity

__all__ = ["PROFILES", "Community", "history", "live_events", "messy_order", "plan",
           "produce", "to_messages"]



@dataclass(frozen=True)
class Profile:
    name: str
    weight: float
    creators: float  # share of members who post
    critics: float  # share who reply to posts
    conversationalists: float  # share who reply to replies
    joiners: float  # share who like
    spectators: float  # share who only view
    posts_per_member_day: float
    reply_delay_hours: float
    quiet_last_days: int = 0  # stops posting and replying this many days before now
    decline: float = 1.0  # activity factor over the last 14 days


PROFILES = (
    Profile("healthy", 0.35, 0.15, 0.20, 0.08, 0.30, 0.15, 0.05, 3.0),
    Profile("medium", 0.30, 0.07, 0.10, 0.04, 0.30, 0.25, 0.04, 12.0),
    Profile("low", 0.15, 0.02, 0.04, 0.01, 0.25, 0.35, 0.03, 40.0),
    Profile("stagnating", 0.10, 0.08, 0.12, 0.04, 0.25, 0.20, 0.04, 8.0, quiet_last_days=10),
    Profile("declining", 0.10, 0.12, 0.16, 0.06, 0.25, 0.15, 0.05, 6.0, decline=0.3),
)

BAD_MESSAGES: tuple[tuple[str, bytes], ...] = (
    ("community.posts", b"{not json"),
    ("community.posts", b'{"event_id": "bad-1", "type": "post"}'),
    ("community.replies", b'{"event_id":"bad-2","type":"post","community_id":"x",'
                          b'"user_id":"u","ts":1795000000000,"post_id":"p"}'),
    ("community.likes", b'{"event_id":"bad-3","type":"like","community_id":"x",'
                        b'"user_id":"u","ts":"1999-12-31T23:00:00Z","target_id":"p",'
                        b'"target_type":"post"}'),
    ("community.views", b'{"event_id":"bad-4","type":"view","community_id":"x",'
                        b'"user_id":"u","ts":"yesterday","target_id":"p","target_type":"post"}'),
)


@dataclass
class Community:
    community_id: str
    profile: Profile
    members: list[str]
    creators: list[str]
    critics: list[str]
    conversationalists: list[str]
    joiners: list[str]
    spectators: list[str]


def plan(n_communities: int, n_users: int, rng: random.Random) -> list[Community]:
    """Communities with members and the members' habits (who posts, replies, likes)."""
    weights = [p.weight for p in PROFILES]
    communities = []
    for i in range(n_communities):
        profile = rng.choices(PROFILES, weights)[0] if i >= len(PROFILES) else PROFILES[i]
        floor = 12 if profile.name == "low" else 30  # tiny communities are all noise
        size = max(floor, min(n_users, int(rng.lognormvariate(math.log(60), 0.8))))
        members = sorted({f"user-{rng.randrange(n_users)}" for _ in range(size)})

        def pick(share: float, members: list[str] = members) -> list[str]:
            return [m for m in members if rng.random() < share] or members[:1]

        communities.append(Community(
            f"{profile.name}-{i:04d}", profile, members, pick(profile.creators),
            pick(profile.critics), pick(profile.conversationalists), pick(profile.joiners),
            pick(profile.spectators)))
    return communities


def history(community: Community, now_ms: int, days: int, rng: random.Random) -> Iterator[dict]:
    """All events of one community over the last `days` days, in time order per kind."""
    c = community
    p, cid, members = c.profile, c.community_id, c.members
    seq = 0

    def event(kind: str, user: str, ts: int, **fields: Any) -> dict:
        nonlocal seq
        seq += 1
        return {"event_id": f"{cid}-{seq}", "type": kind, "community_id": cid,
                "user_id": user, "ts": ts, **fields}

    creators, critics, talkers = c.creators, c.critics, c.conversationalists
    joiners, spectators = c.joiners, c.spectators
    start = now_ms - days * DAY_MS
    for member in members:
        if rng.random() < 0.9:
            yield event("join", member, start - rng.randrange(60 * DAY_MS))
    posts_per_day = _posts_per_day(c)
    for day in range(days):
        day_start = start + day * DAY_MS
        recent = day >= days - 14
        factor = p.decline if recent else 1.0
        quiet = day >= days - p.quiet_last_days
        n_posts = 0 if quiet else _poisson(rng, posts_per_day * factor)
        for _ in range(n_posts):
            author = rng.choice(_left(creators, c) if recent else creators)
            post_ts = day_start + rng.randrange(DAY_MS)
            post_id = f"{cid}-p{seq}"
            yield event("post", author, post_ts, post_id=post_id,
                        content_kind="managed" if rng.random() < 0.1 else "ugc")
            reply_ts = post_ts
            for _ in range(_poisson(rng, 2.0 * factor)):
                reply_ts += int(rng.expovariate(1 / p.reply_delay_hours) * HOUR_MS) + 1000
                if reply_ts >= now_ms:
                    break
                reply_id = f"{cid}-r{seq}"
                yield event("reply", rng.choice(critics), reply_ts, post_id=post_id,
                            reply_id=reply_id, parent_id=post_id, parent_type="post")
                if rng.random() < 0.4 and reply_ts + HOUR_MS < now_ms:
                    yield event("reply", rng.choice(talkers), reply_ts + rng.randrange(HOUR_MS),
                                post_id=post_id, reply_id=f"{cid}-rr{seq}", parent_id=reply_id,
                                parent_type="reply")
            for _ in range(_poisson(rng, 3.0)):
                like_ts = post_ts + rng.randrange(2 * DAY_MS)
                if like_ts < now_ms:
                    yield event("like", rng.choice(joiners), like_ts, target_id=post_id,
                                target_type="post")
            for _ in range(_poisson(rng, 4.0)):
                view_ts = post_ts + rng.randrange(3 * DAY_MS)
                if view_ts < now_ms:
                    yield event("view", rng.choice(spectators), view_ts, target_id=post_id,
                                target_type="post")
    for member in members:
        if rng.random() < 0.02:
            yield event("leave", member, now_ms - rng.randrange(days * DAY_MS))


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, int(rng.gauss(lam, math.sqrt(lam))))
    threshold, k, product = math.exp(-lam), 0, rng.random()
    while product > threshold:
        k += 1
        product *= rng.random()
    return k


def messy_order(events: list[dict], rng: random.Random) -> list[dict]:
    """Arrival order: events a little late, some very late, ~1% duplicated."""
    def arrival(e: dict) -> float:
        lateness = rng.expovariate(1 / 60_000)
        if rng.random() < 0.03:
            lateness += rng.randrange(2 * DAY_MS)
        return float(e["ts"]) + lateness

    ordered = sorted(events, key=arrival)
    for i in range(0, len(ordered), 97):
        ordered.insert(min(len(ordered), i + rng.randrange(50)), ordered[i])
    return ordered


def live_events(
    communities: list[Community], now_ms: int, count: int, rng: random.Random, seq: int
) -> list[dict]:
    """`count` fresh events stamped `now_ms`, in each community's pattern of its last
    days: as busy as its history (relative to the others), quiet ones stay quiet, and
    declining ones keep only the share of their posters and repliers that the decline
    left, so a few minutes of live traffic do not undo the history."""
    active = [c for c in communities if c.profile.quiet_last_days == 0]
    if not active:
        return []
    weights = [_posts_per_day(c) * c.profile.decline for c in active]
    out = []
    for i, c in enumerate(rng.choices(active, weights, k=count)):
        cid = c.community_id
        n = seq + i
        base = {"event_id": f"{cid}-live-{n}", "community_id": cid, "ts": now_ms}
        post_id = f"{cid}-live-p{rng.randrange(n // 20 + 1)}"
        roll = rng.random()
        if roll < 0.1:
            out.append({**base, "type": "post", "user_id": rng.choice(_left(c.creators, c)),
                        "post_id": f"{cid}-live-p{n // 20}"})
        elif roll < 0.4:
            out.append({**base, "type": "reply", "user_id": rng.choice(_left(c.critics, c)),
                        "post_id": post_id, "reply_id": base["event_id"],
                        "parent_id": post_id, "parent_type": "post"})
        elif roll < 0.8:
            out.append({**base, "type": "like", "user_id": rng.choice(c.joiners),
                        "target_id": post_id, "target_type": "post"})
        else:
            out.append({**base, "type": "view", "user_id": rng.choice(c.spectators),
                        "target_id": post_id, "target_type": "post"})
    return out


def _posts_per_day(community: Community) -> float:
    return max(0.3, community.profile.posts_per_member_day * len(community.members))


def _left(users: list[str], community: Community) -> list[str]:
    """The users still active after the community's decline (all, without one)."""
    return users[: max(1, int(len(users) * community.profile.decline))]


def produce(bootstrap: str, messages: list[tuple[str, bytes, bytes]],
            security: KafkaSecurity | None = None, topic_prefix: str = "") -> None:
    """Send ready-made messages to Kafka, keyed by community, and wait for acks; the
    topics are named with `topic_prefix` as the worker reads them."""
    with EnvelopeProducer(bootstrap, topic_prefix=topic_prefix,
                          security=security or KafkaSecurity()) as producer:
        for topic, key, value in messages:
            producer.send_raw(topic, key, value)
