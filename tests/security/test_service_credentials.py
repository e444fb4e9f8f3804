"""Service credentials on chat_service's gRPC port: no way around the gateway."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable

import grpc
import httpx
import pytest

from bulkhead.devstack import Stack
from tests.security.grpc_calls import gateway_calls, metadata, status_of, worker_calls
from tests.support.api import auth

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


def test_chat_rpcs_without_credential_unauthenticated(stack: Stack) -> None:
    with grpc.insecure_channel(stack.address_of("chat_service")) as channel:
        calls = {**gateway_calls(channel), **worker_calls(channel)}
        for name, call in calls.items():
            for md in (
                metadata(user_id="intruder"),
                metadata("wrong-token-" + uuid.uuid4().hex, user_id="intruder"),
                (("authorization", "Basic " + stack.gateway_service_token),),
            ):
                assert status_of(call, md) == UNAUTHENTICATED, (name, md[:1])


def test_worker_token_denied_user_rpcs(stack: Stack) -> None:
    with grpc.insecure_channel(stack.address_of("chat_service")) as channel:
        md = metadata(stack.worker_service_token, user_id="intruder")
        for name, call in gateway_calls(channel).items():
            assert status_of(call, md) == PERMISSION_DENIED, name


def test_gateway_token_denied_worker_rpcs(stack: Stack) -> None:
    with grpc.insecure_channel(stack.address_of("chat_service")) as channel:
        md = metadata(stack.gateway_service_token)
        for name, call in worker_calls(channel).items():
            assert status_of(call, md) == PERMISSION_DENIED, name


def test_right_token_reaches_servicer(stack: Stack) -> None:
    with grpc.insecure_channel(stack.address_of("chat_service")) as channel:
        user_calls = gateway_calls(channel)
        md = metadata(stack.gateway_service_token, user_id="someone")
        assert status_of(user_calls["GetRun"], md) == grpc.StatusCode.NOT_FOUND
        assert status_of(user_calls["ListChats"], md) == grpc.StatusCode.OK
        # A user RPC with the right service credential still needs a user id.
        no_user = metadata(stack.gateway_service_token)
        assert status_of(user_calls["ListChats"], no_user) == UNAUTHENTICATED

        run_calls = worker_calls(channel)
        md = metadata(stack.worker_service_token)
        assert status_of(run_calls["RenewLease"], md) == grpc.StatusCode.NOT_FOUND


def test_tokens_stored_private_per_stack(stack: Stack) -> None:
    path = stack.var_dir / "service-tokens.env"

    assert path.stat().st_mode & 0o077 == 0
    assert stack.gateway_service_token in path.read_text()
    assert len(stack.gateway_service_token) >= 32
    assert stack.gateway_service_token != stack.worker_service_token


async def test_dev_mode_without_tokens_is_open_and_loud(
    stack_factory: Callable[..., Stack],
) -> None:
    open_stack: Stack = stack_factory(
        env={
            "BULKHEAD_DEV_MODE": "true",
            "BULKHEAD_GATEWAY_SERVICE_TOKEN": "",
            "BULKHEAD_WORKER_SERVICE_TOKEN": "",
        }
    )
    try:
        with grpc.insecure_channel(open_stack.address_of("chat_service")) as channel:
            call = gateway_calls(channel)["ListChats"]
            assert status_of(call, metadata(user_id="dev")) == grpc.StatusCode.OK

        for name in ("chat_service", "gateway", "agent_service", "executor_service"):
            log = open_stack.read_log(name)
            assert "DEVELOPMENT MODE IS ON" in log, name
        assert "service credentials are off" in open_stack.read_log("chat_service")

        key = open_stack.create_api_key("dev-user")
        async with httpx.AsyncClient(base_url=open_stack.gateway_url) as client:
            response = await client.get("/api/chats", headers=auth(key))
        assert response.status_code == 200
    finally:
        open_stack.stop()


@pytest.mark.parametrize(
    ("module", "variables"),
    [
        ("chat_service", {}),
        ("gateway", {}),
        ("agent_service", {}),
        ("chat_service", {"BULKHEAD_GATEWAY_SERVICE_TOKEN": "changeme"}),
        ("gateway", {"BULKHEAD_GATEWAY_SERVICE_TOKEN": "secret"}),
    ],
)
def test_service_refuses_missing_secret(module: str, variables: dict[str, str]) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "BULKHEAD_DEV_MODE": "false",
        "BULKHEAD_CHAT_SERVICE_LISTEN": "127.0.0.1:0",
        "BULKHEAD_GATEWAY_PORT": "1",
        **variables,
    }
    result = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode != 0
    assert "SERVICE_TOKEN" in result.stderr
    assert "BULKHEAD_DEV_MODE=true" in result.stderr
