"""Run one measurement in a fresh interpreter, so that its peak memory is its own; read a process's memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

__all__ = ["run_fresh", "status_mb"]


def run_fresh(command: list[str], label: str) -> dict:
    """Run ``command`` (a bench script's one-measurement mode) and return the JSON object it prints last.

    Exits the bench with the child's last error line if it fails.
    """
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        sys.exit(f"{label} failed: {child.stderr.strip().splitlines()[-1]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def status_mb(field: str = "VmRSS", pid: int | str = "self") -> float:
    """A memory figure of a process from ``/proc/PID/status``, in MB: ``VmRSS`` (resident now) or ``VmHWM``
    (its peak since the start or the last ``clear_refs`` reset).

    Read from /proc rather than ``getrusage``: its peak survives ``exec``, so a process started from a large
    one would report its parent's peak, and it cannot read another process.
    """
    line = next(row for row in Path(f"/proc/{pid}/status").read_text().splitlines() if row.startswith(field + ":"))
    return int(line.split()[1]) / 1024
