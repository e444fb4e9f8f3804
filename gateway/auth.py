"""Authentication of every ``/api`` route: ``Authorization: Bearer <credential>``.

The credential is an API key when it starts with ``bk_``, else a JWT from the
configured identity provider (see ``gateway.jwt_auth``; refused when JWTs are
not configured). Every rejection is the same 401 problem, so a client cannot
learn which check failed.

API keys are resolved by chat_service (``AuthService.AuthenticateApiKey``). Each
gateway process caches successful lookups for
``BULKHEAD_GATEWAY_AUTH_CACHE_TTL_S`` seconds (30 by default), keyed by the
SHA-256 digest of the key, so that the cache contains no key in the clear.
A revoked key therefore keeps working for at most that TTL on a gateway that
has it cached. Failed lookups are not cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

import grpc
from fastapi import Depends, Request
from fastapi.security.utils import get_authorization_scheme_param

from bulkhead.log import bind_context, get_logger
from bulkhead.proto.chat.v1 import auth_service_pb2, auth_service_pb2_grpc
from bulkhead.rpc import REQUEST_ID_METADATA, USER_ID_METADATA, Reason, parse_error
from gateway.jwt_auth import JwtVerifier, KeysUnavailableError, TokenRejectedError
from gateway.problems import UNAVAILABLE, ProblemError, unauthenticated_problem

# Prefix of the keys that chat_service issues (chat_service.apikeys.KEY_PREFIX).
API_KEY_PREFIX = "bk_"
# Keys longer than this, or with characters outside printable ASCII, cannot
# have been issued, so they are rejected without a call to chat_service.
_API_KEY_PATTERN = re.compile(r"bk_[\x21-\x7e]{1,509}")
# A compact JWS: three base64url parts; 8 KiB is far above real tokens.
_JWT_PATTERN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_JWT_CHARS = 8192
INVALID_CREDENTIALS = "The API key or token is invalid, expired or revoked."

logger = get_logger(__name__)

# Described in the OpenAPI document by gateway.app, since the header is read
# here rather than through FastAPI's HTTPBearer dependency, which would cost
# a dependency call per request.
BEARER_SCHEME_DESCRIPTION = (
    "An API key, as printed by `python -m chat_service.admin create-api-key`, "
    "or a JWT from the configured identity provider."
)


@dataclass(frozen=True)
class Caller:
    """The authenticated user of a request, and the ids passed on to chat_service."""

    user_id: str
    request_id: str
    # The gateway's service credential (bulkhead.rpc.service_metadata).
    service_metadata: tuple[tuple[str, str], ...] = ()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            (USER_ID_METADATA, self.user_id),
            (REQUEST_ID_METADATA, self.request_id),
            *self.service_metadata,
        )


class ApiKeyAuthenticator:
    """Resolves API keys to user ids through chat_service, with a bounded TTL cache.

    Concurrent lookups of the same uncached key share one gRPC call.
    """

    def __init__(
        self,
        stub: auth_service_pb2_grpc.AuthServiceStub,
        ttl_s: float,
        max_entries: int,
        timeout_s: float,
        service_metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._stub = stub
        self._service_metadata = service_metadata
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._timeout_s = timeout_s
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[str]] = {}

    async def authenticate(self, api_key: str, request_id: str) -> str:
        """Return the user id of a key.

        Raises ProblemError (401) for an unknown or revoked key, and
        grpc.RpcError when chat_service cannot be reached.
        """
        digest = hashlib.sha256(api_key.encode()).digest()
        cached = self._lookup(digest)
        if cached is not None:
            return cached

        lookup = self._pending.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._resolve(api_key, digest, request_id))
            self._pending[digest] = lookup
            lookup.add_done_callback(lambda done: self._finish_lookup(digest, done))
        # Shielded so that one caller's disconnect does not cancel the lookup
        # that other requests with the same key are waiting for.
        return await asyncio.shield(lookup)

    def clear(self) -> None:
        self._entries.clear()

    def _lookup(self, digest: bytes) -> str | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        user_id, expires_at = entry
        if time.monotonic() >= expires_at:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return user_id

    async def _resolve(self, api_key: str, digest: bytes, request_id: str) -> str:
        request = auth_service_pb2.AuthenticateApiKeyRequest(api_key=api_key)
        try:
            response = await self._stub.AuthenticateApiKey(
                request,
                timeout=self._timeout_s,
                metadata=((REQUEST_ID_METADATA, request_id), *self._service_metadata),
            )
        except grpc.aio.AioRpcError as error:
            # A rejected service credential is also UNAUTHENTICATED, but it is
            # the gateway's fault, so only the API key reason becomes a 401.
            if parse_error(error).reason == Reason.UNAUTHENTICATED:
                raise unauthenticated_problem(INVALID_CREDENTIALS) from None
            raise
        self._store(digest, response.user_id)
        return response.user_id

    def _store(self, digest: bytes, user_id: str) -> None:
        if self._ttl_s <= 0:
            return
        self._entries[digest] = (user_id, time.monotonic() + self._ttl_s)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def _finish_lookup(self, digest: bytes, lookup: asyncio.Future[str]) -> None:
        self._pending.pop(digest, None)
        # Mark the error as retrieved: when every waiting request has gone
        # away, asyncio would otherwise log "exception was never retrieved".
        if not lookup.cancelled():
            lookup.exception()


def bearer_credential(request: Request) -> str | None:
    """Return the credential of an ``Authorization: Bearer`` header, or None."""
    scheme, credential = get_authorization_scheme_param(
        request.headers.get("authorization")
    )
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


async def authenticate(request: Request) -> Caller:
    """Resolve the request's bearer API key or JWT, or raise a 401 problem."""
    if len(request.headers.getlist("authorization")) > 1:
        # Which of several credentials the client meant is unclear: use none.
        raise unauthenticated_problem("Send one Authorization header, not several.")
    credential = bearer_credential(request)
    if credential is None:
        raise unauthenticated_problem(
            "Missing credentials: send the header Authorization: Bearer <API key "
            "or token>."
        )
    request_id: str = request.state.request_id
    user_id = await _user_id_of(request, credential, request_id)
    request.state.user_id = user_id
    bind_context(user_id=user_id)
    return Caller(
        user_id=user_id,
        request_id=request_id,
        service_metadata=request.app.state.service_metadata,
    )


async def _user_id_of(request: Request, credential: str, request_id: str) -> str:
    if credential.startswith(API_KEY_PREFIX):
        if not _API_KEY_PATTERN.fullmatch(credential):
            raise unauthenticated_problem(INVALID_CREDENTIALS)
        authenticator: ApiKeyAuthenticator = request.app.state.authenticator
        return await authenticator.authenticate(credential, request_id)

    verifier: JwtVerifier | None = request.app.state.jwt_verifier
    if (
        verifier is None
        or len(credential) > _MAX_JWT_CHARS
        or not _JWT_PATTERN.fullmatch(credential)
    ):
        raise unauthenticated_problem(INVALID_CREDENTIALS)
    try:
        return await verifier.verify(credential)
    except TokenRejectedError as error:
        logger.info("bearer token rejected", reason=str(error))
        raise unauthenticated_problem(INVALID_CREDENTIALS) from None
    except KeysUnavailableError:
        raise ProblemError(
            UNAVAILABLE,
            "The identity provider's keys could not be fetched. Retry in a moment.",
            headers={"Retry-After": "5"},
        ) from None


CallerDep = Annotated[Caller, Depends(authenticate)]
