"""The changelog of accepted events: per-batch deltas in a changelog-backed Faust table.

Each batch's accepted events are one record per source partition (cut by count and by
bytes), keyed by partition and batch tag, so any worker of the consumer group rebuilds a
partition's communities exactly after a restart or a rebalance. Expiry replaces old deltas
by a carry of the memberships still in force. The records are written by
streams.delivery.DurableSender, not by Faust's send buffer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import msgspec
from faust.types import TableT

from schemas.events import Event, newest_ts
from streams.config import ConfigError
from streams.delivery import RECORD_MAX_BYTES, Record

DELTA_MAX_EVENTS = 2000
_SEP = "\x1f"
_encoder = msgspec.msgpack.Encoder()


class _StoredEvent(Event, array_like=True):
    """An accepted event as the changelog holds it: a msgpack array in Event's field
    order, ~40% fewer bytes than a map with the field names (87 vs 142 per event)."""


_decode_stored = msgspec.msgpack.Decoder(list[_StoredEvent]).decode
_decode_maps = msgspec.msgpack.Decoder(list[Event]).decode  # changelogs written before


def _encode_events(events: list[Event]) -> bytes:
    return _encoder.encode([msgspec.structs.astuple(event) for event in events])


def _decode_events(value: bytes) -> list[Event]:
    try:
        return list(_decode_stored(value))
    except msgspec.ValidationError:
        return _decode_maps(value)


def _encoded_chunks(events: list[Event]) -> Iterator[tuple[list[Event], bytes]]:
    """The events encoded in pieces of at most DELTA_MAX_EVENTS events and
    RECORD_MAX_BYTES bytes (long ids make 2,000 events more than a record may hold)."""
    for start in range(0, len(events), DELTA_MAX_EVENTS):
        yield from _halved(events[start : start + DELTA_MAX_EVENTS])


def _halved(events: list[Event]) -> Iterator[tuple[list[Event], bytes]]:
    value = _encode_events(events)
    if len(value) <= RECORD_MAX_BYTES or len(events) == 1:  # one event is < 10 kB
        yield events, value
        return
    half = len(events) // 2
    yield from _halved(events[:half])
    yield from _halved(events[half:])


def _delta_key(partition: int, tag: str) -> bytes:
    return f"{partition}{_SEP}{tag}".encode()


_CUT_SUFFIX = f"{_SEP}cut".encode()


def _partition_of_key(key: bytes) -> int:
    return int(key.split(_SEP.encode(), 1)[0])


# A carry piece's tag is `carry#<n>`; a batch's is `<topic>@<offset>#<n>`, and a topic name
# never holds "@" or "#" (Kafka allows letters, digits, ".", "_" and "-"), so no topic
# prefix can make a batch look like a carry.
_CARRY_TAG = re.compile(rb"carry#\d+")


def _is_carry(key: bytes) -> bool:
    return _CARRY_TAG.fullmatch(key.split(_SEP.encode(), 1)[1]) is not None


RAW_IDS = "raw"  # DeltaLog.user_ids without pseudonymisation
_USER_IDS_TAG = "user-ids"
_USER_IDS_SUFFIX = f"{_SEP}{_USER_IDS_TAG}".encode()


class UserIdsMismatch(ConfigError):
    """The changelog was written with other user ids than this worker's; one line."""


def _describe_user_ids(stored: bytes) -> str:
    return "raw" if stored == RAW_IDS.encode() else (
        f"pseudonymised (key fingerprint {stored.decode(errors='replace')})")


class DeltaLog:
    """Accepted events per partition and batch, kept in a changelog-backed Faust table.

    One table write per source partition per batch, whatever the number of events or
    communities in it. Writes go to the changelog partition of that source partition,
    which is where Faust recovers them from when the partition is assigned to a worker.
    """

    def __init__(self, table: TableT, user_ids: str = RAW_IDS) -> None:
        self.table = table
        # partition -> [(newest event ts in the delta, key)], to expire whole deltas
        self.index: dict[int, list[tuple[int, bytes]]] = {}
        self.carry_keys: dict[int, set[bytes]] = {}  # partition -> keys of its carry pieces
        # partition -> the newest expiry cut: its state is exact from cut + retention
        self.cuts: dict[int, int] = {}
        # How user ids are stored (raw, or the pseudonym key's fingerprint), recorded per
        # partition beside its deltas: a worker must not mix two kinds in one state.
        self.user_ids = user_ids.encode()
        self.marked: set[int] = set()

    @property
    def topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def append(self, partition: int, tag: str, events: list[Event]) -> list[Record]:
        """Store the events; returns the changelog records to write (the caller writes
        them and waits for the broker: see DurableSender)."""
        records = []
        if partition not in self.marked:
            records.append(self._put(partition, _delta_key(partition, _USER_IDS_TAG),
                                     self.user_ids))
            self.marked.add(partition)
        for number, (chunk, value) in enumerate(_encoded_chunks(events)):
            key = _delta_key(partition, f"{tag}#{number}")
            records.append(self._put(partition, key, value))
            self.index.setdefault(partition, []).append((newest_ts(chunk), key))
        return records

    def _put(self, partition: int, key: bytes, value: bytes | None) -> Record:
        if value is None:
            self.table.data.pop(key, None)
        else:
            self.table.data[key] = value
        return Record(self.topic, key, value, partition)

    def has_expired(self, partition: int, cut_ms: int) -> bool:
        return any(newest <= cut_ms for newest, _ in self.index.get(partition, ()))

    def expire(self, partition: int, cut_ms: int,
               carry: list[Event]) -> tuple[list[Record], list[Record]]:
        """Delete deltas older than the cut; keep the membership events still in force.

        Returns (carry records, deletions): the deletions may only be written once the
        carry records are on the broker. The carry is split over as many keys as its
        size needs (9k memberships already fill a record)."""
        entries = self.index.get(partition, [])
        expired = [key for newest, key in entries if newest <= cut_ms]
        if not expired:
            return [], []
        carried = [self._put(partition, _delta_key(partition, f"carry#{number}"), value)
                   for number, (_, value) in enumerate(_encoded_chunks(carry))]
        kept = {record.key for record in carried if record.key is not None}
        stale = sorted(self.carry_keys.get(partition, set()) - kept)
        self.carry_keys[partition] = kept
        carried.append(self._put(partition, _delta_key(partition, "cut"), str(cut_ms).encode()))
        self.cuts[partition] = cut_ms
        deletions = [self._put(partition, key, None) for key in [*stale, *expired]]
        self.index[partition] = [(n, k) for n, k in entries if n > cut_ms]
        return carried, deletions

    def load(self, partitions: set[int]) -> Iterable[tuple[int, list[Event]]]:
        """Stored deltas of the given partitions.

        Deltas of other partitions (no longer ours) are dropped from local memory; their
        changelog stays for the worker that owns them now.
        """
        self.index, self.cuts = {}, {}
        self.carry_keys = {}
        self.marked = self._check_user_ids(partitions)
        for key, value in list(self.table.data.items()):
            partition = _partition_of_key(key)
            if partition not in partitions:
                del self.table.data[key]
                continue
            if not value or key.endswith(_USER_IDS_SUFFIX):
                continue
            if key.endswith(_CUT_SUFFIX):
                self.cuts[partition] = int(value)
                continue
            events = _decode_events(value)
            if _is_carry(key):
                self.carry_keys.setdefault(partition, set()).add(key)
            elif events:
                newest = newest_ts(events)
                self.index.setdefault(partition, []).append((newest, key))
            yield partition, events


    def stored(self, partitions: set[int]) -> Iterator[list[Event]]:
        """The events stored for these partitions (deltas and carry), read-only: what a
        recovery would load, for rebuilding communities in place."""
        for key, value in list(self.table.data.items()):
            if (value and _partition_of_key(key) in partitions
                    and not key.endswith((_USER_IDS_SUFFIX, _CUT_SUFFIX))):
                yield _decode_events(value)

    def _check_user_ids(self, partitions: set[int]) -> set[int]:
        """The partitions whose deltas say how they store user ids; raises
        UserIdsMismatch when that is not how this worker stores them. Deltas that say
        nothing (written before the record existed) hold raw ids."""
        marked: dict[int, bytes] = {}
        unmarked: set[int] = set()
        for key, value in self.table.data.items():
            partition = _partition_of_key(key)
            if partition in partitions and value:
                if key.endswith(_USER_IDS_SUFFIX):
                    marked[partition] = value
                else:
                    unmarked.add(partition)
        found = set(marked.values()) | ({RAW_IDS.encode()} if unmarked - set(marked) else set())
        for stored in found - {self.user_ids}:
            raise UserIdsMismatch(
                f"the changelog {self.table.changelog_topic.get_topic_name()} holds user ids "
                f"{_describe_user_ids(stored)}, but this worker stores them "
                f"{_describe_user_ids(self.user_ids)}: pseudonymisation was switched or its "
                "key changed; start with a new app_id (docs/security.md, key rotation)")
        return set(marked)
