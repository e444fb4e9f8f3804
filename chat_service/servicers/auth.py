"""chat.v1.AuthService: API key checks for the gateway."""

from __future__ import annotations

import grpc

from bulkhead.proto.chat.v1 import auth_service_pb2, auth_service_pb2_grpc
from chat_service import apikeys
from chat_service.context import ServiceContext
from chat_service.errors import UnauthenticatedError
from chat_service.servicers.base import unary

MAX_KEY_LENGTH = 512


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    @unary
    async def AuthenticateApiKey(
        self,
        request: auth_service_pb2.AuthenticateApiKeyRequest,
        context: grpc.aio.ServicerContext,
    ) -> auth_service_pb2.AuthenticateApiKeyResponse:
        key = request.api_key
        if not key or len(key) > MAX_KEY_LENGTH:
            raise UnauthenticatedError("invalid API key")
        async with self._ctx.db.transaction() as conn:
            found = await apikeys.authenticate(conn, key)
        if found is None:
            raise UnauthenticatedError("invalid API key")
        user_id, key_id = found
        return auth_service_pb2.AuthenticateApiKeyResponse(
            user_id=user_id, key_id=str(key_id)
        )
