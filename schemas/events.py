"""The event contract (SPEC section 1): one validating decoder for every adapter.

A Kafka message (or a JSON-lines line) holds one event object or a JSON array of them
(a batch envelope). `decode_message` turns its bytes into valid `Event`s plus
`Rejection`s that carry the original bytes and a reason, so nothing is ever lost.

The fast path decodes a whole envelope with one typed msgspec call; only when that
fails do we fall back to decoding element by element to find out which ones are bad.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Annotated, Final

import msgspec

MAX_MESSAGE_BYTES: Final = 1024 * 1024
MIN_TS_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_MS: Final = 24 * 3600 * 1000

EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
ItemId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]

EVENT_TYPES: Final = ("post", "reply", "like", "view", "join", "leave")

# Default topic name -> event types it may carry.
DEFAULT_TOPICS: Final[dict[str, frozenset[str]]] = {
    "community.posts": frozenset({"post"}),
    "community.replies": frozenset({"reply"}),
    "community.likes": frozenset({"like"}),
    "community.views": frozenset({"view"}),
    "community.memberships": frozenset({"join", "leave"}),
}
DEAD_LETTER_TOPIC: Final = "community.dead-letter"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


class Event(msgspec.Struct, omit_defaults=True, gc=False):
    """One validated event. After `decode_message`, `ts` is always epoch milliseconds."""

    event_id: EventId
    type: str
    community_id: Name
    user_id: Name
    ts: int | AwareTime
    post_id: ItemId | None = None
    content_kind: str | None = None
    reply_id: ItemId | None = None
    parent_id: ItemId | None = None
    parent_type: str | None = None
    target_id: ItemId | None = None
    target_type: str | None = None

    @property
    def ts_ms(self) -> int:
        assert isinstance(self.ts, int), "ts is normalised by decode_message"
        return self.ts


class Reason:
    """Stable dead-letter reason codes (used as a bounded metric label)."""

    OVERSIZED = "oversized"
    INVALID_JSON = "invalid_json"
    INVALID_FIELD = "invalid_field"
    MISSING_FIELD = "missing_field"
    WRONG_TOPIC = "wrong_topic"
    BAD_TIME = "bad_time"
    KEY_MISMATCH = "key_mismatch"
    EMPTY_BATCH = "empty_batch"  # `[]`: valid JSON, but a message that says nothing
    WRONG_PARTITION = "wrong_partition"  # set by the worker: see streams.worker

    ALL: Final = (OVERSIZED, INVALID_JSON, INVALID_FIELD, MISSING_FIELD, WRONG_TOPIC,
                  BAD_TIME, KEY_MISMATCH, EMPTY_BATCH, WRONG_PARTITION)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Input that failed validation: the original bytes and why."""

    raw: bytes
    reason: str  # one of Reason.ALL
    detail: str

    @property
    def message(self) -> str:
        return f"{self.reason}: {self.detail}"


_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "post": ("post_id",),
    "reply": ("post_id", "reply_id", "parent_id", "parent_type"),
    "like": ("target_id", "target_type"),
    "view": ("target_id", "target_type"),
    "join": (),
    "leave": (),
}
_ITEM_TYPES: Final = frozenset({"post", "reply"})
_CONTENT_KINDS: Final = frozenset({"ugc", "managed"})
# The one field per type whose value is an enumeration (None: left out).
_ENUM_FIELDS: Final[dict[str, tuple[str, frozenset[str | None]]]] = {
    "reply": ("parent_type", _ITEM_TYPES),
    "like": ("target_type", _ITEM_TYPES),
    "view": ("target_type", _ITEM_TYPES),
    "post": ("content_kind", frozenset({None, *_CONTENT_KINDS})),
}
_BATCH_CHECK_MIN: Final = 8  # below this, `_check` per event is cheaper than `_all_valid`
_get_type, _get_ts, _get_community = (attrgetter(name) for name in ("type", "ts", "community_id"))

_batch_decoder = msgspec.json.Decoder(Event | list[Event])
_raw_decoder = msgspec.json.Decoder(msgspec.Raw)
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_one_decoder = msgspec.json.Decoder(Event)


def decode_message(
    value: bytes | None,
    allowed_types: frozenset[str],
    now_ms: int,
    key: bytes | None = None,
) -> tuple[list[Event], list[Rejection]]:
    """Decode one message into valid events and rejections.

    `allowed_types` are the event types the source topic may carry; `now_ms` bounds
    how far in the future an event may lie; `key`, when given, must equal every
    event's `community_id` so that one community's events meet in one worker.
    """
    raw = value or b""
    if len(raw) > MAX_MESSAGE_BYTES:
        return [], [Rejection(raw, Reason.OVERSIZED, f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")]
    try:
        decoded = _batch_decoder.decode(raw)
    except msgspec.DecodeError:
        return _decode_elementwise(raw, allowed_types, now_ms, key)
    if not isinstance(decoded, list):  # one event, the most common message
        key_text = key.decode("utf-8", "replace") if key is not None else None
        problem = _check(decoded, allowed_types, now_ms, key_text)
        return ([decoded], []) if problem is None else ([], [Rejection(raw, *problem)])
    if not decoded:  # counted as a dead letter, not dropped without a trace
        return [], [Rejection(raw, Reason.EMPTY_BATCH, "an envelope without events")]
    events, rejections = _check_all(decoded, allowed_types, now_ms, key, raw)
    if rejections:
        # Rare: redo element by element so each rejection carries its original bytes.
        return _decode_elementwise(raw, allowed_types, now_ms, key)
    return events, rejections


def decode_lines(
    values: Sequence[bytes], allowed_types: frozenset[str], now_ms: int
) -> tuple[list[Event], list[Rejection]]:
    """`decode_message` over many keyless messages (the lines of a JSON-lines file): the
    same events and rejections, with one msgspec call for all when all are valid."""
    joined = b"\n".join(values)
    if (joined.count(b"\n") == len(values) - 1  # no message spans lines
            and max(map(len, values), default=0) <= MAX_MESSAGE_BYTES):
        try:
            items = _batch_decoder.decode_lines(joined)
        except msgspec.DecodeError:
            items = []
        if len(items) == len(values) and [] not in items:  # `[]` is a rejection
            events: list[Event] = []
            for item in items:
                if isinstance(item, list):
                    events.extend(item)
                else:
                    events.append(item)
            if _all_valid(events, allowed_types, now_ms, None):
                return events, []
            if len(events) == len(values):  # one event a line: check each, no re-decoding
                return _checked_lines(values, events, allowed_types, now_ms)
    events, rejections = [], []
    for value in values:  # something is wrong: find out per message, as the worker would
        ok, bad = decode_message(value, allowed_types, now_ms)
        events.extend(ok)
        rejections.extend(bad)
    return events, rejections


def _checked_lines(values: Sequence[bytes], events: list[Event], allowed_types: frozenset[str],
                   now_ms: int) -> tuple[list[Event], list[Rejection]]:
    """`_check` per line's event (normalising RFC 3339 times), as `decode_message` would."""
    return _checked(zip(events, values, strict=True), allowed_types, now_ms, None)


def _checked(candidates: Iterable[tuple[Event, bytes]], allowed_types: frozenset[str],
             now_ms: int, key_text: str | None) -> tuple[list[Event], list[Rejection]]:
    """`_check` each (event, its message bytes): the valid events and the rejections."""
    events: list[Event] = []
    rejections: list[Rejection] = []
    for event, raw in candidates:
        problem = _check(event, allowed_types, now_ms, key_text)
        if problem is None:
            events.append(event)
        else:
            rejections.append(Rejection(raw, *problem))
    return events, rejections


def _decode_elementwise(
    raw: bytes, allowed_types: frozenset[str], now_ms: int, key: bytes | None
) -> tuple[list[Event], list[Rejection]]:
    try:
        if raw.lstrip().startswith(b"["):
            items = _raw_list_decoder.decode(raw)
        else:
            items = [_raw_decoder.decode(raw)]
    except msgspec.DecodeError as exc:
        return [], [Rejection(raw, Reason.INVALID_JSON, str(exc))]
    events: list[Event] = []
    rejections: list[Rejection] = []
    for item in items:
        item_bytes = bytes(item)
        try:
            event = _one_decoder.decode(item_bytes)
        except msgspec.ValidationError as exc:
            missing = "missing required" in str(exc)
            reason = Reason.MISSING_FIELD if missing else Reason.INVALID_FIELD
            rejections.append(Rejection(item_bytes, reason, str(exc)))
            continue
        ok, bad = _check_all([event], allowed_types, now_ms, key, item_bytes)
        events.extend(ok)
        rejections.extend(bad)
    return events, rejections


def _check_all(
    candidates: list[Event],
    allowed_types: frozenset[str],
    now_ms: int,
    key: bytes | None,
    raw: bytes,
) -> tuple[list[Event], list[Rejection]]:
    key_text = key.decode("utf-8", "replace") if key is not None else None
    if len(candidates) >= _BATCH_CHECK_MIN and _all_valid(candidates, allowed_types, now_ms,
                                                          key_text):
        return candidates, []
    return _checked(((event, raw) for event in candidates), allowed_types, now_ms, key_text)


def _all_valid(
    events: list[Event], allowed_types: frozenset[str], now_ms: int, key_text: str | None
) -> bool:
    """`_check` for a whole batch in the common case, one C-level pass per rule (a call
    per event costs more than the checks). False sends the batch through `_check`
    event by event, which also normalises RFC 3339 times."""
    if not events:
        return True
    kinds = set(map(_get_type, events))
    if not kinds <= allowed_types:
        return False
    try:  # min/max raise TypeError on datetimes: those need normalising
        stamps = list(map(_get_ts, events))
        if min(stamps) < MIN_TS_MS or max(stamps) > now_ms + MAX_FUTURE_MS:
            return False
    except TypeError:
        return False
    if key_text is not None and set(map(_get_community, events)) != {key_text}:
        return False
    for kind in kinds:
        of_kind = events if len(kinds) == 1 else [e for e in events if e.type == kind]
        for name in _REQUIRED[kind]:
            if None in map(attrgetter(name), of_kind):
                return False
        allowed_values = _ENUM_FIELDS.get(kind)
        if allowed_values is not None:
            name, values = allowed_values
            if not set(map(attrgetter(name), of_kind)) <= values:
                return False
    return True


def _check(
    event: Event, allowed_types: frozenset[str], now_ms: int, key_text: str | None
) -> tuple[str, str] | None:
    """Cross-field rules msgspec cannot express; normalises `ts` to epoch ms."""
    if event.type not in allowed_types:
        if event.type not in _REQUIRED:
            return Reason.INVALID_FIELD, f"unknown type {event.type!r}"
        return Reason.WRONG_TOPIC, f"type {event.type!r} not allowed on this topic"
    for name in _REQUIRED[event.type]:
        if getattr(event, name) is None:
            return Reason.MISSING_FIELD, f"{event.type} needs {name}"
    enumerated = _ENUM_FIELDS.get(event.type)
    if enumerated is not None and getattr(event, enumerated[0]) not in enumerated[1]:
        name, values = enumerated
        allowed = " or ".join(sorted(v for v in values if v is not None))
        return Reason.INVALID_FIELD, f"{name} must be {allowed}: {getattr(event, name)!r}"
    ts = event.ts
    ts_ms = (ts - _EPOCH) // _ONE_MS if isinstance(ts, datetime) else ts
    if ts_ms < MIN_TS_MS:
        return Reason.BAD_TIME, f"ts {ts_ms} is before 2000-01-01"
    if ts_ms > now_ms + MAX_FUTURE_MS:
        return Reason.BAD_TIME, f"ts {ts_ms} is more than 1 day in the future"
    if key_text is not None and key_text != event.community_id:
        return Reason.KEY_MISMATCH, "community_id does not match the message key"
    event.ts = ts_ms
    return None


def newest_ts(events: list[Event]) -> int:
    """The newest event time of decoded (normalised) events, in epoch ms."""
    return max([event.ts for event in events])  # type: ignore[return-value, type-var]
