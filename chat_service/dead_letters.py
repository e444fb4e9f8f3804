"""Tasks that exhausted their JetStream deliveries end as failed runs.

JetStream publishes a max-deliveries advisory for such a task and leaves the
message in the work-queue stream. chat_service listens to the advisories of
both consumers, fails the run with the reason stored (unless a worker
already ended it) and deletes the message, so that no dead task stays in the
queue and no run is dropped silently.
"""

from __future__ import annotations

from uuid import UUID

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from bulkhead.log import get_logger
from bulkhead.proto.agent.v1 import agent_pb2
from bulkhead.proto.executor.v1 import executor_pb2
from chat_service.context import ServiceContext
from chat_service.control import fail_abandoned_run
from chat_service.errors import NotFoundError as RunNotFoundError

logger = get_logger(__name__)

FAILURE_CODES = {"agent": "agent_failed", "executor": "delivery_exhausted"}


async def listen(ctx: ServiceContext, nc: NatsClient) -> None:
    """Subscribe to the max-deliveries advisories of the agent and executor consumers."""
    topology = ctx.topology
    for consumer in (topology.agent_consumer, topology.executor_consumer):

        async def handle(msg: Msg, consumer: str = consumer) -> None:
            await _handle_advisory(ctx, nc, consumer, msg.data)

        await nc.subscribe(topology.max_deliveries_advisory(consumer), cb=handle)


async def _handle_advisory(
    ctx: ServiceContext, nc: NatsClient, consumer: str, data: bytes
) -> None:
    try:
        advisory = orjson.loads(data)
        stream_seq = int(advisory["stream_seq"])
        deliveries = int(advisory.get("deliveries", 0))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        logger.warning("malformed max-deliveries advisory", error=str(error))
        return
    js = nc.jetstream()
    stream = ctx.topology.stream
    try:
        raw = await js.get_msg(stream, stream_seq)
    except NotFoundError:
        return  # already deleted by another replica
    task = (
        agent_pb2.AgentTask()
        if consumer == ctx.topology.agent_consumer
        else executor_pb2.ExecutorTask()
    )
    try:
        task.ParseFromString(raw.data or b"")
        run_id = UUID(task.run_id)
    except (ValueError, TypeError) as error:
        logger.warning(
            "dead task with unreadable payload deleted",
            error=str(error),
            stream_seq=stream_seq,
        )
        await js.delete_msg(stream, stream_seq)
        return

    code = FAILURE_CODES.get(consumer, "delivery_exhausted")
    message = (
        f"the {consumer} task was delivered {deliveries} times without being processed"
    )
    try:
        async with ctx.db.transaction() as conn:
            effects = await fail_abandoned_run(
                conn, run_id, code, message, ctx.topology
            )
    except RunNotFoundError:
        effects = None
    if effects is not None:
        await ctx.after_commit(effects)
    await js.delete_msg(stream, stream_seq)
    logger.warning(
        "task exhausted its deliveries",
        run_id=str(run_id),
        consumer=consumer,
        deliveries=deliveries,
        run_failed=bool(effects and effects.events),
    )
