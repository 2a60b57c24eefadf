"""Merge each date partition's small snapshot files into one, without losing a row.

The merged file's name sorts before every snapshot file's, so in the `snapshots` view
and in the next compaction any snapshot file (re)written later wins over it.
Order of operations keeps every moment safe: the merged file is written atomically
first (deduplicated on community, window and as_of), and only then are the files it
was built from deleted. A crash in between leaves duplicate rows on disk, which the
`snapshots` view already deduplicates and the next compaction removes.

Broken files (zero-length, torn, not Parquet) are skipped and moved to DATA_DIR/quarantine
(`sinks.parquet.read_checked`); closing files are read whole too, so that compaction also
finds those that are damaged inside, which the cheap check of both ends cannot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs

from sinks.parquet import (
    QUARANTINE,
    SNAPSHOT_SCHEMA,
    SnapshotWriter,
    is_closing_file,
    quarantine_broken_files,
    read_checked,
    write_atomically,
)

COMPACTED_PREFIX = "0-compacted-"


@dataclass
class CompactionReport:
    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    rows: int = 0
    quarantined: list[str] = dataclass_field(default_factory=list)  # broken files moved aside

    def __str__(self) -> str:
        text = (f"compacted {self.partitions} date partition(s): {self.files_before} files -> "
                f"{self.files_after}, {self.rows:,} rows kept")
        if self.quarantined:  # (each is logged with its new place)
            text += (f"; {len(self.quarantined)} broken file(s) skipped and moved to "
                     f"DATA_DIR/{QUARANTINE}/")
        return text


def compact(data_dir: str | Path) -> CompactionReport:
    writer = SnapshotWriter(data_dir)
    fs, root = writer.fs, writer.tables.root
    report = CompactionReport()
    try:
        folders = fs.get_file_info(pafs.FileSelector(writer.snapshots_dir))
    except FileNotFoundError:
        raise ValueError(f"{data_dir}: no snapshots folder") from None
    if "://" not in str(data_dir):
        report.quarantined += quarantine_broken_files(data_dir)
    for folder in sorted(f.path for f in folders if f.type == pafs.FileType.Directory):
        names = sorted(info.path for info in fs.get_file_info(pafs.FileSelector(folder))
                       if info.is_file and info.base_name.endswith(".parquet"))
        # Closing files stay as they are: one per partition and midnight, the worker
        # rewrites them within the grace period and reads them back after a restart.
        tables = {}
        for path in names:
            found = read_checked(fs, root, path)
            if found is None:
                report.quarantined.append(path)
            elif not is_closing_file(path):
                tables[path] = found[1]
        files = sorted(tables)
        report.files_before += len(files)
        if len(files) < 2:
            report.files_after += len(files)
            continue
        table = _merged([tables[path] for path in files])
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


def _merged(files: list[pa.Table]) -> pa.Table:
    """All rows of the files' tables, one per (community, window, as_of), the later file
    winning."""
    tables = []
    for index, table in enumerate(files):  # (older files lack newer columns: NULL below)
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
