"""API keys and JWT bearer tokens through a real gateway; secrets never logged.

One stack of this module trusts a test identity provider (a JWKS on
127.0.0.1 plus an HS256 secret) and caches API keys for 1 s, so that a
revocation shows within the test.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import jwt
import pytest

from bulkhead.devstack import Stack
from tests.security.identity import (
    AUDIENCE,
    HS256_SECRET,
    ISSUER,
    IdentityProvider,
    hs256_token_with_key,
    unsigned_token,
)
from tests.support.api import auth, post_chat, wait_for_run

AUTH_CACHE_TTL_S = 1.0
# Every secret this module sends or configures, checked against the logs last.
SECRETS_SEEN: list[str] = []


@pytest.fixture(scope="module")
def identity() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def auth_stack(
    stack_factory: Callable[..., Stack], identity: IdentityProvider
) -> Iterator[Stack]:
    jwks_url = identity.start()
    started = stack_factory(
        database="sqlite",
        service_env={
            "gateway": {
                "BULKHEAD_JWT_JWKS_URL": jwks_url,
                "BULKHEAD_JWT_HS256_SECRET": HS256_SECRET,
                "BULKHEAD_JWT_ISSUER": ISSUER,
                "BULKHEAD_JWT_AUDIENCE": AUDIENCE,
                "BULKHEAD_JWT_LEEWAY_S": "5",
                "BULKHEAD_GATEWAY_AUTH_CACHE_TTL_S": str(AUTH_CACHE_TTL_S),
            }
        },
    )
    SECRETS_SEEN.extend(
        [HS256_SECRET, started.gateway_service_token, started.worker_service_token]
    )
    yield started
    started.stop()


@pytest.fixture
async def client(auth_stack: Stack) -> Iterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=auth_stack.gateway_url, timeout=10) as c:
        yield c  # type: ignore[misc]


def _admin(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_service.admin", *args],
        env=stack.env_for(),
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- API keys --------------------------------------------------------------


async def test_api_key_format_and_storage(auth_stack: Stack) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    key = auth_stack.create_api_key(user)
    SECRETS_SEEN.append(key)

    assert key.startswith("bk_")
    assert len(key) >= 40
    database = auth_stack.database_url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT prefix, key_hash FROM api_keys WHERE user_id = ?", (user,)
        ).fetchall()
    assert len(rows) == 1
    prefix, key_hash = rows[0]
    assert key.startswith(prefix)
    assert len(prefix) < 12
    assert key not in key_hash


async def test_api_key_revocation_reaches_gateway(
    auth_stack: Stack, client: httpx.AsyncClient
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    key = auth_stack.create_api_key(user)
    SECRETS_SEEN.append(key)
    assert (await client.get("/api/chats", headers=auth(key))).status_code == 200

    listing = _admin(auth_stack, "list-api-keys", "--user", user)
    assert listing.returncode == 0, listing.stderr
    assert key not in listing.stdout
    key_id = listing.stdout.split()[0]
    revoked = _admin(auth_stack, "revoke-api-key", key_id)
    assert revoked.returncode == 0, revoked.stderr
    revoked_at = time.monotonic()

    while (await client.get("/api/chats", headers=auth(key))).status_code == 200:
        assert time.monotonic() - revoked_at < AUTH_CACHE_TTL_S + 2
        await asyncio.sleep(0.1)
    response = await client.get("/api/chats", headers=auth(key))
    assert response.status_code == 401
    assert "revoked" in _admin(auth_stack, "list-api-keys", "--user", user).stdout
    again = _admin(auth_stack, "revoke-api-key", key_id)
    assert again.returncode == 1


def test_admin_rejects_invalid_user(auth_stack: Stack) -> None:
    for user in ("", "with space", "é", "x" * 256):
        result = _admin(auth_stack, "create-api-key", "--user", user)
        assert result.returncode == 2, user
        assert "bk_" not in result.stdout


# --- JWT ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256"])
async def test_jwt_valid_token_accepted(
    client: httpx.AsyncClient, identity: IdentityProvider, alg: str
) -> None:
    user = f"sub-{uuid.uuid4().hex[:8]}"
    token = identity.token(user, alg)
    SECRETS_SEEN.append(token)

    posted = await post_chat(client, token, "hello from a JWT user")
    assert posted.status_code == 202, posted.text
    run = await wait_for_run(client, token, posted.json()["run"]["id"])
    assert run["status"] == "completed"
    chats = await client.get("/api/chats", headers=auth(token))
    assert [chat["id"] for chat in chats.json()["items"]] == [posted.json()["chat_id"]]


async def test_jwt_and_api_key_share_user(
    auth_stack: Stack, client: httpx.AsyncClient, identity: IdentityProvider
) -> None:
    user = f"sub-{uuid.uuid4().hex[:8]}"
    token = identity.token(user)
    key = auth_stack.create_api_key(user)
    SECRETS_SEEN.extend([token, key])

    posted = await post_chat(client, token, "same person, two credentials")
    chats = await client.get("/api/chats", headers=auth(key))
    assert [chat["id"] for chat in chats.json()["items"]] == [posted.json()["chat_id"]]


def _bad_tokens(identity: IdentityProvider) -> dict[str, str]:
    sub = "victim"
    now = int(time.time())
    other_rsa = IdentityProvider().rsa_key
    tokens = {
        "expired": identity.token(sub, exp=now - 60),
        "not yet valid": identity.token(sub, nbf=now + 600),
        "wrong signature": identity.token(sub, key=other_rsa),
        "alg none": unsigned_token(sub),
        "wrong audience": identity.token(sub, aud="another-api"),
        "wrong issuer": identity.token(sub, iss="https://evil.example"),
        "no exp": identity.token(sub, exp=None),
        "no sub": identity.token(None, alg="ES256"),  # type: ignore[arg-type]
        "unknown kid": identity.token(sub, headers={"kid": "nope"}),
        "HS256 wrong secret": identity.token(sub, "HS256", key="x" * 40),
        "HS384 not allowed": jwt.encode(
            {"sub": sub, "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE},
            HS256_SECRET + "-longer-for-hs384-" + "y" * 32,
            algorithm="HS384",
        ),
        # Key confusion: an HS256 token whose secret is the RSA public key.
        "public key as HMAC secret": hs256_token_with_key(
            {"sub": sub, "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE},
            identity.rsa_public_pem(),
            kid=identity.rsa_kid,
        ),
        "sub with space": identity.token("has space"),
        "garbage": "not-a-token",
        "tampered payload": _tamper(identity.token(sub)),
    }
    return tokens


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    return f"{header}.{payload[:-2]}AA.{signature}"


async def test_jwt_invalid_tokens_same_401(
    client: httpx.AsyncClient, identity: IdentityProvider
) -> None:
    details = set()
    for case, token in _bad_tokens(identity).items():
        SECRETS_SEEN.append(token)
        response = await client.get("/api/chats", headers=auth(token))
        assert response.status_code == 401, case
        assert response.headers["www-authenticate"] == "Bearer", case
        assert response.headers["content-type"] == "application/problem+json", case
        details.add(response.json()["detail"])
    assert len(details) == 1
    (detail,) = details
    for word in ("signature", "audience", "issuer", "algorithm", "kid", "nbf"):
        assert word not in detail.lower()


async def test_jwks_fetched_once_and_cached(
    client: httpx.AsyncClient, identity: IdentityProvider
) -> None:
    token = identity.token(f"sub-{uuid.uuid4().hex[:8]}", "ES256")
    SECRETS_SEEN.append(token)
    await client.get("/api/chats", headers=auth(token))
    before = identity.jwks_requests

    for _ in range(5):
        response = await client.get("/api/chats", headers=auth(token))
        assert response.status_code == 200
    # Unknown key ids refetch at most once per 30 s, whatever their number.
    for number in range(5):
        bad = identity.token("x", headers={"kid": f"unknown-{number}"})
        assert (await client.get("/api/chats", headers=auth(bad))).status_code == 401

    assert identity.jwks_requests - before <= 1


# --- logs (last in this module: it reads what the tests above caused) --------


def test_logs_contain_no_secret(auth_stack: Stack) -> None:
    assert SECRETS_SEEN
    logs = {path.name: path.read_text() for path in auth_stack.log_dir.glob("*.log")}
    assert "gateway.log" in logs
    for secret in SECRETS_SEEN:
        for name, text in logs.items():
            assert secret not in text, f"a secret appears in {name}"
            # A JWT's signature part alone would prove the token was seen.
            signature = secret.rsplit(".", 1)[-1]
            if len(signature) >= 20:
                assert signature not in text, f"a token signature appears in {name}"
