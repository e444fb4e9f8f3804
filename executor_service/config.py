"""Settings of executor_service, read from ``BULKHEAD_*`` environment variables."""

from __future__ import annotations

from pydantic import Field

from bulkhead.settings import MAX_OUTPUT_CHARS, CommonSettings


class ExecutorSettings(CommonSettings):
    """Executor settings; field names are unique across services."""

    required_secrets = ("worker_service_token",)

    models_file: str | None = Field(
        default=None,
        description="Path of the models TOML file (default: config/models.toml).",
    )
    executor_health_listen: str = Field(
        default="127.0.0.1:50071",
        description="host:port of the health and reflection gRPC server.",
    )
    executor_concurrency: int = Field(
        default=32, ge=1, description="Maximum number of runs executed at once."
    )
    executor_route_concurrency: int = Field(
        default=0,
        ge=0,
        description="Maximum number of runs executed at once whose plan starts "
        "with the same model route. 0: with one route, every slot; with "
        "several, all but a quarter of BULKHEAD_EXECUTOR_CONCURRENCY (rounded "
        "down, at least one).",
    )
    executor_shutdown_grace_s: float = Field(
        default=20.0,
        ge=0,
        description="Seconds running tasks get to finish on SIGTERM before release.",
    )
    executor_lease_renew_s: float = Field(
        default=10.0, gt=0, description="Seconds between lease renewals of a run."
    )
    executor_flush_interval_s: float = Field(
        default=0.05, gt=0, description="Seconds between batches of streamed output."
    )
    executor_flush_max_chars: int = Field(
        default=2048,
        gt=0,
        description="Characters of pending output that trigger a batch at once.",
    )
    executor_max_output_chars: int = Field(
        default=MAX_OUTPUT_CHARS,
        ge=1,
        le=MAX_OUTPUT_CHARS,
        description=(
            "Characters of one model answer after which the executor closes the "
            "call and keeps the answer cut there."
        ),
    )
    executor_retry_base_s: float = Field(
        default=0.5, gt=0, description="Ceiling of the first retry delay, in seconds."
    )
    executor_retry_max_s: float = Field(
        default=8.0, gt=0, description="Largest ceiling of a retry delay, in seconds."
    )
    executor_retry_after_max_s: float = Field(
        default=30.0,
        ge=0,
        description="Largest Retry-After delay honoured, in seconds; longer is cut.",
    )
    executor_rpc_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Deadline of each call to chat_service, in seconds.",
    )
    executor_rpc_retry_s: float = Field(
        default=30.0,
        ge=0,
        description=(
            "Seconds a claim or report is retried while chat_service is "
            "unavailable or slow, before the task is given up; 0 turns it off."
        ),
    )
