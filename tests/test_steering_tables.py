"""Shared steering infrastructure: the history-table writer with its views, the
steering settings and the roster file (SPEC 5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from sinks.parquet import STEERING_TABLES, TableWriter, ensure_catalogue, records_table
from streams import config as config_module
from streams.config import ConfigError, RuntimeConfig
from streams.steering.files import RosterError, read_experts

T = 1_795_000_000_000  # 2026-11-18T...Z
DAY = 86_400_000
SCHEMA = pa.schema([
    pa.field("goal_id", pa.string(), nullable=False),
    pa.field("as_of", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("value", pa.float64()),
])


@dataclass
class _Row:
    goal_id: str
    as_of_ms: int
    value: float | None


def _table(*rows: tuple[str, int, float | None]) -> pa.Table:
    return records_table([_Row(*r) for r in rows], SCHEMA)


def _view(data_dir: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(data_dir / "pulse.duckdb"), read_only=True) as con:
        return con.sql(sql).fetchall()


def test_rows_land_per_date_with_a_view_and_rewrites_replace(tmp_path: Path) -> None:
    writer = TableWriter(tmp_path)
    paths = writer.write("goals", _table(("g1", T, 1.0), ("g2", T, None), ("g1", T + DAY, 2.0)))
    assert len(paths) == 2  # one file per as_of, in its UTC date's folder
    assert {Path(p).parent.name for p in paths} == {"date=2026-11-18", "date=2026-11-19"}
    assert not list(tmp_path.rglob("*.tmp"))
    # The same rows again (a re-run) replace their file: no second row.
    writer.write("goals", _table(("g1", T, 1.5), ("g2", T, None)))
    assert len(list((tmp_path / "goals").rglob("*.parquet"))) == 2
    rows = _view(tmp_path, "SELECT goal_id, epoch_ms(as_of), value FROM goals ORDER BY ALL")
    assert rows == [("g1", T, 1.5), ("g1", T + DAY, 2.0), ("g2", T, None)]


def test_the_view_keeps_one_row_per_key_and_as_of_newest_file_first(tmp_path: Path) -> None:
    writer = TableWriter(tmp_path)
    writer.write_at("goals", T, _table(("g1", T, 1.0), ("g2", T, 5.0)))
    writer.write_at("goals", T, _table(("g1", T, 3.0)))  # another key set: another file
    assert len(list((tmp_path / "goals").rglob("*.parquet"))) == 2
    rows = _view(tmp_path, "SELECT goal_id, count(*) FROM goals GROUP BY ALL ORDER BY ALL")
    assert rows == [("g1", 1), ("g2", 1)]


def test_views_exist_only_for_tables_with_files(tmp_path: Path) -> None:
    TableWriter(tmp_path).write("goals", _table(("g1", T, 1.0)))
    (tmp_path / "focus").mkdir()  # a folder without files yet: no view, no error
    assert ensure_catalogue(tmp_path)
    with duckdb.connect(str(tmp_path / "pulse.duckdb"), read_only=True) as con:
        views = {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() "
                                       "WHERE NOT internal").fetchall()}
    assert "goals" in views and "focus" not in views
    assert set(STEERING_TABLES) >= {"goals", "merge_suggestions", "focus",
                                    "manager_followups"}


def test_steering_files_are_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RuntimeConfig().goals_file is None and RuntimeConfig().experts_file is None
    roster = tmp_path / "experts.yml"
    roster.write_text("experts:\n  it-support: [u1, u2]\n  hr: []\n")
    toml = tmp_path / "pulse.toml"
    toml.write_text(f'[runtime]\ngoals_file = "goals.yml"\nexperts_file = "{roster}"\n'
                    'min_members_exported = 2\n')  # (a roster of 2 is then enough)
    metrics, runtime = config_module.load(toml)
    assert runtime.goals_file == Path("goals.yml") and runtime.experts_file == roster
    assert metrics.experts == {"it-support": frozenset({"u1", "u2"}), "hr": frozenset()}
    assert "u1" not in repr(metrics)  # the roster stays out of any printed config
    monkeypatch.setenv("PULSE_GOALS_FILE", str(tmp_path / "other.yml"))
    monkeypatch.setenv("PULSE_EXPERTS_FILE", "")  # empty: off
    metrics, runtime = config_module.load(toml)
    assert runtime.goals_file == tmp_path / "other.yml" and runtime.experts_file is None
    assert metrics.experts is None
    toml.write_text('[metrics]\nexperts = "u1"\n')  # the roster is no setting of its own
    with pytest.raises(ConfigError, match="unknown setting"):
        config_module.load(toml)


@pytest.mark.parametrize(("text", "message"), [
    ("experts: [secret-user]\n", "expected a mapping of community id to user ids"),
    ("experts:\n  it: secret-user\n", "community 'it': expected a list of user ids"),
    ("experts:\n  it: [ok-user, 17]\n", "community 'it': entry #2: expected a user id"),
    ("experts:\n  it: [ok-user, '']\n", "community 'it': entry #2: expected a user id"),
    ("expert:\n  it: [secret-user]\n", "expected a mapping with one key"),
    ("experts: {it: [secret-user\n", "not valid YAML"),
])
def test_a_bad_roster_is_one_line_that_shows_no_user_id(tmp_path: Path, text: str,
                                                         message: str) -> None:
    path = tmp_path / "experts.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as failure:
        read_experts(path)
    assert "\n" not in str(failure.value)
    assert "secret-user" not in str(failure.value) and "ok-user" not in str(failure.value)
    assert isinstance(failure.value, RosterError) or "YAML" in str(failure.value)


def test_a_missing_roster_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read experts file"):
        read_experts(tmp_path / "nope.yml")
