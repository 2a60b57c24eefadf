"""Snapshot history as Hive-partitioned Parquet, plus a DuckDB catalogue over it.

Layout: DATA_DIR/snapshots/date=YYYY-MM-DD/<as_of>-<digest>.parquet. Files are written
under a hidden temporary name and renamed into place, so readers never see half a file.
The name is derived from the content's key (as_of + communities + windows), so writing
the same snapshot again replaces the file instead of adding rows. DATA_DIR may be a
local folder or any URI pyarrow.fs understands (s3://, gs://, ...).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from streams.core import SnapshotRow

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"  # 2: `closing` (docs/querying.md)
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


def closing_file_name(as_of_ms: int, partition: int) -> str:
    """A partition's closing rows at one midnight: always this one file, so rewriting
    them (late events within grace) replaces it whichever communities it holds."""
    return f"{_stamp(as_of_ms)}-closing-p{partition}.parquet"


def is_closing_file(name: str) -> bool:
    return "-closing-p" in name


def _stamp(as_of_ms: int) -> str:
    as_of = datetime.fromtimestamp(as_of_ms / 1000, tz=UTC)
    return f"{as_of:%Y%m%dT%H%M%S}{as_of_ms % 1000:03d}Z"


class SnapshotWriter:
    """Writes snapshot rows; one file per (as_of, set of communities) written."""

    def __init__(self, data_dir: str | Path) -> None:
        self.fs, root = pafs.FileSystem.from_uri(_as_uri(data_dir))
        self.root = root.rstrip("/")
        self.data_dir = str(data_dir)
        self._catalogue_ready = False

    @property
    def snapshots_dir(self) -> str:
        return f"{self.root}/snapshots"

    def folder(self, as_of_ms: int) -> str:
        """The Hive partition of an as_of: its UTC date."""
        as_of = datetime.fromtimestamp(as_of_ms / 1000, tz=UTC)
        return f"{self.snapshots_dir}/date={as_of:%Y-%m-%d}"

    def read_closing(self, as_of_ms: int, partition: int) -> pa.Table | None:
        """A partition's closing file at a midnight (None when there is none); whether
        it is final is in its schema metadata under FINAL_KEY."""
        path = f"{self.folder(as_of_ms)}/{closing_file_name(as_of_ms, partition)}"
        try:
            with self.fs.open_input_file(path) as source:
                return pq.read_table(source)
        except FileNotFoundError:
            return None

    def write(self, rows: Sequence[SnapshotRow]) -> list[str]:
        """Write rows grouped by the UTC date of their as_of; return the file paths."""
        by_as_of: dict[int, list[SnapshotRow]] = {}
        for row in rows:
            by_as_of.setdefault(row.as_of_ms, []).append(row)
        return [self.write_table(as_of, rows_to_table(group))
                for as_of, group in sorted(by_as_of.items())]

    def write_table(self, as_of_ms: int, table: pa.Table, name: str | None = None) -> str:
        """Write the rows (SNAPSHOT_SCHEMA) of one as_of; return the file path. The file
        name is `name`, else derived from the rows' keys."""
        if name is None:
            digest = hashlib.blake2b(digest_size=8)
            keys = zip(table["community_id"].to_pylist(), table["window_days"].to_pylist(),
                       strict=True)
            for key in sorted(set(keys)):
                digest.update(repr(key).encode())
            name = f"{_stamp(as_of_ms)}-{digest.hexdigest()}.parquet"
        folder = self.folder(as_of_ms)
        self.fs.create_dir(folder, recursive=True)
        final, temporary = f"{folder}/{name}", f"{folder}/.{name}.tmp"
        with self.fs.open_output_stream(temporary) as sink:
            pq.write_table(table, sink, compression="zstd")
        self.fs.move(temporary, final)
        if not self._catalogue_ready:
            self._catalogue_ready = ensure_catalogue(self.data_dir)
        return final


def _as_uri(data_dir: str | Path) -> str:
    text = str(data_dir)
    return text if "://" in text else str(Path(text).resolve())


def snapshots_glob(data_dir: str | Path) -> str:
    return f"{_as_uri(data_dir).rstrip('/')}/snapshots/*/*.parquet"


def catalogue_sql(data_dir: str | Path) -> list[str]:
    """The views of DATA_DIR/pulse.duckdb; also usable on any DuckDB connection."""
    source = snapshots_glob(data_dir).replace("'", "''")
    return [
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


def ensure_catalogue(data_dir: str | Path) -> bool:
    """(Re)create the views in DATA_DIR/pulse.duckdb; False when another process holds it.

    Only local data dirs get a DuckDB file; the worker opens it once and closes it at
    once, so analysts can keep it open read-only while the worker runs.
    """
    if "://" in str(data_dir):
        return True
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
