"""The executor's task handler: claim a planned run, stream it, report the end."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from enum import StrEnum

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bulkhead.log import get_logger
from bulkhead.models import ModelCatalog
from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb
from bulkhead.proto.executor.v1 import executor_pb2
from bulkhead.worker import (
    Outcome,
    RunClient,
    RunLostError,
    Task,
    full_jitter_delay,
    keep_lease,
)
from bulkhead.worker.runs import (
    RunsInHand,
    claim_run,
    decode_task,
    fail_exhausted_run,
)
from executor_service.chain import ChainExhaustedError, RetryPolicy, run_chain
from executor_service.config import ExecutorSettings
from executor_service.output import OutputBatcher
from executor_service.providers.base import ChatProvider
from executor_service.route_slots import RouteSlots, route_limit

logger = get_logger(__name__)

DELIVERY_EXHAUSTED = "delivery_exhausted"
# A task whose route is at its limit is put back for ROUTE_BUSY_BASE_S plus a
# random share of an exponential delay: 8 to 38 s in all before its fifth
# delivery.
ROUTE_BUSY_BASE_S = 2.0
ROUTE_BUSY_MAX_S = 30.0
PUBLISH_TIMEOUT_S = 5.0


class StopReason(StrEnum):
    CANCEL_REQUESTED = "cancel_requested"
    RUN_LOST = "run_lost"
    REPORT_FAILED = "report_failed"


class ExecutorHandler:
    """Runs executor tasks; implements bulkhead.worker.TaskHandler."""

    def __init__(
        self,
        runs: RunClient,
        catalog: ModelCatalog,
        providers: Mapping[str, ChatProvider],
        settings: ExecutorSettings,
        worker_id: str,
    ) -> None:
        self._runs = runs
        self._catalog = catalog
        self._providers = providers
        self._settings = settings
        self._worker_id = worker_id
        self._policy = RetryPolicy(
            base_s=settings.executor_retry_base_s,
            max_s=settings.executor_retry_max_s,
            retry_after_max_s=settings.executor_retry_after_max_s,
        )
        self._max_output_chars = settings.executor_max_output_chars
        self._active: dict[str, RunExecution] = {}
        self._in_hand = RunsInHand()
        self._route_slots = RouteSlots(
            route_limit(
                settings.executor_concurrency,
                settings.executor_route_concurrency,
                len(catalog.models),
            )
        )
        self._jetstream: JetStreamContext | None = None
        logger.info(
            "runs per model route limited",
            limit=self._route_slots.limit,
            concurrency=settings.executor_concurrency,
            routes=len(catalog.models),
        )

    def use_connection(self, nc: Client) -> None:
        """Use ``nc`` to publish tasks again. The worker calls this on each
        connection to NATS."""
        self._jetstream = nc.jetstream()

    async def on_cancel_notice(self, msg: Msg) -> None:
        """Stop the local execution of a run named in a CancelNotice, if any."""
        try:
            notice = executor_pb2.CancelNotice.FromString(msg.data)
        except DecodeError:
            logger.warning("invalid cancel notice ignored", subject=msg.subject)
            return
        execution = self._active.get(notice.run_id)
        if execution is not None:
            logger.info("run cancel notice received", run_id=notice.run_id)
            execution.stop(StopReason.CANCEL_REQUESTED)

    async def handle(self, task: Task) -> Outcome:
        message = decode_task(task, executor_pb2.ExecutorTask.FromString)
        if isinstance(message, Outcome):
            return message
        with self._in_hand.hold(task.run_id) as held:
            if not held:
                return Outcome.ack("run already in hand")
            with self._route_slots.take(message.model) as slot:
                if not slot:
                    return await self._route_busy(task, message.model)
                return await self._handle_claimed(task)

    async def _route_busy(self, task: Task, route: str) -> Outcome:
        """Put back, unclaimed, a task whose route has no free slot.

        A nak on the last delivery would exhaust the task's deliveries, so
        there the task is published again as a new message, with deliveries
        of its own, and this one is acknowledged.

        NOTE: a task that is put back still counts towards the consumer's
        max_ack_pending (1,024), so with over a thousand of them waiting,
        tasks of other routes reach the executor seconds later.
        """
        limit = self._route_slots.limit
        if task.is_last_delivery:
            return await self._publish_again(task, route)
        delay = ROUTE_BUSY_BASE_S + full_jitter_delay(
            task.delivery, ROUTE_BUSY_BASE_S, ROUTE_BUSY_MAX_S
        )
        logger.info(
            "model route at its limit, task put back",
            model=route,
            limit=limit,
            retry_in_s=round(delay, 2),
        )
        return Outcome.nak(delay, "route busy")

    async def _publish_again(self, task: Task, route: str) -> Outcome:
        jetstream = self._jetstream
        if jetstream is None:
            return _left_to_sweeper(route, "not connected to NATS")
        try:
            await jetstream.publish(
                task.msg.subject, task.msg.data, timeout=PUBLISH_TIMEOUT_S
            )
        except (OSError, TimeoutError, nats.errors.Error) as error:
            return _left_to_sweeper(route, str(error) or type(error).__name__)
        logger.info(
            "model route at its limit on the last delivery, task published again",
            model=route,
            limit=self._route_slots.limit,
        )
        return Outcome.ack("route busy, published again")

    async def _handle_claimed(self, task: Task) -> Outcome:
        claim = await claim_run(
            self._runs, task, run_pb.STAGE_EXECUTOR, self._worker_id
        )
        if isinstance(claim, Outcome):
            return claim
        run_id = task.run_id
        logger.info(
            "run claimed",
            models=list(claim.plan.model_chain),
            has_output=claim.has_output,
        )
        execution = RunExecution(self, run_id, claim)
        self._active[run_id] = execution
        try:
            return await execution.run()
        finally:
            if self._active.get(run_id) is execution:
                del self._active[run_id]

    async def give_up(self, task: Task, error: BaseException) -> bool:
        message = f"executor task failed on all deliveries: {type(error).__name__}"
        return await fail_exhausted_run(
            self._runs,
            task,
            stage=run_pb.STAGE_EXECUTOR,
            worker_id=self._worker_id,
            code=DELIVERY_EXHAUSTED,
            message=message,
        )

    async def release(self, task: Task, reason: str) -> None:
        if task.attempt is not None:
            await self._runs.release(task.run_id, task.attempt, reason)


class RunExecution:
    """One claimed attempt: the chain task, its output and the ways it stops."""

    def __init__(
        self, handler: ExecutorHandler, run_id: str, claim: run_pb.ClaimRunResponse
    ) -> None:
        self._handler = handler
        self._runs = handler._runs
        self._settings = handler._settings
        self._run_id = run_id
        self._claim = claim
        self._attempt = claim.attempt
        self._work: asyncio.Task[Outcome] | None = None
        self._stop_reason: StopReason | None = None
        self._stop_error: BaseException | None = None

    def stop(
        self, reason: StopReason | str, error: BaseException | None = None
    ) -> None:
        """Cancel the model call at once; the first reason wins."""
        if self._stop_reason is None:
            self._stop_reason = _as_stop_reason(reason)
            self._stop_error = error
        if self._work is not None and not self._work.done():
            self._work.cancel()

    async def run(self) -> Outcome:
        output = OutputBatcher(
            self._send_batch,
            interval_s=self._settings.executor_flush_interval_s,
            max_chars=self._settings.executor_flush_max_chars,
            on_error=self._on_background_error,
        )
        lease = keep_lease(
            self._runs,
            self._run_id,
            self._attempt,
            self._settings.executor_lease_renew_s,
            self.stop,
        )
        async with lease:
            self._work = asyncio.create_task(self._execute(output))
            try:
                return await self._work
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                return self._stopped_outcome()
            except RunLostError as error:
                logger.info("run taken over or finished, stopping", reason=error.reason)
                return Outcome.ack(error.reason)
            finally:
                await output.aclose()

    async def _execute(self, output: OutputBatcher) -> Outcome:
        handler = self._handler
        try:
            result = await run_chain(
                self._claim.plan,
                catalog=handler._catalog,
                providers=handler._providers,
                sink=output,
                attempt=self._attempt,
                reset_first=self._claim.has_output,
                policy=handler._policy,
                max_output_chars=handler._max_output_chars,
            )
        except ChainExhaustedError as error:
            final_batch, final_output = await output.take_pending()
            await self._runs.fail(
                self._run_id,
                self._attempt,
                error.code,
                error.message,
                error.calls,
                final_batch=final_batch,
                final_output=final_output,
            )
            logger.warning(
                "run failed",
                code=error.code,
                error=error.message,
                calls=len(error.calls),
            )
            return Outcome.ack(error.code)

        final_batch, final_output = await output.take_pending()
        await self._runs.complete(
            self._run_id,
            self._attempt,
            result.model_used,
            result.usage,
            result.calls,
            final_batch=final_batch,
            final_output=final_output,
        )
        logger.info(
            "run completed",
            model_used=result.model_used,
            calls=len(result.calls),
            completion_tokens=result.usage.completion_tokens,
            batches=output.batches_sent,
        )
        return Outcome.ack("completed")

    async def _send_batch(self, batch: int, events: list[run_pb.OutputEvent]) -> None:
        response = await self._runs.append_output(
            self._run_id, self._attempt, batch, events
        )
        if response.cancel_requested:
            logger.info("run cancel requested (append output)")
            self.stop(StopReason.CANCEL_REQUESTED)

    def _on_background_error(self, error: BaseException) -> None:
        if isinstance(error, RunLostError):
            self.stop(StopReason.RUN_LOST)
        else:
            self.stop(StopReason.REPORT_FAILED, error)

    def _stopped_outcome(self) -> Outcome:
        reason = self._stop_reason
        if reason is StopReason.REPORT_FAILED and self._stop_error is not None:
            # Let the worker loop nak and retry, as for any failed report.
            raise self._stop_error
        logger.info("run stopped", reason=reason.value if reason else None)
        return Outcome.ack(reason.value if reason else "stopped")


def _left_to_sweeper(route: str, error: str) -> Outcome:
    """Acknowledge a task that could not be published again. Its run stays
    dispatched and unclaimed, so the sweeper publishes a new task for it
    (``BULKHEAD_REDISPATCH_AFTER_S``)."""
    logger.warning(
        "publishing the task again failed; left to the sweeper",
        model=route,
        error=error,
    )
    return Outcome.ack("route busy, publish failed")


def _as_stop_reason(reason: StopReason | str) -> StopReason:
    if isinstance(reason, StopReason):
        return reason
    if reason == StopReason.CANCEL_REQUESTED.value:
        return StopReason.CANCEL_REQUESTED
    return StopReason.RUN_LOST
