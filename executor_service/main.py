"""Start the executor: ``python -m executor_service``."""

from __future__ import annotations

import asyncio
import os
import signal

import uvloop
from nats.aio.client import Client

from bulkhead.gc_tuning import tune_garbage_collector
from bulkhead.log import configure_logging, get_logger
from bulkhead.messaging import Topology
from bulkhead.models import load_catalog
from bulkhead.rpc import create_channel
from bulkhead.settings import warn_if_dev_mode
from bulkhead.worker import RunClient, TaskWorker, WorkerOptions
from bulkhead.worker.loop import make_worker_id
from executor_service.config import ExecutorSettings
from executor_service.providers import default_providers
from executor_service.providers.openai_compatible import unset_api_key_variables
from executor_service.worker import ExecutorHandler

SERVICE = "executor_service"

logger = get_logger(__name__)


async def serve(settings: ExecutorSettings) -> None:
    """Run the executor until SIGTERM or SIGINT, then shut down cleanly."""
    catalog = load_catalog(settings.models_file)
    for route, variable in unset_api_key_variables(catalog, os.environ).items():
        logger.warning(
            "api key variable of a model route is not set; its calls send a "
            "placeholder key",
            model=route,
            api_key_env=variable,
        )
    topology = Topology.from_settings(settings)
    worker_id = make_worker_id("executor")
    channel = create_channel(settings.chat_service_addr, settings.grpc_tls())
    providers = default_providers(settings.executor_max_output_chars)
    handler = ExecutorHandler(
        RunClient(
            channel,
            timeout_s=settings.executor_rpc_timeout_s,
            retry_s=settings.executor_rpc_retry_s,
            service_token=settings.worker_service_token.get_secret_value(),
        ),
        catalog,
        providers,
        settings,
        worker_id,
    )

    async def subscribe_cancel_notices(nc: Client) -> None:
        handler.use_connection(nc)
        # One subscription per process; the handler routes each notice to the
        # run it names, if that run executes here.
        await nc.subscribe(
            topology.subjects.cancel_wildcard, cb=handler.on_cancel_notice
        )

    options = WorkerOptions(
        service=SERVICE,
        durable=topology.executor_consumer,
        subject=topology.subjects.executor_tasks,
        concurrency=settings.executor_concurrency,
        health_listen=settings.executor_health_listen,
        health_tls=settings.grpc_tls(),
        shutdown_grace_s=settings.executor_shutdown_grace_s,
        heartbeat_s=topology.heartbeat_s,
    )
    worker = TaskWorker(
        settings, topology, options, handler, on_connected=subscribe_cancel_notices
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)

    logger.info("executor starting", worker_id=worker_id, models=sorted(catalog.models))
    try:
        await worker.run()
    finally:
        for provider in providers.values():
            await provider.aclose()
        await channel.close()


def main() -> None:
    settings = ExecutorSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    warn_if_dev_mode(settings, logger)
    tune_garbage_collector()
    uvloop.run(serve(settings))
