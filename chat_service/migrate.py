"""Apply database migrations: ``python -m chat_service.migrate``.

Uses ``BULKHEAD_DATABASE_URL``. Safe to run repeatedly and from several
processes at once on PostgreSQL (Alembic takes its version row lock).
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from bulkhead.log import configure_logging, get_logger
from chat_service.config import DatabaseToolSettings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
logger = get_logger(__name__)


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str) -> None:
    """Upgrade the database to the newest revision."""
    command.upgrade(alembic_config(database_url), "head")


def main(argv: list[str] | None = None) -> int:
    settings = DatabaseToolSettings()
    configure_logging("chat_service.migrate", settings.log_level, settings.log_format)
    try:
        upgrade(settings.database_url)
    except Exception:
        logger.exception("migration failed")
        return 1
    logger.info("database is at the newest revision")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
