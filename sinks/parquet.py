"""Snapshot history as Hive-partitioned Parquet, plus a DuckDB catalogue over it.

Layout: DATA_DIR/snapshots/date=YYYY-MM-DD/<as_of>-<digest>.parquet (closing rows:
<as_of>-closing-p<partition>.parquet, one file per partition and midnight). Files are written
under a hidden temporary name and renamed into place, so readers never see half a file.
The name is derived from the content's key (as_of + communities + windows), so writing
the same snapshot again replaces the file instead of adding rows. DATA_DIR may be a
local folder or any URI pyarrow.fs understands (s3://, gs://, ...).

The steering tables (SPEC 5: `goals`, `merge_suggestions`, `focus`, `manager_followups`)
are kept the same way by `TableWriter`, each under DATA_DIR/<table>/date=YYYY-MM-DD/ with
a view of the same name.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
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
        folder = self.folder(name, as_of_ms)
        self.fs.create_dir(folder, recursive=True)
        final, temporary = f"{folder}/{file_name}", f"{folder}/.{file_name}.tmp"
        with self.fs.open_output_stream(temporary) as sink:
            pq.write_table(table, sink, compression="zstd")
        self.fs.move(temporary, final)
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
