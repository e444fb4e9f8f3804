"""Session fixtures: NATS, PostgreSQL, SQLite and whole Bulkhead stacks.

Required servers: with ``CI=true`` a PostgreSQL or NATS server that cannot be
reached or started fails the session; it is never skipped. Outside CI a
missing PostgreSQL skips the tests that need it, with the reason.

Settings, all optional:

- ``BULKHEAD_TEST_NATS_URL``: NATS server to use (default
  nats://127.0.0.1:4222); without JetStream there, a nats-server is started
  on a free port with a temporary store.
- ``BULKHEAD_TEST_POSTGRES_URL``: admin URL used to create and drop one
  uniquely named database per use (default ``postgresql+asyncpg://postgres@
  127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from bulkhead.devstack import (
    NatsServer,
    Stack,
    StackConfig,
    StackError,
    jetstream_problem,
)
from tests.support.postgres import (
    DEFAULT_ADMIN_URL,
    check_server,
    create_database,
    drop_database,
)
from tests.support.streams import delete_stream

# Fixtures of the failure and recovery tests (fake models, recovery stacks).
pytest_plugins = ["tests.support.model_stacks"]

REPO_ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DATABASE_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/chaos belongs to the crash suite, marked or not,
    # so that `make test` (-m "not chaos") never runs it by accident.
    chaos_dir = REPO_ROOT / "tests" / "chaos"
    for item in items:
        if chaos_dir in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.chaos)


def _required_server_missing(server: str, reason: str, *, skippable: bool) -> None:
    """Fail (always in CI) or skip (outside CI, if allowed) with ``reason``."""
    message = f"{server} is required but not available: {reason}"
    if IN_CI or not skippable:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# --- NATS ------------------------------------------------------------------


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a NATS server with JetStream: the machine's, or one started here."""
    url = os.environ.get("BULKHEAD_TEST_NATS_URL") or DEFAULT_NATS_URL
    if jetstream_problem(url) is None:
        yield url
        return
    directory = tmp_path_factory.mktemp("nats")
    server = NatsServer(directory / "store", directory / "nats.log")
    problem = None
    try:
        server.start_and_wait()
    except StackError as error:
        problem = str(error)
    if problem is not None:
        _required_server_missing("NATS", problem, skippable=False)
    yield server.url
    server.stop(5.0)


# --- databases -------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """Admin URL of the test PostgreSQL server, checked with one query."""
    url = os.environ.get("BULKHEAD_TEST_POSTGRES_URL") or DEFAULT_ADMIN_URL
    problem = None
    try:
        check_server(url)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        problem = f"{url}: {error}. Start it or set BULKHEAD_TEST_POSTGRES_URL"
    if problem is not None:
        _required_server_missing("PostgreSQL", problem, skippable=True)
    return url


@pytest.fixture(scope="session")
def create_postgres_database(postgres_admin_url: str) -> Iterator[Callable[[], str]]:
    """Factory: create a fresh, uniquely named database and return its URL.

    Every database it created is dropped at the end of the session.
    """
    names: list[str] = []

    def _create() -> str:
        name = f"bulkhead_test_{uuid.uuid4().hex[:12]}"
        url = create_database(postgres_admin_url, name)
        names.append(name)
        return url

    yield _create
    for name in names:
        drop_database(postgres_admin_url, name)


@pytest.fixture(scope="session")
def postgres_url(create_postgres_database: Callable[[], str]) -> str:
    """A fresh PostgreSQL database for this session (SQLAlchemy asyncpg URL)."""
    return create_postgres_database()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh SQLite database file for this session (SQLAlchemy aiosqlite URL)."""
    path = tmp_path_factory.mktemp("sqlite") / "bulkhead.db"
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session", params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """The session's SQLite or PostgreSQL database; tests run once with each."""
    fixture = "postgres_url" if request.param == "postgres" else "sqlite_url"
    return str(request.getfixturevalue(fixture))


# --- whole stacks ----------------------------------------------------------


StackFactory = Callable[..., Stack]


@pytest.fixture(scope="session")
def stack_factory(
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    nats_url: str,
) -> Iterator[StackFactory]:
    """Factory: start a Bulkhead stack and return it once every service is healthy.

    ``stack_factory(database="sqlite" | "postgres" | URL, own_nats=False,
    **config)``: each call gets a fresh database, its own var directory,
    free ports and a uuid-named stream and subject prefix. With
    ``own_nats=True`` the stack runs its own nats-server, which a crash test
    may kill and restart; otherwise it shares the session's NATS server.
    Other keyword arguments are :class:`StackConfig` fields (``replicas``,
    ``env``, ``service_env``, ``models_file``, ...). At the end of the session
    the stacks are stopped, then their streams and databases removed.
    """
    started: list[Stack] = []
    cleanups: list[Callable[[], None]] = []

    def _start(
        database: str = "sqlite", own_nats: bool = False, **config: Any
    ) -> Stack:
        var_dir = tmp_path_factory.mktemp("stack")
        suffix = uuid.uuid4().hex[:12]
        stream = f"BULKHEAD_TEST_{suffix}"
        if database == "sqlite":
            database = f"sqlite+aiosqlite:///{var_dir / 'bulkhead.db'}"
        elif database == "postgres":
            # Created here, not through create_postgres_database, so that the
            # database is dropped only after the stack using it has stopped.
            admin_url = str(request.getfixturevalue("postgres_admin_url"))
            name = f"bulkhead_test_{suffix}"
            database = create_database(admin_url, name)
            cleanups.append(lambda: drop_database(admin_url, name))
        if not own_nats:
            cleanups.append(lambda: delete_stream(nats_url, stream))

        settings: dict[str, Any] = {
            "workdir": REPO_ROOT,
            "var_dir": var_dir,
            "database_url": database,
            "nats_url": None if own_nats else nats_url,
            "nats_stream": stream,
            "nats_subject_prefix": f"test{suffix}",
            "models_file": REPO_ROOT / "config" / "models.toml",
            "env": {"BULKHEAD_DEV_MODE": "true"},
        }
        settings.update(config)
        problem = None
        # A second try with fresh ports: another process on this machine can
        # take a free port between the moment it is chosen and its use.
        for _ in range(2):
            stack = Stack(StackConfig(**settings))
            started.append(stack)
            try:
                return stack.start()
            except StackError as error:
                problem = str(error)
                stack.stop()
        pytest.fail(f"the Bulkhead stack did not start: {problem}", pytrace=False)

    yield _start
    for stack in reversed(started):
        stack.stop()
    for cleanup in reversed(cleanups):
        cleanup()


@pytest.fixture(scope="session", params=DATABASE_KINDS)
def stack(
    request: pytest.FixtureRequest, stack_factory: StackFactory
) -> Iterator[Stack]:
    """The whole Bulkhead stack on SQLite or PostgreSQL; tests run once with each.

    The stack stops when pytest moves on to the other database, so that only
    one runs at a time.
    """
    started = stack_factory(database=request.param)
    yield started
    started.stop()


@pytest.fixture
def api_key(stack: Stack) -> Callable[..., str]:
    """Factory: ``api_key(user=None)`` creates a key for ``user`` (default a new user)."""

    def _create(user: str | None = None) -> str:
        return stack.create_api_key(user or f"user-{uuid.uuid4().hex[:12]}")

    return _create


@pytest.fixture
async def gateway_client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for the stack's gateway (base URL set, 10 s timeout)."""
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10.0) as client:
        yield client
