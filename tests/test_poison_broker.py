"""Poison among good events, through the real worker and a real broker (issue 21): the
worker never exits, every good event is in its snapshot (equal to `replay` of the good
events), and the dead-letter topic holds one record per bad message, whatever it held."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
from kafka.admin import ConfigResource, KafkaAdminClient

from devkit.devkafka import LocalKafka
from schemas.events import MAX_MESSAGE_BYTES, Reason
from tests.faults import (
    FAST_GROUP,
    Message,
    dead_letters,
    finish_and_compare,
    fresh_names,
    make_stream,
)
from tests.workers import WorkerProcess, produce


def _post(community: str, event_id: str, **fields: object) -> dict[str, object]:
    return {"event_id": event_id, "type": "post", "community_id": community,
            "user_id": "poison-user", "ts": int(time.time() * 1000) - 60_000,
            "post_id": event_id} | fields


def _poison(communities: list[str]) -> list[tuple[Message, str, int]]:
    """(message, the reason it is dead-lettered with, the events it stands for)."""
    a, b, c = communities[:3]
    latin1 = msgspec.json.encode(_post(a, "latin1", user_id="cafe")).replace(b"cafe", b"caf\xe9")
    deep = msgspec.json.encode(_post(b, "deep"))[:-1] + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    oversized = msgspec.json.encode(_post(c, "big", padding="x" * MAX_MESSAGE_BYTES))
    return [
        (("community.posts", a.encode(), latin1), Reason.INVALID_UTF8, 1),
        (("community.posts", b.encode(), deep), Reason.TOO_DEEP, 1),
        (("community.likes", c.encode(), b"[" + b",".join([b"0"] * 200_000) + b"]"),
         Reason.INVALID_FIELD, 200_000),
        (("community.posts", c.encode(), oversized), Reason.OVERSIZED, 1),
        # A valid event whose core update raises (tests/fault_worker.py poison-event).
        (("community.posts", a.encode(), msgspec.json.encode(_post(a, "poison-1"))),
         Reason.INTERNAL, 1),
        (("community.posts", b"caf\xe9", msgspec.json.encode(_post("caf\xe9", "key"))),
         Reason.INVALID_UTF8, 1),
    ]


def test_poison_is_dead_lettered_once_per_message_and_the_worker_goes_on(
        kafka: LocalKafka, tmp_path: Path) -> None:
    stream = make_stream(tmp_path, n_communities=6, days=20)
    names = fresh_names()
    names.create_topics(kafka)
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    admin.alter_configs([ConfigResource("TOPIC", names.prefix + "community.posts",
                                        configs={"max.message.bytes": "3000000"})])
    admin.close()
    poison = _poison(stream.communities)
    # A field named twice is no poison: its first value counts, in the worker as in
    # replay's DuckDB scan, so the line goes to the replayed file too.
    twice = (b'{"event_id":"twice","type":"post","community_id":"%s","user_id":"first",'
             b'"user_id":"second","ts":%d,"post_id":"twice"}'
             % (stream.communities[3].encode(), int(time.time() * 1000) - 60_000))
    with stream.events_file.open("ab") as replayed:
        replayed.write(twice + b"\n")
    messages = list(stream.messages)
    for i, (message, _, _) in enumerate(poison):
        messages.insert((i + 1) * len(messages) // (len(poison) + 1), message)
    messages.append(("community.posts", stream.communities[3].encode(), twice))
    produce(kafka.bootstrap, names.prefix, messages, max_request_size=4_000_000)

    worker = WorkerProcess(kafka.bootstrap, tmp_path / "data", names.prefix, names.app_id,
                           fault="poison-event:poison", extra_env=FAST_GROUP)
    try:
        finish_and_compare(worker, kafka.bootstrap, names, stream, tmp_path / "replayed")
        assert worker.proc.poll() is None
        assert "exiting without committing" not in worker.log.read_text()
        dead = worker.scrape()["community_pulse_events_dead_lettered_total"]
        for reason in {reason for _, reason, _ in poison}:  # counted in events
            got = sum(value for labels, value in dead if labels["reason"] == reason)
            assert got == sum(n for _, r, n in poison if r == reason), reason
    finally:
        worker.stop()
    letters = dead_letters(kafka.bootstrap, names)
    assert sorted((letter["reason"].decode(), int(letter["events"])) for letter in letters) \
        == sorted((reason, n) for _, reason, n in poison)
    assert all(b"poison-user" not in letter["detail"] for letter in letters)
