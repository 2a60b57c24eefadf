"""The event contract: decoder behaviour per SPEC section 1, and the JSON Schemas agree."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import msgspec
import pytest
from referencing import Registry, Resource

from devkit import generate as gen
from schemas.events import (
    DEFAULT_TOPICS,
    EVENT_TYPES,
    MAX_MESSAGE_BYTES,
    Reason,
    decode_lines,
    decode_message,
)
from schemas.producer import envelopes

NOW = 1_795_000_000_000  # 2026-11-18
ALL = frozenset(EVENT_TYPES)
POSTS = DEFAULT_TOPICS["community.posts"]
SCHEMAS = Path(__file__).parent.parent / "schemas"


def post(**overrides: object) -> dict:
    return {"event_id": "e1", "type": "post", "community_id": "c1", "user_id": "u1",
            "ts": NOW - 1000, "post_id": "p1", **overrides}


def decode(value: object, allowed: frozenset[str] = ALL, key: bytes | None = None):
    raw = value if isinstance(value, bytes) else msgspec.json.encode(value)
    return decode_message(raw, allowed, NOW, key)


def test_single_event_and_envelope_decode_to_the_same_events() -> None:
    events, rejections = decode(post())
    batch, batch_rejections = decode([post(), post(event_id="e2")])
    assert not rejections and not batch_rejections
    assert [e.event_id for e in batch] == ["e1", "e2"]
    assert events[0] == batch[0]


def test_rfc3339_time_with_offset_is_normalised_to_epoch_ms() -> None:
    (event,), _ = decode(post(ts="2026-11-18T10:00:00.250+01:00"))
    expected = datetime(2026, 11, 18, 9, 0, 0, tzinfo=UTC).timestamp() * 1000 + 250
    assert event.ts == event.ts_ms == int(expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", Reason.INVALID_JSON),
        (b"", Reason.INVALID_JSON),
        ({"event_id": "e1", "type": "post"}, Reason.MISSING_FIELD),
        (post(post_id=None), Reason.MISSING_FIELD),
        (post(event_id=""), Reason.INVALID_FIELD),
        (post(event_id="x" * 129), Reason.INVALID_FIELD),
        (post(community_id="c" * 257), Reason.INVALID_FIELD),
        (post(ts=True), Reason.INVALID_FIELD),
        (post(ts="2026-11-18T10:00:00"), Reason.INVALID_FIELD),  # no offset
        (post(ts="1999-12-31T23:59:59Z"), Reason.BAD_TIME),
        (post(ts=NOW + 86_400_000 + 1), Reason.BAD_TIME),
        (post(type="share"), Reason.INVALID_FIELD),
        (post(content_kind="hard"), Reason.INVALID_FIELD),
        ({**post(type="reply"), "reply_id": "r", "parent_id": "p1", "parent_type": "like"},
         Reason.INVALID_FIELD),
        ({**post(type="like"), "target_id": "p1"}, Reason.MISSING_FIELD),
        (42, Reason.INVALID_FIELD),
        (b"[]", Reason.EMPTY_BATCH),  # counted, not dropped without a trace
        (b" [ ] ", Reason.EMPTY_BATCH),
    ],
)
def test_invalid_events_are_rejected_with_a_reason_and_their_bytes(value, reason) -> None:
    raw = value if isinstance(value, bytes) else msgspec.json.encode(value)
    events, (rejection,) = decode(raw)
    assert events == []
    assert rejection.reason == reason
    assert rejection.raw == raw
    assert rejection.detail


def test_exactly_one_day_in_the_future_is_still_accepted() -> None:
    events, rejections = decode(post(ts=NOW + 86_400_000))
    assert len(events) == 1 and not rejections


def test_wrong_topic_and_key_mismatch() -> None:
    _, (wrong,) = decode({**post(type="like"), "target_id": "p", "target_type": "post"},
                         allowed=POSTS)
    assert wrong.reason == Reason.WRONG_TOPIC
    _, (mismatch,) = decode(post(), allowed=POSTS, key=b"another")
    assert mismatch.reason == Reason.KEY_MISMATCH
    events, _ = decode(post(), allowed=POSTS, key=b"c1")
    assert len(events) == 1


def test_one_bad_element_in_an_envelope_loses_only_itself() -> None:
    good, bad = post(event_id="ok"), post(event_id="bad", ts="not a time")
    events, (rejection,) = decode([good, bad, post(event_id="ok2")])
    assert [e.event_id for e in events] == ["ok", "ok2"]
    # an envelope of the bad elements' own bytes, not the whole message
    assert json.loads(rejection.raw) == [bad] and rejection.count == 1
    assert rejection.detail.startswith("1 of 3 events (invalid_field 1); element 1: ")


def test_an_envelope_of_bad_elements_is_one_rejection_that_counts_them_all() -> None:
    raw = b"[" + b",".join([b"0"] * 200_000) + b"]"
    events, (rejection,) = decode(raw)
    assert events == [] and rejection.raw == raw  # all bad: the message itself
    assert (rejection.reason, rejection.count) == (Reason.INVALID_FIELD, 200_000)
    mixed = [post(event_id="a", ts="x"), post(event_id="b"), post(event_id="c", post_id=None)]
    events, (rejection,) = decode(mixed)
    assert [e.event_id for e in events] == ["b"] and rejection.count == 2
    assert dict(rejection.by_reason()) == {Reason.INVALID_FIELD: 1, Reason.MISSING_FIELD: 1}


def test_oversized_message_is_rejected_whole() -> None:
    big = [post(event_id=str(i), post_id="p" * 200) for i in range(5000)]
    raw = msgspec.json.encode(big)
    assert len(raw) > MAX_MESSAGE_BYTES
    events, (rejection,) = decode(raw)
    assert events == [] and rejection.reason == Reason.OVERSIZED


def test_envelopes_are_split_below_the_size_limit_and_keyed_by_community() -> None:
    events = [post(event_id=str(i), post_id="p" * 200) for i in range(8000)]
    messages = list(envelopes(events, batch_size=8000))
    assert len(messages) > 1
    assert all(len(value) <= MAX_MESSAGE_BYTES for _, _, value in messages)
    assert {(topic, key) for topic, key, _ in messages} == {("community.posts", b"c1")}
    decoded = [e for _, _, value in messages for e in decode(value)[0]]
    assert len(decoded) == 8000


# One bad variant of each kind `_check` or msgspec rejects, to mix into valid batches.
BAD_VARIANTS: list[dict[str, object]] = [
    {"type": "share"}, {"post_id": None}, {"ts": 946_684_799_999}, {"ts": NOW + 2 * 86_400_000},
    {"content_kind": "hard"}, {"community_id": "other"}, {"ts": "2026-11-18T10:00:00+01:00"},
]


def _mixed_batches(rng: random.Random) -> list[list[dict]]:
    """Random batches of valid events of every type, some with one bad variant mixed in."""
    valid = [{**e, "community_id": "c1"} for community in gen.plan(3, 60, rng)
             for e in gen.history(community, NOW, 10, rng)]
    batches = []
    for size in (8, 9, 30, 200):
        for _ in range(15):
            batch = rng.sample(valid, size)
            if rng.random() < 0.6:
                i = rng.randrange(size)
                batch[i] = {k: v for k, v in {**batch[i], **rng.choice(BAD_VARIANTS)}.items()
                            if v is not None}
            batches.append(batch)
    return batches


def test_batch_checks_give_the_same_result_as_event_by_event() -> None:
    for batch in _mixed_batches(random.Random(9)):
        enveloped = decode(batch, key=b"c1")
        one_by_one = [decode(event, key=b"c1") for event in batch]
        assert enveloped[0] == [e for events, _ in one_by_one for e in events]
        reasons = Counter(r.reason for _, bad in one_by_one for r in bad)
        assert Counter(dict(p for r in enveloped[1] for p in r.by_reason())) == reasons
        assert len(enveloped[1]) == (1 if reasons else 0)  # one rejection per message


def test_decode_lines_equals_decoding_each_line() -> None:
    rng = random.Random(4)
    for batch in _mixed_batches(rng):
        lines = [msgspec.json.encode(e) for e in batch]
        if rng.random() < 0.3:  # an envelope line, a broken line, an oversized line
            lines.insert(rng.randrange(len(lines)), rng.choice([
                msgspec.json.encode(batch[:3]), b"{not json",
                msgspec.json.encode([post(event_id=str(i), post_id="p" * 200)
                                     for i in range(5000)])]))
        events, rejections = decode_lines(lines, ALL, NOW)
        each = [decode_message(line, ALL, NOW) for line in lines]
        assert events == [e for ok, _ in each for e in ok]
        assert [(r.reason, r.raw) for r in rejections] == [(r.reason, r.raw)
                                                           for _, bad in each for r in bad]


def _validator(name: str) -> jsonschema.protocols.Validator:
    resources = [(p.name, Resource.from_contents(json.loads(p.read_text())))
                 for p in SCHEMAS.glob("*.schema.json")]
    registry = Registry().with_resources(resources)
    schema = json.loads((SCHEMAS / name).read_text())
    return jsonschema.Draft202012Validator(schema, registry=registry,
                                           format_checker=jsonschema.FormatChecker())


def test_generated_events_satisfy_the_published_json_schema() -> None:
    validator = _validator("message.schema.json")
    rng = random.Random(5)
    community = gen.plan(3, 50, rng)[2]
    events = list(gen.history(community, NOW, 5, rng))
    assert {e["type"] for e in events} >= {"post", "reply", "like", "view", "join"}
    for _, _, value in envelopes(events, batch_size=10):
        validator.validate(json.loads(value))


@pytest.mark.parametrize(
    "bad",
    [
        {"event_id": "e1", "type": "post"},
        post(post_id=None),
        post(type="share"),
        post(ts=946_684_799_999),
        post(ts="2026-11-18T10:00:00"),
        {**post(type="like"), "target_id": "p1"},
    ],
)
def test_schema_and_decoder_reject_the_same_events(bad: dict) -> None:
    bad = {k: v for k, v in bad.items() if v is not None}
    assert not _validator("event.schema.json").is_valid(bad)
    assert decode(bad)[1]


def test_an_empty_envelope_among_lines_is_rejected_as_one_message_would_be() -> None:
    lines = [msgspec.json.encode(post()), b"[]", msgspec.json.encode([post(event_id="e2")])]
    events, rejections = decode_lines(lines, ALL, NOW)
    assert [e.event_id for e in events] == ["e1", "e2"]
    assert [(r.reason, r.raw) for r in rejections] == [(Reason.EMPTY_BATCH, b"[]")]
