"""JWT bearer tokens from an identity provider, verified with PyJWT.

A token is accepted when all of these hold:

- its ``alg`` is one of the allowed algorithms: HS256, RS256 and ES256,
  narrowed by ``BULKHEAD_JWT_ALGORITHMS`` and by which keys are configured.
  ``none`` and every other algorithm are rejected before any key is looked up;
- its signature verifies with the key for that algorithm: the HS256 shared
  secret, or for RS256 and ES256 the public key file or the JWKS key whose
  ``kid`` matches (the JWKS is fetched over HTTP and cached);
- it has ``exp`` and ``sub``, is not expired and not used before ``nbf``,
  with a small leeway for clock skew;
- ``iss`` and ``aud`` match the configured values, when they are configured.

The user id is ``sub``. A rejected token gets the same 401 whatever check
failed; the reason is logged for operators, without the token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bulkhead.log import get_logger
from bulkhead.rpc import USER_ID_PATTERN

logger = get_logger(__name__)

ALLOWED_ALGORITHMS = ("HS256", "RS256", "ES256")
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")
# An unknown kid triggers a JWKS refetch at most this often, so that tokens
# with made-up key ids cannot make the gateway flood the identity provider.
JWKS_MIN_REFETCH_S = 30.0


class TokenRejectedError(Exception):
    """The token failed a check; the message is for the log, never the client."""


class KeysUnavailableError(Exception):
    """The JWKS could not be fetched and no keys are cached."""


@dataclass(frozen=True)
class JwtConfig:
    """Algorithms, keys and claims that :class:`JwtVerifier` accepts."""

    algorithms: Sequence[str]
    hs256_secret: bytes = b""
    public_key_pem: bytes = b""
    jwks_url: str = ""
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = 30.0
    jwks_cache_s: float = 300.0
    jwks_timeout_s: float = 5.0


class JwksCache:
    """The identity provider's JSON Web Key Set, fetched on demand and cached."""

    def __init__(self, url: str, ttl_s: float, timeout_s: float) -> None:
        self._url = url
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        """Return the key with ``kid`` (any single key when ``kid`` is None)."""
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at >= self._ttl_s:
            await self._refresh(self._fetched_at)
        key = self._find(kid)
        if key is None and time.monotonic() - (self._fetched_at or 0) >= (
            JWKS_MIN_REFETCH_S
        ):
            # The provider may have rotated its keys since the last fetch.
            await self._refresh(self._fetched_at)
            key = self._find(kid)
        return key

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _refresh(self, seen_fetched_at: float | None) -> None:
        async with self._lock:
            if self._fetched_at != seen_fetched_at:
                return  # another request refreshed the keys meanwhile
            try:
                async with httpx.AsyncClient(timeout=self._timeout_s) as client:
                    response = await client.get(self._url)
                    response.raise_for_status()
                    key_set = jwt.PyJWKSet.from_dict(response.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
                logger.warning(
                    "jwks fetch failed",
                    url=self._url,
                    error=str(error) or type(error).__name__,
                    cached_keys=len(self._keys),
                )
                if not self._keys:
                    raise KeysUnavailableError(str(error)) from error
                # Keep the old keys, and try again after the minimum interval.
                self._fetched_at = time.monotonic() - self._ttl_s + JWKS_MIN_REFETCH_S
                return
            self._keys = {key.key_id: key for key in key_set.keys}
            self._fetched_at = time.monotonic()
            logger.info("jwks fetched", url=self._url, keys=len(self._keys))


class JwtVerifier:
    """Verify tokens against a :class:`JwtConfig` and return their user id."""

    def __init__(self, config: JwtConfig) -> None:
        self._config = config
        self._public_key = (
            load_pem_public_key(config.public_key_pem)
            if config.public_key_pem
            else None
        )
        self._jwks = (
            JwksCache(config.jwks_url, config.jwks_cache_s, config.jwks_timeout_s)
            if config.jwks_url
            else None
        )
        required = ["exp", "sub"]
        if config.issuer is not None:
            required.append("iss")
        if config.audience is not None:
            required.append("aud")
        self._options: Any = {"require": required}

    async def verify(self, token: str) -> str:
        """Return the ``sub`` of a valid token.

        Raises TokenRejectedError for any invalid token and
        KeysUnavailableError when the JWKS cannot be fetched.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise TokenRejectedError(f"malformed token: {error}") from None
        algorithm = header.get("alg")
        if algorithm not in self._config.algorithms:
            raise TokenRejectedError(f"algorithm {algorithm!r} is not allowed")
        key = await self._key_for(algorithm, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=self._config.leeway_s,
                options=self._options,
            )
        except jwt.PyJWTError as error:
            raise TokenRejectedError(f"{type(error).__name__}: {error}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not USER_ID_PATTERN.fullmatch(subject):
            raise TokenRejectedError(
                "sub must be 1 to 255 printable ASCII characters without spaces"
            )
        return subject

    async def _key_for(self, algorithm: str, kid: object) -> Any:
        if algorithm == "HS256":
            return self._config.hs256_secret
        if self._jwks is not None:
            if kid is not None and not isinstance(kid, str):
                raise TokenRejectedError("kid must be a string")
            jwk = await self._jwks.key_for(kid)
            if jwk is None:
                raise TokenRejectedError(f"no JWKS key with kid {kid!r}")
            if jwk.algorithm_name != algorithm:
                raise TokenRejectedError(
                    f"JWKS key {kid!r} is for {jwk.algorithm_name}, not {algorithm}"
                )
            return jwk.key
        expected = (
            rsa.RSAPublicKey if algorithm == "RS256" else ec.EllipticCurvePublicKey
        )
        if not isinstance(self._public_key, expected):
            raise TokenRejectedError(f"the public key file is not for {algorithm}")
        return self._public_key
