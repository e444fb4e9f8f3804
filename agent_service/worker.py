"""The agent's task handler: claim a run, plan it, submit the plan."""

from __future__ import annotations

from agent_service.config import AgentSettings
from agent_service.planner import PlanningError, build_plan
from bulkhead.log import get_logger
from bulkhead.models import ModelCatalog
from bulkhead.proto.agent.v1 import agent_pb2
from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb
from bulkhead.worker import Outcome, RunClient, RunLostError, Task, keep_lease
from bulkhead.worker.runs import (
    RunsInHand,
    claim_run,
    decode_task,
    fail_exhausted_run,
)

logger = get_logger(__name__)

AGENT_FAILED = "agent_failed"


class AgentHandler:
    """Plans agent tasks; implements bulkhead.worker.TaskHandler."""

    def __init__(
        self,
        runs: RunClient,
        catalog: ModelCatalog,
        settings: AgentSettings,
        worker_id: str,
    ) -> None:
        self._runs = runs
        self._catalog = catalog
        self._settings = settings
        self._worker_id = worker_id
        self._in_hand = RunsInHand()

    async def handle(self, task: Task) -> Outcome:
        message = decode_task(task, agent_pb2.AgentTask.FromString)
        if isinstance(message, Outcome):
            return message
        with self._in_hand.hold(task.run_id) as held:
            if not held:
                return Outcome.ack("run already in hand")
            return await self._handle_claimed(task)

    async def _handle_claimed(self, task: Task) -> Outcome:
        claim = await claim_run(self._runs, task, run_pb.STAGE_AGENT, self._worker_id)
        if isinstance(claim, Outcome):
            return claim
        run_id = task.run_id
        logger.info("run claimed", model=claim.model, history=len(claim.history))
        try:
            await self._plan_and_submit(run_id, claim)
        except RunLostError as error:
            logger.info("run taken over or finished, stopping", reason=error.reason)
            return Outcome.ack(error.reason)
        except PlanningError as error:
            # Deterministic: another delivery would fail the same way.
            await self._runs.fail(run_id, claim.attempt, AGENT_FAILED, str(error))
            logger.warning("run failed", code=AGENT_FAILED, error=str(error))
            return Outcome.ack(AGENT_FAILED)
        return Outcome.ack("planned")

    async def give_up(self, task: Task, error: BaseException) -> bool:
        message = f"agent task failed on all deliveries: {type(error).__name__}"
        return await fail_exhausted_run(
            self._runs,
            task,
            stage=run_pb.STAGE_AGENT,
            worker_id=self._worker_id,
            code=AGENT_FAILED,
            message=message,
        )

    async def release(self, task: Task, reason: str) -> None:
        if task.attempt is not None:
            await self._runs.release(task.run_id, task.attempt, reason)

    async def _plan_and_submit(
        self, run_id: str, claim: run_pb.ClaimRunResponse
    ) -> None:
        # Planning takes milliseconds and SubmitPlan is one call, so a cancel
        # seen by the lease renewal needs no action here: chat_service rejects
        # the plan of a cancelled run with RUN_FINISHED.
        async with keep_lease(
            self._runs,
            run_id,
            claim.attempt,
            self._settings.agent_lease_renew_s,
            on_stop=lambda reason: None,
        ):
            plan = build_plan(
                claim.history,
                claim.model,
                self._catalog,
                self._settings.agent_context_budget_chars,
                self._settings.agent_system_prompt,
            )
            await self._runs.submit_plan(run_id, claim.attempt, plan)
        logger.info(
            "plan submitted",
            models=list(plan.model_chain),
            context_messages=len(plan.context),
            omitted_messages=plan.omitted_messages,
        )
