"""The event contract in columns: an Arrow schema, and scanners that check the rules of
`schemas.events` for a whole file at once.

`scan_json_lines` lets DuckDB parse a JSON-lines file on every core and check each
line's JSON types, lengths and times in SQL; `scan_parquet` reads typed Parquet columns
with Arrow. Both then check the remaining rules of `decode_message` with Arrow compute.
Rows that pass become Arrow columns; every other line or row (an envelope, a time spelt
other than as epoch ms or strict RFC 3339, a bad event) is marked by its position for
`decode_message` to decode or reject with its reason, so both paths accept exactly the
same events. A file they cannot read at all is left wholly to `decode_message`.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Final

import duckdb
import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.events import (
    _ENUM_FIELDS,
    _REQUIRED,
    MAX_DEPTH,
    MAX_FUTURE_MS,
    MAX_MESSAGE_BYTES,
    MIN_TS_MS,
    Event,
)

STRING_FIELDS: Final = ("event_id", "type", "community_id", "user_id", "post_id",
                        "content_kind", "reply_id", "parent_id", "parent_type", "target_id",
                        "target_type")
EVENT_SCHEMA: Final = pa.schema(
    [(name, pa.string()) for name in STRING_FIELDS[:4]] + [("ts", pa.int64())]
    + [(name, pa.string()) for name in STRING_FIELDS[4:]])
Mask = npt.NDArray[np.bool_]


def _string_limits() -> dict[str, tuple[int, int] | None]:
    """(min, max) length of each string field, as `Event` declares it (None: any)."""
    limits: dict[str, tuple[int, int] | None] = {}
    info = msgspec.inspect.type_info(Event)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        types = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (
            field.type,)
        for kind in types:
            if isinstance(kind, msgspec.inspect.StrType):
                limits[field.name] = (None if kind.max_length is None
                                      else (kind.min_length or 0, kind.max_length))
    return limits


_LIMITS: Final = _string_limits()


def events_table(events: list[Event]) -> pa.Table:
    """Validated events (ts normalised to epoch ms) as columns of EVENT_SCHEMA."""
    rows = map(attrgetter(*EVENT_SCHEMA.names), events)  # a tuple per event, in C
    columns = zip(*rows, strict=True) if events else ([] for _ in EVENT_SCHEMA.names)
    return pa.table(dict(zip(EVENT_SCHEMA.names, map(list, columns), strict=True)),
                    schema=EVENT_SCHEMA)


@dataclass
class Scan:
    """A file's lines as EVENT_SCHEMA rows, one per non-blank line in file order, and
    which of them passed; the lines of the rest are left to `decode_message`."""

    table: pa.Table
    ok: Mask


def _true(flags: pa.ChunkedArray | pa.Array) -> Mask:
    """A boolean column as a mask, null counting as false."""
    return pc.fill_null(flags, False).to_numpy(zero_copy_only=False)


def _is_in(column: pa.ChunkedArray, values: frozenset[str]) -> Mask:
    return _true(pc.is_in(column, pa.array(sorted(values), pa.string())))


# RFC 3339 times the scan reads itself: a strict form in which DuckDB and msgspec read
# every string alike (tested); other spellings (a lower-case "t", a space, more than six
# digits of fraction, hour 24, offset +24:00) are left to msgspec.
_RFC3339: Final = (r"\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
                   r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)")
# `ts` in epoch ms, or NULL: a JSON integer, or a strict RFC 3339 string (an impossible
# date is NULL; microseconds are floored to ms, as the decoder does: epoch_ms rounds).
_TS_SQL: Final = f"""CASE
    WHEN json_type(ts) IN ('UBIGINT', 'BIGINT') THEN TRY_CAST(ts::VARCHAR AS BIGINT)
    WHEN json_type(ts) = 'VARCHAR' AND regexp_full_match(ts ->> '$', '{_RFC3339}')
        THEN epoch_us(TRY_CAST(ts ->> '$' AS TIMESTAMPTZ)) // 1000
    END"""


def _shape_sql() -> str:
    """SQL, per row: every field is absent, null, or a string of allowed length (code
    points, as msgspec counts). (`ts` is checked by `_TS_SQL` and `_accepted`.)"""
    rules = []
    for name in STRING_FIELDS:
        limits = _LIMITS[name]
        length = f" AND length({name} ->> '$') BETWEEN {limits[0]} AND {limits[1]}" \
            if limits else ""
        rules.append(f"({name} IS NULL OR {name} ->> '$' IS NULL OR "
                     f"(starts_with({name}::VARCHAR, '\"'){length}))")
    return "coalesce(" + " AND ".join(rules) + ", false)"


def _accepted(rows: pa.Table, allowed_types: frozenset[str], now_ms: int) -> Mask:
    """Per row: `decode_message` surely accepts it unchanged (with an epoch-ms `ts`).
    The rest go through `decode_message`, which normalises or rejects them."""
    ts = rows["ts"]
    ok = _true(rows["shape_ok"]) & _true(pc.and_(pc.greater_equal(ts, MIN_TS_MS),
                                                 pc.less_equal(ts, now_ms + MAX_FUTURE_MS)))
    present = {name: ~_true(pc.is_null(rows[name])) for name in STRING_FIELDS}
    ok &= present["event_id"] & present["community_id"] & present["user_id"]
    kinds = pc.dictionary_encode(rows["type"].combine_chunks())  # (one hash pass, not 7)
    kind = pc.fill_null(kinds.indices, -1).to_numpy(zero_copy_only=False)
    names = kinds.dictionary.to_pylist()
    fits = np.zeros(len(ok), dtype=np.bool_)  # an allowed type, with what it needs
    enums: dict[tuple[str, frozenset[str | None]], Mask] = {}
    for type_name in allowed_types & frozenset(_REQUIRED) & frozenset(names):
        needs = kind == names.index(type_name)
        for name in _REQUIRED[type_name]:
            needs &= present[name]
        enum = _ENUM_FIELDS.get(type_name)
        if enum is not None:
            name, values = enum
            if (name, values) not in enums:  # (likes and views share theirs)
                named = frozenset(v for v in values if v is not None)
                enums[name, values] = _is_in(rows[name], named)
            allowed = enums[name, values]
            needs &= allowed | ~present[name] if None in values else allowed
        fits |= needs
    return ok & fits


def scan_json_lines(path: Path, allowed_types: frozenset[str], now_ms: int) -> Scan | None:
    """Every non-blank line of the file as a row, and which are valid events; None
    when DuckDB cannot read the file or a line is longer than a message may be (then
    `decode_message` takes every line: DuckDB's maximum_object_size is not a strict
    per-line bound, and a line over 1 MiB must be oversized here as in the worker)."""
    longest, openers = _line_facts(path)
    if longest > MAX_MESSAGE_BYTES:
        return None
    columns = ", ".join(f"{name}: 'JSON'" for name in (*STRING_FIELDS, "ts"))
    fields = ", ".join(f"{name} ->> '$' AS {name}" for name in STRING_FIELDS)
    query = f"""
        SELECT {fields}, {_TS_SQL} AS ts, {_shape_sql()} AS shape_ok
        FROM read_json($path, format = 'newline_delimited', columns = {{{columns}}},
                       maximum_object_size = {MAX_MESSAGE_BYTES}, ignore_errors = true)"""
    con = duckdb.connect()
    try:
        rows = con.sql(query, params={"path": str(path)}).to_arrow_table()
    except duckdb.Error:
        return None
    finally:
        con.close()
    ok = _accepted(rows, allowed_types, now_ms)
    # DuckDB reads any depth; the decoder rejects a message nested more than MAX_DEPTH
    # levels. A line nests at most as deep as it has opening brackets, and an accepted
    # line (an object) has one at least: if the file's count leaves no accepted line
    # more than MAX_DEPTH, none is too deep; else the lines that might be go to the decoder.
    if openers - int(ok.sum()) + 1 > MAX_DEPTH:
        ok &= ~_bracket_heavy(path, len(ok))
    return Scan(rows.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA), ok)


def _bracket_heavy(path: Path, messages: int) -> Mask:
    """Per message (non-blank line, as replay counts them): more than MAX_DEPTH opening
    brackets."""
    heavy = np.zeros(messages, dtype=np.bool_)
    place = 0
    with path.open("rb") as lines:
        for line in lines:
            if line.strip():
                if place < messages and line.count(b"{") + line.count(b"[") > MAX_DEPTH:
                    heavy[place] = True
                place += 1
    return heavy


def _line_facts(path: Path, chunk: int = 64 * 2**20) -> tuple[int, int]:
    """Length in bytes of the file's longest line (without its newline), and how many
    opening brackets (`{`, `[`) it holds, read in chunks with numpy (~0.15 s per 100 MB)."""
    size = path.stat().st_size
    if size == 0:
        return 0, 0
    data = np.memmap(path, dtype=np.uint8, mode="r")
    longest, line_start, openers = 0, 0, 0
    for start in range(0, size, chunk):
        part = data[start : start + chunk]
        openers += int(np.count_nonzero(part == ord("{")) + np.count_nonzero(part == ord("[")))
        ends = np.flatnonzero(part == 10) + start
        if len(ends):
            longest = max(longest, int(ends[0]) - line_start,
                          int(np.diff(ends).max(initial=0)) - 1)
            line_start = int(ends[-1]) + 1
    return max(longest, size - line_start), openers


def scan_parquet(path: Path, allowed_types: frozenset[str], now_ms: int) -> Scan | None:
    """Every row of a Parquet file of events, and which are valid events; None when a
    column is not of the plain kind (strings; `ts` an integer or a timestamp with a time
    zone; other columns of numbers or strings) or the file cannot be read: then every
    row takes the per-message path."""
    try:
        source = pq.read_table(path)
        columns = {name: _as_strings(source, name) for name in STRING_FIELDS}
        ts = source["ts"] if "ts" in source.column_names else None
        if ts is None or _may_be_oversized(source):
            return None
        if pa.types.is_timestamp(ts.type) and ts.type.tz is not None:  # an instant
            ts = ts.cast(pa.timestamp("ms", "UTC"), safe=False)  # floor, as the decoder
        elif not pa.types.is_integer(ts.type):
            return None  # (a naive timestamp, a string: the decoder's verdict)
        columns["ts"] = ts.cast(pa.int64())
    except (pa.ArrowException, OSError, ValueError):
        return None
    table = pa.table(columns, schema=EVENT_SCHEMA)
    shape_ok = np.ones(table.num_rows, dtype=np.bool_)
    for name in STRING_FIELDS:  # Parquet types the values; the lengths are left
        limits = _LIMITS[name]
        if limits:
            length = pc.utf8_length(table[name])
            shape_ok &= _true(pc.is_null(table[name])) | _true(pc.and_(
                pc.greater_equal(length, limits[0]), pc.less_equal(length, limits[1])))
    rows = table.append_column("shape_ok", pa.array(shape_ok))
    return Scan(table, _accepted(rows, allowed_types, now_ms))


def _as_strings(source: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in source.column_names:
        return pa.chunked_array([pa.nulls(source.num_rows, pa.string())])
    column = source[name]
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"{name} is {column.type}")
    return column.cast(pa.string())


def _may_be_oversized(source: pa.Table) -> bool:
    """Whether a row could encode to a message over the size limit (per-message path:
    each row as a JSON object), bounding every column by its largest value."""
    bound = 2
    for name, column in zip(source.column_names, source.columns, strict=True):
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            plain = column.cast(kind) if kind != column.type else column  # (dictionaries)
            longest = pc.max(pc.binary_length(plain)).as_py() or 0
            bound += len(name) + 4 + 6 * longest  # every byte escaped as \u00XX at worst
        elif (pa.types.is_integer(kind) or pa.types.is_floating(kind)
              or pa.types.is_boolean(kind) or pa.types.is_timestamp(kind)):
            bound += len(name) + 4 + 40
        else:
            return True
    return bound > MAX_MESSAGE_BYTES
