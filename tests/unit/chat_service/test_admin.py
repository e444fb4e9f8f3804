"""The admin command names its database and explains, in one line and
without any secret, a database it cannot use."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def _admin(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_service.admin", *args],
        env={**os.environ, "BULKHEAD_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1
    assert result.stdout == ""  # no key was printed
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr  # the database, then the error
    assert lines[1].startswith("error: ")
    return lines[1]


def test_admin_missing_sqlite_file_not_created(
    tmp_path: Path,
) -> None:
    path = tmp_path / "missing" / "bulkhead.db"
    url = f"sqlite+aiosqlite:///{path}"

    result = _admin(url, "create-api-key", "--user", "alice")

    error = _assert_one_error_line(result)
    assert result.stderr.splitlines()[0] == f"database: {url}"
    assert "database file not found" in error
    assert not path.parent.exists()


def test_admin_explains_missing_tables(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()

    result = _admin(f"sqlite+aiosqlite:///{path}", "create-api-key", "--user", "x")

    error = _assert_one_error_line(result)
    assert "no such table: api_keys" in error
    assert "make migrate" in error


@pytest.mark.postgres
def test_admin_empty_postgres_hides_key(
    create_postgres_database: Callable[[], str],
) -> None:
    url = create_postgres_database()

    result = _admin(url, "create-api-key", "--user", "alice")

    error = _assert_one_error_line(result)
    assert 'relation "api_keys" does not exist' in error
    assert "bk_" not in result.stderr  # the statement's parameters stay out


def test_admin_hides_passwords() -> None:
    url = (
        "postgresql+asyncpg://bulkhead:hunter2-secret@127.0.0.1:1/bulkhead"
        "?password=query-secret"
    )

    result = _admin(url, "list-api-keys")

    _assert_one_error_line(result)
    assert "hunter2-secret" not in result.stderr
    assert "query-secret" not in result.stderr
    assert result.stderr.startswith(
        "database: postgresql+asyncpg://bulkhead:***@127.0.0.1:1/bulkhead?password="
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "not a database URL"),
        ("postgresql://postgres@127.0.0.1:1/postgres", "failed to load the driver"),
    ],
)
def test_admin_unusable_url(url: str, expected: str) -> None:
    result = _admin(url, "list-api-keys")

    assert result.returncode == 1
    assert result.stdout == ""
    assert expected in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr
