"""Header parsing and settings of the gateway."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from gateway.config import GatewaySettings
from gateway.problems import ProblemError
from gateway.routes.chat import parse_wait_preference
from gateway.sse import parse_last_event_id


@pytest.fixture(autouse=True)
def _service_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # GatewaySettings requires a service credential outside development mode.
    monkeypatch.setenv(
        "BULKHEAD_GATEWAY_SERVICE_TOKEN", "unit-test-service-token-0123456789"
    )


@pytest.mark.parametrize(
    ("values", "seconds"),
    [
        (["wait=5"], 5),
        (["respond-async, wait=10"], 10),
        (["return=minimal", "wait=2"], 2),
        (["WAIT = 3"], 3),
        (['wait="4"'], 4),
        (["wait=3;foo=bar"], 3),
        (["wait=0"], 0),
        (["wait=30"], 30),
        (["wait=31"], 30),
        (["wait=999999999"], 30),
        (["wait=99999999999999999999"], 30),
        (["wait=" + "9" * 5000], 30),
        (["wait=0005"], 5),
        (["wait=1, wait=9"], 1),
        (["wait=abc"], None),
        (["wait=-1"], None),
        (["wait=1.5"], None),
        (["wait"], None),
        (["respond-async"], None),
        ([], None),
    ],
)
def test_wait_preference_parsing(values: list[str], seconds: int | None) -> None:
    assert parse_wait_preference(values) == seconds


@pytest.mark.parametrize(
    ("header", "query", "after_seq"),
    [
        (None, None, 0),
        ("0", None, 0),
        ("17", None, 17),
        (" 17 ", None, 17),
        (None, "7", 7),
        ("5", "7", 5),
        ("9223372036854775807", None, 2**63 - 1),
        ("0003", None, 3),
        ("0" * 30 + "42", None, 42),
    ],
)
def test_last_event_id_accepted(
    header: str | None, query: str | None, after_seq: int
) -> None:
    assert parse_last_event_id(header, query) == after_seq


@pytest.mark.parametrize(
    ("header", "query"),
    [
        ("-1", None),
        ("abc", None),
        ("", None),
        ("1e3", None),
        ("9223372036854775808", None),
        ("1" * 20, None),
        (None, "1.5"),
        (None, ""),
        ("abc", "7"),
        (None, "\u0663"),
        (None, "\uff14"),
        (None, "\u30007"),
    ],
)
def test_last_event_id_rejected(header: str | None, query: str | None) -> None:
    with pytest.raises(ProblemError) as raised:
        parse_last_event_id(header, query)

    assert raised.value.kind.status == 422


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BULKHEAD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BULKHEAD_DEV_MODE", "true")

    settings = GatewaySettings()

    assert settings.gateway_auth_cache_ttl_s == 30.0
    assert settings.gateway_grpc_timeout_s == 5.0
    assert settings.max_content_chars == 32_000
    assert settings.max_body_bytes == 256 * 1024
    assert settings.sse_heartbeat_s == 15.0
    assert settings.sse_max_duration_s == 3600.0


def test_settings_cors_origins_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "BULKHEAD_GATEWAY_CORS_ORIGINS", "https://app.example, http://localhost:3000/"
    )

    settings = GatewaySettings()

    assert settings.gateway_cors_origins == [
        "https://app.example",
        "http://localhost:3000",
    ]


def test_settings_cors_empty_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BULKHEAD_GATEWAY_CORS_ORIGINS", raising=False)

    assert GatewaySettings().gateway_cors_origins == []


@pytest.mark.parametrize("origins", ["*", "app.example", "https://a.example,*"])
def test_settings_cors_wildcard_rejected(
    monkeypatch: pytest.MonkeyPatch, origins: str
) -> None:
    monkeypatch.setenv("BULKHEAD_GATEWAY_CORS_ORIGINS", origins)

    with pytest.raises(ValidationError):
        GatewaySettings()
