"""Snapshot history as Hive-partitioned Parquet, plus a DuckDB catalogue over it.

Layout: DATA_DIR/snapshots/date=YYYY-MM-DD/<as_of>-<digest>.parquet (closing rows:
<as_of>-closing-p<partition>.parquet, one file per partition and midnight). Files are written
under a hidden temporary name and renamed into place, so readers never see half a file;
on a local disk the file and its folder are fsynced first, so a power cut cannot leave
an empty file behind a rename, and a temporary file is removed when a write fails.
Files that are not whole Parquet files (a copy or upload cut short, a disk that lies
about fsync, garbage) are moved to DATA_DIR/quarantine by whoever reads them first, so
neither the views nor the worker's recovery fail on them: `read_checked` (whole reads:
closing files, compact, the steering reader), `quarantine_broken_files` (a quick check
of every file when the catalogue is set up), `read_history` (a query that failed).
The name is derived from the content's key (as_of + communities + windows), so writing
the same snapshot again replaces the file instead of adding rows. DATA_DIR may be a
local folder or any URI pyarrow.fs understands (s3://, gs://, ...).

The steering tables (SPEC 5: `goals`, `merge_suggestions`, `focus`, `manager_followups`)
are kept the same way by `TableWriter`, each under DATA_DIR/<table>/date=YYYY-MM-DD/ with
a view of the same name.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from streams.core import SnapshotRow

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = "2"  # 2: `closing` and the steering columns (docs/querying.md)
FINAL_KEY = b"community_pulse.final"  # closing files: "true" once past the grace period

SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("community_id", pa.string(), nullable=False),
        pa.field("as_of", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("window_days", pa.int32(), nullable=False),
        *(
            pa.field(name, pa.int64(), nullable=False)
            for name in (
                "members", "creators", "conversationalists", "critics", "joiners",
                "spectators", "inactives", "contributors",
            )
        ),
        pa.field("contributor_share", pa.float64(), nullable=False),
        pa.field("tier", pa.string(), nullable=False),
        *(
            pa.field(name, pa.int64(), nullable=False)
            for name in (
                "posts", "replies", "likes", "views", "posts_eligible",
                "posts_answered_in_sla", "unanswered_posts",
            )
        ),
        pa.field("median_first_reply_seconds", pa.float64()),
        pa.field("retention", pa.float64()),
        pa.field("continuity", pa.float64(), nullable=False),
        pa.field("responsiveness", pa.float64()),
        pa.field("participation", pa.float64()),
        pa.field("reciprocity", pa.float64()),
        pa.field("sustainability", pa.float64(), nullable=False),
        pa.field("stagnating", pa.bool_(), nullable=False),
        pa.field("last_activity", pa.timestamp("ms", tz="UTC")),
        # Steering (SPEC 5, schema version 2); NULL in rows written before. The expert
        # counts are NULL without a roster file too.
        *(pa.field(name, pa.int64()) for name in ("experts", "experts_replying",
                                                  "expert_replies")),
        pa.field("expert_needed", pa.bool_()),
        *(pa.field(name, pa.int64()) for name in ("managed_posts", "ugc_posts")),
        *(pa.field(name, pa.float64()) for name in ("managed_engagement", "ugc_engagement")),
        # true: a closing row (as_of a UTC midnight, final by event time); false: live.
        pa.field("closing", pa.bool_(), nullable=False),
    ],
    metadata={"community_pulse.schema_version": SCHEMA_VERSION},
)

_ROW_FIELDS = [f.name for f in fields(SnapshotRow)]
_RENAMED = {"as_of_ms": "as_of", "last_activity_ms": "last_activity"}


def rows_to_table(rows: Sequence[SnapshotRow], closing: bool = False) -> pa.Table:
    columns = {_RENAMED.get(name, name): [getattr(r, name) for r in rows] for name in _ROW_FIELDS}
    columns["closing"] = [closing] * len(rows)
    return pa.Table.from_pydict(columns, schema=SNAPSHOT_SCHEMA)


def table_rows(table: pa.Table) -> list[SnapshotRow]:
    """Rows of SNAPSHOT_SCHEMA (e.g. read back from a file) as SnapshotRow."""
    columns = {}
    for name in _ROW_FIELDS:
        column = table[_RENAMED.get(name, name)]
        if name in _RENAMED:  # timestamps back to epoch ms
            column = pc.cast(column, pa.int64())
        columns[name] = column.to_pylist()
    return [SnapshotRow(**dict(zip(columns, values, strict=True)))
            for values in zip(*columns.values(), strict=True)]


def closing_file_name(as_of_ms: int, partition: int) -> str:
    """A partition's closing rows at one midnight: always this one file, so rewriting
    them (late events within grace) replaces it whichever communities it holds."""
    return f"{_stamp(as_of_ms)}-closing-p{partition}.parquet"


def is_closing_file(name: str) -> bool:
    return "-closing-p" in name


def _stamp(as_of_ms: int) -> str:
    as_of = datetime.fromtimestamp(as_of_ms / 1000, tz=UTC)
    return f"{as_of:%Y%m%dT%H%M%S}{as_of_ms % 1000:03d}Z"


# The history tables besides `snapshots` (SPEC 5), each kept under DATA_DIR/<name>/ with
# a view <name> in pulse.duckdb: name -> the columns that, with `as_of`, identify a row
# (the view keeps one row per such key: the newest file's).
STEERING_TABLES: dict[str, tuple[str, ...]] = {
    "goals": ("goal_id",),
    "merge_suggestions": ("community_id", "candidate_id", "window_days"),
    "focus": ("community_id",),
    "manager_followups": ("manager",),
    # What each worker writes about its own communities for the network-wide view
    # (streams.steering.network): member sketches and managers' open follow-ups.
    "member_sketches": ("community_id", "window_days"),
    "followup_counts": ("manager", "community_id"),
}
_SNAPSHOT_KEY = ("community_id", "window_days")


def records_table(rows: Sequence[Any], schema: pa.Schema) -> pa.Table:
    """Rows (objects with an attribute per column; `<column>_ms` for a timestamp column
    kept as epoch ms, like `as_of_ms`) as a table of `schema`."""
    columns = {}
    for column in schema.names:
        attribute = column if not rows or hasattr(rows[0], column) else f"{column}_ms"
        columns[column] = [getattr(row, attribute) for row in rows]
    return pa.Table.from_pydict(columns, schema=schema)


class TableWriter:
    """Writes rows of a history table, one file per (table, as_of, set of row keys).

    A table's rows of one `as_of` go to DATA_DIR/<table>/date=YYYY-MM-DD/<as_of>-<digest>
    .parquet (atomically: a hidden temporary name, then a rename); the digest covers the
    rows' keys, so writing the same rows again replaces the file instead of adding rows.
    The table's view in pulse.duckdb is (re)created after its first file.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.fs, root = pafs.FileSystem.from_uri(_as_uri(data_dir))
        self.root = root.rstrip("/")
        self.data_dir = str(data_dir)
        self._catalogued: set[str] = set()

    def table_dir(self, name: str) -> str:
        return f"{self.root}/{name}"

    def write(self, name: str, table: pa.Table) -> list[str]:
        """Write the rows (any as_of, an `as_of` timestamp column); return the paths."""
        if not table.num_rows:
            return []
        as_of = pc.cast(table["as_of"], pa.int64()).to_numpy()
        return [self.write_at(name, int(t), table.filter(pa.array(as_of == t)))
                for t in sorted(set(as_of.tolist()))]

    def folder(self, name: str, as_of_ms: int) -> str:
        """The Hive partition of an as_of: its UTC date."""
        as_of = datetime.fromtimestamp(as_of_ms / 1000, tz=UTC)
        return f"{self.table_dir(name)}/date={as_of:%Y-%m-%d}"

    def write_at(self, name: str, as_of_ms: int, table: pa.Table,
                 file_name: str | None = None) -> str:
        """Write the rows of one as_of; return the file path. The file is `file_name`,
        else named after the rows' keys."""
        if file_name is None:
            digest = hashlib.blake2b(digest_size=8)
            key = _SNAPSHOT_KEY if name == "snapshots" else STEERING_TABLES[name]
            keys = zip(*(table[column].to_pylist() for column in key), strict=True)
            for row_key in sorted(set(keys)):
                digest.update(repr(row_key).encode())
            file_name = f"{_stamp(as_of_ms)}-{digest.hexdigest()}.parquet"
        final = f"{self.folder(name, as_of_ms)}/{file_name}"
        write_atomically(self.fs, final, table)
        if name not in self._catalogued and ensure_catalogue(self.data_dir):
            self._catalogued.add(name)
        return final


class SnapshotWriter:
    """Writes snapshot rows; one file per (as_of, set of communities) written."""

    def __init__(self, data_dir: str | Path) -> None:
        self.tables = TableWriter(data_dir)
        self.fs, self.data_dir = self.tables.fs, self.tables.data_dir

    @property
    def snapshots_dir(self) -> str:
        return self.tables.table_dir("snapshots")

    def write(self, rows: Sequence[SnapshotRow]) -> list[str]:
        """Write rows grouped by the UTC date of their as_of; return the file paths."""
        by_as_of: dict[int, list[SnapshotRow]] = {}
        for row in rows:
            by_as_of.setdefault(row.as_of_ms, []).append(row)
        return [self.write_table(as_of, rows_to_table(group))
                for as_of, group in sorted(by_as_of.items())]

    def write_table(self, as_of_ms: int, table: pa.Table, name: str | None = None) -> str:
        """Write the rows (SNAPSHOT_SCHEMA) of one as_of; return the file path. The file
        is `name`, else named after the rows' keys."""
        return self.tables.write_at("snapshots", as_of_ms, table, name)

    def read_closing(self, as_of_ms: int, partition: int, columns: list[str] | None = None
                     ) -> tuple[bool, pa.Table | None] | None:
        """A partition's closing file at a midnight: None when there is none, else
        whether it is final (FINAL_KEY) and its rows: all of an open file, of a final
        one the `columns` asked for (None: none). A file that does not read (torn,
        zero-length, not of SNAPSHOT_SCHEMA) is moved to quarantine and counts as none:
        its rows are written anew (`read_checked`)."""
        folder = self.tables.folder("snapshots", as_of_ms)
        path = f"{folder}/{closing_file_name(as_of_ms, partition)}"
        try:
            found = read_checked(self.fs, self.tables.root, path, None, SNAPSHOT_SCHEMA)
        except FileNotFoundError:
            return None
        if found is None:
            return None
        parquet, table = found
        if (parquet.schema_arrow.metadata or {}).get(FINAL_KEY) != b"true":
            return False, table
        return True, table.select(columns) if columns else None


def write_atomically(fs: pafs.FileSystem, final: str, table: pa.Table) -> None:
    """Write a Parquet file that appears whole or not at all, and is durable once this
    returns (fsync of file and folder on a local disk; object stores put atomically)."""
    folder, name = final.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    temporary = f"{folder}/.{name}.tmp"
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            with open(temporary, "wb") as out:
                out.write(buffer.getbuffer())
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, final)
            _fsync_dir(folder)
        else:
            with fs.open_output_stream(temporary) as sink:
                pq.write_table(table, sink, compression="zstd")
            fs.move(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):  # never created, or the disk is gone
            fs.delete_file(temporary)
        raise


def _fsync_dir(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


QUARANTINE = "quarantine"  # DATA_DIR/quarantine/<table>/date=.../<file>: broken files
STALE_TEMPORARY_S = 3600  # a hidden .tmp this old is a crashed write's, not one under way
# Files this process moved to quarantine, per table (community_pulse_quarantined_files_total).
QUARANTINED: collections.Counter[str] = collections.Counter()
# What pyarrow raises on bytes that are not a whole Parquet file of the expected columns
# (parsed from memory, so an OSError here is content, never I/O).
BROKEN_CONTENT = (pa.ArrowException, OSError, ValueError, KeyError, IndexError)


def quarantine(fs: pafs.FileSystem, root: str, path: str, reason: str) -> str:
    """Move a broken file of a table (`root`/<table>/date=.../<name>) to
    `root`/quarantine/<table>/date=.../<name> (".1", ".2", ... when that name is taken),
    out of every view's glob; count and log it (paths name no community or user)."""
    relative = path[len(root):].lstrip("/")
    target = base = f"{root}/{QUARANTINE}/{relative}"
    copies = 0
    while fs.get_file_info(target).type != pafs.FileType.NotFound:
        copies += 1
        target = f"{base}.{copies}"
    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    fs.move(path, target)
    QUARANTINED[relative.split("/", 1)[0]] += 1
    log.warning("moved %s to %s: %s", path, target, reason)
    return target


def read_checked(fs: pafs.FileSystem, root: str, path: str, columns: Sequence[str] | None = None,
                 schema: pa.Schema | None = None) -> tuple[pq.ParquetFile, pa.Table] | None:
    """A Parquet file of a table under `root` and its `columns` (None: all; [] none), of
    their types in `schema` if given, or None after moving it to quarantine when its bytes
    are not a whole Parquet file with those columns. The bytes are read whole first: an
    I/O error (FileNotFoundError, a disk or store that fails) raises and moves nothing."""
    with fs.open_input_file(path) as source:
        data = source.read_buffer()
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        table = parquet.read(columns=columns)
        if schema is not None:
            names = schema.names if columns is None else list(columns)
            table = table.select(names).cast(pa.schema([schema.field(n) for n in names]))
        return parquet, table
    except BROKEN_CONTENT as exc:
        quarantine(fs, root, path, f"not a whole Parquet file ({type(exc).__name__})")
        return None


def torn(path: Path) -> str | None:
    """Why a local file cannot be a whole Parquet file, from its size and both ends (no
    read of its content: a cheap check for every file); None when it may be one."""
    try:
        with path.open("rb") as source:
            size = source.seek(0, os.SEEK_END)
            if size < 12:  # PAR1, a footer length, PAR1
                return f"{size} bytes"
            source.seek(0)
            head = source.read(4)
            source.seek(size - 8)
            tail = source.read(8)
    except FileNotFoundError:  # compacted or rewritten meanwhile
        return None
    if head != b"PAR1" or tail[4:] != b"PAR1":
        return "torn: no PAR1 at both ends"
    if int.from_bytes(tail[:4], "little") + 12 > size:
        return "torn: its footer would start before the file"
    return None


def quarantine_broken_files(data_dir: str | Path) -> list[str]:
    """Move the table files of a local DATA_DIR that cannot be whole Parquet files
    (zero-length, torn, garbage: `torn`) and stale temporaries to DATA_DIR/quarantine;
    return where they went. Object stores never show a partial object of ours (readers
    that read a file whole quarantine the others: `read_checked`)."""
    root = Path(data_dir).resolve()
    fs, moved = pafs.LocalFileSystem(), []
    for path in sorted(p for table in ("snapshots", *STEERING_TABLES)
                       for p in (root / table).glob("*/*")):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):  # (renamed into place meanwhile)
                if time.time() - path.stat().st_mtime > STALE_TEMPORARY_S:
                    moved.append(quarantine(fs, str(root), str(path), "a stale temporary"))
        elif path.suffix == ".parquet" and path.is_file() and (reason := torn(path)):
            moved.append(quarantine(fs, str(root), str(path), reason))
    return moved


def quarantine_after(data_dir: str | Path, error: BaseException) -> list[str]:
    """After a read of the history failed with `error`: the broken files moved aside
    (`quarantine_broken_files`, and a file the error names if it does not read whole);
    [] when none were found, so the error is not theirs. Local data dirs only."""
    if "://" in str(data_dir):
        return []
    moved = quarantine_broken_files(data_dir)
    root, fs = str(Path(data_dir).resolve()), pafs.LocalFileSystem()
    for named in re.findall(r"'([^']+\.parquet)'", str(error)):  # (DuckDB quotes it)
        if str(Path(named).parent.parent.parent) == root and Path(named).is_file() \
                and read_checked(fs, root, named) is None:
            moved.append(named)
    return moved


# A query that reads a file while the worker replaces it (a closing file rewritten within
# its grace) can fail: DuckDB reads a file more than once per query (footer, then pages)
# and takes the new file's pages for the old one's ("TProtocolException: Invalid data"
# and the like). The files are whole; the query is asked again.
REPLACED_WHILE_READ_RETRIES = 5


def read_history(data_dir: str | Path, read: Callable[[], T]) -> T:
    """`read()` over the history's files; when it fails on broken ones (DuckDB names
    only some of them), they go to quarantine and it is tried again; when it fails on
    whole ones (a file replaced while read), it is tried again a few times."""
    retries = REPLACED_WHILE_READ_RETRIES
    while True:
        try:
            return read()
        except (duckdb.Error, *BROKEN_CONTENT) as exc:
            if quarantine_after(data_dir, exc):
                continue
            if retries == 0 or not isinstance(exc, duckdb.Error):
                raise
            retries -= 1
            time.sleep(0.05)


def _as_uri(data_dir: str | Path) -> str:
    text = str(data_dir)
    return text if "://" in text else str(Path(text).resolve())


def snapshots_glob(data_dir: str | Path) -> str:
    return f"{_as_uri(data_dir).rstrip('/')}/snapshots/*/*.parquet"


def catalogue_sql(data_dir: str | Path) -> list[str]:
    """The views of DATA_DIR/pulse.duckdb; also usable on any DuckDB connection."""
    source = snapshots_glob(data_dir).replace("'", "''")
    snapshot_views = [
        # Deduplicate defensively: for a (community, window, as_of), a closing row wins
        # over a live one, then the newest file. Schema 1 files have no `closing`: live.
        f"""CREATE OR REPLACE VIEW snapshots AS
        SELECT * EXCLUDE (filename) REPLACE (coalesce(closing, false) AS closing)
        FROM read_parquet('{source}',
            hive_partitioning = true, union_by_name = true, filename = true)
        QUALIFY row_number() OVER (
            PARTITION BY community_id, window_days, as_of
            ORDER BY coalesce(closing, false) DESC, filename DESC) = 1""",
        # One final-by-event-time row per community x window x UTC midnight (SPEC 4).
        """CREATE OR REPLACE VIEW daily AS
        SELECT * FROM snapshots WHERE closing""",
        """CREATE OR REPLACE VIEW latest_snapshots AS
        SELECT * FROM snapshots
        QUALIFY row_number() OVER (
            PARTITION BY community_id, window_days ORDER BY as_of DESC) = 1""",
        """CREATE OR REPLACE VIEW tier_changes AS
        SELECT community_id, window_days, as_of, previous_tier, tier FROM (
            SELECT community_id, window_days, as_of, tier,
                   lag(tier) OVER (PARTITION BY community_id, window_days ORDER BY as_of)
                       AS previous_tier
            FROM snapshots)
        WHERE previous_tier IS DISTINCT FROM tier AND previous_tier IS NOT NULL""",
    ]
    return [*(snapshot_views if _has_files(data_dir, "snapshots") else []),
            *steering_views(data_dir)]


def _has_files(data_dir: str | Path, table: str) -> bool:
    """Whether a table has a file yet (a view over no files cannot be made). On object
    storage, whether its prefix holds anything (folders exist only with objects)."""
    if "://" in str(data_dir):
        fs, root = pafs.FileSystem.from_uri(str(data_dir))
        return fs.get_file_info(f"{root.rstrip('/')}/{table}").type != pafs.FileType.NotFound
    return next(Path(data_dir).glob(f"{table}/*/*.parquet"), None) is not None


def steering_views(data_dir: str | Path) -> list[str]:
    """A view per steering table that has files."""
    statements = []
    for name, key in STEERING_TABLES.items():
        if not _has_files(data_dir, name):
            continue
        source = f"{_as_uri(data_dir).rstrip('/')}/{name}/*/*.parquet".replace("'", "''")
        statements.append(f"""CREATE OR REPLACE VIEW {name} AS
        SELECT * EXCLUDE (filename) FROM read_parquet('{source}',
            hive_partitioning = true, union_by_name = true, filename = true)
        QUALIFY row_number() OVER (
            PARTITION BY {", ".join(key)}, as_of ORDER BY filename DESC) = 1""")
    return statements


def ensure_catalogue(data_dir: str | Path) -> bool:
    """(Re)create the views in DATA_DIR/pulse.duckdb, broken files moved aside first;
    False when another process holds it.

    Only local data dirs get a DuckDB file; the worker opens it once and closes it at
    once, so analysts can keep it open read-only while the worker runs.
    """
    if "://" in str(data_dir):
        return True
    try:
        quarantine_broken_files(data_dir)
    except OSError as exc:  # (e.g. not allowed to move one): the write stands, retried later
        log.warning("could not move the broken files of %s aside: %s", data_dir, exc)
        return False
    path = Path(data_dir) / "pulse.duckdb"
    try:
        with duckdb.connect(str(path)) as con:
            for statement in catalogue_sql(data_dir):
                con.execute(statement)
    except duckdb.Error as exc:  # e.g. a reader holds the file; retried on the next write
        log.warning("could not update %s: %s", path, exc)
        return False
    return True


def read_rows(data_dir: str | Path) -> list[SnapshotRow]:
    """Every stored snapshot row (deduplicated), oldest first, back as SnapshotRow (broken
    files moved to quarantine: `read_history`)."""
    return read_history(data_dir, lambda: _read_rows(data_dir))


def _read_rows(data_dir: str | Path) -> list[SnapshotRow]:
    con = duckdb.connect()
    for statement in catalogue_sql(data_dir)[:1]:
        con.execute(statement)
    rel = con.sql("""SELECT * EXCLUDE (date, as_of, last_activity, closing),
                            epoch_ms(as_of) AS as_of_ms, epoch_ms(last_activity) AS last_activity_ms
                     FROM snapshots ORDER BY as_of, community_id, window_days""")
    names = rel.columns
    return [SnapshotRow(**dict(zip(names, values, strict=True))) for values in rel.fetchall()]


def latest_rows(data_dir: str | Path, community_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The newest stored snapshot row of each (community, window) of these communities,
    as column -> value (`as_of` as epoch ms); [] when there are no snapshots yet (broken
    files moved to quarantine: `read_history`)."""
    return read_history(data_dir, lambda: _latest_rows(data_dir, community_ids))


def _latest_rows(data_dir: str | Path, community_ids: Sequence[str]) -> list[dict[str, Any]]:
    if not _has_files(data_dir, "snapshots"):
        return []
    with duckdb.connect() as con:
        con.execute(catalogue_sql(data_dir)[0])
        rel = con.execute("""SELECT * EXCLUDE (date, as_of, last_activity),
                                    epoch_ms(as_of) AS as_of_ms
                             FROM snapshots WHERE list_contains(?, community_id)
                             QUALIFY row_number() OVER (
                                 PARTITION BY community_id, window_days ORDER BY as_of DESC) = 1
                             ORDER BY community_id, window_days""", [list(community_ids)])
        names = [d[0] for d in rel.description]
        return [dict(zip(names, values, strict=True)) for values in rel.fetchall()]


# The most a queued SnapshotRow holds in memory of its own: the object (37 slots, 336
# bytes as allocated), its 10 floats and 23 ints (32 bytes each as allocated; ints only
# past the small ones CPython shares, and bools, None and its strings are shared) and a
# list slot: 1,400 bytes, so the bound is never exceeded. Rows of typical communities
# hold about 500 (tracemalloc; tests/test_sinks_fail_safe.py measures both).
ROW_BYTES = 1_408


class SinkQueue:
    """Writes batches of snapshot rows in order from one background thread, keeping
    them and retrying with backoff while the sink fails (disk full, DATA_DIR gone or
    read-only): a failed write is retried, never dropped. A write that hangs holds up
    only this thread, never the event loop (expiry, consumption, /metrics).

    The rows waiting may take at most `max_bytes` (ROW_BYTES a row): beyond that the
    oldest batches go and are counted (`on_drop`), live rows being for freshness, while
    memory must stay bounded. The batch being written and the newest are never dropped,
    so a snapshot larger than the bound is still written. (Closing rows never come here:
    the closing pass keeps and rewrites them, streams.closing.)"""

    def __init__(self, write: Callable[[Sequence[SnapshotRow]], object],
                 on_error: Callable[[], None] = lambda: None,
                 on_drop: Callable[[int], None] = lambda rows: None,
                 first_backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 max_bytes: int = 256 << 20, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._write, self._on_error, self._on_drop = write, on_error, on_drop
        self._first_backoff, self._max_backoff = first_backoff_s, max_backoff_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._pending: deque[Sequence[SnapshotRow]] = deque()
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._busy = False
        self._writing: Sequence[SnapshotRow] | None = None
        self._retry_at = 0.0
        self._backoff = first_backoff_s
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="parquet-sink")

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    @property
    def pending_bytes(self) -> int:
        """The estimated memory of the rows waiting (and being written)."""
        return self._pending_rows * ROW_BYTES

    def submit(self, rows: Sequence[SnapshotRow]) -> Future[None] | None:
        """Queue the rows; start writing unless a write runs or a retry is not due yet."""
        with self._lock:
            if rows:
                self._pending.append(rows)
                self._pending_rows += len(rows)
            self._drop_oldest()
            if self._busy or not self._pending or self._clock() < self._retry_at:
                return None
            self._busy = True
        return self._executor.submit(self._drain)

    def _drop_oldest(self) -> None:
        """Drop the oldest batches until the rest fit in max_bytes (holding the lock)."""
        index = 1 if self._pending and self._pending[0] is self._writing else 0
        while self.pending_bytes > self._max_bytes and index < len(self._pending) - 1:
            dropped = self._pending[index]
            del self._pending[index]
            self._pending_rows -= len(dropped)
            self._on_drop(len(dropped))

    def _drain(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    rows = self._writing = self._pending[0]
                try:
                    self._write(rows)
                except Exception:
                    self._on_error()
                    with self._lock:
                        self._retry_at = self._clock() + self._backoff
                        log.exception("writing %d snapshot rows failed; %d batches kept, "
                                      "retried in %.0f s", len(rows), len(self._pending),
                                      self._backoff)
                        self._backoff = min(self._backoff * 2, self._max_backoff)
                    return
                with self._lock:
                    self._pending.popleft()  # (never dropped while written: _writing)
                    self._pending_rows -= len(rows)
                    self._backoff = self._first_backoff
        finally:
            with self._lock:
                self._busy = False
                self._writing = None
