"""Fixtures for tests of failures and recovery: stacks whose models are fake.

Registered as a pytest plugin by ``tests/conftest.py``. Two kinds of stack,
each once per database (SQLite and PostgreSQL) and shared by a session:

- ``model_stack``: the shared NATS server, fast executor retries; for model
  failures, cancel, retry and per-chat order.
- ``recovery_stack``: its own nats-server (which a test may kill) and short
  ack wait, lease and sweep intervals, so that crash recovery takes seconds.

Both call :func:`fake_model`, one fake OpenAI-compatible server per session,
through the routes of :data:`MODEL_ROUTES`. A test sets the behaviour of the
fake model names it uses with ``fake_model.reset(name={...})``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bulkhead.devstack import Stack
from tests.support.fake_models import FakeModelThread, write_models_file

DATABASE_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

# Route name to models-file keys. Each route calls the fake model of the same
# name; "flaky" falls back to "backup", "solo" has no fallback.
MODEL_ROUTES: dict[str, dict[str, Any]] = {
    "flaky": {
        "fallbacks": ["backup"],
        "max_retries": 2,
        "idle_timeout_s": 1.0,
        "first_token_timeout_s": 5.0,
        "timeout_s": 30.0,
        "connect_timeout_s": 2.0,
    },
    "backup": {"max_retries": 1, "idle_timeout_s": 5.0, "timeout_s": 30.0},
    "solo": {"max_retries": 1, "idle_timeout_s": 1.0, "timeout_s": 30.0},
    "slow": {"max_retries": 0, "idle_timeout_s": 10.0, "timeout_s": 60.0},
}
DEFAULT_ROUTE = "solo"

# Executor retries in milliseconds instead of seconds, so that a test of three
# retries takes well under a second (Retry-After is still honoured).
FAST_RETRIES = {
    "BULKHEAD_EXECUTOR_RETRY_BASE_S": "0.05",
    "BULKHEAD_EXECUTOR_RETRY_MAX_S": "0.2",
}
# The executor's limit on one model output in model_stack, low enough that a
# test can stream past it in a moment.
MAX_OUTPUT_CHARS = 5000
# Crash recovery in seconds: a task is redelivered 3 s after its worker died,
# a lease expires 3 s after its last renewal, the sweeper looks every 0.5 s.
RECOVERY_ENV = {
    "BULKHEAD_NATS_ACK_WAIT_S": "3",
    "BULKHEAD_LEASE_S": "3",
    "BULKHEAD_AGENT_LEASE_RENEW_S": "1",
    "BULKHEAD_EXECUTOR_LEASE_RENEW_S": "1",
    "BULKHEAD_SWEEP_INTERVAL_S": "0.5",
    "BULKHEAD_REDISPATCH_AFTER_S": "20",
    "BULKHEAD_AGENT_SHUTDOWN_GRACE_S": "2",
    "BULKHEAD_EXECUTOR_SHUTDOWN_GRACE_S": "2",
}


@pytest.fixture(scope="session")
def fake_model() -> Iterator[FakeModelThread]:
    """The fake model server of the session, in a thread of its own."""
    fake = FakeModelThread().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_models_file(
    fake_model: FakeModelThread, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("models") / "models.toml"
    return write_models_file(path, fake_model.base_url, MODEL_ROUTES, DEFAULT_ROUTE)


@pytest.fixture(scope="session", params=DATABASE_KINDS)
def model_stack(
    request: pytest.FixtureRequest,
    stack_factory: Callable[..., Stack],
    fake_models_file: Path,
) -> Iterator[Stack]:
    started = stack_factory(
        database=request.param,
        models_file=fake_models_file,
        env={
            "BULKHEAD_DEV_MODE": "true",
            "BULKHEAD_EXECUTOR_MAX_OUTPUT_CHARS": str(MAX_OUTPUT_CHARS),
            **FAST_RETRIES,
        },
    )
    yield started
    started.stop()


@pytest.fixture(scope="session", params=DATABASE_KINDS)
def recovery_stack(
    request: pytest.FixtureRequest,
    stack_factory: Callable[..., Stack],
    fake_models_file: Path,
) -> Iterator[Stack]:
    started = stack_factory(
        database=request.param,
        own_nats=True,
        models_file=fake_models_file,
        env={
            "BULKHEAD_DEV_MODE": "true",
            **FAST_RETRIES,
            **RECOVERY_ENV,
        },
        stop_grace_s=5.0,
    )
    yield started
    started.stop()


def _new_key(stack: Stack) -> str:
    return stack.create_api_key(f"user-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def model_key(model_stack: Stack) -> str:
    """An API key of a new user of ``model_stack``."""
    return _new_key(model_stack)


@pytest.fixture
async def model_client(model_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=model_stack.gateway_url, timeout=15.0
    ) as client:
        yield client


@pytest.fixture
def recovery_key(recovery_stack: Stack) -> str:
    """An API key of a new user of ``recovery_stack``."""
    return _new_key(recovery_stack)


@pytest.fixture
async def recovery_client(recovery_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=recovery_stack.gateway_url, timeout=15.0
    ) as client:
        yield client
