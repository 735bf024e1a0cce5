"""The pytest processes scripts/test.sh runs, one line of test files each, longest first.

A process spends seconds importing torch, Lightning and transformers before its first test, so short
files share one; a long file runs alone. Taking the longest job first whenever a lane frees up ends the
lanes close together. The seconds come from tests/durations.txt (a file missing there counts as
DEFAULT seconds); refresh it from a run's log with

    bash scripts/test.sh --durations=0 > test.log; python scripts/test_jobs.py --record test.log
"""
from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "tests" / "durations.txt"
DEFAULT = 30.0  # seconds for a test file not in the table yet
ALONE = 25.0    # a file this long or longer gets a process of its own
SHARED = 60.0   # short files share a process up to about this many seconds


def durations() -> dict[str, float]:
    if not TABLE.exists():
        return {}
    rows = (line.split() for line in TABLE.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {name: float(seconds) for seconds, name in rows}


def jobs(files: list[str], seconds: dict[str, float]) -> list[list[str]]:
    cost = {f: seconds.get(f, DEFAULT) for f in files}
    alone = [[f] for f in files if cost[f] >= ALONE]
    shared: list[list[str]] = []
    for f in sorted((f for f in files if cost[f] < ALONE), key=lambda f: -cost[f]):  # first fit, longest first
        room = next((job for job in shared if sum(map(cost.get, job)) + cost[f] <= SHARED), None)
        room.append(f) if room is not None else shared.append([f])
    return sorted(alone + shared, key=lambda job: -sum(map(cost.get, job)))


def record(logs: list[str]) -> None:
    """Sum pytest's ``--durations=0`` lines per test file into the table."""
    total: dict[str, float] = defaultdict(float)
    for log in logs:
        for m in re.finditer(r"^([\d.]+)s (?:setup|call|teardown)\s+(tests/test_\w+\.py)::", Path(log).read_text(), re.M):
            total[m.group(2)] += float(m.group(1))
    lines = [f"{s:7.1f} {f}" for f, s in sorted(total.items(), key=lambda kv: -kv[1])]
    TABLE.write_text("# seconds per test file, summed from pytest --durations=0 (scripts/test_jobs.py --record)\n"
                     + "\n".join(lines) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--record"]:
        record(sys.argv[2:])
    else:
        found = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py"))
        print("\n".join(" ".join(job) for job in jobs(found, durations())))
