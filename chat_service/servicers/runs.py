"""chat.v1.RunService: the worker RPCs (claim, report, finish)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncConnection

from bulkhead.log import bind_context, get_logger
from bulkhead.proto.chat.v1 import run_service_pb2, run_service_pb2_grpc
from chat_service import runs
from chat_service.context import ServiceContext
from chat_service.servicers.base import unary
from chat_service.store.database import retry_on_conflict

logger = get_logger(__name__)

Transition = Callable[[AsyncConnection], Awaitable[runs.Outcome]]


class RunServicer(run_service_pb2_grpc.RunServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def _transition(self, transition: Transition) -> Any:
        async def attempt() -> runs.Outcome:
            async with self._ctx.db.transaction() as conn:
                return await transition(conn)

        outcome = await retry_on_conflict(attempt)
        await self._ctx.after_commit(outcome.effects)
        return outcome.response

    @unary
    async def ClaimRun(
        self,
        request: run_service_pb2.ClaimRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> run_service_pb2.ClaimRunResponse:
        bind_context(run_id=request.run_id, worker_id=request.worker_id)
        ctx = self._ctx
        response = await self._transition(
            lambda conn: runs.claim(conn, request, ctx.policy, ctx.topology)
        )
        outcome = run_service_pb2.ClaimOutcome.Name(response.outcome)
        logger.info(
            "run claimed"
            if response.outcome == run_service_pb2.CLAIM_OUTCOME_CLAIMED
            else "claim declined",
            stage=run_service_pb2.Stage.Name(request.stage),
            outcome=outcome,
            attempt=response.attempt,
            delivery=request.delivery,
        )
        return response

    @unary
    async def SubmitPlan(
        self,
        request: run_service_pb2.SubmitPlanRequest,
        context: grpc.aio.ServicerContext,
    ) -> run_service_pb2.SubmitPlanResponse:
        bind_context(run_id=request.run_id, attempt=request.attempt)
        response = await self._transition(
            lambda conn: runs.submit_plan(conn, request, self._ctx.topology)
        )
        logger.info("plan stored", chain=list(request.plan.model_chain))
        return response

    @unary
    async def AppendOutput(
        self,
        request: run_service_pb2.AppendOutputRequest,
        context: grpc.aio.ServicerContext,
    ) -> run_service_pb2.AppendOutputResponse:
        return await self._transition(
            lambda conn: runs.append_output(conn, request, self._ctx.policy)
        )

    @unary
    async def RenewLease(
        self,
        request: run_service_pb2.RenewLeaseRequest,
        context: grpc.aio.ServicerContext,
    ) -> run_service_pb2.RenewLeaseResponse:
        return await self._transition(
            lambda conn: runs.renew_lease(conn, request, self._ctx.policy)
        )

    @unary
    async def CompleteRun(
        self,
        request: run_service_pb2.CompleteRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> run_service_pb2.CompleteRunResponse:
        bind_context(run_id=request.run_id, attempt=request.attempt)
        response = await self._transition(
            lambda conn: runs.complete(conn, request, self._ctx.topology)
        )
        logger.info("run completed", model_used=request.model_used)
        return response

    @unary
    async def FailRun(
        self, request: run_service_pb2.FailRunRequest, context: grpc.aio.ServicerContext
    ) -> run_service_pb2.FailRunResponse:
        bind_context(run_id=request.run_id, attempt=request.attempt)
        response = await self._transition(
            lambda conn: runs.fail(conn, request, self._ctx.topology)
        )
        logger.info("run failed", code=request.error.code)
        return response

    @unary
    async def ReleaseRun(
        self,
        request: run_service_pb2.ReleaseRunRequest,
        context: grpc.aio.ServicerContext,
    ) -> run_service_pb2.ReleaseRunResponse:
        bind_context(run_id=request.run_id, attempt=request.attempt)
        response = await self._transition(lambda conn: runs.release(conn, request))
        logger.info("run released", reason=request.reason)
        return response
