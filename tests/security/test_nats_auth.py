"""NATS credentials from settings, against nats-servers started with authorization."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from nats.errors import Error as NatsError

from bulkhead.devstack import Stack
from bulkhead.devstack.nats import find_nats_server
from bulkhead.devstack.ports import free_port
from bulkhead.devstack.process import ManagedProcess, wait_until
from bulkhead.messaging import Topology, connect_nats, ensure_stream
from bulkhead.settings import CommonSettings
from tests.support.api import post_chat, wait_for_run

USER = "bulkhead"


class _AuthNats:
    def __init__(self, directory: Path, *auth_args: str) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        command = [find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        command += ["-sd", str(directory / "store"), *auth_args]
        self.process = ManagedProcess(
            "nats-auth",
            command,
            env=dict(os.environ),
            cwd=directory,
            log_path=directory / "nats.log",
        )

    def start(self) -> None:
        self.process.start()
        wait_until(
            self.process,
            self._listening,
            timeout_s=15,
            condition="listening",
        )

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def password() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def user_nats(
    tmp_path_factory: pytest.TempPathFactory, password: str
) -> Iterator[_AuthNats]:
    server = _AuthNats(
        tmp_path_factory.mktemp("nats-user"), "--user", USER, "--pass", password
    )
    server.start()
    yield server
    server.process.stop(5)


@pytest.fixture(scope="module")
def token_nats(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[_AuthNats, str]]:
    token = secrets.token_urlsafe(24)
    server = _AuthNats(tmp_path_factory.mktemp("nats-token"), "--auth", token)
    server.start()
    yield server, token
    server.process.stop(5)


async def _round_trip(settings: CommonSettings) -> None:
    client = await connect_nats(settings, name="security-test")
    try:
        await ensure_stream(client.jetstream(), Topology.from_settings(settings))
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_message(msg: object) -> None:
            received.set_result(msg.data)  # type: ignore[attr-defined]

        await client.subscribe("auth.test", cb=on_message)
        await client.publish("auth.test", b"ok")
        assert await asyncio.wait_for(received, 5) == b"ok"
    finally:
        await client.close()


async def _refused(settings: CommonSettings) -> None:
    # connect_nats retries forever; a server that refuses the credentials
    # never lets it return.
    with pytest.raises((TimeoutError, NatsError)):
        await asyncio.wait_for(connect_nats(settings, name="security-test"), 3)


async def test_user_password_accepted(user_nats: _AuthNats, password: str) -> None:
    settings = CommonSettings(
        nats_url=user_nats.url, nats_user=USER, nats_password=password
    )
    await _round_trip(settings)


async def test_user_password_wrong_refused(user_nats: _AuthNats) -> None:
    await _refused(CommonSettings(nats_url=user_nats.url))
    await _refused(
        CommonSettings(
            nats_url=user_nats.url,
            nats_user=USER,
            nats_password=secrets.token_urlsafe(24),
        )
    )


async def test_token_accepted(token_nats: tuple[_AuthNats, str]) -> None:
    server, token = token_nats
    await _round_trip(CommonSettings(nats_url=server.url, nats_token=token))
    await _refused(
        CommonSettings(nats_url=server.url, nats_token=secrets.token_urlsafe(24))
    )


async def test_stack_over_authenticated_nats(
    stack_factory: Callable[..., Stack], user_nats: _AuthNats, password: str
) -> None:
    # The stack's own start-up probe takes credentials in the URL; the
    # services get the plain URL and their credentials from the settings.
    probe_url = f"nats://{USER}:{password}@127.0.0.1:{user_nats.port}"
    stack = stack_factory(
        nats_url=probe_url,
        env={
            "BULKHEAD_DEV_MODE": "true",
            "BULKHEAD_NATS_URL": user_nats.url,
            "BULKHEAD_NATS_USER": USER,
            "BULKHEAD_NATS_PASSWORD": password,
        },
    )
    try:
        key = stack.create_api_key("nats-auth-user")
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
            posted = await post_chat(client, key, "through authenticated NATS")
            assert posted.status_code == 202
            run = await wait_for_run(client, key, posted.json()["run"]["id"])
        assert run["status"] == "completed"
        for name in ("chat_service", "gateway", "agent_service", "executor_service"):
            assert password not in stack.read_log(name)
    finally:
        stack.stop()
