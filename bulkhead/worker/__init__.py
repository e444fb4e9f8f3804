"""The JetStream worker loop and RunService client shared by the agent and executor.

A service supplies a :class:`TaskHandler`; :class:`TaskWorker` connects to
NATS, pulls tasks from one durable consumer, runs the handler per message
with heartbeats, and settles each message (ack, nak with a delay, or term).
"""

from bulkhead.worker.backoff import full_jitter_delay
from bulkhead.worker.loop import (
    Action,
    Outcome,
    Task,
    TaskHandler,
    TaskWorker,
    WorkerOptions,
    connect_with_retry,
)
from bulkhead.worker.runs import RunClient, RunLostError, keep_lease

__all__ = [
    "Action",
    "Outcome",
    "RunClient",
    "RunLostError",
    "Task",
    "TaskHandler",
    "TaskWorker",
    "WorkerOptions",
    "connect_with_retry",
    "full_jitter_delay",
    "keep_lease",
]
