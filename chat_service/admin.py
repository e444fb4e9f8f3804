"""Administration commands: python -m chat_service.admin COMMAND

create-api-key --user USER [--name NAME]   print a new key (shown once)
list-api-keys [--user USER]                list keys without their secrets
revoke-api-key KEY_ID                      revoke a key by its id

Each command works on the database of BULKHEAD_DATABASE_URL, as chat_service
does, and names it on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from bulkhead.rpc import USER_ID_PATTERN
from chat_service import apikeys
from chat_service.config import DatabaseToolSettings
from chat_service.errors import DatabaseUnavailableError
from chat_service.store.database import Database


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chat_service.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser(
        "create-api-key", help="create an API key and print it"
    )
    create.add_argument(
        "--user", required=True, help="user id the key authenticates as"
    )
    create.add_argument("--name", default="", help="label shown in listings")
    listing = commands.add_parser("list-api-keys", help="list API keys")
    listing.add_argument("--user", help="only keys of this user")
    revoke = commands.add_parser("revoke-api-key", help="revoke an API key")
    revoke.add_argument("key_id", help="id printed by list-api-keys")
    return parser


async def _run(args: argparse.Namespace, db: Database) -> int:
    async with db.transaction() as conn:
        if args.command == "create-api-key":
            if not USER_ID_PATTERN.fullmatch(args.user):
                print(
                    "error: --user must be 1 to 255 printable ASCII characters "
                    "without spaces",
                    file=sys.stderr,
                )
                return 2
            key, _ = await apikeys.create_key(conn, args.user, args.name)
            print(key)
        elif args.command == "list-api-keys":
            for info in await apikeys.list_keys(conn, args.user):
                state = (
                    f"revoked {info.revoked_at:%Y-%m-%d}"
                    if info.revoked_at
                    else "active"
                )
                print(
                    f"{info.id}  {info.user_id}  {info.prefix}…  {state}  {info.name}"
                )
        else:
            try:
                key_id = uuid.UUID(args.key_id)
            except ValueError:
                print(f"error: {args.key_id!r} is not a key id", file=sys.stderr)
                return 2
            if not await apikeys.revoke_key(conn, key_id):
                print(f"error: no active key with id {key_id}", file=sys.stderr)
                return 1
            print(f"revoked {key_id}")
    return 0


async def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    settings = DatabaseToolSettings()
    try:
        url = make_url(settings.database_url)
    except sa_exc.ArgumentError:
        return _fail("invalid BULKHEAD_DATABASE_URL: not a database URL.")
    # A key written to another database than the stack's is rejected by the
    # API with no other sign, so name the one in use.
    print(f"database: {_display_url(url)}", file=sys.stderr)
    if url.get_backend_name() == "sqlite" and not _sqlite_file_exists(url):
        return _fail(
            "database file not found at that path. Start the stack (make up) or "
            "run make migrate first, or set BULKHEAD_DATABASE_URL to the stack's "
            "database."
        )
    try:
        db = Database(settings.database_url, pool_size=1)
    except (ImportError, sa_exc.ArgumentError) as error:
        return _fail(
            f"failed to load the driver of the URL ({error}). Use "
            "sqlite+aiosqlite:// or postgresql+asyncpg://."
        )
    try:
        return await _run(args, db)
    except (DatabaseUnavailableError, sa_exc.DBAPIError) as error:
        # Print only the driver's message, because the statement's parameters
        # may contain the new key's prefix and hash.
        cause = (
            error.__cause__ if isinstance(error, DatabaseUnavailableError) else error
        )
        reason = str(getattr(cause, "orig", None) or cause).splitlines()[0]
        return _fail(
            f"database request failed ({reason}). Check that the database is "
            "up and that the stack (make up) or make migrate created its tables."
        )
    finally:
        await db.dispose()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _display_url(url: URL) -> str:
    """Render ``url`` without its passwords, and a SQLite path as absolute."""
    query = {
        key: "***" if "password" in key.lower() else value
        for key, value in url.query.items()
    }
    url = url.set(query=query)
    if url.get_backend_name() == "sqlite" and url.database not in (
        None,
        "",
        ":memory:",
    ):
        url = url.set(database=str(Path(url.database).resolve()))
    return url.render_as_string(hide_password=True)


def _sqlite_file_exists(url: URL) -> bool:
    """Tell whether a SQLite URL names a file that exists (memory counts as one).

    The engine would create a missing file and its folders, and the command
    would then fail on the missing tables, leaving an empty database behind.
    """
    if url.database in (None, "", ":memory:"):
        return True
    return Path(url.database).is_file()


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
