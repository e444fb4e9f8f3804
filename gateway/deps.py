"""FastAPI dependencies shared by the routes: settings, gRPC stubs, path ids.

Every dependency is ``async def``: FastAPI runs plain ``def`` dependencies in
its thread pool, which costs about half the throughput of a request.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request

from bulkhead.proto.chat.v1 import chat_service_pb2_grpc
from gateway.config import GatewaySettings
from gateway.problems import not_found_problem, validation_problem


async def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def get_chat_stub(request: Request) -> chat_service_pb2_grpc.ChatServiceStub:
    stub: chat_service_pb2_grpc.ChatServiceStub = request.app.state.chat_stub
    return stub


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
ChatStubDep = Annotated[chat_service_pb2_grpc.ChatServiceStub, Depends(get_chat_stub)]


def resource_id(value: str, kind: str) -> str:
    """Return a path id in canonical UUID form.

    Raises a 404 problem for anything else: an id that cannot exist is not
    found, rather than invalid.
    """
    try:
        return str(UUID(value))
    except ValueError:
        raise not_found_problem(f"The {kind} was not found.") from None


def check_query_sent_once(request: Request, *names: str) -> None:
    """Raise a 422 problem when one of ``names`` is in the query more than once.

    FastAPI passes one of the values, so which one the client meant is unclear.
    """
    for name in names:
        if len(request.query_params.getlist(name)) > 1:
            raise validation_problem(name, "must be given once")
