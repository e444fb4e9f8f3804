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
from gateway.routes import get_and_head

logger = get_logger(__name__)
router = APIRouter(tags=["health"])

# chat_service's health entry for its NATS connection (chat_service.server).
NATS_HEALTH_NAME = "bulkhead.nats"
# The last result of each health entry, so that a probe every second logs a
# change once rather than on every probe.
_last_results: dict[str, str] = {}


class HealthResponse(BaseModel):
    """The gateway process is up."""

    status: str = "ok"


class ReadinessResponse(BaseModel):
    """The gateway and chat_service can serve requests.

    ``checks`` has ``chat_service`` ("ok") and ``nats``: "ok", or
    "degraded" while chat_service cannot reach NATS. Messages are still
    accepted then, because chat_service stores them and publishes their
    tasks once NATS is back, so a degraded NATS does not make the gateway
    unready.
    """

    status: str = "ready"
    checks: dict[str, str]


@get_and_head(router, "/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """Report that the gateway process is up."""
    return HealthResponse()


@get_and_head(
    router,
    "/readyz",
    response_model=ReadinessResponse,
    responses=problem_responses(503),
)
async def readyz(
    request: Request, settings: SettingsDep
) -> ReadinessResponse | JSONResponse:
    """Report whether chat_service is SERVING, and whether it reaches NATS."""
    stub: health_pb2_grpc.HealthStub = request.app.state.health_stub
    timeout_s = settings.gateway_readiness_timeout_s
    check = await _check_health(stub, "", timeout_s)
    if check != "ok":
        return problem_response(
            UNAVAILABLE,
            f"chat_service is not ready: {check}.",
            request_id_of(request),
            headers={"Retry-After": "1"},
            extra={"checks": {"chat_service": check}},
        )
    nats = await _check_health(stub, NATS_HEALTH_NAME, timeout_s)
    return ReadinessResponse(
        checks={"chat_service": check, "nats": "ok" if nats == "ok" else "degraded"}
    )


async def _check_health(
    stub: health_pb2_grpc.HealthStub, service: str, timeout_s: float
) -> str:
    """Return "ok", or the reason the health entry ``service`` is not SERVING."""
    try:
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    except grpc.aio.AioRpcError as error:
        result = error.code().name.lower()
    else:
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            result = "ok"
        else:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            result = status.lower()
    previous = _last_results.get(service, "ok")
    _last_results[service] = result
    if result != previous:
        entry = service or "chat_service"
        if result == "ok":
            logger.info("readiness check recovered", service=entry, was=previous)
        else:
            logger.warning("readiness check failed", service=entry, result=result)
    return result
