"""chat_service bootstrap: ``python -m chat_service``.

Starts the gRPC server (ChatService, RunService, AuthService, health and
reflection), the outbox relay, the sweeper and the NATS connection. NATS
may be down at start-up or later: the API keeps accepting messages and the
relay catches up once NATS is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import uvloop
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bulkhead.gc_tuning import tune_garbage_collector
from bulkhead.log import configure_logging, get_logger
from bulkhead.messaging import Topology, connect_nats, ensure_stream
from bulkhead.models import load_catalog
from bulkhead.proto.chat.v1 import (
    auth_service_pb2_grpc,
    chat_service_pb2_grpc,
    run_service_pb2_grpc,
)
from bulkhead.rpc import HealthServicer, add_port, create_server, mark_serving
from bulkhead.settings import warn_if_dev_mode
from chat_service import dead_letters
from chat_service.config import ChatServiceSettings
from chat_service.context import ServiceContext
from chat_service.event_hub import EventHub
from chat_service.outbox import OutboxRelay
from chat_service.posting import PostLimits
from chat_service.runs import RunPolicy
from chat_service.service_auth import ServiceTokenInterceptor
from chat_service.servicers.auth import AuthServicer
from chat_service.servicers.chat import ChatServicer
from chat_service.servicers.runs import RunServicer
from chat_service.store.database import Database
from chat_service.store.first_messages import FirstMessageWriter
from chat_service.sweeper import Sweeper
from chat_service.watch import event_reader

logger = get_logger(__name__)

SERVICE_NAMES = [
    "chat.v1.ChatService",
    "chat.v1.RunService",
    "chat.v1.AuthService",
]
# Health entry that reports whether this replica can reach NATS. The overall
# status ("") stays SERVING without NATS, because messages are still accepted.
NATS_HEALTH_NAME = "bulkhead.nats"
SHUTDOWN_GRACE_S = 10.0
MAX_CONTENT_CHARS = 32_000


def build_context(settings: ChatServiceSettings) -> ServiceContext:
    topology = Topology.from_settings(settings)
    db = Database(
        settings.database_url,
        settings.database_pool_size,
        settings.database_connect_timeout_s,
    )
    return ServiceContext(
        settings=settings,
        db=db,
        topology=topology,
        catalog=load_catalog(settings.models_file),
        hub=EventHub(
            topology.subjects.run_events,
            settings.watch_queue_size,
            read_events=event_reader(db),
        ),
        relay=OutboxRelay(db, settings.relay_batch_size, settings.relay_poll_s),
        policy=RunPolicy(lease_s=settings.lease_s, max_attempts=settings.max_attempts),
        limits=PostLimits(
            max_content_chars=MAX_CONTENT_CHARS,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            max_messages_per_minute=settings.max_messages_per_minute,
        ),
        first_messages=FirstMessageWriter(db),
    )


async def _keep_nats(ctx: ServiceContext) -> None:
    """Connect to NATS (retrying forever), then attach the relay and the hub."""
    delay = 0.5
    while True:
        try:
            nc = await connect_nats(ctx.settings, name="chat_service")
            break
        except Exception as error:  # noqa: BLE001 - retried until it works
            logger.warning(
                "nats connect failed, retrying",
                error=str(error) or type(error).__name__,
                retry_in_s=delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    ctx.nats = nc
    js = nc.jetstream()
    while True:
        try:
            await ensure_stream(js, ctx.topology)
            break
        except Exception as error:  # noqa: BLE001 - retried until it works
            logger.warning("jetstream stream set-up failed, retrying", error=str(error))
            await asyncio.sleep(1.0)

    async def on_notice(msg: Msg) -> None:
        ctx.hub.on_notice(msg.data)

    await nc.subscribe(ctx.topology.subjects.run_events_wildcard, cb=on_notice)
    await dead_letters.listen(ctx, nc)

    async def publish(subject: str, payload: bytes) -> None:
        await nc.publish(subject, payload)

    ctx.hub.set_publisher(publish)
    ctx.relay.attach(js, lambda: ensure_stream(js, ctx.topology))
    logger.info("nats connected", url=ctx.settings.nats_url, stream=ctx.topology.stream)


async def _report_nats_health(ctx: ServiceContext, health: HealthServicer) -> None:
    serving: bool | None = None
    while True:
        connected = ctx.nats is not None and ctx.nats.is_connected
        if connected != serving:
            await mark_serving(health, [], serving=connected, name=NATS_HEALTH_NAME)
            serving = connected
        await asyncio.sleep(1.0)


async def serve(settings: ChatServiceSettings) -> None:
    warn_if_dev_mode(settings, logger)
    ctx = build_context(settings)
    server, health = create_server(
        SERVICE_NAMES, interceptors=[ServiceTokenInterceptor.from_settings(settings)]
    )
    chat_service_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(ctx), server)
    run_service_pb2_grpc.add_RunServiceServicer_to_server(RunServicer(ctx), server)
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(ctx), server)
    port = add_port(server, settings.chat_service_listen, settings.grpc_tls())
    if port == 0:
        raise RuntimeError(f"cannot listen on {settings.chat_service_listen}")

    sweeper = Sweeper(
        ctx.db,
        ctx.topology,
        ctx.policy,
        settings.sweep_interval_s,
        settings.redispatch_after_s,
        ctx.after_commit,
    )
    await server.start()
    tasks = [
        asyncio.create_task(_keep_nats(ctx), name="nats"),
        asyncio.create_task(ctx.relay.run(), name="relay"),
        asyncio.create_task(sweeper.run(), name="sweeper"),
        asyncio.create_task(_report_nats_health(ctx, health), name="nats-health"),
    ]
    await mark_serving(health, SERVICE_NAMES)
    logger.info(
        "chat_service started",
        listen=settings.chat_service_listen,
        port=port,
        database=ctx.db.engine.url.get_backend_name(),
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    logger.info("chat_service stopping", grace_s=SHUTDOWN_GRACE_S)
    await mark_serving(health, SERVICE_NAMES, serving=False)
    await server.stop(SHUTDOWN_GRACE_S)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if ctx.nats is not None:
        with contextlib.suppress(Exception):
            await ctx.nats.drain()
    await ctx.db.dispose()
    logger.info("chat_service stopped")


def main() -> None:
    settings = ChatServiceSettings()
    configure_logging("chat_service", settings.log_level, settings.log_format)
    tune_garbage_collector()
    uvloop.run(serve(settings))


__all__ = ["NatsClient", "main", "serve"]
