"""Arrow schemas of the steering history tables (SPEC 5), written with
`sinks.parquet.TableWriter` under DATA_DIR/<table>/date=YYYY-MM-DD/ (docs/querying.md)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from sinks.parquet import records_table
from streams.steering.goals import GoalRow

STEERING_SCHEMA_VERSION = "1"

GOALS_SCHEMA = pa.schema(
    [
        pa.field("goal_id", pa.string(), nullable=False),
        pa.field("community_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("window_days", pa.int32(), nullable=False),
        pa.field("as_of", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("expected", pa.float64(), nullable=False),
        pa.field("progress", pa.float64()),
        pa.field("status", pa.string(), nullable=False),
    ],
    metadata={"community_pulse.schema_version": STEERING_SCHEMA_VERSION},
)


def goals_table(rows: Sequence[GoalRow]) -> pa.Table:
    return records_table(rows, GOALS_SCHEMA)
