"""Create and drop uniquely named PostgreSQL databases for a test session."""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import make_url

from bulkhead.devstack.nats import run_blocking

DEFAULT_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S = 5.0


def _asyncpg_dsn(url: str) -> str:
    """Turn a SQLAlchemy URL (``postgresql+asyncpg://...``) into an asyncpg DSN."""
    return (
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


def database_url(admin_url: str, name: str) -> str:
    """Return ``admin_url`` pointed at database ``name``, driver kept."""
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def _execute(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(
        _asyncpg_dsn(admin_url), timeout=CONNECT_TIMEOUT_S
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def check_server(admin_url: str) -> None:
    """Connect once and run ``SELECT 1``; raises OSError or asyncpg errors."""
    run_blocking(lambda: _execute(admin_url, "SELECT 1"))


def create_database(admin_url: str, name: str) -> str:
    """Create database ``name`` (a plain identifier) and return its URL."""
    _check_identifier(name)
    run_blocking(lambda: _execute(admin_url, f'CREATE DATABASE "{name}"'))
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, closing connections that processes left open."""
    _check_identifier(name)
    statement = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    run_blocking(lambda: _execute(admin_url, statement))


def _check_identifier(name: str) -> None:
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise ValueError(f"invalid database name {name!r}: use letters, digits, _")
