"""Secret settings: refused when empty or placeholders, unless in development mode."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent_service.config import AgentSettings
from bulkhead.settings import secret_problem
from chat_service.config import ChatServiceSettings, DatabaseToolSettings
from gateway.config import GatewaySettings

GOOD = "0123456789abcdefGHIJ"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BULKHEAD_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is empty"),
        ("changeme", "is a placeholder"),
        ("CHANGE-ME", "is a placeholder"),
        ("change_me_before_production", "is a placeholder"),
        ("secret", "is a placeholder"),
        ("x" * 40, "repeats one character"),
        ("short-but-random", None),
        ("abc123", "is shorter than 16 characters"),
        (GOOD, None),
    ],
)
def test_secret_problem(value: str, problem: str | None) -> None:
    assert secret_problem(value) == problem


def test_services_require_their_tokens() -> None:
    with pytest.raises(ValidationError, match="GATEWAY_SERVICE_TOKEN"):
        ChatServiceSettings(worker_service_token=GOOD)
    with pytest.raises(ValidationError, match="WORKER_SERVICE_TOKEN"):
        ChatServiceSettings(gateway_service_token=GOOD)
    with pytest.raises(ValidationError, match="GATEWAY_SERVICE_TOKEN"):
        GatewaySettings()
    with pytest.raises(ValidationError, match="WORKER_SERVICE_TOKEN"):
        AgentSettings()

    ChatServiceSettings(gateway_service_token=GOOD, worker_service_token=GOOD + "x")
    GatewaySettings(gateway_service_token=GOOD)
    AgentSettings(worker_service_token=GOOD)
    DatabaseToolSettings()


def test_optional_secret_checked_when_set() -> None:
    with pytest.raises(ValidationError, match="NATS_TOKEN"):
        GatewaySettings(gateway_service_token=GOOD, nats_token="token")
    with pytest.raises(ValidationError, match="NATS_PASSWORD is set without"):
        GatewaySettings(gateway_service_token=GOOD, nats_password=GOOD)


def test_dev_mode_allows_and_reports() -> None:
    settings = ChatServiceSettings(dev_mode=True, nats_token="changeme")

    warnings = settings.dev_mode_warnings()
    assert "BULKHEAD_GATEWAY_SERVICE_TOKEN is empty" in warnings
    assert "BULKHEAD_NATS_TOKEN is a placeholder" in warnings


def test_dev_mode_nothing_relaxed() -> None:
    settings = ChatServiceSettings(
        dev_mode=True, gateway_service_token=GOOD, worker_service_token=GOOD * 2
    )

    assert settings.dev_mode_warnings() == []


def test_secrets_hidden_in_repr() -> None:
    settings = GatewaySettings(gateway_service_token=GOOD, jwt_hs256_secret=GOOD * 2)

    assert GOOD not in repr(settings)
    assert GOOD not in str(settings.model_dump())
