"""(c) The same job in Quix Streams, written the way its docs suggest.

Runs in its own venv (bench/.venv-quix, quixstreams + confluent-kafka), never in the
project's. Per community (the message key): dedup by event_id, distinct users, events
per type per UTC day (so any window is a sum of day buckets), a user's last activity
and primary role per day; all in Quix's RocksDB state with changelog topics, like our
worker's changelog-backed table. Decodes single events and batch envelopes: the JSON
deserializer yields a dict or a list, and `expand=True` flattens envelopes.
Undecodable messages are skipped by `on_consumer_error` and counted.

Usage: quix_job.py BOOTSTRAP GROUP STATUS_FILE STATE_DIR TOPIC...
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from quixstreams import Application, State

from bench.common import Status

DAY_MS = 86_400_000
CATEGORY = {"post": 0, "like": 3, "view": 4}


def main(bootstrap: str, group: str, status_path: str, state_dir: str,
         topic_names: list[str]) -> None:
    status = Status(status_path)
    counted = [0]

    def on_consumer_error(exc: Exception, message: Any, logger: logging.Logger) -> bool:
        counted[0] += 1  # e.g. a message that is not JSON: skip it, count it
        return True

    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
        on_consumer_error=on_consumer_error,
        on_processing_error=lambda exc, row, logger: True,
    )

    def as_list(value: Any) -> list[Any]:
        return value if isinstance(value, list) else [value]

    def apply_event(event: dict[str, Any], state: State) -> None:
        counted[0] += 1
        try:
            eid, kind, user, ts = event["event_id"], event["type"], event["user_id"], event["ts"]
        except (KeyError, TypeError):
            return
        if not isinstance(ts, int):
            return
        seen_key = f"e:{eid}"
        if state.exists(seen_key):
            return
        state.set(seen_key, 1)
        day = ts // DAY_MS
        if kind in ("join", "leave"):
            state.set(f"m:{user}", [ts, kind])
            return
        user_key = f"u:{user}"
        last = state.get(user_key)
        if last is None:
            state.set("users", state.get("users", 0) + 1)
        if last is None or ts > last:
            state.set(user_key, ts)
        bucket = f"n:{kind}:{day}"
        state.set(bucket, state.get(bucket, 0) + 1)
        if kind == "reply":
            category = 1 if event.get("parent_type") == "reply" else 2
        else:
            category = CATEGORY.get(kind, 4)
        role_key = f"r:{user}:{day}"
        role = state.get(role_key)
        if role is None or category < role:
            state.set(role_key, category)

    topics = [app.topic(name, value_deserializer="json", key_deserializer="str")
              for name in topic_names]
    frames = [app.dataframe(topic) for topic in topics]
    sdf = frames[0]
    for other in frames[1:]:
        sdf = sdf.concat(other)
    sdf = sdf.apply(as_list, expand=True)
    sdf = sdf.update(apply_event, stateful=True)

    def report() -> None:
        while True:
            status.write(counted[0], force=True)
            time.sleep(0.2)

    threading.Thread(target=report, daemon=True).start()
    app.run()
    status.write(counted[0], force=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
