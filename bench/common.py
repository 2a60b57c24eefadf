"""Helpers shared by the benchmark's child processes (stdlib only, any venv)."""

from __future__ import annotations

import os
import time


class Status:
    """A consumer's progress, written atomically to a small file the parent polls.

    One line: count, count at the first report, then CLOCK_MONOTONIC (system-wide, so
    comparable across processes) and this process's CPU time (all threads) at the
    first report and now. Rates are taken between the first report and the last.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.last = 0.0
        self.first: tuple[int, float, float] | None = None

    def write(self, count: int, force: bool = False) -> None:
        if not self.path or not count:
            return
        now = time.monotonic()
        if self.first is None:
            self.first = (count, now, time.process_time())
        elif not force and now - self.last < 0.1:
            return
        self.last = now
        first_count, first_t, first_cpu = self.first
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{count} {first_count} {first_t} {first_cpu} {now} "
                     f"{time.process_time()}\n")
        os.replace(tmp, self.path)


def read_status(path: str) -> tuple[int, int, float, float, float, float] | None:
    try:
        with open(path) as fh:
            parts = fh.read().split()
        return (int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3]),
                float(parts[4]), float(parts[5]))
    except (OSError, ValueError, IndexError):
        return None
