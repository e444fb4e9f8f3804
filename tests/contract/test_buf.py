"""The protobuf contracts pass buf's STANDARD lint rules (buf.yaml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _buf_binary() -> str:
    # buf-bin installs the binary next to the interpreter of the environment.
    beside_python = Path(sys.executable).parent / "buf"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("buf")
    assert on_path, "buf not found: install the dev extra (pip install -e '.[dev]')"
    return on_path


def test_buf_lint_passes() -> None:
    result = subprocess.run(
        [_buf_binary(), "lint"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
