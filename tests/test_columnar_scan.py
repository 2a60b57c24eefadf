"""The DuckDB scan of JSON lines (schemas.columnar) vouches only for lines that
`decode_message` accepts unchanged, and reads them to the same values.

Lines are random objects built from field values at every edge the decoder knows:
wrong JSON types, empty and over-long strings (in code points, not bytes), escapes and
non-ASCII text, nulls, missing fields, every type with and without its required fields
and enumerations, integer, float, string and out-of-range times; plus envelopes, blank
lines and lines that are not JSON at all. For each line the scan accepts, the decoder
must return one event with exactly the scanned values; the lines the scan leaves alone
go through the decoder in the replay, so the replay's events and counts equal those of
decoding each line.
"""

from __future__ import annotations

import random
import re
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.columnar import EVENT_SCHEMA, _line_facts, scan_json_lines, scan_parquet
from schemas.events import (
    DEFAULT_TOPICS,
    EVENT_TYPES,
    MAX_FUTURE_MS,
    MAX_MESSAGE_BYTES,
    MIN_TS_MS,
    decode_message,
)
from streams.config import MetricConfig
from streams.replay import read_messages, replay

NOW = 1_795_000_000_000  # 2026-11-18
ALL = frozenset(EVENT_TYPES)

VALID_TEXT = st.sampled_from([  # fine for every id (1-128 code points), tricky to parse
    "a", "p1", "ü/3", "é" * 128, "e\u0301", 'quote"inside', "back\\slash", "tab\tnew\nline",
    "\u2028", "🙂" * 64, "123", "null", "true", "{}", " ", "post", "\x00",
])
TEXT = st.one_of(VALID_TEXT, st.sampled_from(["", "é" * 129, "x" * 256, "x" * 257,
                                              "🙂" * 200, "POST"]))
VALUE = st.one_of(TEXT, st.none(), st.integers(-5, 10**20), st.floats(), st.booleans(),
                  st.just([]), st.just({"x": 1}))
VALID_TIME = st.integers(MIN_TS_MS, NOW + MAX_FUTURE_MS)
TIME = st.one_of(
    st.integers(MIN_TS_MS - 2, MIN_TS_MS + 2),
    st.sampled_from([NOW + MAX_FUTURE_MS, NOW + MAX_FUTURE_MS + 1, -1, 0, 2**63, 2**64]),
    st.sampled_from(["2026-11-18T10:00:00Z", "2026-11-18T10:00:00", "1795000000000",
                     1795000000000.0, 1.7e12, None, True]),
)
# The RFC 3339 spelling the scan promises to read itself (others go to the decoder).
STRICT_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
                            r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)")
FIELDS = ("event_id", "type", "community_id", "user_id", "post_id", "content_kind",
          "reply_id", "parent_id", "parent_type", "target_id", "target_type")


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(EVENT_TYPES))
    event: dict[str, Any] = {"type": kind, "ts": draw(VALID_TIME), "event_id": draw(VALID_TEXT),
                             "community_id": draw(VALID_TEXT), "user_id": draw(VALID_TEXT)}
    for name in ("post_id", "reply_id", "parent_id", "target_id"):
        if draw(st.booleans()):
            event[name] = draw(VALID_TEXT)
    event["parent_type"] = event["target_type"] = draw(st.sampled_from(["post", "reply"]))
    if draw(st.booleans()):
        event["content_kind"] = draw(st.sampled_from(["ugc", "managed", None]))
    for name in draw(st.lists(st.sampled_from((*FIELDS, "ts")), max_size=2)):  # breakage
        choice = draw(st.sampled_from(["missing", "value", "time", "type"]))
        if choice == "missing":
            event.pop(name, None)
        elif choice == "type":
            event["type"] = draw(st.sampled_from(["bogus", "Post", None, 1]))
        else:
            event[name] = draw(TIME if choice == "time" else VALUE)
    event["extra"] = draw(VALUE)  # ignored by both
    shape = draw(st.sampled_from(["object"] * 16 + ["envelope", "garbage", "blank", "ws",
                                                    "empty"]))
    if shape == "envelope":
        return msgspec.json.encode([event, event])
    if shape == "empty":  # an envelope without events: dead-lettered, never dropped
        return b"[]"
    if shape == "garbage":
        return draw(st.sampled_from([b"{not json", b'"text"', b"42", b"[1,", b'{"a":1} {"b":2}']))
    if shape in ("blank", "ws"):
        return b"" if shape == "blank" else b"  \t "
    return msgspec.json.encode(event)


def _row_values(row: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in row.items() if value is not None}


def assert_scan_agrees(path: Path, file_lines: list[bytes], allowed: frozenset[str]) -> None:
    """Every line the scan vouches for decodes, unchanged, to the scanned values."""
    path.write_bytes(b"\n".join(file_lines) + b"\n")
    scan = scan_json_lines(path, allowed, NOW)
    assert scan is not None
    messages = [line for line in file_lines if line.strip()]
    assert scan.table.num_rows == len(messages)  # row i is non-blank line i
    assert scan.table.schema == EVENT_SCHEMA
    for message, ok, row in zip(messages, scan.ok, scan.table.to_pylist(), strict=True):
        if ok:
            events, rejections = decode_message(message, allowed, NOW)
            assert not rejections and len(events) == 1, message
            assert _row_values(row) == _row_values(msgspec.structs.asdict(events[0])), message


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines(), min_size=1, max_size=60), st.sampled_from(
    [ALL, DEFAULT_TOPICS["community.posts"], frozenset({"like", "join"})]))
def test_the_scan_vouches_only_for_what_the_decoder_accepts_unchanged(
        tmp_path_factory: pytest.TempPathFactory, file_lines: list[bytes],
        allowed: frozenset[str]) -> None:
    assert_scan_agrees(tmp_path_factory.mktemp("scan") / "events.jsonl", file_lines, allowed)


def test_the_scan_agrees_on_every_limit(tmp_path: Path) -> None:
    """Each field at and just past its limits, one change to a valid event per line."""
    base = {"event_id": "e", "type": "reply", "community_id": "c", "user_id": "u",
            "ts": NOW, "post_id": "p", "reply_id": "r", "parent_id": "p",
            "parent_type": "post"}
    changes: list[dict[str, Any]] = [{}]
    for name, limit in (("event_id", 128), *((n, 256) for n in (
            "community_id", "user_id", "post_id", "reply_id", "parent_id"))):
        for text in ("", "x" * limit, "x" * (limit + 1), "é" * limit, "é" * (limit + 1),
                     "🙂" * limit, "🙂" * (limit + 1)):
            changes.append({name: text})
    for ts in (MIN_TS_MS - 1, MIN_TS_MS, NOW + MAX_FUTURE_MS, NOW + MAX_FUTURE_MS + 1,
               float(NOW), str(NOW), 2**63, -(2**63) - 1):
        changes.append({"ts": ts})
    for name in ("parent_type", "type"):
        for value in ("post", "reply", "Reply", "", None, 1):
            changes.append({name: value})
    file_lines = [msgspec.json.encode(base | change) for change in changes]
    assert_scan_agrees(tmp_path / "limits.jsonl", file_lines, ALL)
    scan = scan_json_lines(tmp_path / "limits.jsonl", ALL, NOW)
    assert scan is not None and 20 < int(scan.ok.sum()) < len(file_lines)


@st.composite
def rfc3339_times(draw: st.DrawFn) -> str:
    """Times near and past every edge of the strict form the scan reads itself: impossible
    dates and clock times, leap days, 0-9 digits of fraction, odd offsets and spellings."""
    def two(low: int, high: int) -> str:
        return f"{draw(st.integers(low, high)):02d}"
    date = (f"{draw(st.sampled_from([1999, 2000, 2024, 2026, 2027, 0, 9999])):04d}"
            f"-{two(0, 13)}-{two(0, 32)}")
    clock = f"{two(0, 25)}:{two(0, 61)}:{two(0, 61)}"
    digits = draw(st.integers(0, 9))
    fraction = "." + "".join(draw(st.sampled_from("09")) for _ in range(digits)) \
        if digits else ""
    offset = draw(st.one_of(st.sampled_from(["Z", "z", "", "+00:00", "-00:00"]),
                            st.builds(lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
                                      st.sampled_from("+-"), st.integers(0, 25),
                                      st.integers(0, 61))))
    return date + draw(st.sampled_from(["T", "T", "T", "t", " "])) + clock + fraction + offset


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rfc3339_times(), min_size=1, max_size=40))
def test_rfc3339_times_are_scanned_as_the_decoder_reads_them(
        tmp_path_factory: pytest.TempPathFactory, times: list[str]) -> None:
    """A vouched line decodes to the same epoch ms (floored, never rounded); a time in
    the strict form that the decoder accepts is vouched for."""
    times += ["2026-11-18T10:00:00.1239+01:30", "1999-12-31T23:59:59.999999Z",
              "2026-11-18T24:00:00Z", "2026-11-18T10:00:00+24:00", "2026-02-29T10:00:00Z"]
    file_lines = [msgspec.json.encode({"event_id": f"e{i}", "type": "join",
                                       "community_id": "c", "user_id": "u", "ts": ts})
                  for i, ts in enumerate(times)]
    path = tmp_path_factory.mktemp("rfc") / "times.jsonl"
    assert_scan_agrees(path, file_lines, ALL)
    scan = scan_json_lines(path, ALL, NOW)
    assert scan is not None
    for line, ts, ok in zip(file_lines, times, scan.ok, strict=True):
        if STRICT_RFC3339.fullmatch(ts) and not decode_message(line, ALL, NOW)[1]:
            assert ok, ts  # (the decoder's verdict on the rest is covered above)
    assert scan.ok[-5]  # (its value, 123 ms, is compared above: DuckDB's epoch_ms rounds)
    assert not scan.ok[-4:].any()  # 1999 once rounded up is 2000; hour 24; +24:00; 29 Feb


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines(), min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_replay_counts_every_line_as_decoding_each_line_would(
        tmp_path_factory: pytest.TempPathFactory, file_lines: list[bytes],
        rnd: random.Random) -> None:
    work = tmp_path_factory.mktemp("replay")
    path = work / "events.jsonl"
    path.write_bytes(b"\n".join(file_lines) + b"\n")
    result = replay([path], work / "data", MetricConfig(), now_ms=NOW)
    accepted, reasons = 0, Counter[str]()
    for line in file_lines:
        if line.strip():
            events, rejections = decode_message(line, ALL, NOW)
            accepted += len(events)
            for rejection in rejections:
                reasons.update(dict(rejection.by_reason()))
    stats = result.stats
    assert stats.consumed == accepted + sum(reasons.values())
    assert stats.processed + stats.duplicates == accepted
    assert dict(stats.dead_lettered) == reasons


def test_replay_and_the_worker_agree_at_the_message_size_limit(tmp_path: Path) -> None:
    """A line of exactly MAX_MESSAGE_BYTES is an event; one byte more is oversized, in
    the replay scan as in the worker's decoder (one validation contract)."""
    def padded(event_id: str, size: int) -> bytes:
        event = {"event_id": event_id, "type": "join", "community_id": "c",
                 "user_id": "u", "ts": NOW, "extra": ""}
        short = len(msgspec.json.encode(event))
        return msgspec.json.encode(event | {"extra": "x" * (size - short)})

    file_lines = [padded("fits", MAX_MESSAGE_BYTES), padded("over", MAX_MESSAGE_BYTES + 1),
                  b"[]"]
    assert [len(line) for line in file_lines[:2]] == [MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1]
    path = tmp_path / "edge.jsonl"
    path.write_bytes(b"\n".join(file_lines) + b"\n")
    result = replay([path], tmp_path / "data", MetricConfig(), now_ms=NOW)
    worker = [decode_message(line, ALL, NOW) for line in file_lines]
    assert [len(events) for events, _ in worker] == [1, 0, 0]
    assert dict(result.stats.dead_lettered) == Counter(
        r.reason for _, rejections in worker for r in rejections) == {
        "oversized": 1, "empty_batch": 1}
    assert result.stats.processed == 1


@st.composite
def parquet_rows(draw: st.DrawFn) -> dict[str, Any]:
    """An event row as a Parquet file holds it: every field a string or null, `ts` an
    integer; values at the same edges as the JSON lines."""
    row: dict[str, Any] = {name: draw(st.one_of(st.none(), TEXT)) for name in FIELDS}
    row["type"] = draw(st.one_of(st.sampled_from(EVENT_TYPES), TEXT, st.none()))
    row["parent_type"] = draw(st.sampled_from(["post", "reply", "Post", None]))
    row["target_type"] = draw(st.sampled_from(["post", "reply", None]))
    row["content_kind"] = draw(st.sampled_from(["ugc", "managed", "hard", None]))
    for name in ("event_id", "community_id", "user_id"):
        if draw(st.integers(0, 5)):  # mostly present and valid
            row[name] = draw(VALID_TEXT)
    row["ts"] = draw(st.one_of(VALID_TIME, st.integers(MIN_TS_MS - 2, MIN_TS_MS + 2),
                               st.sampled_from([NOW + MAX_FUTURE_MS + 1, -1, 0])))
    row["extra"] = draw(st.one_of(st.none(), TEXT))  # not an event field: ignored
    return row


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(parquet_rows(), min_size=1, max_size=60))
def test_the_parquet_scan_vouches_only_for_what_the_decoder_accepts_unchanged(
        tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]) -> None:
    """Rows the Arrow checks accept decode, as the per-message path encodes them, to
    exactly the same event; replay counts equal decoding every row."""
    work = tmp_path_factory.mktemp("parquet")
    path = work / "events.parquet"
    schema = pa.schema([*((name, pa.string()) for name in FIELDS), ("ts", pa.int64()),
                        ("extra", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    scan = scan_parquet(path, ALL, NOW)
    assert scan is not None and scan.table.num_rows == len(rows)
    messages = list(read_messages(path))
    decoded = [decode_message(message, ALL, NOW) for message in messages]
    for (events, rejections), ok, row in zip(decoded, scan.ok, scan.table.to_pylist(),
                                             strict=True):
        if ok:
            assert not rejections and len(events) == 1
            assert _row_values(row) == _row_values(msgspec.structs.asdict(events[0]))
    result = replay([path], work / "data", MetricConfig(), now_ms=NOW)
    reasons = Counter(r.reason for _, rejections in decoded for r in rejections)
    assert result.stats.consumed == sum(len(e) for e, _ in decoded) + sum(reasons.values())
    assert dict(result.stats.dead_lettered) == reasons
    assert scan.ok.any() or not any(events for events, _ in decoded)


def test_parquet_times_with_a_zone_are_scanned_like_the_decoder_reads_them(
        tmp_path: Path) -> None:
    """A `ts` of timestamps with a zone is scanned (to epoch ms, as the decoder floors
    them); naive timestamps, or ids of numbers, leave every row to the decoder."""
    stamp = datetime(2026, 11, 18, 10, 0, 0, 123_999, tzinfo=UTC)
    rows = [{"event_id": "e1", "type": "join", "community_id": "c", "user_id": "u",
             "ts": stamp}]
    path = tmp_path / "stamps.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)  # timestamp[us, tz=UTC]
    scan = scan_parquet(path, ALL, NOW)
    assert scan is not None and scan.ok.tolist() == [True]
    (event,), _ = decode_message(next(read_messages(path)), ALL, NOW)
    assert scan.table["ts"].to_pylist() == [event.ts] == [int(stamp.timestamp() * 1000)]
    naive = tmp_path / "naive.parquet"
    pq.write_table(pa.Table.from_pylist([rows[0] | {"ts": stamp.replace(tzinfo=None)}]), naive)
    assert scan_parquet(naive, ALL, NOW) is None
    result = replay([naive], tmp_path / "data", MetricConfig(), now_ms=NOW)
    assert dict(result.stats.dead_lettered) == {"invalid_field": 1}
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.Table.from_pylist([rows[0] | {"event_id": 1, "ts": NOW}]), numbers)
    assert scan_parquet(numbers, ALL, NOW) is None
    result = replay([numbers], tmp_path / "data2", MetricConfig(), now_ms=NOW)
    assert dict(result.stats.dead_lettered) == {"invalid_field": 1}


def test_a_parquet_row_too_large_for_a_message_is_rejected_as_oversized(tmp_path: Path) -> None:
    """The per-message path encodes each row (every column) as one JSON message, which
    may hold at most 1 MiB; a file whose rows could exceed it is not scanned."""
    base = {"event_id": "e", "type": "join", "community_id": "c", "user_id": "u", "ts": NOW}
    rows = [base | {"note": "x" * 2_000_000}, base | {"event_id": "f", "note": "short"}]
    path = tmp_path / "large.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert scan_parquet(path, ALL, NOW) is None
    result = replay([path], tmp_path / "data", MetricConfig(), now_ms=NOW)
    assert dict(result.stats.dead_lettered) == {"oversized": 1}
    assert result.stats.processed == 1


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"")), st.integers(1, 7))
def test_longest_line_is_found_across_chunks(content: bytes, chunk: int) -> None:
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as file:
        file.write(content)
        file.flush()
        expected = max((len(line) for line in content.split(b"\n")), default=0)
        assert _line_facts(Path(file.name), chunk) == (
            expected, content.count(b"{") + content.count(b"["))
