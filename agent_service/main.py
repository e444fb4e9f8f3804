"""Start the agent: ``python -m agent_service``."""

from __future__ import annotations

import asyncio
import signal

import uvloop

from agent_service.config import AgentSettings
from agent_service.worker import AgentHandler
from bulkhead.gc_tuning import tune_garbage_collector
from bulkhead.log import configure_logging, get_logger
from bulkhead.messaging import Topology
from bulkhead.models import load_catalog
from bulkhead.rpc import create_channel
from bulkhead.settings import warn_if_dev_mode
from bulkhead.worker import RunClient, TaskWorker, WorkerOptions
from bulkhead.worker.loop import make_worker_id

SERVICE = "agent_service"

logger = get_logger(__name__)


async def serve(settings: AgentSettings) -> None:
    """Run the agent until SIGTERM or SIGINT, then shut down cleanly."""
    catalog = load_catalog(settings.models_file)
    topology = Topology.from_settings(settings)
    worker_id = make_worker_id("agent")
    channel = create_channel(settings.chat_service_addr, settings.grpc_tls())
    handler = AgentHandler(
        RunClient(
            channel,
            timeout_s=settings.agent_rpc_timeout_s,
            retry_s=settings.agent_rpc_retry_s,
            service_token=settings.worker_service_token.get_secret_value(),
        ),
        catalog,
        settings,
        worker_id,
    )
    options = WorkerOptions(
        service=SERVICE,
        durable=topology.agent_consumer,
        subject=topology.subjects.agent_tasks,
        concurrency=settings.agent_concurrency,
        health_listen=settings.agent_health_listen,
        health_tls=settings.grpc_tls(),
        shutdown_grace_s=settings.agent_shutdown_grace_s,
        heartbeat_s=topology.heartbeat_s,
    )
    worker = TaskWorker(settings, topology, options, handler)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)

    logger.info(
        "agent starting", worker_id=worker_id, default_model=catalog.default_model
    )
    try:
        await worker.run()
    finally:
        await channel.close()


def main() -> None:
    settings = AgentSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    warn_if_dev_mode(settings, logger)
    tune_garbage_collector()
    uvloop.run(serve(settings))
