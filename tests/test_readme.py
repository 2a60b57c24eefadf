"""A new user's first commands, as the README and docs/querying.md give them (issue 13,
points 2 and 6): the command is found where the README says, every documented
subcommand exists, and the documented query command works on a replayed history."""

from __future__ import annotations

import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from devkit import generate as gen
from streams.config import MetricConfig
from streams.replay import parse_time, replay

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
QUERYING = (REPO / "docs" / "querying.md").read_text(encoding="utf-8")
COMMAND = Path(sys.executable).parent / "community-pulse"  # what `.venv/bin/community-pulse` is


def section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_readme_says_where_the_command_is() -> None:
    commands = section(README, "Commands")
    assert ".venv/bin/community-pulse" in commands and "source .venv/bin/activate" in commands
    assert COMMAND.is_file()  # installed there by `make setup` (pip install -e .)


def test_every_subcommand_in_the_readme_exists() -> None:
    block = section(README, "Commands").split("```sh", 1)[1].split("```", 1)[0]
    names = re.findall(r"^community-pulse (\S+)", block, re.M)
    assert len(names) >= 8
    for name in names:
        run = subprocess.run([str(COMMAND), name, "--help"], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, (name, run.stderr)


def test_readme_says_what_setup_installs_and_how_to_remove_it() -> None:
    setup = section(README, "What setup installs, and how to remove it")
    for where in (".venv/", "~/.cache/community-pulse", "~/.m2/repository", "prometheus",
                  "data/demo"):
        assert where in setup, where
    for how in ("make clean", "rm -rf ~/.cache/community-pulse", "apt-get purge prometheus"):
        assert how in setup, how


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("history")
    rng = random.Random(5)
    end = parse_time("2026-11-18T12:00:00Z")
    events = [e for c in gen.plan(5, 200, rng) for e in gen.history(c, end, 10, rng)]
    (tmp / "events.jsonl").write_bytes(b"\n".join(msgspec.json.encode(e) for e in events))
    replay([tmp / "events.jsonl"], tmp / "demo", MetricConfig(), every_ms=86_400_000)
    return tmp / "demo"


def test_querying_doc_leads_with_a_command_that_is_installed_and_works(data_dir: Path) -> None:
    opening = section(QUERYING, "Opening it")
    first_block = opening.split("```sh", 1)[1].split("```", 1)[0]
    lines = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert lines and all(line.startswith(".venv/bin/community-pulse sql") for line in lines)
    query_file = data_dir.parent / "my-query.sql"
    query_file.write_text("SELECT community_id, tier FROM latest_snapshots;\n")
    for line in lines:
        words = shlex.split(line.replace("data/demo", str(data_dir)))
        stdin = None
        if "<" in words:
            stdin = query_file.read_text()
            words = words[: words.index("<")]
        run = subprocess.run([str(COMMAND), *words[1:]], input=stdin, capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, (line, run.stderr)
        assert re.search(r"^[1-9][\d,]* row\(s\)$", run.stdout, re.M), run.stdout


def test_sql_errors_are_one_line(data_dir: Path) -> None:
    for args in (["SELECT nope FROM snapshots"], ["--data-dir", "/nonexistent", "SELECT 1"]):
        if args[0] != "--data-dir":
            args = ["--data-dir", str(data_dir), *args]
        run = subprocess.run([str(COMMAND), "sql", *args], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 2 and len(run.stderr.splitlines()) == 1, run.stderr
        assert run.stderr.startswith("community-pulse: error:")
