"""Configuration of a development or test stack: services, ports and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("chat_service", "agent_service", "executor_service", "gateway")
# Services in start order; each group starts together once the previous group
# is healthy. The stack stops them in the reverse order.
START_GROUPS = (("chat_service",), ("agent_service", "executor_service"), ("gateway",))
DEFAULT_PORTS = {
    "chat_service": 50051,
    "agent_service": 50061,
    "executor_service": 50071,
    "gateway": 8000,
}
LISTEN_ENV = {
    "chat_service": "BULKHEAD_CHAT_SERVICE_LISTEN",
    "agent_service": "BULKHEAD_AGENT_HEALTH_LISTEN",
    "executor_service": "BULKHEAD_EXECUTOR_HEALTH_LISTEN",
}
NATS_PROCESS = "nats"


@dataclass
class StackConfig:
    """Settings of one stack; every field has a default that works for ``make up``.

    ``ports`` gives the port of a service's first replica; services missing
    there and further replicas get free ports. ``env`` is added to every
    process's environment, ``service_env`` to one service's replicas only;
    both override what the stack computes. ``commands`` replaces the command
    line of a service (default ``python -m SERVICE``).

    ``split_chat_service`` gives the synchronous path chat_service replicas
    of its own: the gateway dials the first half of the replicas, the agent
    and the executor the rest, so that a flood of worker reports never
    queues in front of user requests on one event loop. It needs at least
    two chat_service replicas, hence PostgreSQL.

    ``async_nice`` (0 to 19) starts the processes that serve only AI work
    (agents, executors and, when split, the workers' chat_service replicas)
    with that CPU niceness, so that on a shared machine the synchronous
    path gets the CPU first and AI work takes what is left.
    """

    workdir: Path = field(default_factory=Path.cwd)
    var_dir: Path | None = None
    database_url: str | None = None
    nats_url: str | None = None
    nats_port: int | None = None
    nats_stream: str = "BULKHEAD_TASKS"
    nats_subject_prefix: str = "bulkhead"
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    split_chat_service: bool = False
    async_nice: int = 0
    models_file: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    migrate_command: list[str] | None = None
    admin_command: list[str] | None = None
    inherit_env: bool = True
    run_migrations: bool = True
    startup_timeout_s: float = 60.0
    # Longer than the workers' default shutdown grace (20 s), so that they can
    # release the runs they still hold before the runner kills them.
    stop_grace_s: float = 25.0


@dataclass(frozen=True)
class Instance:
    """One replica of a service: its process name, service and address."""

    name: str
    service: str
    port: int
