"""Fixtures of the chat_service unit tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chat_service.migrate import upgrade
from tests.conftest import DATABASE_KINDS


@pytest.fixture(params=DATABASE_KINDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a new, migrated database: SQLite, then PostgreSQL."""
    if request.param == "postgres":
        url = str(request.getfixturevalue("create_postgres_database")())
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'chat_service.db'}"
    await asyncio.to_thread(upgrade, url)
    return url
