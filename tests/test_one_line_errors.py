"""Every way a first run can go wrong ends in one line on stderr and a non-zero exit
(issue 13, point 4), run as a user would: the `community-pulse` command in a subprocess."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devkit.devkafka import LocalKafka, free_port

GOOD = ('{"event_id":"e1","type":"post","community_id":"c","user_id":"u",'
        '"ts":"2026-11-18T10:00:00Z","post_id":"p1"}')


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "GRAFANA_URL": "", "GRAFANA_TOKEN": ""})


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a run that failed with `code`."""
    lines = result.stderr.splitlines()
    assert result.returncode == code and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("community-pulse") and "error:" in lines[0], lines[0]
    return lines[0]


def test_worker_with_an_unreachable_broker_says_so_in_one_line() -> None:
    port = free_port()  # nothing listens there
    line = one_line(cli("worker", "--broker", f"127.0.0.1:{port}", "--metrics-port", "0"), 2)
    assert f"cannot reach Kafka at kafka://127.0.0.1:{port}" in line and "--broker" in line


@pytest.mark.parametrize("value", ["99999", "-1", "http"])
def test_worker_metrics_port_out_of_range_is_a_usage_error(value: str) -> None:
    line = one_line(cli("worker", f"--metrics-port={value}"), 2)
    assert "--metrics-port" in line and "internal error" not in line


def test_worker_metrics_port_in_use_is_one_line(kafka: LocalKafka, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(cli("worker", "--broker", kafka.bootstrap, "--data-dir",
                            str(tmp_path), "--metrics-port", str(port)), 2)
    assert f"cannot serve /metrics on port {port}" in line


def test_replay_of_a_directory_says_it_is_a_directory(tmp_path: Path) -> None:
    line = one_line(cli("replay", str(tmp_path), "--data-dir", str(tmp_path / "out")), 2)
    assert "is a directory" in line and "no such file" not in line


def test_replay_with_nothing_valid_fails_names_the_lines_and_writes_nothing(
        tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{not json\n\n{"event_id": "x", "type": "post"}\n')
    line = one_line(cli("replay", str(events), "--data-dir", str(tmp_path / "out")), 2)
    assert "no valid events" in line and "nothing written" in line
    # line 2 is blank: the second bad message is on line 3
    assert "events.jsonl line 1: invalid_json" in line
    assert "events.jsonl line 3: missing_field" in line
    assert not (tmp_path / "out").exists()


def test_replay_reports_the_first_invalid_lines_with_their_reasons(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    bad = [f'{{"event_id": "b{i}", "type": "post"}}' for i in range(7)]
    events.write_text("\n".join([GOOD, "{oops", *bad, GOOD.replace("e1", "e2")]) + "\n")
    result = cli("replay", str(events), "--data-dir", str(tmp_path / "out"), "--as-of",
                 "2026-11-18T12:00:00Z")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "8 invalid" in out and "events.jsonl line 2: invalid_json" in out
    assert "events.jsonl line 3: missing_field" in out and "line 6:" in out
    assert "line 7:" not in out  # the first five only


def test_grafana_errors_carry_the_command_prefix() -> None:
    line = one_line(cli("grafana", "push"), 2)
    assert line.startswith("community-pulse: error: no Grafana URL")
    one_line(cli("grafana", "push", "--bogus"), 2)
    one_line(cli("grafana", "pull"), 2)


def test_backfill_without_snapshots_is_one_line(tmp_path: Path) -> None:
    line = one_line(cli("backfill", "--data-dir", str(tmp_path / "none"), "--out",
                        str(tmp_path / "history.om")), 2)
    assert "no snapshots in" in line and "internal error" not in line


def test_demo_without_java_says_so_in_one_line_and_keeps_the_details(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--data-dir", "d", "--duration", "5"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL,
        env={"PATH": str(Path(sys.executable).parent)})  # no java on it, no JAVA_HOME
    line = one_line(result, 2)
    assert "the Kafka broker did not start: Java (java) not found" in line
    assert "Java 17" in (tmp_path / "d" / "run" / "broker-error.log").read_text()
