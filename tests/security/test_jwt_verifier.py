"""JwtVerifier without a stack: the public key file and JWKS key rotation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import GatewaySettings
from gateway.jwt_auth import JwtVerifier, KeysUnavailableError, TokenRejectedError
from tests.security.identity import AUDIENCE, ISSUER, IdentityProvider

SERVICE_TOKEN = "unit-test-service-token-0123456789"


@pytest.fixture
def identity() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.stop()


def _settings(**values: object) -> GatewaySettings:
    return GatewaySettings(
        gateway_service_token=SERVICE_TOKEN,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        **values,  # type: ignore[arg-type]
    )


async def test_public_key_file_rs256(
    identity: IdentityProvider, tmp_path: Path
) -> None:
    key_file = tmp_path / "idp.pem"
    key_file.write_bytes(identity.rsa_public_pem())
    config = _settings(jwt_public_key_file=key_file).jwt_config()
    assert config is not None
    verifier = JwtVerifier(config)

    assert await verifier.verify(identity.token("alice")) == "alice"
    # ES256 is allowed by default, but the key file contains an RSA key.
    with pytest.raises(TokenRejectedError):
        await verifier.verify(identity.token("alice", "ES256"))
    with pytest.raises(TokenRejectedError):
        await verifier.verify(identity.token("alice", "HS256"))


async def test_jwks_rotation_picked_up(identity: IdentityProvider) -> None:
    url = identity.start()
    config = _settings(jwt_jwks_url=url).jwt_config()
    assert config is not None
    verifier = JwtVerifier(config)
    assert await verifier.verify(identity.token("bob", "ES256")) == "bob"

    old_token = identity.token("bob", "ES256")
    identity.ec_kid = "rotated"
    identity.ec_key = IdentityProvider().ec_key

    # A new kid triggers one refetch (the last fetch is older than the
    # minimum interval only after 30 s, so the cache is aged by hand here).
    verifier._jwks._fetched_at -= 60  # type: ignore[union-attr]
    assert await verifier.verify(identity.token("bob", "ES256")) == "bob"
    with pytest.raises(TokenRejectedError):
        await verifier.verify(old_token)


async def test_jwks_unreachable_raises(identity: IdentityProvider) -> None:
    config = _settings(jwt_jwks_url="http://127.0.0.1:9/jwks.json").jwt_config()
    assert config is not None

    with pytest.raises(KeysUnavailableError):
        await JwtVerifier(config).verify(identity.token("carol"))


def test_jwt_off_without_keys() -> None:
    assert _settings().jwt_config() is None
    assert _settings(jwt_algorithms="RS256").jwt_config() is None


@pytest.mark.parametrize(
    "values",
    [
        {"jwt_algorithms": "none"},
        {"jwt_algorithms": "HS256,HS512"},
        {"jwt_hs256_secret": "short-secret-0123"},
        {"jwt_jwks_url": "http://idp.example/jwks.json"},
        {"jwt_jwks_url": "file:///etc/passwd"},
    ],
)
def test_jwt_settings_rejected(values: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _settings(**values)


def test_hs256_only_when_secret_set() -> None:
    config = _settings(
        jwt_hs256_secret="s" * 16 + "-0123456789abcdef", jwt_jwks_url=None
    ).jwt_config()

    assert config is not None
    assert list(config.algorithms) == ["HS256"]
