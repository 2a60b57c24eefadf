"""The event contract (SPEC section 1): one validating decoder for every adapter.

A Kafka message (or a JSON-lines line) holds one event object or a JSON array of them
(a batch envelope). `decode_message` turns its bytes into valid `Event`s plus
`Rejection`s that carry the original bytes and a reason, so nothing is ever lost; it
never raises, whatever the bytes.

The fast path decodes a whole envelope with one typed msgspec call; only when that
fails, or cannot vouch for the message (not UTF-8, nested deeper than MAX_DEPTH, a field
named twice), we decode element by element to find out which ones are bad. An
envelope's bad elements become one rejection, whatever their number.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Annotated, Any, Final

import msgspec
import numpy as np

MAX_MESSAGE_BYTES: Final = 1024 * 1024
MIN_TS_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_MS: Final = 24 * 3600 * 1000
# Nesting levels a message may have (an envelope of events has 2; unknown fields may
# nest): deeper messages are rejected as too_deep, whatever the parser would manage.
MAX_DEPTH: Final = 64

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
    INVALID_UTF8 = "invalid_utf8"  # the message (or its key) is not UTF-8
    TOO_DEEP = "too_deep"  # nested more than MAX_DEPTH levels
    INTERNAL = "internal"  # handling the message raised (a bug): streams.pipeline

    ALL: Final = (OVERSIZED, INVALID_JSON, INVALID_FIELD, MISSING_FIELD, WRONG_TOPIC,
                  BAD_TIME, KEY_MISMATCH, EMPTY_BATCH, WRONG_PARTITION, INVALID_UTF8,
                  TOO_DEEP, INTERNAL)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Input that failed validation: the original bytes and why. The detail names fields
    and rules, never a field's value (dead letters are read by people).

    One rejection may stand for several events: the bad elements of an envelope are one
    rejection whose `raw` is the message itself when all its elements are bad, else an
    envelope of the bad elements' own bytes (so a redrive resends exactly those)."""

    raw: bytes
    reason: str  # one of Reason.ALL; of the first bad element for an envelope's
    detail: str
    count: int = 1  # events (envelope elements) rejected
    reasons: tuple[tuple[str, int], ...] = ()  # per reason, when they differ

    @property
    def message(self) -> str:
        return f"{self.reason}: {self.detail}"

    def by_reason(self) -> tuple[tuple[str, int], ...]:
        """(reason, events) for the dead-letter counters."""
        return self.reasons or ((self.reason, self.count),)


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
_get_type, _get_ts, _get_community, _get_content_kind = (
    attrgetter(name) for name in ("type", "ts", "community_id", "content_kind"))
_ALWAYS: Final = ("event_id", "type", "community_id", "user_id", "ts")  # required of all

_batch_decoder = msgspec.json.Decoder(Event | list[Event])
_raw_decoder = msgspec.json.Decoder(msgspec.Raw)
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_one_decoder = msgspec.json.Decoder(Event)
_FIELDS: Final = Event.__struct_fields__
_FIELD_TOKENS: Final = tuple(f'"{name}"'.encode() for name in _FIELDS)
_FIELD_GETTERS: Final = tuple(attrgetter(name) for name in _FIELDS)
# A key spelt with an escape (`"\u0074ype":`): only such keys can name a field twice
# without its plain token appearing twice.
_ESCAPED_KEY: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)+"\s*:')
_BRACKETS: Final = np.zeros(256, np.int8)
_BRACKETS[list(b"[{")] = 1
_BRACKETS[list(b"]}")] = -1
_FIRST_ELEMENTS_IN_DETAIL: Final = 3
_NAME_ENDINGS: Final = (b'_id"', b'ype"', b'ind"', b'"ts"')
_NAME_CODES: Final = tuple(int.from_bytes(ending, "little") for ending in _NAME_ENDINGS)
_NUMPY_FROM: Final = 4096  # bytes from which numpy counts faster than bytes.count


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
    key_text = None
    if key is not None:
        key_text = _utf8(key)
        if key_text is None:  # no community_id (a JSON string) can equal it
            return [], [Rejection(raw, Reason.INVALID_UTF8, "the message key is not UTF-8")]
    decoded = _decode_plain(raw)
    if decoded is None:
        return _decode_elementwise(raw, allowed_types, now_ms, key_text)
    if not isinstance(decoded, list):  # one event, the most common message
        problem = _check(decoded, allowed_types, now_ms, key_text)
        return ([decoded], []) if problem is None else ([], [Rejection(raw, *problem)])
    if not decoded:  # counted as a dead letter, not dropped without a trace
        return [], [Rejection(raw, Reason.EMPTY_BATCH, "an envelope without events")]
    if len(decoded) >= _BATCH_CHECK_MIN:
        if _all_valid(decoded, allowed_types, now_ms, key_text):
            return decoded, []
    elif not _checked(((event, raw) for event in decoded), allowed_types, now_ms,
                      key_text)[1]:
        return decoded, []  # (`_check` normalised their times)
    # Rare: element by element, so the rejection carries the bad elements' own bytes.
    return _decode_elementwise(raw, allowed_types, now_ms, key_text)


def _decode_plain(raw: bytes) -> Event | list[Event] | None:
    """One typed msgspec call for the usual message: UTF-8, shallow, each field once.
    None for anything else, which `_decode_elementwise` sorts out."""
    if not _is_utf8(raw):
        return None
    try:
        decoded = _batch_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # (msgspec's own recursion guard)
        return None
    events = decoded if isinstance(decoded, list) else [decoded]
    envelopes = int(isinstance(decoded, list))
    if not _shallow(raw, len(events), envelopes) or _may_repeat_fields(raw, events):
        return None
    return decoded


def decode_lines(
    values: Sequence[bytes], allowed_types: frozenset[str], now_ms: int
) -> tuple[list[Event], list[Rejection]]:
    """`decode_message` over many keyless messages (the lines of a JSON-lines file): the
    same events and rejections, with one msgspec call for all when all are valid."""
    joined = b"\n".join(values)
    if (joined.count(b"\n") == len(values) - 1  # no message spans lines
            and max(map(len, values), default=0) <= MAX_MESSAGE_BYTES
            and _is_utf8(joined)):
        try:
            items = _batch_decoder.decode_lines(joined)
        except (msgspec.DecodeError, RecursionError):
            items = []
        if len(items) == len(values) and [] not in items:  # `[]` is a rejection
            events: list[Event] = []
            envelopes = 0
            for item in items:
                if isinstance(item, list):
                    events.extend(item)
                    envelopes += 1
                else:
                    events.append(item)
            if not _shallow(joined, len(events), envelopes) or _may_repeat_fields(
                    joined, events):
                pass  # some line is unusual: per message below
            elif _all_valid(events, allowed_types, now_ms, None):
                return events, []
            elif not envelopes:  # one event a line: check each, no re-decoding
                return _checked_lines(values, events, allowed_types, now_ms)
    events, rejections = [], []
    for value in values:  # something is wrong: find out per message, as the worker would
        ok, bad = decode_message(value, allowed_types, now_ms)
        events.extend(ok)
        rejections.extend(bad)
    return events, rejections


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _is_utf8(data: bytes) -> bool:
    return data.isascii() or _utf8(data) is not None


def _shallow(raw: bytes, events: int, envelopes: int) -> bool:
    """Whether decoded messages (`events` events, `envelopes` of them in arrays) surely
    nest at most MAX_DEPTH levels, from their bracket count alone: beyond the arrays
    and event objects themselves, every level takes an opening bracket of its own."""
    if len(raw) < _NUMPY_FROM:
        openers = raw.count(b"{") + raw.count(b"[")
    else:  # (numpy counts a byte ~10x as fast as bytes.count)
        data = np.frombuffer(raw, np.uint8)
        openers = int(np.count_nonzero(data == ord("{")) + np.count_nonzero(data == ord("[")))
    return openers - events - envelopes + (2 if envelopes else 1) <= MAX_DEPTH


def max_depth(raw: bytes) -> int:
    """How deep the JSON text nests (brackets within strings do not count), computed
    without recursion: numpy over the bytes."""
    data = np.frombuffer(raw, np.uint8)
    quotes = data == ord('"')
    backslashes = data == ord("\\")
    if backslashes.any():  # a quote after an odd run of backslashes is escaped
        at = np.arange(len(data))
        last_other = np.maximum.accumulate(np.where(backslashes, -1, at))
        run = np.zeros(len(data), np.int64)
        run[1:] = at[:-1] - last_other[:-1]  # backslashes right before each byte
        quotes &= run % 2 == 0
    in_string = (np.cumsum(quotes, dtype=np.int64) & 1).astype(np.bool_)
    steps = np.where(in_string, 0, _BRACKETS[data]).astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def _may_repeat_fields(raw: bytes, events: Sequence[Event]) -> bool:
    """Whether some event object may name a field twice: the fields' quoted names occur
    more often than the events hold fields, or a key is spelt with escapes. False
    alarms only cost the careful path (`_first_values`)."""
    if b"\\" in raw and _ESCAPED_KEY.search(raw) is not None:
        return True
    if _name_endings(raw) <= _least_fields(events):
        return False
    return _repeats_a_field(raw, events)


def _name_endings(raw: bytes) -> int:
    """How often the four-byte endings of the quoted field names occur (`_id"`, `ype"`,
    `ind"`, `"ts"`: every field name has one, and each field an event holds puts its name
    into the message once). At least as many as `bytes.count` finds."""
    if len(raw) < _NUMPY_FROM:
        return sum(map(raw.count, _NAME_ENDINGS))
    # The bytes as little-endian uint32 words from each of the four offsets (views, no
    # copy): every four bytes of the message are one word of one of them.
    found = 0
    for offset in range(4):
        words = np.frombuffer(raw, "<u4", (len(raw) - offset) // 4, offset)
        found += sum(int(np.count_nonzero(words == code)) for code in _NAME_CODES)
    return found


def _may_name_a_field_twice(item: bytes) -> bool:
    """`_may_repeat_fields` for one object, before it is decoded."""
    return any(item.count(token) > 1 for token in _FIELD_TOKENS) or (
        b"\\" in item and _ESCAPED_KEY.search(item) is not None)


def _least_fields(events: Sequence[Event]) -> int:
    """How many fields the events hold at least: those their types require, and
    content_kind where given (cheap: no look at every field of every event)."""
    if len(events) == 1:
        return len(_FIELDS) - msgspec.structs.astuple(events[0]).count(None)
    kinds = Counter(map(_get_type, events))
    required = sum(len(_REQUIRED.get(kind, ())) * n for kind, n in kinds.items())
    kinds_given = len(events) - list(map(_get_content_kind, events)).count(None)
    return len(_ALWAYS) * len(events) + required + kinds_given


def _repeats_a_field(raw: bytes, events: Sequence[Event]) -> bool:
    for token, getter in zip(_FIELD_TOKENS, _FIELD_GETTERS, strict=True):
        occurrences = raw.count(token)
        if occurrences and occurrences > len(events) - list(map(getter, events)).count(None):
            return True
    return False


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
    raw: bytes, allowed_types: frozenset[str], now_ms: int, key_text: str | None
) -> tuple[list[Event], list[Rejection]]:
    """The careful path: depth first (so no parser recurses past MAX_DEPTH), then each
    element on its own; an envelope's bad elements become one rejection."""
    if max_depth(raw) > MAX_DEPTH:
        return [], [Rejection(raw, Reason.TOO_DEEP, f"nested more than {MAX_DEPTH} levels")]
    envelope = raw.lstrip().startswith(b"[")
    try:
        items = _raw_list_decoder.decode(raw) if envelope else [_raw_decoder.decode(raw)]
    except msgspec.DecodeError as exc:
        return [], [Rejection(raw, Reason.INVALID_JSON, str(exc))]
    if not items:
        return [], [Rejection(raw, Reason.EMPTY_BATCH, "an envelope without events")]
    events: list[Event] = []
    bad: list[tuple[int, bytes, str, str]] = []  # (place, bytes, reason, detail)
    utf8 = _is_utf8(raw)
    for place, item in enumerate(items):
        item_bytes = bytes(item)
        decoded = _decode_element(item_bytes, utf8)
        problem = decoded if isinstance(decoded, tuple) else _check(
            decoded, allowed_types, now_ms, key_text)
        if problem is None:
            events.append(decoded)  # type: ignore[arg-type]  # (an Event when no problem)
        else:
            bad.append((place, item_bytes, *problem))
    if not bad:
        return events, []
    if not envelope:
        return events, [Rejection(raw, bad[0][2], bad[0][3])]
    return events, [_envelope_rejection(raw, len(items), bad)]


def _decode_element(item: bytes, utf8: bool) -> Event | tuple[str, str]:
    """One event object's bytes as an Event, or (reason, detail); `utf8`: the whole
    message is UTF-8."""
    if not item.startswith(b"{"):  # (cheap: a broken batcher sends 200,000 of these)
        return Reason.INVALID_FIELD, "not an event object"
    if not (utf8 or _is_utf8(item)):
        return Reason.INVALID_UTF8, "not UTF-8"
    try:
        if _may_name_a_field_twice(item):
            item = _first_values(item)
        event = _one_decoder.decode(item)
    except msgspec.ValidationError as exc:
        missing = "missing required" in str(exc)
        return (Reason.MISSING_FIELD if missing else Reason.INVALID_FIELD), str(exc)
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        return Reason.INVALID_JSON, str(exc) if isinstance(exc, msgspec.DecodeError) else (
            type(exc).__name__)
    return event


def _first_values(item: bytes) -> bytes:
    """The object with each field's first value only (as DuckDB reads a repeated field,
    so replay's scan and this decoder agree), re-encoded for the typed decoder. Runs
    only on objects msgspec has parsed already: UTF-8, valid JSON, at most MAX_DEPTH
    deep."""

    def first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name, value in pairs:
            fields.setdefault(name, value)
        return fields

    # Integers are kept as text: a 5,000-digit number is no reason to fail here.
    return msgspec.json.encode(json.loads(item, object_pairs_hook=first_wins,
                                          parse_int=_small_int))


def _small_int(text: str) -> int | float:
    return int(text) if len(text) <= 30 else float(text)


def _envelope_rejection(raw: bytes, elements: int, bad: list[tuple[int, bytes, str, str]]
                        ) -> Rejection:
    """One rejection for an envelope's bad elements: their count per reason and the
    first few problems in the detail."""
    counts = Counter(reason for _, _, reason, _ in bad)
    summary = ", ".join(f"{reason} {n}" for reason, n in counts.most_common())
    first = "; ".join(f"element {place}: {reason}: {detail}"
                      for place, _, reason, detail in bad[:_FIRST_ELEMENTS_IN_DETAIL])
    kept = raw if len(bad) == elements else b"[" + b",".join(b for _, b, _, _ in bad) + b"]"
    return Rejection(kept, bad[0][2], f"{len(bad)} of {elements} events ({summary}); {first}",
                     len(bad), tuple(counts.items()) if len(counts) > 1 else ())


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
            return Reason.INVALID_FIELD, f"type is not one of {', '.join(EVENT_TYPES)}"
        # (the type is one of EVENT_TYPES here: naming it repeats no one's data)
        return Reason.WRONG_TOPIC, f"type {event.type} is not allowed on this topic"
    for name in _REQUIRED[event.type]:
        if getattr(event, name) is None:
            return Reason.MISSING_FIELD, f"{event.type} needs {name}"
    enumerated = _ENUM_FIELDS.get(event.type)
    if enumerated is not None and getattr(event, enumerated[0]) not in enumerated[1]:
        name, values = enumerated
        allowed = " or ".join(sorted(v for v in values if v is not None))
        return Reason.INVALID_FIELD, f"{name} must be {allowed}"
    ts = event.ts
    try:
        ts_ms = (ts - _EPOCH) // _ONE_MS if isinstance(ts, datetime) else ts
    except OverflowError:  # (year 1 with a positive offset is before year 1 in UTC)
        return Reason.BAD_TIME, "ts is before 2000-01-01"
    if ts_ms < MIN_TS_MS:
        return Reason.BAD_TIME, "ts is before 2000-01-01"
    if ts_ms > now_ms + MAX_FUTURE_MS:
        return Reason.BAD_TIME, "ts is more than 1 day in the future"
    if key_text is not None and key_text != event.community_id:
        return Reason.KEY_MISMATCH, "community_id does not match the message key"
    event.ts = ts_ms
    return None


def newest_ts(events: list[Event]) -> int:
    """The newest event time of decoded (normalised) events, in epoch ms."""
    return max([event.ts for event in events])  # type: ignore[return-value, type-var]
