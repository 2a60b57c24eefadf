"""Metric parameters (SPEC sections 2-3) and where the pipeline runs.

Defaults come from the SPEC; a TOML file (`--config FILE` or `PULSE_CONFIG`) overrides
them, and `PULSE_<FIELD>` environment variables override the file. See docs/metrics.md.
"""

from __future__ import annotations

import gc
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T", "MetricConfig", "RuntimeConfig")
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
# The core's state is many long-lived containers (an array per (community, user), an
# object per thread) without reference cycles. With CPython's defaults (700, 10, 10) the
# cyclic GC walks them again and again while the state grows: 1.55 of a replay's 14.7
# CPU seconds on the bench set, 0.33 of 13.3 with these (docs/benchmarks.md). Young
# cycles are still collected, only in larger steps.
GC_THRESHOLDS = (100_000, 50, 10)


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is one line."""


def shown(value: Any, quote: bool = True, limit: int = 40) -> str:
    """A value as an error message shows it: its repr (its str unless `quote`) on one
    line, cut to about `limit` characters (a 5,000-digit number or a whole list pasted
    into a file still gives a readable line)."""
    try:
        text = repr(value) if quote else " ".join(str(value).split())
    except ValueError:  # an integer too long to convert to text
        return f"a {type(value).__name__} too long to show"
    if len(text) <= limit:
        return text
    return f"{text[:limit - 12]}...{text[-6:]} ({len(text):,} characters)"


class SettingError(ConfigError):
    """A setting's value out of its range or of the wrong type; `load` says where it
    was set (the file's table, or the environment variable)."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting, self.problem = setting, problem


class Range(NamedTuple):
    low: float
    high: float
    above: bool = False  # low itself is not allowed

    def __str__(self) -> str:
        def text(x: float) -> str:
            return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"

        if self.above:
            return f"above {text(self.low)} and at most {text(self.high)}"
        return f"from {text(self.low)} to {text(self.high)}"


WEIGHTED = ("retention", "continuity", "responsiveness", "participation", "reciprocity")
YEAR_DAYS = 3660  # ten years: the longest window, horizon or backfill of any use
# Every numeric setting's range (both ends allowed unless `above`); floats must be finite.
# What lies outside either breaks the pipeline (a NaN SLA crashed the snapshot timer, an
# infinite partition count the start) or asks for unbounded state or memory.
RANGES: dict[str, Range] = {
    "windows_days": Range(1, YEAR_DAYS),  # each window
    "sla_hours": Range(0, 8784, above=True),  # (a year), also each sla_hours_by_community
    "membership_horizon_days": Range(1, YEAR_DAYS),
    "tier_medium_share": Range(0, 1, above=True),
    "tier_high_share": Range(0, 1, above=True),
    "stagnation_quiet_days": Range(1, YEAR_DAYS),
    "stagnation_compare_days": Range(1, YEAR_DAYS),
    "stagnation_drop_ratio": Range(0, 10),
    **{f"weight_{c}": Range(0, 1e6) for c in WEIGHTED},
    "partitions": Range(1, 10_000),
    "metrics_port": Range(0, 65_535),
    "snapshot_interval_s": Range(0.1, 86_400),
    "min_members_exported": Range(0, 1e9),
    "fetch_max_wait_ms": Range(0, 60_000),
    "liveness_timeout_s": Range(1, 86_400),
    "session_timeout_s": Range(1, 3_600),
    "topic_replication_factor": Range(1, 32_767),
    "topic_min_insync_replicas": Range(1, 32_767),
    "steering_window_days": Range(1, YEAR_DAYS),
    "merge_min_overlap": Range(0, 1, above=True),
    "merge_top": Range(1, 1_000),
    "focus_min_members": Range(0, 1e9),
    "max_open_followups": Range(0, 1e9),
    "steering_interval_s": Range(1, 7 * 86_400),
    "sketch_size": Range(1, 1 << 20),
    "sketch_retention_days": Range(0, YEAR_DAYS),
    "sink_max_pending_mib": Range(1, 1 << 20),
    "closing_grace_hours": Range(0, 720),
    "closing_backfill_days": Range(0, YEAR_DAYS),
    "clock_offset_s": Range(-YEAR_DAYS * 86_400, YEAR_DAYS * 86_400),
}


def check_range(setting: str, value: Any, allowed: Range, what: str = "") -> None:
    """SettingError unless `value` is a number (not a bool) within `allowed`."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not (allowed.low < value if allowed.above else allowed.low <= value) \
            or not value <= allowed.high:  # (NaN fails every comparison)
        raise SettingError(setting, f"{what}expected a number {allowed}, not {shown(value)}")


def check_ranges(config: Any) -> None:
    for item in fields(config):
        allowed = RANGES.get(item.name)
        if allowed is None:
            continue
        value = getattr(config, item.name)
        for one in value if isinstance(value, tuple) else (value,):
            check_range(item.name, one, allowed)


@dataclass(frozen=True)
class MetricConfig:
    """Everything the domain core needs to turn events into snapshot rows."""

    windows_days: tuple[int, ...] = (7, 28)
    sla_hours: float = 24.0
    sla_hours_by_community: dict[str, float] = field(default_factory=dict)
    membership_horizon_days: int = 90
    tier_medium_share: float = 0.15
    tier_high_share: float = 0.30
    stagnation_quiet_days: int = 7
    stagnation_compare_days: int = 14
    stagnation_drop_ratio: float = 0.75
    weight_retention: float = 1.0
    weight_continuity: float = 1.0
    weight_responsiveness: float = 1.0
    weight_participation: float = 1.0
    weight_reciprocity: float = 1.0
    # Content experts per community (SPEC 5), read from `RuntimeConfig.experts_file` by
    # `load`; None: no roster, so the expert columns stay empty. Not a setting of its own,
    # and out of repr: the roster's user ids never leave the process.
    experts: Mapping[str, frozenset[str]] | None = field(
        default=None, repr=False, metadata={"setting": False})
    # A roster of fewer experts than this (RuntimeConfig.min_members_exported, set by
    # `load`) leaves its community's expert columns empty.
    experts_min_roster: int = field(default=1, metadata={"setting": False})

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.windows_days or len(set(self.windows_days)) < len(self.windows_days):
            raise SettingError("windows_days", "expected one or more windows, each once, not "
                                               f"{shown(list(self.windows_days))}")
        for community, hours in self.sla_hours_by_community.items():
            check_range("sla_hours_by_community", hours, RANGES["sla_hours"],
                        f"community {shown(community)}: ")
        if not self.tier_medium_share <= self.tier_high_share:
            raise ConfigError("need 0 < tier_medium_share <= tier_high_share <= 1")
        if self.membership_horizon_days < max(self.windows_days):
            raise ConfigError(f"membership_horizon_days ({self.membership_horizon_days}) must "
                              f"be at least the longest of windows_days ({max(self.windows_days)})")
        if not any(getattr(self, f"weight_{c}") for c in WEIGHTED):
            raise ConfigError(f"at least one of weight_{', weight_'.join(WEIGHTED)} must be "
                              "above 0")

    def sla_ms(self, community_id: str) -> int:
        hours = self.sla_hours_by_community.get(community_id, self.sla_hours)
        return int(hours * HOUR_MS)

    @property
    def retention_ms(self) -> int:
        """How far back from the newest snapshot time state must reach to stay exact."""
        longest = max(self.windows_days)
        return DAY_MS * max(
            2 * longest,
            self.membership_horizon_days,
            2 * self.stagnation_compare_days,
            self.stagnation_quiet_days,
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the pipeline runs: broker, topics, outputs, cadence."""

    broker: str = "kafka://127.0.0.1:9092"
    app_id: str = "community-pulse"
    data_dir: Path = Path("data")
    partitions: int = 4
    metrics_port: int = 9464
    snapshot_interval_s: float = 10.0
    min_members_exported: int = 5
    topic_prefix: str = ""
    # Longest a Kafka fetch waits at the broker for new data; 0 keeps Faust's 1500 ms,
    # which stalls consumption by up to that long after a pause (docs/benchmarks.md).
    fetch_max_wait_ms: int = 100
    # /healthz fails when the event loop has not turned for this long (a stuck worker).
    liveness_timeout_s: float = 30.0
    # Kafka consumer-group session timeout: a worker silent for this long loses its
    # partitions, and one cut off from Kafka for this long stops exporting and writing.
    session_timeout_s: float = 60.0
    # Security and privacy (docs/security.md). Secrets are never settings: they come from
    # the *_file named here or from PULSE_KAFKA_SASL_PASSWORD / PULSE_KAFKA_SSL_KEY_PASSWORD /
    # PULSE_PSEUDONYM_KEY / PULSE_SKETCH_KEY (streams/kafka_auth.py, streams/privacy.py).
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in the container images
    metrics_tls_certfile: str = ""
    metrics_tls_keyfile: str = ""
    metrics_basic_auth_user: str = ""  # password: metrics_basic_auth_password_file or env
    metrics_basic_auth_password_file: Path | None = None
    kafka_security_protocol: str = "PLAINTEXT"  # SSL, SASL_PLAINTEXT, SASL_SSL
    kafka_sasl_mechanism: str = "PLAIN"  # or SCRAM-SHA-256, SCRAM-SHA-512
    kafka_sasl_username: str = ""
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_cafile: str = ""  # empty: the system's CAs
    kafka_ssl_certfile: str = ""  # client certificate and key: mutual TLS
    kafka_ssl_keyfile: str = ""
    kafka_ssl_key_password_file: Path | None = None
    kafka_ssl_check_hostname: bool = True
    topic_replication_factor: int = 1  # 3 on a real cluster
    topic_min_insync_replicas: int = 1  # 2 on a real cluster
    pseudonymise_user_ids: bool = False
    pseudonym_key_file: Path | None = None
    # Leave communities under min_members_exported out of Parquet too (not only /metrics).
    parquet_omit_small_communities: bool = False
    # Steering files (SPEC 5, docs/steering.md); None: the feature is off.
    goals_file: Path | None = None
    experts_file: Path | None = None
    managers_file: Path | None = None
    # Merge suggestions and where to start (SPEC 5): their window and parameters, how
    # often the worker writes them, and the member sketches behind the network-wide view
    # (entries per sketch; the file with the secret that keys their hashes of user ids,
    # else PULSE_SKETCH_KEY; without a secret no sketches and no merge suggestions).
    steering_window_days: int = 28
    merge_min_overlap: float = 0.10
    merge_top: int = 3
    focus_min_members: int = 20
    max_open_followups: int = 5
    steering_interval_s: float = 900.0
    sketch_size: int = 1024
    sketch_key_file: Path | None = None
    # Days of member_sketches the live pipeline keeps (0: all). Only the newest are read;
    # older ones take ~16 KiB per large community and steering interval (docs/steering.md).
    sketch_retention_days: int = 7
    # Closing rows (SPEC 4, docs/metrics.md#closing-rows): how long after a UTC midnight
    # late events still rewrite its closing row, and how many days back a worker writes
    # the closing rows it missed (down, behind, or started on topics with history).
    closing_grace_hours: float = 24.0
    closing_backfill_days: int = 35
    # Memory for snapshot rows waiting while the Parquet sink fails (sinks.parquet.SinkQueue):
    # past it the oldest live rows go, counted (docs/reliability.md).
    sink_max_pending_mib: int = 256
    # For drills and tests only: the worker's clock runs this many seconds off the
    # system's (e.g. -172800: as if two days earlier), to rehearse downtime.
    clock_offset_s: float = 0.0

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ConfigError("topic_min_insync_replicas must not exceed "
                              "topic_replication_factor (no write would be acknowledged)")

    @property
    def closing_grace_ms(self) -> int:
        return int(self.closing_grace_hours * HOUR_MS)


def tune_gc() -> None:
    """Set GC_THRESHOLDS for this process (the worker and replay commands do)."""
    gc.set_threshold(*GC_THRESHOLDS)


_TOML_TYPES = {int: "a whole number", float: "a number", bool: "true or false", list: "a list",
               dict: "a table"}
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
             "false": False, "0": False, "no": False, "off": False}


def _coerce(current: Any, raw: Any, name: str) -> Any:
    """A setting's value, of its default's type, from TOML (typed) or PULSE_* (text)."""
    if name.endswith("_file") or isinstance(current, Path):
        if not isinstance(raw, str | Path) or (raw == "" and not name.endswith("_file")):
            raise SettingError(name, "expected a file or folder name")
        return Path(raw) if raw != "" else None  # "": no file
    if isinstance(current, tuple):
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple):
            raise SettingError(name, f"expected a list of whole numbers, not {shown(raw)}")
        return tuple(_whole(item, name) for item in items)
    if isinstance(current, dict):
        if isinstance(raw, str):
            pairs = [item.split("=", 1) for item in raw.split(",") if item]
            if any(len(pair) != 2 for pair in pairs):
                raise SettingError(name, "expected community=hours,... pairs")
            raw = dict(pairs)
        if not isinstance(raw, dict):
            raise SettingError(name, f"expected a table of community = hours, not {shown(raw)}")
        return {str(k): _number(v, name, f"community {shown(str(k))}: ") for k, v in raw.items()}
    if isinstance(current, bool):  # bool("false") would be True
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _BOOLEANS:
            return _BOOLEANS[raw.strip().lower()]
        raise SettingError(name, f"expected true or false, not {shown(raw)}")
    if isinstance(current, int):
        return _whole(raw, name)
    if isinstance(current, float):
        return _number(raw, name)
    if not isinstance(raw, str):  # (its value unshown: sketch_key is a secret)
        kind = _TOML_TYPES.get(type(raw), f"a {type(raw).__name__}")  # (or a TOML date)
        raise SettingError(name, f"expected text, not {kind}")
    return raw


# Former settings that are secrets: read from a file or the environment (read_secret).
_SECRETS_NOW = {"sketch_key": "put the secret in PULSE_SKETCH_KEY or in the file that "
                              "sketch_key_file names (docs/security.md)"}


def _whole(raw: Any, name: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:  # (also more than 4,300 digits)
            pass
    raise SettingError(name, f"expected a whole number, not {shown(raw)}")


def _number(raw: Any, name: str, what: str = "") -> float:
    if isinstance(raw, int | float | str) and not isinstance(raw, bool):
        try:
            return float(raw)  # (NaN and infinity too: the range check refuses them)
        except (ValueError, OverflowError):
            pass
    raise SettingError(name, f"{what}expected a number, not {shown(raw)}")


def _apply(obj: T, values: Any, origin: str, where: Callable[[str], str]) -> T:
    """`obj` with the settings of one origin (the file's table, the environment); an
    error names the origin and the setting (`where` of its name)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: expected a table, not {shown(values)}")
    known = {f.name for f in fields(obj) if f.metadata.get("setting", True)}
    unknown = set(values) - known
    for name in sorted(unknown & set(_SECRETS_NOW)):
        raise ConfigError(f"{where(name)}: no longer a setting: {_SECRETS_NOW[name]}")
    if unknown:
        raise ConfigError(f"unknown setting(s) in {origin}: {', '.join(sorted(unknown))}")
    try:
        return replace(obj, **{k: _coerce(getattr(obj, k), v, k) for k, v in values.items()})
    except SettingError as exc:
        raise ConfigError(f"{where(exc.setting)}: {exc.problem}") from None
    except ConfigError as exc:  # between settings (e.g. the tier shares)
        raise ConfigError(f"{origin}: {exc}") from None


def load(path: str | Path | None = None) -> tuple[MetricConfig, RuntimeConfig]:
    """Defaults <- TOML file ([metrics] and [runtime] tables) <- PULSE_* environment."""
    metrics, runtime = MetricConfig(), RuntimeConfig()
    path = path or os.environ.get("PULSE_CONFIG")
    if path:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config {path} is not UTF-8 text") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
        unknown = sorted(set(doc) - {"metrics", "runtime"})
        if unknown:
            raise ConfigError(f"config {path}: unknown table [{shown(unknown[0], quote=False)}]"
                              " (the tables are [metrics] and [runtime])")
        metrics = _apply(metrics, doc.get("metrics", {}), f"config {path}: [metrics]",
                         lambda name: f"config {path}: [metrics] {name}")
        runtime = _apply(runtime, doc.get("runtime", {}), f"config {path}: [runtime]",
                         lambda name: f"config {path}: [runtime] {name}")
    metrics, runtime = _with_env(metrics), _with_env(runtime)
    if runtime.experts_file is not None:
        from streams.privacy import Pseudonymiser  # (these build on this module)
        from streams.steering.experts import with_rosters
        from streams.steering.files import read_experts

        metrics = with_rosters(metrics, read_experts(
            runtime.experts_file, Pseudonymiser.from_runtime(runtime)),
            runtime.min_members_exported, str(runtime.experts_file))
    return metrics, runtime


def _with_env(obj: T) -> T:
    """Apply PULSE_<FIELD> environment overrides to a config dataclass."""
    env = {
        f.name: os.environ[f"PULSE_{f.name.upper()}"]
        for f in fields(obj)
        if f"PULSE_{f.name.upper()}" in os.environ and f.metadata.get("setting", True)
    }
    if not env:
        return obj
    return _apply(obj, env, "environment", lambda name: f"PULSE_{name.upper()} ({name})")


def read_secret(file_setting: str, path: Path | None, env_name: str) -> str:
    """A secret from the file a setting names, else from an environment variable; "" when
    neither is set. Errors name the setting and the file, never the content."""
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {file_setting} {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file_setting} {path} is not UTF-8 text") from exc
    return os.environ.get(env_name, "").strip()
