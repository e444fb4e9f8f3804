"""The model catalogue: which model routes exist and how each one is called.

Models are configured in one TOML file (``config/models.toml`` by default,
``BULKHEAD_MODELS_FILE`` to change it), read by chat_service (to reject
unknown routes synchronously), the agent (to build fallback chains) and the
executor (to call providers). See the file's comments for the keys.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODELS_FILE = Path(__file__).resolve().parent.parent / "config" / "models.toml"


class ModelSpec(BaseModel):
    """One model route."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["builtin", "openai"]
    # Model name on the provider's side; defaults to the route name.
    name: str | None = None
    base_url: str | None = None
    # Name of the environment variable that holds the API key. The key itself
    # never appears in the file.
    api_key_env: str | None = None
    fallbacks: tuple[str, ...] = ()
    max_retries: int = Field(default=2, ge=0, le=10)
    timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_token_timeout_s: float = Field(default=30.0, gt=0)
    idle_timeout_s: float = Field(default=30.0, gt=0)
    max_output_tokens: int = Field(default=1024, gt=0)
    temperature: float | None = None
    # Built-in model only: seconds between streamed deltas.
    delta_interval_s: float = Field(default=0.02, ge=0)


class ModelCatalog(BaseModel):
    """All model routes and the default route."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_model: str
    models: dict[str, ModelSpec]

    @model_validator(mode="after")
    def _check_references(self) -> ModelCatalog:
        if self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in [models]")
        for route, spec in self.models.items():
            for fallback in spec.fallbacks:
                if fallback not in self.models:
                    raise ValueError(
                        f"model {route!r} falls back to unknown model {fallback!r}"
                    )
        return self

    def resolve(self, route: str | None) -> str:
        """Return the route to use for a request's model field, or raise KeyError."""
        name = route or self.default_model
        if name not in self.models:
            raise KeyError(name)
        return name

    def chain(self, route: str) -> list[str]:
        """Return the route followed by its fallbacks, depth first, each once."""
        chain: list[str] = []
        pending = [route]
        while pending:
            name = pending.pop(0)
            if name in chain:
                continue
            chain.append(name)
            pending[:0] = list(self.models[name].fallbacks)
        return chain


@lru_cache(maxsize=8)
def load_catalog(path: str | None = None) -> ModelCatalog:
    """Read and validate a models file; raises ValueError with the reason."""
    file = Path(path) if path else DEFAULT_MODELS_FILE
    try:
        data = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read models file {file}: {error}") from error
    return ModelCatalog.model_validate(data)
