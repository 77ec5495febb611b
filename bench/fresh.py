"""Run one measurement in a fresh interpreter, so that its peak memory is its own."""

from __future__ import annotations

import json
import subprocess
import sys

__all__ = ["run_fresh"]


def run_fresh(command: list[str], label: str) -> dict:
    """Run ``command`` (a bench script's one-measurement mode) and return the JSON object it prints last.

    Exits the bench with the child's last error line if it fails.
    """
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        sys.exit(f"{label} failed: {child.stderr.strip().splitlines()[-1]}")
    return json.loads(child.stdout.strip().splitlines()[-1])
