"""Settings of agent_service, read from ``BULKHEAD_*`` environment variables."""

from __future__ import annotations

from pydantic import Field

from bulkhead.settings import CommonSettings


class AgentSettings(CommonSettings):
    """Agent settings; field names are unique across services."""

    required_secrets = ("worker_service_token",)

    models_file: str | None = Field(
        default=None,
        description="Path of the models TOML file (default: config/models.toml).",
    )
    agent_health_listen: str = Field(
        default="127.0.0.1:50061",
        description="host:port of the health and reflection gRPC server.",
    )
    agent_concurrency: int = Field(
        default=16, ge=1, description="Maximum number of runs planned at once."
    )
    agent_context_budget_chars: int = Field(
        default=24000,
        gt=0,
        description="Characters of conversation sent to the model; older messages are left out.",
    )
    agent_system_prompt: str = Field(
        default="",
        description="System prompt put first in every context; empty for none.",
    )
    agent_shutdown_grace_s: float = Field(
        default=20.0,
        ge=0,
        description="Seconds running tasks get to finish on SIGTERM before release.",
    )
    agent_lease_renew_s: float = Field(
        default=10.0, gt=0, description="Seconds between lease renewals of a run."
    )
    agent_rpc_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Deadline of each call to chat_service, in seconds.",
    )
    agent_rpc_retry_s: float = Field(
        default=30.0,
        ge=0,
        description=(
            "Seconds a claim or report is retried while chat_service is "
            "unavailable or slow, before the task is given up; 0 turns it off."
        ),
    )
