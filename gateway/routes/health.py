"""Liveness and readiness probes; neither needs an API key."""

from __future__ import annotations

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel

from bulkhead.log import get_logger
from gateway.deps import SettingsDep
from gateway.problems import (
    UNAVAILABLE,
    problem_response,
    problem_responses,
    request_id_of,
)

logger = get_logger(__name__)
router = APIRouter(tags=["health"])


class HealthResponse(BaseModel):
    """The gateway process is up."""

    status: str = "ok"


class ReadinessResponse(BaseModel):
    """The gateway and chat_service can serve requests."""

    status: str = "ready"
    checks: dict[str, str]


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """Report that the gateway process is up."""
    return HealthResponse()


@router.get(
    "/readyz", response_model=ReadinessResponse, responses=problem_responses(503)
)
async def readyz(
    request: Request, settings: SettingsDep
) -> ReadinessResponse | JSONResponse:
    """Report whether chat_service's gRPC health check returns SERVING."""
    stub: health_pb2_grpc.HealthStub = request.app.state.health_stub
    check = await _check_chat_service(stub, settings.gateway_readiness_timeout_s)
    if check == "ok":
        return ReadinessResponse(checks={"chat_service": check})
    return problem_response(
        UNAVAILABLE,
        f"chat_service is not ready: {check}.",
        request_id_of(request),
        headers={"Retry-After": "1"},
        extra={"checks": {"chat_service": check}},
    )


async def _check_chat_service(
    stub: health_pb2_grpc.HealthStub, timeout_s: float
) -> str:
    """Return "ok", or the reason chat_service is not ready."""
    try:
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
        )
    except grpc.aio.AioRpcError as error:
        logger.warning("readiness check failed", grpc_code=error.code().name)
        return error.code().name.lower()
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        logger.warning("readiness check failed", health_status=status)
        return status.lower()
    return "ok"
