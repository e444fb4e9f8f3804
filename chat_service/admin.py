"""Administration commands: ``python -m chat_service.admin COMMAND``.

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

from sqlalchemy.engine import make_url

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
    # A key written to another database than the stack's is rejected by the
    # API with no other sign, so name the one in use (without its password).
    url_without_password = make_url(settings.database_url).render_as_string(
        hide_password=True
    )
    print(f"database: {url_without_password}", file=sys.stderr)
    db = Database(settings.database_url, pool_size=1)
    try:
        return await _run(args, db)
    except DatabaseUnavailableError as error:
        cause = getattr(error.__cause__, "orig", None) or error.__cause__
        print(
            f"error: the database cannot be used ({cause}). Is it up, and "
            "has the stack (make up) or make migrate created its tables?",
            file=sys.stderr,
        )
        return 1
    finally:
        await db.dispose()


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
