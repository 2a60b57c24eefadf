"""SMART goals (SPEC 5; the article's section 2): a metric of one community and window,
from a baseline to a target between a start and a deadline, then held until the end of
the sustainability period.

    expected(t) = baseline + (target - baseline) * clamp((t - start) / (deadline - start), 0, 1)
    progress(t) = (value(t) - baseline) / (target - baseline)

A goal is *up* when target > baseline, *down* when target < baseline; "at or beyond x"
is `value >= x` up and `value <= x` down (within a billionth of |target - baseline|, so
that floating-point rounding of `expected` does not decide). Status at t:

    t < start                        not_started
    start <= t < deadline            on_track (value at or beyond expected(t)) | behind
    deadline <= t <= sustain_until   met (value at or beyond target) | missed
    t > sustain_until                ended

and `no_data` when the community has no snapshot row (for that window) at t, whatever
the time; also, from start through sustain_until, when the metric is undefined there
(e.g. `retention` without a previous window). Pure: goals come in parsed
(`parse_goals`, from a YAML document `streams.steering.files` read), values come from
snapshot rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from typing import Any, Final

from streams.config import DAY_MS, ConfigError, shown
from streams.core import SnapshotRow

STATUSES: Final = ("not_started", "on_track", "behind", "met", "missed", "ended", "no_data")
# Snapshot columns a goal may name: every numeric one but the row's key and time.
METRICS: Final = tuple(
    f.name for f in fields(SnapshotRow)
    if f.type in ("int", "float", "int | None", "float | None")
    and f.name not in ("as_of_ms", "window_days", "last_activity_ms"))
_FIELDS: Final = ("id", "community", "metric", "window_days", "baseline", "target", "start",
                  "deadline", "sustain_until", "description")
_REQUIRED: Final = ("id", "community", "metric", "baseline", "target", "start", "deadline",
                    "sustain_until")
DEFAULT_WINDOW_DAYS: Final = 28
TOLERANCE: Final = 1e-9  # of |target - baseline|: how close to a mark counts as at it
MAX_ID_CHARS: Final = 256  # a goal id and a community id, as event ids (schemas.events)


class GoalsError(ConfigError):
    """An invalid goals file; the message is one line naming the goal and the field."""


@dataclass(frozen=True, slots=True)
class Goal:
    id: str
    community: str
    metric: str
    window_days: int
    baseline: float
    target: float
    start_ms: int
    deadline_ms: int
    sustain_until_ms: int
    description: str = ""

    @property
    def direction(self) -> str:
        return "up" if self.target > self.baseline else "down"

    def expected(self, t: int) -> float:
        elapsed = (t - self.start_ms) / (self.deadline_ms - self.start_ms)
        return self.baseline + (self.target - self.baseline) * min(1.0, max(0.0, elapsed))

    def progress(self, value: float) -> float:
        return (value - self.baseline) / (self.target - self.baseline)

    def at_or_beyond(self, value: float, mark: float) -> bool:
        # Within a billionth of the goal's span counts as at the mark: 0.1 + 0.1 * 0.5 is
        # 0.15000000000000002 in floating point, and 0.15 must be on track there.
        slack = TOLERANCE * abs(self.target - self.baseline)
        return value >= mark - slack if self.target > self.baseline else value <= mark + slack

    def status(self, t: int, value: float | None, has_row: bool = True) -> str:
        if not has_row:
            return "no_data"
        if t < self.start_ms:
            return "not_started"
        if t > self.sustain_until_ms:
            return "ended"
        if value is None:
            return "no_data"
        if t < self.deadline_ms:
            return "on_track" if self.at_or_beyond(value, self.expected(t)) else "behind"
        return "met" if self.at_or_beyond(value, self.target) else "missed"


@dataclass(frozen=True, slots=True)
class GoalRow:
    """One row of the `goals` table: a goal's state at `as_of` (SPEC 5)."""

    goal_id: str
    community_id: str
    metric: str
    window_days: int
    as_of_ms: int
    value: float | None
    expected: float
    progress: float | None
    status: str


def evaluate(goals: Sequence[Goal], rows: Iterable[Mapping[str, Any]], as_of_ms: int
             ) -> list[GoalRow]:
    """Each goal at `as_of_ms`, from that moment's snapshot rows as mappings of column to
    value (`SnapshotRow` fields, or a snapshot table's rows)."""
    by_key = {(r["community_id"], r["window_days"]): r for r in rows}
    out = []
    for goal in goals:
        row = by_key.get((goal.community, goal.window_days))
        value = row.get(goal.metric) if row is not None else None
        value = None if value is None else float(value)
        out.append(GoalRow(
            goal_id=goal.id, community_id=goal.community, metric=goal.metric,
            window_days=goal.window_days, as_of_ms=as_of_ms, value=value,
            expected=goal.expected(as_of_ms),
            progress=goal.progress(value) if value is not None else None,
            status=goal.status(as_of_ms, value, row is not None)))
    return out


def communities(goals: Iterable[Goal]) -> set[str]:
    """The communities the goals name (whose snapshot rows `evaluate` needs)."""
    return {goal.community for goal in goals}


# ---- parsing ------------------------------------------------------------------------


def parse_goals(document: Any, source: str, windows_days: Sequence[int] | None = None
                ) -> list[Goal]:
    """Goals from a loaded YAML document `{goals: [...]}`; GoalsError names the goal and
    the field of the first problem. `windows_days`: the configured windows, if known."""
    if document is None:
        return []
    if not isinstance(document, Mapping) or set(document) - {"goals"}:
        raise GoalsError(f"{source}: expected a mapping with one key, goals: [...]")
    items = document.get("goals") or []
    if not isinstance(items, list):
        raise GoalsError(f"{source}: goals: expected a list of goals")
    goals: list[Goal] = []
    seen: set[str] = set()
    for index, item in enumerate(items, start=1):
        goal = _parse_goal(item, f"{source}: goal #{index}", windows_days)
        if goal.id in seen:
            raise GoalsError(f"{source}: goal {goal.id!r}: id: duplicate id")
        seen.add(goal.id)
        goals.append(goal)
    return goals


def _parse_goal(item: Any, where: str, windows_days: Sequence[int] | None) -> Goal:
    if not isinstance(item, Mapping):
        raise GoalsError(f"{where}: expected a mapping of {', '.join(_FIELDS)}")
    raw_id = item.get("id")
    if _is_id(raw_id):
        where = f"{where.rsplit(': goal #', 1)[0]}: goal {str(raw_id)!r}"

    def fail(field: str, problem: str) -> GoalsError:
        return GoalsError(f"{where}: {field}: {problem}")

    for field in _REQUIRED:
        if item.get(field) is None:
            raise fail(field, "missing")
    unknown = sorted(shown(k, quote=False) for k in item if k not in _FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field (fields: {', '.join(_FIELDS)})")
    if not _is_id(raw_id):
        raise fail("id", f"expected a text of 1-{MAX_ID_CHARS} characters, not {shown(raw_id)}")
    community = item["community"]
    if not isinstance(community, str) or not 0 < len(community) <= MAX_ID_CHARS:
        raise fail("community", f"expected a community id (text of 1-{MAX_ID_CHARS} "
                                f"characters), not {shown(community)}")
    metric = item["metric"]
    if not isinstance(metric, str) or metric not in METRICS:
        raise fail("metric", f"unknown metric {shown(metric)} (numeric snapshot columns: "
                             f"{', '.join(METRICS)})")
    window_days = item.get("window_days", DEFAULT_WINDOW_DAYS)
    if not isinstance(window_days, int) or isinstance(window_days, bool) or window_days <= 0:
        raise fail("window_days", f"expected a positive whole number of days, not "
                                  f"{shown(window_days)}")
    if windows_days is not None and window_days not in windows_days:
        raise fail("window_days", f"{window_days} is not a configured window "
                                  f"({', '.join(map(str, windows_days))})")
    baseline, target = (_finite(item[f], fail, f) for f in ("baseline", "target"))
    if target == baseline:
        raise fail("target", f"equals the baseline ({baseline:g}): nothing to reach")
    start, deadline, sustain_until = (_time(item[f], fail, f)
                                      for f in ("start", "deadline", "sustain_until"))
    if deadline <= start:
        raise fail("deadline", "must be after start")
    if sustain_until < deadline:
        raise fail("sustain_until", "must not be before the deadline")
    description = item.get("description") or ""
    if not isinstance(description, str):
        raise fail("description", f"expected text, not {shown(description)}")
    return Goal(str(raw_id), community, metric, window_days, baseline, target, start,
                deadline, sustain_until, description)


def _is_id(value: Any) -> bool:
    """A goal id: text, or a whole number (YAML reads `id: 7` as one), of 1-MAX_ID_CHARS."""
    if isinstance(value, bool) or not isinstance(value, str | int) or (
            isinstance(value, int) and value.bit_length() > 1024):  # (str() would refuse)
        return False
    text = str(value)
    return bool(text.strip()) and len(text) <= MAX_ID_CHARS


def _finite(value: Any, fail: Any, field: str) -> float:
    number = float(value) if isinstance(value, float) or (
        isinstance(value, int) and not isinstance(value, bool)
        and value.bit_length() <= 1023) else math.nan  # (float() of a larger int overflows)
    if not math.isfinite(number):
        raise fail(field, f"expected a finite number, not {shown(value)}")
    return number


def _time(value: Any, fail: Any, field: str) -> int:
    """RFC 3339 time (with an offset), or a date: 00:00 UTC of that day; as epoch ms."""
    if isinstance(value, str):
        try:
            value = (datetime.fromisoformat(value) if "T" in value.upper() or " " in value
                     else date.fromisoformat(value))
        except ValueError:
            raise fail(field, f"bad time {shown(value)}: use RFC 3339 "
                              "(2027-03-01T00:00:00Z) or a date (2027-03-01)") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise fail(field, f"time {value.isoformat()} needs an offset, e.g. Z")
        return int(value.timestamp() * 1000)
    if isinstance(value, date):
        return (value - date(1970, 1, 1)).days * DAY_MS
    raise fail(field, f"expected a time or a date, not {shown(value)}")


def to_utc(ms: int) -> str:
    """RFC 3339 text of an epoch-ms time, for messages and docs."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
