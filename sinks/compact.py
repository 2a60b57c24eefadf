"""Merge each date partition's small snapshot files into one, without losing a row.

The merged file's name sorts before every snapshot file's, so in the `snapshots` view
and in the next compaction any snapshot file (re)written later wins over it.
Order of operations keeps every moment safe: the merged file is written atomically
first (deduplicated on community, window and as_of), and only then are the files it
was built from deleted. A crash in between leaves duplicate rows on disk, which the
`snapshots` view already deduplicates and the next compaction removes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sinks.parquet import SNAPSHOT_SCHEMA, SnapshotWriter, is_closing_file, write_atomically

COMPACTED_PREFIX = "0-compacted-"


@dataclass
class CompactionReport:
    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    rows: int = 0

    def __str__(self) -> str:
        return (f"compacted {self.partitions} date partition(s): {self.files_before} files -> "
                f"{self.files_after}, {self.rows:,} rows kept")


def compact(data_dir: str | Path) -> CompactionReport:
    writer = SnapshotWriter(data_dir)
    fs = writer.fs
    report = CompactionReport()
    try:
        folders = fs.get_file_info(pafs.FileSelector(writer.snapshots_dir))
    except FileNotFoundError:
        raise ValueError(f"{data_dir}: no snapshots folder") from None
    for folder in sorted(f.path for f in folders if f.type == pafs.FileType.Directory):
        # Closing files stay as they are: one per partition and midnight, the worker
        # rewrites them within the grace period and reads them back after a restart.
        files = sorted(
            info.path for info in fs.get_file_info(pafs.FileSelector(folder))
            if info.is_file and info.base_name.endswith(".parquet")
            and not is_closing_file(info.base_name)
        )
        report.files_before += len(files)
        if len(files) < 2:
            report.files_after += len(files)
            continue
        table = _merged(fs, files)
        digest = hashlib.blake2b("\n".join(files).encode(), digest_size=8).hexdigest()
        # Sorts before every snapshot name (they start with the year): a snapshot the
        # worker rewrites after (or while) we compact wins in the `snapshots` view.
        write_atomically(fs, f"{folder}/{COMPACTED_PREFIX}{digest}.parquet", table)
        for path in files:
            fs.delete_file(path)
        report.partitions += 1
        report.files_after += 1
        report.rows += table.num_rows
    return report


def _merged(fs: pafs.FileSystem, files: list[str]) -> pa.Table:
    """All rows of `files`, one per (community, window, as_of), newest file winning."""
    tables = []
    for index, path in enumerate(files):
        with fs.open_input_file(path) as source:
            table = pq.read_table(source)  # (older files lack newer columns: NULL below)
        if "closing" not in table.column_names:  # schema 1: live rows only
            table = table.append_column("closing", pa.array([False] * table.num_rows))
        table = table.select([n for n in SNAPSHOT_SCHEMA.names if n in table.column_names])
        tables.append(table.append_column("_file_rank", [[index] * table.num_rows]))
    con = duckdb.connect()
    for index, table in enumerate(tables):
        con.register(f"t{index}", table)
    union = " UNION ALL BY NAME ".join(f"SELECT * FROM t{i}" for i in range(len(tables)))
    deduplicated = con.sql(f"""
        SELECT * EXCLUDE (_file_rank) FROM ({union})
        QUALIFY row_number() OVER (
            PARTITION BY community_id, window_days, as_of ORDER BY _file_rank DESC) = 1
        ORDER BY as_of, community_id, window_days""").to_arrow_table()
    for field in SNAPSHOT_SCHEMA:  # columns no file had yet (older schema versions)
        if field.name not in deduplicated.column_names:
            deduplicated = deduplicated.append_column(
                field.name, pa.nulls(deduplicated.num_rows, field.type))
    return deduplicated.select(SNAPSHOT_SCHEMA.names).cast(SNAPSHOT_SCHEMA)
