"""What the servicers share: settings, database, hub, relay and NATS."""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.aio.client import Client as NatsClient

from bulkhead.log import get_logger
from bulkhead.messaging import Topology
from bulkhead.models import ModelCatalog
from bulkhead.proto.executor.v1 import executor_pb2
from chat_service.config import ChatServiceSettings
from chat_service.event_hub import EventHub
from chat_service.events import AfterCommit
from chat_service.outbox import OutboxRelay
from chat_service.posting import PostLimits
from chat_service.runs import RunPolicy
from chat_service.store.database import Database
from chat_service.store.first_messages import FirstMessageWriter

logger = get_logger(__name__)


@dataclass
class ServiceContext:
    settings: ChatServiceSettings
    db: Database
    topology: Topology
    catalog: ModelCatalog
    hub: EventHub
    relay: OutboxRelay
    policy: RunPolicy
    limits: PostLimits
    first_messages: FirstMessageWriter
    nats: NatsClient | None = field(default=None)

    async def after_commit(self, effects: AfterCommit) -> None:
        """Wake watchers, notify executors of cancels and wake the relay."""
        for run_id, events in effects.events.items():
            await self.hub.publish(run_id, events)
        for run_id in effects.cancelled_runs:
            await self._send_cancel_notice(str(run_id))
        if effects.outbox_rows:
            self.relay.wake()

    async def _send_cancel_notice(self, run_id: str) -> None:
        # Best effort: an executor that misses the notice learns of the
        # cancel from its next AppendOutput or RenewLease reply.
        if self.nats is None or not self.nats.is_connected:
            return
        notice = executor_pb2.CancelNotice(run_id=run_id).SerializeToString()
        try:
            await self.nats.publish(self.topology.subjects.cancel(run_id), notice)
        except Exception as error:  # noqa: BLE001 - a lost notice is tolerated
            logger.warning("cancel notice not sent", run_id=run_id, error=str(error))
