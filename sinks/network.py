"""Who forms the whole-network steering view (`streams.steering.network`), and when.

- Every worker, every `steering_interval_s`, writes `member_sketches` and
  `followup_counts` for the communities it owns, at its own clock's `as_of`
  (`write_inputs`).
- The worker that owns partition 0 of the event topics (Kafka's group assignment picks
  it: after a rebalance, the new owner takes over, and no two workers own it at once)
  then reads the newest row per community of `member_sketches` and `followup_counts`
  written within `STALE_AFTER_INTERVALS` steering intervals, and of `snapshots` within
  as many snapshot intervals (times BEHIND_SNAPSHOT_EVERY: fewer while catching up), from
  DATA_DIR (the folder or object store all workers write to), and writes
  `merge_suggestions`, `focus` and `manager_followups` at its own `as_of`
  (`network_from_data_dir`). Only files whose name (their `as_of`) lies in that span
  are read, so the cost does not grow with the history. It also deletes the
  `member_sketches` dates older than `sketch_retention_days` (`prune`).
- `replay` writes the same tables at its steering times, from the tables of all its
  partitions at that moment (`write_network`), without reading them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs

from sinks.parquet import SNAPSHOT_SCHEMA, STEERING_TABLES, TableWriter, read_checked
from streams.config import MetricConfig
from streams.steering.focus import Manager
from streams.steering.network import SCHEMAS, SteeringSettings, network_tables

STALE_AFTER_INTERVALS = 3  # of the steering inputs' interval, and of the snapshots'
_KEYS = {"snapshots": ("community_id", "window_days"), **STEERING_TABLES}


def _file_name_time(ms: int) -> str:
    """The `as_of` part of a file name, as TableWriter writes it (sorts like the time)."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return f"{moment:%Y%m%dT%H%M%S}{ms % 1000:03d}Z"


class SteeringSink:
    """Writes the steering tables of one pipeline (a worker, or a replay)."""

    def __init__(self, data_dir: str | Path, settings: SteeringSettings,
                 managers: Sequence[Manager], config: MetricConfig) -> None:
        self.writer = TableWriter(data_dir)
        self.settings, self.managers, self.config = settings, list(managers), config

    def write_inputs(self, sketches: pa.Table, followup_counts: pa.Table) -> None:
        self.writer.write("member_sketches", sketches)
        self.writer.write("followup_counts", followup_counts)

    def write_network(self, as_of_ms: int, snapshots: pa.Table, sketches: pa.Table,
                      followup_counts: pa.Table) -> dict[str, pa.Table]:
        tables = network_tables(snapshots, sketches, followup_counts, self.managers,
                                as_of_ms, self.settings, self.config)
        for name, table in tables.items():
            self.writer.write(name, table)
        return tables

    def network_from_data_dir(self, as_of_ms: int, inputs_since_ms: int,
                              snapshots_since_ms: int) -> dict[str, pa.Table]:
        """The network tables at `as_of` from every worker's newest sketches and counts
        in (inputs_since, as_of] and snapshots in (snapshots_since, as_of], written;
        returned with the sketches they came from."""
        newest = {name: self.read_newest(name, since, as_of_ms, schema)
                  for name, since, schema in (
                      ("snapshots", snapshots_since_ms, SNAPSHOT_SCHEMA),
                      ("member_sketches", inputs_since_ms, SCHEMAS["member_sketches"]),
                      ("followup_counts", inputs_since_ms, SCHEMAS["followup_counts"]))}
        tables = self.write_network(as_of_ms, newest["snapshots"], newest["member_sketches"],
                                    newest["followup_counts"])
        return {**tables, "member_sketches": newest["member_sketches"]}

    def prune(self, name: str, before_ms: int) -> list[str]:
        """Delete the table's date folders of days wholly before `before_ms` (its UTC
        date), local or on object storage; return what was deleted."""
        fs, folder = self.writer.fs, self.writer.table_dir(name)
        first_kept = f"date={datetime.fromtimestamp(before_ms / 1000, tz=UTC):%Y-%m-%d}"
        old = sorted(info.path for info in fs.get_file_info(
            pafs.FileSelector(folder, allow_not_found=True))
            if info.type == pafs.FileType.Directory and info.base_name.startswith("date=")
            and info.base_name < first_kept)
        for path in old:
            fs.delete_dir(path)
        return old

    def read_newest(self, name: str, since_ms: int, until_ms: int,
                    schema: pa.Schema) -> pa.Table:
        """The newest row per key of a table among its files of (since, until]."""
        fs, folder = self.writer.fs, self.writer.table_dir(name)
        low, high = _file_name_time(since_ms), _file_name_time(until_ms)
        day, paths = datetime.fromtimestamp(since_ms / 1000, tz=UTC).date(), []
        while day <= datetime.fromtimestamp(until_ms / 1000, tz=UTC).date():
            selector = pafs.FileSelector(f"{folder}/date={day:%Y-%m-%d}", allow_not_found=True)
            for info in fs.get_file_info(selector):
                stem = info.base_name.split("-", 1)[0]
                if info.base_name.endswith(".parquet") and not info.base_name.startswith(".") \
                        and low < stem <= high:
                    paths.append(info.path)
            day += timedelta(days=1)
        if not paths:
            return schema.empty_table()
        # (a broken file is moved to quarantine and left out: read_checked)
        found = [read_checked(fs, self.writer.root, path) for path in sorted(paths)]
        tables = [table for _, table in filter(None, found)]
        if not tables:
            return schema.empty_table()
        combined = pa.concat_tables(tables, promote_options="default")
        key = ", ".join(_KEYS[name])
        with duckdb.connect() as con:
            con.register("rows", combined)
            return con.sql(f"""SELECT * FROM rows QUALIFY row_number() OVER (
                PARTITION BY {key} ORDER BY as_of DESC) = 1""").to_arrow_table()
