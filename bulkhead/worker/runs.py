"""Client for chat_service's RunService, as the agent and executor use it.

Every call carries a deadline. A report that chat_service rejects because the
attempt is no longer current, or because the run already ended, raises
:class:`RunLostError`: the worker must stop working on the run and
acknowledge its task. Any other failure raises ``grpc.aio.AioRpcError``.

Claims and reports (plans, output, the final result) are retried while
chat_service is unavailable or slow, for up to ``retry_s`` seconds. Without
that, a restart of chat_service would make every worker give up the model
calls it has in flight, and the next delivery would pay for them again. A
task would also use up its deliveries within seconds of an outage. A retry is
safe because chat_service applies each report once: output batches are
numbered, and a repeated final report finds the run already finished. A
repeated claim by the same worker takes the run again with a new attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from bulkhead.log import bind_context, get_logger
from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb
from bulkhead.proto.chat.v1 import run_service_pb2_grpc as run_grpc
from bulkhead.proto.chat.v1 import types_pb2
from bulkhead.rpc import Reason, from_timestamp, parse_error, service_metadata
from bulkhead.worker.loop import Outcome, Task

logger = get_logger(__name__)

DEFAULT_CALL_TIMEOUT_S = 5.0
# Delay before a task whose run is leased is tried again, when chat_service
# does not say when the lease expires.
LEASED_RETRY_S = 5.0

_LOST_REASONS = {Reason.STALE_ATTEMPT.value, Reason.RUN_FINISHED.value}
# Codes after which a call may succeed if made again: chat_service is down
# or restarting, or it did not respond within the deadline.
_TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 2.0


class RunLostError(Exception):
    """The run ended, or another attempt owns it; the caller stops and acks."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class RunClient:
    """RunService calls with a deadline each and lost-run errors mapped."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        service_token: str = "",
        retry_s: float = 0.0,
    ) -> None:
        self._stub = run_grpc.RunServiceStub(channel)
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        # The worker's service credential, sent with every call.
        self._metadata = service_metadata(service_token)

    async def claim(
        self, run_id: str, stage: int, worker_id: str, delivery: int
    ) -> run_pb.ClaimRunResponse:
        request = run_pb.ClaimRunRequest(
            run_id=run_id, stage=stage, worker_id=worker_id, delivery=delivery
        )
        return await self._call_retrying("ClaimRun", self._stub.ClaimRun, request)

    async def submit_plan(self, run_id: str, attempt: int, plan: run_pb.Plan) -> None:
        request = run_pb.SubmitPlanRequest(run_id=run_id, attempt=attempt, plan=plan)
        await self._call_retrying("SubmitPlan", self._stub.SubmitPlan, request)

    async def append_output(
        self,
        run_id: str,
        attempt: int,
        batch: int,
        events: Iterable[run_pb.OutputEvent],
    ) -> run_pb.AppendOutputResponse:
        request = run_pb.AppendOutputRequest(
            run_id=run_id, attempt=attempt, batch=batch, events=list(events)
        )
        return await self._call_retrying(
            "AppendOutput", self._stub.AppendOutput, request
        )

    async def renew_lease(self, run_id: str, attempt: int) -> run_pb.RenewLeaseResponse:
        request = run_pb.RenewLeaseRequest(run_id=run_id, attempt=attempt)
        return await self._call(self._stub.RenewLease, request)

    async def complete(
        self,
        run_id: str,
        attempt: int,
        model_used: str,
        usage: types_pb2.Usage,
        model_calls: Iterable[types_pb2.ModelCall],
        final_batch: int = 0,
        final_output: Iterable[run_pb.OutputEvent] = (),
    ) -> None:
        """Complete the run, storing ``final_output`` (batch ``final_batch``,
        not yet sent) in the same transaction."""
        request = run_pb.CompleteRunRequest(
            run_id=run_id,
            attempt=attempt,
            model_used=model_used,
            usage=usage,
            model_calls=list(model_calls),
            final_batch=final_batch,
            final_output=list(final_output),
        )
        await self._call_retrying("CompleteRun", self._stub.CompleteRun, request)

    async def fail(
        self,
        run_id: str,
        attempt: int,
        code: str,
        message: str,
        model_calls: Iterable[types_pb2.ModelCall] = (),
        final_batch: int = 0,
        final_output: Iterable[run_pb.OutputEvent] = (),
    ) -> None:
        """Fail the run; ``final_output`` is stored as in :meth:`complete`."""
        request = run_pb.FailRunRequest(
            run_id=run_id,
            attempt=attempt,
            error=types_pb2.RunError(code=code, message=message),
            model_calls=list(model_calls),
            final_batch=final_batch,
            final_output=list(final_output),
        )
        await self._call_retrying("FailRun", self._stub.FailRun, request)

    async def release(self, run_id: str, attempt: int, reason: str) -> None:
        request = run_pb.ReleaseRunRequest(
            run_id=run_id, attempt=attempt, reason=reason
        )
        await self._call(self._stub.ReleaseRun, request)

    async def _call_retrying(
        self, name: str, method: Callable[..., Awaitable[Any]], request: Any
    ) -> Any:
        """Make a call, retrying transient failures for ``retry_s`` seconds."""
        if self._retry_s <= 0:
            return await self._call(method, request)
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_transient),
            wait=wait_exponential_jitter(
                multiplier=RETRY_FIRST_S,
                max=RETRY_MAX_S,
                jitter=RETRY_FIRST_S,
            ),
            stop=stop_after_delay(self._retry_s),
            before_sleep=_log_retry(name),
            reraise=True,
        )
        return await retrying(self._call, method, request)

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        try:
            return await method(
                request, timeout=self._timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            detail = parse_error(error)
            if (
                detail.code == grpc.StatusCode.FAILED_PRECONDITION
                and detail.reason in _LOST_REASONS
            ):
                raise RunLostError(detail.reason, detail.message) from error
            if detail.code == grpc.StatusCode.NOT_FOUND:
                raise RunLostError(Reason.NOT_FOUND.value, detail.message) from error
            raise


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in _TRANSIENT_CODES


def _log_retry(name: str) -> Callable[[RetryCallState], None]:
    def log(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        rpc_error = error if isinstance(error, grpc.aio.AioRpcError) else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "call to chat_service failed, retrying",
            method=name,
            code=rpc_error.code().name if rpc_error else "",
            error=rpc_error.details() if rpc_error else str(error),
            tries=state.attempt_number,
            retry_in_s=round(delay, 2),
            waited_s=round(state.seconds_since_start or 0.0, 2),
        )

    return log


@contextlib.asynccontextmanager
async def keep_lease(
    client: RunClient,
    run_id: str,
    attempt: int,
    interval_s: float,
    on_stop: Callable[[str], None],
) -> AsyncIterator[None]:
    """Renew the run's lease every ``interval_s`` seconds while the block runs.

    ``on_stop`` is called once with ``"cancel_requested"`` when chat_service
    reports that the run was cancelled, or with the rejection reason when the
    attempt is no longer current; renewal stops then. A failed renewal for
    any other reason is logged and tried again at the next interval.
    """
    renewer = asyncio.create_task(
        _renew_forever(client, run_id, attempt, interval_s, on_stop),
        name=f"lease-{run_id}",
    )
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer


async def _renew_forever(
    client: RunClient,
    run_id: str,
    attempt: int,
    interval_s: float,
    on_stop: Callable[[str], None],
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            response = await client.renew_lease(run_id, attempt)
        except RunLostError as error:
            logger.warning("lease renewal rejected", reason=error.reason)
            on_stop(error.reason)
            return
        except grpc.aio.AioRpcError as error:
            logger.warning(
                "lease renewal failed, retrying at the next interval",
                code=error.code().name,
                error=error.details(),
            )
            continue
        if response.cancel_requested:
            logger.info("run cancel requested (lease renewal)")
            on_stop("cancel_requested")
            return


class RunTask(Protocol):
    """A task message that names one run: AgentTask or ExecutorTask."""

    run_id: str


RunTaskT = TypeVar("RunTaskT", bound=RunTask)


def decode_task(task: Task, decode: Callable[[bytes], RunTaskT]) -> RunTaskT | Outcome:
    """Decode a task's payload, with its run id bound to the log context and
    recorded on ``task``, or return the Outcome that drops an invalid one."""
    try:
        message = decode(task.msg.data)
    except DecodeError:
        logger.error("invalid task dropped", size=len(task.msg.data))
        return Outcome.term("invalid payload")
    task.run_id = message.run_id
    bind_context(run_id=message.run_id)
    return message


async def claim_run(
    runs: RunClient, task: Task, stage: run_pb.Stage.ValueType, worker_id: str
) -> run_pb.ClaimRunResponse | Outcome:
    """Claim the decoded task's run for ``stage``.

    Returns the claim, with the attempt bound to the log context and
    recorded on ``task``, or the Outcome that settles the task without work
    when the run is not claimable.
    """
    try:
        claim = await runs.claim(task.run_id, stage, worker_id, task.delivery)
    except RunLostError as error:
        logger.info("run not claimable, skipping", reason=error.reason)
        return Outcome.ack(error.reason)
    skip = skip_outcome(claim, task.is_last_delivery)
    if skip is not None:
        return skip
    task.attempt = claim.attempt
    bind_context(attempt=claim.attempt)
    return claim


class RunsInHand:
    """The runs that this worker process is handling now.

    JetStream can hold two tasks for one run, for example when the sweeper
    publishes a task again for a run that waited in a backlog longer than
    its redispatch time. chat_service lets a worker claim again a run that
    the worker has claimed already, which would start a new attempt and stop
    the one under way. So a second task for a run in hand is acknowledged
    without a claim.
    """

    def __init__(self) -> None:
        self._run_ids: set[str] = set()

    @contextlib.contextmanager
    def hold(self, run_id: str) -> Iterator[bool]:
        """Hold ``run_id`` for the block. Yields False if it was already held."""
        if run_id in self._run_ids:
            logger.info("second task for a run this worker is handling, dropped")
            yield False
            return
        self._run_ids.add(run_id)
        try:
            yield True
        finally:
            self._run_ids.discard(run_id)


def skip_outcome(
    claim: run_pb.ClaimRunResponse, last_delivery: bool = False
) -> Outcome | None:
    """Return how to settle a task whose run was not claimed, or None if claimed.

    A run leased by another attempt is tried again after the lease expires,
    except on the task's last delivery: a nak there would exhaust the
    deliveries and fail a run that the other attempt may still finish. The
    task is acknowledged instead, and if that attempt dies, chat_service's
    sweeper re-schedules the run once the lease has expired.
    """
    outcome = claim.outcome
    if outcome == run_pb.CLAIM_OUTCOME_CLAIMED:
        return None
    if outcome == run_pb.CLAIM_OUTCOME_LEASED and last_delivery:
        logger.info("run leased by another attempt on the last delivery, skipping")
        return Outcome.ack("leased on the last delivery")
    if outcome == run_pb.CLAIM_OUTCOME_LEASED:
        delay = lease_wait_s(claim)
        logger.info("run leased by another attempt, retrying later", retry_in_s=delay)
        return Outcome.nak(delay, "leased")
    name = run_pb.ClaimOutcome.Name(outcome)
    logger.info("run not claimable, skipping", outcome=name)
    return Outcome.ack(name)


def lease_wait_s(
    claim: run_pb.ClaimRunResponse,
    margin_s: float = 1.0,
    default_s: float = LEASED_RETRY_S,
) -> float:
    """Return seconds until the other attempt's lease expires, plus a margin.

    Without an expiry time in the response, returns ``default_s``.
    """
    if not claim.HasField("lease_expires_at"):
        return default_s
    expires_at = from_timestamp(claim.lease_expires_at)
    remaining = (expires_at - datetime.now(UTC)).total_seconds()
    return max(remaining + margin_s, 1.0)


async def fail_exhausted_run(
    runs: RunClient, task: Task, *, stage: int, worker_id: str, code: str, message: str
) -> bool:
    """Fail the run after its last delivery failed; return True if that is stored.

    Also returns True when there is nothing to fail because the run already
    ended. Returns False when chat_service could not be reached or another
    attempt still owns the run.
    """
    attempt = task.attempt
    if attempt is None:
        if not task.run_id:
            return False
        # This delivery never claimed the run: claim it now for a fencing
        # token that FailRun accepts.
        try:
            claim = await runs.claim(task.run_id, stage, worker_id, task.delivery)
        except RunLostError:
            return True
        if claim.outcome == run_pb.CLAIM_OUTCOME_LEASED:
            return False
        if claim.outcome != run_pb.CLAIM_OUTCOME_CLAIMED:
            return True
        attempt = claim.attempt
    try:
        await runs.fail(task.run_id, attempt, code, message)
    except RunLostError:
        return True
    logger.warning("run failed", code=code, delivery=task.delivery)
    return True
