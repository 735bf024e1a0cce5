"""A Hydra callback for tests: after every job of a sweep, append the sweep process's health to a file.

Used by ``tests/test_reliability.py`` (long sweeps), passed on the command line as
``+hydra.callbacks.probe._target_=probe_callback.Probe`` with this folder on ``PYTHONPATH`` and the
output file named by ``TL_PROBE_FILE``. Each line is a JSON object: job number, open file
descriptors, resident memory (kB), threads, and this process's live child processes (pid, command).
Linux only (reads ``/proc``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from hydra.experimental.callback import Callback


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def children(pid: int) -> list[dict]:
    """Live (non-zombie) processes whose parent is ``pid``, with their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) != pid or state == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        found.append({"pid": int(entry.name), "cmd": cmd})
    return found


class Probe(Callback):
    def on_job_end(self, config, job_return, **kwargs) -> None:
        out = os.environ.get("TL_PROBE_FILE")
        if not out:
            return
        record = {
            "job": int(config.hydra.job.get("num", -1)),
            "fds": len(os.listdir("/proc/self/fd")),
            "rss_kb": _status("VmRSS"),
            "threads": _status("Threads"),
            "children": children(os.getpid()),
        }
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
