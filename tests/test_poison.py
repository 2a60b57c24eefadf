"""No input stops, floods or skews the pipeline (issue 21): whatever the bytes of a message
or its key, the decoders give valid events and rejections with a reason, never raise,
agree with each other (worker, JSON lines, replay's DuckDB scan) and keep
`consumed = processed + duplicates + dead_lettered`.

Hypothesis drives arbitrary bytes and mutated valid events: invalid UTF-8 in every
field, deep nesting, huge numbers, fields named twice (also spelt with escapes), lone
surrogates, non-UTF-8 keys, truncation and big envelopes. tests/test_poison_broker.py
sends the same kinds of poison through the real worker and broker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schemas.columnar import scan_json_lines
from schemas.events import (
    EVENT_TYPES,
    MAX_DEPTH,
    MAX_FUTURE_MS,
    MIN_TS_MS,
    Event,
    Reason,
    decode_lines,
    decode_message,
    max_depth,
)
from schemas.producer import TOPIC_OF
from streams.changelog import DeltaLog
from streams.config import MetricConfig, RuntimeConfig
from streams.core import CommunityState, PulseCore
from streams.pipeline import Ingestor, TopicStats
from streams.replay import replay
from streams.worker import PulseWorker
from tests.test_expiry import RecordingTable

NOW = 1_795_000_000_000  # 2026-11-18
ALL = frozenset(EVENT_TYPES)
TOPIC = "events"
# Field values carry this mark: a rejection's detail must never repeat one.
MARK = "VAL"
POISON_BYTES = [b"\xe9", b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]

values = st.text(min_size=0, max_size=12).map(lambda text: MARK + text)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(EVENT_TYPES))
    event: dict[str, Any] = {
        "event_id": draw(values), "type": kind, "community_id": "c" + draw(values),
        "user_id": draw(values),
        "ts": draw(st.integers(MIN_TS_MS, NOW + MAX_FUTURE_MS)
                   | st.just("2026-11-18T10:00:00+01:00")),
    }
    if kind in ("post", "reply"):
        event["post_id"] = draw(values)
    if kind == "post" and draw(st.booleans()):
        event["content_kind"] = draw(st.sampled_from(["ugc", "managed"]))
    if kind == "reply":
        event |= {"reply_id": draw(values), "parent_id": draw(values),
                  "parent_type": draw(st.sampled_from(["post", "reply"]))}
    if kind in ("like", "view"):
        event |= {"target_id": draw(values), "target_type": draw(st.sampled_from(["post",
                                                                                  "reply"]))}
    return event


def _key_of(name: str, escaped: bool) -> str:
    """A JSON key for the field, plain or spelt with a \\u escape (`"\\u0074ype"`)."""
    text = json.dumps(name)
    return f'"\\u{ord(name[0]):04x}{text[2:]}' if escaped else text


def _encode(fields: list[tuple[str, Any]], escaped: set[int] = frozenset()) -> bytes:  # type: ignore[assignment]
    body = ",".join(f"{_key_of(name, i in escaped)}:{json.dumps(value, ensure_ascii=False)}"
                    for i, (name, value) in enumerate(fields))
    return ("{" + body + "}").encode()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid event, then one kind of poison (or none)."""
    event = draw(valid_events())
    fields = list(event.items())
    kind = draw(st.sampled_from(["none", "utf8", "deep", "number", "twice", "surrogate",
                                 "truncate", "extra", "drop"]))
    if kind == "drop":  # a field left out (a required one, often)
        del fields[draw(st.integers(0, len(fields) - 1))]
    if kind == "utf8":  # a byte sequence that is not UTF-8 inside one field's value
        name = draw(st.sampled_from([n for n, v in fields if isinstance(v, str)] + ["extra"]))
        raw = _encode([*fields, ("extra", MARK)])
        at = raw.index(b'"' + name.encode() + b'":') + len(name) + 4
        return raw[:at] + draw(st.sampled_from(POISON_BYTES)) + raw[at:]
    if kind == "deep":  # nested in an unknown field, around the limit
        depth = draw(st.integers(1, 3 * MAX_DEPTH) | st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = opener * depth + ("1" if opener != "[" else "") + closer * depth
        return _encode(fields)[:-1] + b',"deep":' + inner.encode() + b"}"
    if kind == "number":
        huge = draw(st.sampled_from(["1" + "0" * 5000, "1e999", "-1e999", "1.5", "-0",
                                     "9" * 30, "18446744073709551616"]))
        where = draw(st.sampled_from(["ts", "extra"]))
        raw = _encode([(n, v) for n, v in fields if n != where])
        return raw[:-1] + f',"{where}":{huge}}}'.encode()
    if kind == "twice":  # a field named again, before or after, maybe spelt with an escape
        name = draw(st.sampled_from([n for n, _ in fields]))
        other = draw(values | st.integers(0, NOW) | st.none())
        at = draw(st.integers(0, len(fields)))
        fields.insert(at, (name, other))
        return _encode(fields, {at} if draw(st.booleans()) else set())
    if kind == "surrogate":
        name = draw(st.sampled_from([n for n, v in fields if isinstance(v, str)]))
        raw = _encode(fields)
        at = raw.index(b'"' + name.encode() + b'":') + len(name) + 4
        lone = draw(st.sampled_from([b"\\ud800", b"\\udfff", b"\\ud800\\u0041"]))
        return raw[:at] + lone + raw[at:]
    if kind == "truncate":
        raw = _encode(fields)
        return raw[: draw(st.integers(0, len(raw)))]
    if kind == "extra":
        extra = draw(st.recursive(
            st.none() | st.booleans() | st.integers() | values,
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(values, inner,
                                                                          max_size=3)))
        return _encode([*fields, ("extra", extra)])
    return _encode(fields)


def envelope(elements: list[bytes]) -> bytes:
    return b"[" + b",".join(elements) + b"]"


messages = (mutated()
            | st.lists(mutated(), min_size=0, max_size=12).map(envelope)
            | st.binary(max_size=200)
            | st.integers(1, 3000).map(lambda n: envelope([b"0"] * n)))
keys = st.none() | st.binary(max_size=20) | values.map(lambda v: ("c" + v).encode())


def assert_sound(events: list[Event], rejections: list[Any], key: bytes | None) -> None:
    """What any decode must give: valid events, reasons from the list, no value repeated."""
    for event in events:
        assert isinstance(event.ts, int) and MIN_TS_MS <= event.ts <= NOW + MAX_FUTURE_MS
        assert event.type in ALL
        if key is not None:
            assert event.community_id.encode() == key
    for rejection in rejections:
        for reason, count in rejection.by_reason():
            assert reason in Reason.ALL and count >= 1
        assert MARK not in rejection.detail  # the detail names fields, never their values


def assert_counted(stats: TopicStats) -> None:
    assert stats.consumed == (stats.processed + stats.duplicates
                              + sum(stats.dead_lettered.values()))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, keys)
def test_no_message_makes_the_decoders_raise_or_disagree(message: bytes, key: bytes | None
                                                         ) -> None:
    events, rejections = decode_message(message, ALL, NOW, key)
    assert_sound(events, rejections, key)
    if b"\n" not in message and b"\r" not in message:
        assert decode_lines([message], ALL, NOW) == decode_message(message, ALL, NOW)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(messages, keys), max_size=8))
def test_the_ingestor_counts_every_event_once_whatever_arrives(
        batch: list[tuple[bytes, bytes | None]]) -> None:
    ingestor = Ingestor(PulseCore(MetricConfig()), {TOPIC: ALL})
    for message, key in batch:
        ingestor.ingest(TOPIC, message, key, NOW)
        assert_counted(ingestor.stats[TOPIC])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=25))
def test_replay_reads_each_line_as_the_worker_decodes_it(
        tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]) -> None:
    # DuckDB's scan accepts some lines itself; each must be the event the worker's
    # decoder makes of it (a field named twice: its first value, as both read it).
    lines = [line for line in lines if b"\n" not in line and b"\r" not in line
             and line.strip()]
    assume(lines)
    path = tmp_path_factory.mktemp("scan") / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    scan = scan_json_lines(path, ALL, NOW)
    if scan is not None:
        for line, row, ok in zip(lines, scan.table.to_pylist(), scan.ok, strict=True):
            if ok:
                (event,), _ = decode_message(line, ALL, NOW)
                assert msgspec.structs.asdict(event) == row
    result = replay([path], tmp_path_factory.mktemp("data"), MetricConfig(), now_ms=NOW)
    want = Ingestor(PulseCore(MetricConfig()), {TOPIC: ALL})
    for line in lines:
        want.decode(TOPIC, line, None, NOW)
    assert result.stats.consumed == want.stats[TOPIC].consumed
    assert result.stats.dead_lettered == want.stats[TOPIC].dead_lettered
    assert_counted(result.stats)


def _faust_batch(items: Sequence[tuple[bytes, bytes | None, str]], first: int = 0
                 ) -> list[Any]:
    return [SimpleNamespace(message=SimpleNamespace(
        topic=topic, value=value, key=key, partition=0, offset=i, timestamp=NOW / 1000))
        for i, (value, key, topic) in enumerate(items, start=first)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(messages, keys, st.sampled_from(sorted(set(TOPIC_OF.values())))),
                max_size=10))
def test_the_worker_takes_any_batch_and_counts_it(tmp_path_factory: pytest.TempPathFactory,
                                                  items: list[tuple[bytes, bytes | None, str]]
                                                  ) -> None:
    worker = PulseWorker(MetricConfig(), RuntimeConfig(
        data_dir=tmp_path_factory.mktemp("worker")), clock=lambda: NOW / 1000)
    worker.handle_batch(_faust_batch(items))
    for stats in worker.ingestor.stats.values():
        assert_counted(stats)


# ---- examples --------------------------------------------------------------------------


def post(**fields: Any) -> dict[str, Any]:
    return {"event_id": "e1", "type": "post", "community_id": "c1", "user_id": "u1",
            "ts": NOW - 1000, "post_id": "p1"} | fields


def test_a_latin1_byte_is_rejected_as_not_utf8_and_its_neighbours_are_kept() -> None:
    good = msgspec.json.encode(post(event_id="ok"))
    bad = msgspec.json.encode(post(user_id="cafe")).replace(b"cafe", b"caf\xe9")
    assert decode_message(bad, ALL, NOW, b"c1")[1][0].reason == Reason.INVALID_UTF8
    events, (rejection,) = decode_message(envelope([good, bad]), ALL, NOW, b"c1")
    assert [e.event_id for e in events] == ["ok"] and rejection.raw == envelope([bad])
    assert decode_message(good, ALL, NOW, b"caf\xe9")[1][0].reason == Reason.INVALID_UTF8


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 1000, 100_000])
def test_nesting_is_allowed_up_to_the_limit(depth: int) -> None:
    nested = b"[" * (depth - 1) + b"]" * (depth - 1)  # one level less: the event object
    raw = msgspec.json.encode(post())[:-1] + b',"x":' + nested + b"}"
    assert max_depth(raw) == depth
    events, rejections = decode_message(raw, ALL, NOW)
    assert (len(events), [r.reason for r in rejections]) == (
        (1, []) if depth <= MAX_DEPTH else (0, [Reason.TOO_DEEP]))


def test_depth_ignores_brackets_inside_strings() -> None:
    raw = msgspec.json.encode(post(user_id="[[[" * 40, post_id='\\"{{' * 40))
    assert max_depth(raw) == 1 and decode_message(raw, ALL, NOW)[0]


def test_a_field_named_twice_takes_its_first_value_plain_or_escaped() -> None:
    for spelling in ('"community_id"', '"\\u0063ommunity_id"'):
        raw = ('{"event_id":"e1","type":"post","community_id":"c1",' + spelling
               + f':"c2","user_id":"u1","ts":{NOW},"post_id":"p"}}').encode()
        (event,), _ = decode_message(raw, ALL, NOW)
        assert event.community_id == "c1"
    raw = b'{"ts":"not a time","event_id":"e","type":"join","community_id":"c","user_id":"u",' \
          b'"ts":%d}' % NOW
    assert decode_message(raw, ALL, NOW)[1][0].reason == Reason.INVALID_FIELD  # first: bad
    assert decode_message(raw.replace(b'"ts":"not a time",', b""), ALL, NOW)[0]


def test_details_never_quote_a_value() -> None:
    raw = msgspec.json.encode(post(content_kind="alice@corp.example", type="share"))
    for value in (raw, msgspec.json.encode(post(content_kind="alice@corp.example"))):
        (rejection,) = decode_message(value, ALL, NOW)[1]
        assert "alice" not in rejection.detail


def test_an_exception_while_decoding_is_an_internal_rejection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.pipeline as pipeline

    def broken(*_: Any, **__: Any) -> Any:
        raise KeyError("alice@corp.example")  # its text must not reach the detail

    monkeypatch.setattr(pipeline, "decode_message", broken)
    ingestor = Ingestor(PulseCore(MetricConfig()), {TOPIC: ALL})
    events, (rejection,) = ingestor.ingest(TOPIC, b"{}", None, NOW)
    assert (events, rejection.reason, rejection.detail) == (
        [], Reason.INTERNAL, "handling it raised KeyError")
    assert_counted(ingestor.stats[TOPIC])
    monkeypatch.setattr(pipeline, "decode_lines", broken)
    ingestor.decode_lines(TOPIC, [b"{}", b"[]"], NOW)
    assert ingestor.stats[TOPIC].dead_lettered == {Reason.INTERNAL: 3}


def _poisoned_apply(monkeypatch: pytest.MonkeyPatch, mark: str) -> None:
    """CommunityState.apply applies half of its events, then raises, whenever an event
    id holds `mark` (a bug that strikes one message, whatever batch it is in)."""
    original = CommunityState.apply

    def apply(self: CommunityState, events: Any) -> int:
        events = list(events)
        if any(mark in event.event_id for event in events):
            original(self, events[: len(events) // 2])
            raise RuntimeError("alice@corp.example")
        return original(self, events)

    monkeypatch.setattr(CommunityState, "apply", apply)


def test_a_message_whose_core_update_raises_is_dead_lettered_and_the_rest_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def events_of(community: str, tag: str, n: int) -> list[dict[str, Any]]:
        return [post(event_id=f"{community}-{tag}{i}", community_id=community,
                     user_id=f"u{i}", post_id=f"{community}-{tag}{i}") for i in range(n)]

    earlier = events_of("a", "old", 5) + events_of("b", "old", 5)
    later = events_of("a", "new", 3) + events_of("b", "poison", 2) + events_of("b", "new", 3)
    worker = PulseWorker(MetricConfig(), RuntimeConfig(data_dir=tmp_path),
                         clock=lambda: NOW / 1000)
    table = RecordingTable()
    worker.deltas = DeltaLog(table)  # type: ignore[arg-type]
    worker.dead_letter_topic = "dead"

    def send(events: list[dict[str, Any]]) -> Any:
        prepared = worker.prepare(_faust_batch([
            (msgspec.json.encode(e), e["community_id"].encode(), TOPIC_OF["post"])
            for e in events], first=worker.processed_next.get((TOPIC_OF["post"], 0), 0)))
        worker.apply(prepared)  # (the records count as written)
        return prepared

    send(earlier)
    _poisoned_apply(monkeypatch, "poison")
    prepared = send(later)
    letters = [r for r in prepared.records if r.topic == "dead"]
    assert [dict(r.headers or [])["reason"] for r in letters] == [Reason.INTERNAL.encode()] * 2
    assert all(b"alice" not in b"".join(v for _, v in r.headers or []) for r in letters)
    # The core and the changelog hold every event but the poisoned messages'.
    good = [e for e in earlier + later if "poison" not in e["event_id"]]
    expected = PulseCore(MetricConfig())
    expected.apply([msgspec.convert(e, Event) for e in good])
    assert worker.core.snapshot(NOW) == expected.snapshot(NOW)
    stored = [e.event_id for events in worker.deltas.stored({0}) for e in events]
    assert sorted(stored) == sorted(e["event_id"] for e in good)
    assert_counted(worker.ingestor.stats[TOPIC_OF["post"]])
    assert worker.ingestor.stats[TOPIC_OF["post"]].dead_lettered == {Reason.INTERNAL: 2}


def test_the_key_cache_is_bounded_in_bytes_and_never_keeps_impossible_keys(
        tmp_path: Path) -> None:
    from streams import worker as worker_module

    worker = PulseWorker(MetricConfig(), RuntimeConfig(data_dir=tmp_path),
                         clock=lambda: NOW / 1000)
    worker.partitions_of = lambda topic: 4
    value = msgspec.json.encode(post())
    huge = [(value, bytes([i % 256]) * 100_000 + str(i).encode(), TOPIC_OF["post"])
            for i in range(50)]
    prepared = worker.prepare(_faust_batch(huge))
    assert worker._key_hash_bytes == 0  # longer than any community id: not hashed, not kept
    assert {r.reason for _, _, _, _, (_, bad) in prepared.parsed for r in bad} == {
        Reason.KEY_MISMATCH}
    many = [(value, f"{i:01000d}".encode(), TOPIC_OF["post"]) for i in range(20_000)]
    for start in range(0, len(many), 2000):
        worker.prepare(_faust_batch(many[start:start + 2000], first=start))
        assert worker._key_hash_bytes <= worker_module.KEY_HASH_CACHE_BYTES
    assert worker.metrics.key_cache_clears._value.get() >= 2  # 20 MB of keys, 8 MiB kept


FUZZ_RUNS = 30_000  # a fixed number of inputs (seconds): libFuzzer's own mutations


def test_coverage_guided_fuzzing_finds_no_input_that_breaks_the_decoder(tmp_path: Path) -> None:
    # atheris (libFuzzer) mutates a seed corpus of valid events, envelopes and poison,
    # guided by coverage of the decoder and the ingestor (tests/fuzz_decoder.py).
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = [msgspec.json.encode(post()), msgspec.json.encode([post(), post(event_id="e2")]),
             msgspec.json.encode(post(type="reply", reply_id="r", parent_id="p1",
                                      parent_type="post")),
             msgspec.json.encode(post(ts="2026-11-18T10:00:00+01:00")),
             b'{"event_id":"e","type":"join","community_id":"c","user_id":"u",'
             b'"user_id":"v","\\u0074s":1795000000000}',
             b"[" * 70 + b"]" * 70, b"[0,0,0]"]
    for number, seed in enumerate(seeds):
        # (the first byte: no key; tests/fuzz_decoder.py reads a flag, then the message)
        (corpus / f"seed{number}").write_bytes(b"\x00" + seed)
    words = tmp_path / "json.dict"
    words.write_text("".join(f'"\\"{word}\\""\n' for word in (
        *EVENT_TYPES, "event_id", "community_id", "user_id", "ts", "post_id", "reply_id",
        "parent_id", "parent_type", "target_id", "target_type", "content_kind")) +
        '"["\n"]"\n"{"\n"}"\n":"\n","\n"\\\\u0000"\n"\\\\ud800"\n')
    run = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("fuzz_decoder.py")),
         f"-runs={FUZZ_RUNS}", "-seed=7", f"-dict={words}", f"-artifact_prefix={tmp_path}/",
         str(corpus)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Done {FUZZ_RUNS} runs" in run.stderr


def test_an_envelope_line_of_one_bad_event_decodes_as_the_message_does() -> None:
    # Found by tests/fuzz_decoder.py (atheris) on the code of 82f929c already:
    # decode_lines took a one-element envelope for a plain event and rejected the whole
    # line with another detail than decode_message.
    line = msgspec.json.encode([{k: v for k, v in post().items() if k != "post_id"}])
    assert decode_lines([line], ALL, NOW) == decode_message(line, ALL, NOW)
