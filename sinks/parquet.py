"""Snapshot history as Hive-partitioned Parquet, plus a DuckDB catalogue over it.

Layout: DATA_DIR/snapshots/date=YYYY-MM-DD/<as_of>-<digest>.parquet (closing rows:
<as_of>-closing-p<partition>.parquet, one file per partition and midnight). Files are written
under a hidden temporary name and renamed into place, so readers never see half a file;
on a local disk the file and its folder are fsynced first, so a power cut cannot leave
an empty file behind a rename, and a temporary file is removed when a write fails.
Files that are not whole Parquet files (left by a crash on a disk that lies about
fsync, or copied in by hand) are moved to DATA_DIR/quarantine when the catalogue is
set up, so the `snapshots` view never fails on them.
The name is derived from the content's key (as_of + communities + windows), so writing
the same snapshot again replaces the file instead of adding rows. DATA_DIR may be a
local folder or any URI pyarrow.fs understands (s3://, gs://, ...).

The steering tables (SPEC 5: `goals`, `merge_suggestions`, `focus`, `manager_followups`)
are kept the same way by `TableWriter`, each under DATA_DIR/<table>/date=YYYY-MM-DD/ with
a view of the same name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from streams.core import SnapshotRow

log = logging.getLogger(__name__)

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
        one the `columns` asked for (None: none)."""
        folder = self.tables.folder("snapshots", as_of_ms)
        path = f"{folder}/{closing_file_name(as_of_ms, partition)}"
        try:
            with self.fs.open_input_file(path) as source:
                parquet = pq.ParquetFile(source)
                final = (parquet.schema_arrow.metadata or {}).get(FINAL_KEY) == b"true"
                if not final:
                    return False, parquet.read()
                return True, parquet.read(columns=columns) if columns else None
        except FileNotFoundError:
            return None


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


def quarantine_broken_files(data_dir: str | Path) -> list[Path]:
    """Move snapshot files that are not whole Parquet files (zero-length, torn: no
    PAR1 at both ends) and stale temporaries out of the way, into DATA_DIR/quarantine.
    Local data dirs only: object stores never show a partial object."""
    root = Path(data_dir)
    moved = []
    for path in sorted(p for table in ("snapshots", *STEERING_TABLES)
                       for p in (root / table).glob("*/*")):
        if path.name.endswith(".tmp") and path.name.startswith("."):
            broken = True
        elif path.suffix == ".parquet":
            broken = not _whole_parquet(path)
        else:
            continue
        if broken:
            target = root / "quarantine" / path.parent.parent.name / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            log.warning("moved broken snapshot file %s to %s", path, target)
            moved.append(target)
    return moved


def _whole_parquet(path: Path) -> bool:
    try:
        with path.open("rb") as source:
            if source.read(4) != b"PAR1":
                return False
            source.seek(-4, os.SEEK_END)
            return source.read(4) == b"PAR1"
    except OSError:  # shorter than 4 bytes, or unreadable
        return False


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
    """(Re)create the views in DATA_DIR/pulse.duckdb; False when another process holds it.

    Only local data dirs get a DuckDB file; the worker opens it once and closes it at
    once, so analysts can keep it open read-only while the worker runs.
    """
    if "://" in str(data_dir):
        return True
    quarantine_broken_files(data_dir)
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
    """Every stored snapshot row (deduplicated), oldest first, back as SnapshotRow."""
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
    as column -> value (`as_of` as epoch ms); [] when there are no snapshots yet."""
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


class SinkQueue:
    """Writes batches of snapshot rows in order from one background thread, keeping
    them and retrying with backoff while the sink fails (disk full, DATA_DIR gone or
    read-only): a failed write is retried, never dropped. A write that hangs holds up
    only this thread, never the event loop (expiry, consumption, /metrics).

    At most `max_batches` batches wait; beyond that the oldest goes and is counted
    (`on_drop`): live rows are for freshness, and memory must stay bounded."""

    def __init__(self, write: Callable[[Sequence[SnapshotRow]], object],
                 on_error: Callable[[], None] = lambda: None,
                 on_drop: Callable[[int], None] = lambda rows: None,
                 first_backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 max_batches: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        self._write, self._on_error, self._on_drop = write, on_error, on_drop
        self._first_backoff, self._max_backoff = first_backoff_s, max_backoff_s
        self._max_batches = max_batches
        self._clock = clock
        self._pending: deque[Sequence[SnapshotRow]] = deque()
        self._lock = threading.Lock()
        self._busy = False
        self._retry_at = 0.0
        self._backoff = first_backoff_s
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="parquet-sink")

    @property
    def pending_rows(self) -> int:
        with self._lock:
            return sum(map(len, self._pending))

    def submit(self, rows: Sequence[SnapshotRow]) -> Future[None] | None:
        """Queue the rows; start writing unless a write runs or a retry is not due yet."""
        with self._lock:
            if rows:
                self._pending.append(rows)
            while len(self._pending) > self._max_batches:
                self._on_drop(len(self._pending.popleft()))
            if self._busy or not self._pending or self._clock() < self._retry_at:
                return None
            self._busy = True
        return self._executor.submit(self._drain)

    def _drain(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    rows = self._pending[0]
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
                    if self._pending and self._pending[0] is rows:
                        self._pending.popleft()
                    self._backoff = self._first_backoff
        finally:
            with self._lock:
                self._busy = False
