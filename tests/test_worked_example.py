"""The worked example of docs/metrics.md, computed by the core (keeps the doc honest)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from schemas.events import Event
from streams.config import MetricConfig
from streams.core import PulseCore


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_worked_example_of_the_metrics_doc() -> None:
    members = ["ann", "bob", "cat", "dan", "eve", "fay", *[f"m{i}" for i in range(14)]]
    long_ago = ms("2026-01-01T00:00")
    events = [Event(f"join-{m}", "join", "c", m, long_ago) for m in members]

    def add(kind: str, user: str, when: str, **fields: str) -> None:
        events.append(Event(f"e{len(events)}", kind, "c", user, ms(when), **fields))

    add("post", "ann", "2026-11-13T10:00", post_id="p1")
    add("reply", "bob", "2026-11-13T12:00", post_id="p1", reply_id="r1", parent_id="p1",
        parent_type="post")
    add("reply", "cat", "2026-11-14T10:00", post_id="p1", reply_id="r2", parent_id="r1",
        parent_type="reply")
    add("post", "dan", "2026-11-17T20:00", post_id="p2")
    add("post", "eve", "2026-11-15T09:00", post_id="p3")
    add("like", "fay", "2026-11-15T10:00", target_id="p3", target_type="post")
    for i in range(5):
        add("like", f"m{i}", "2026-11-16T10:00", target_id="p1", target_type="post")
    for i in range(5, 7):
        add("view", f"m{i}", "2026-11-16T11:00", target_id="p1", target_type="post")

    core = PulseCore(MetricConfig(windows_days=(7,)))
    core.apply(events)
    (row,) = core.snapshot(ms("2026-11-18T12:00"))
    assert (row.members, row.creators, row.conversationalists, row.critics, row.joiners,
            row.spectators, row.inactives) == (20, 3, 1, 1, 6, 2, 7)
    assert row.contributor_share == 0.25 and row.tier == "medium"
    assert (row.posts_eligible, row.posts_answered_in_sla, row.unanswered_posts) == (2, 1, 1)
    assert row.median_first_reply_seconds == 7200
    assert row.retention is None
    assert math.isclose(row.continuity, 2 / 7)
    assert row.responsiveness == 0.5
    assert math.isclose(row.participation or 0, 0.25 / 0.30)
    assert math.isclose(row.reciprocity or 0, 2 / 3)
    assert round(row.sustainability, 1) == 57.1
    assert row.stagnating is False
