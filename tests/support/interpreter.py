"""Run Python code in a fresh interpreter, for tests of process-wide state
(logging configuration, garbage collector settings)."""

from __future__ import annotations

import subprocess
import sys


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with this interpreter; raise if it exits with an error."""
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
