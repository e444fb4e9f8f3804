"""The admin command names its database and explains one it cannot use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _admin(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_service.admin", *args],
        env={**os.environ, "BULKHEAD_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_admin_names_the_database_and_explains_missing_tables(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"

    result = _admin(url, "create-api-key", "--user", "alice")

    assert result.returncode == 1
    assert result.stdout == ""  # no key was printed
    lines = result.stderr.splitlines()
    assert lines[0] == f"database: {url}"
    assert "no such table: api_keys" in lines[1]
    assert "make migrate" in lines[1]


def test_admin_hides_the_database_password() -> None:
    url = "postgresql+asyncpg://bulkhead:hunter2-secret@127.0.0.1:1/bulkhead"

    result = _admin(url, "list-api-keys")

    assert result.returncode == 1
    assert "hunter2-secret" not in result.stderr
    assert result.stderr.splitlines()[0] == (
        "database: postgresql+asyncpg://bulkhead:***@127.0.0.1:1/bulkhead"
    )
