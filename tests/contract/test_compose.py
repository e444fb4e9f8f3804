"""docker-compose.yml follows the Compose Specification and Bulkhead's deployment rules.

No Docker engine runs the file here, so these tests check its structure: the
vendored Compose JSON schema, health checks, start order and published ports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = Path(__file__).resolve().parent / "compose-spec" / "compose-spec.json"
APP_SERVICES = [
    "migrate",
    "chat_service",
    "chat_service_runs",
    "agent_service",
    "executor_service",
    "gateway",
]
GRPC_PORTS = {
    "chat_service": 50051,
    "chat_service_runs": 50051,
    "agent_service": 50061,
    "executor_service": 50071,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with (REPO_ROOT / "docker-compose.yml").open() as file:
        document = yaml.safe_load(file)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_compose_matches_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(compose)
    ]
    assert errors == []


def test_compose_schema_rejects_unknown_service_key(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    broken = {
        **compose,
        "services": {"web": {"image": "x", "healthcheck": {"tst": []}}},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft7Validator)


def test_compose_declares_expected_services(services: dict[str, Any]) -> None:
    assert sorted(services) == sorted(["postgres", "nats", *APP_SERVICES])


def test_compose_app_services_share_one_image_build(
    services: dict[str, dict[str, Any]],
) -> None:
    images = {services[name].get("image") for name in APP_SERVICES}
    builds = [services[name].get("build") for name in APP_SERVICES]
    assert len(images) == 1
    assert None not in images
    assert all(build == builds[0] for build in builds)
    assert builds[0]["context"] == "."
    assert (REPO_ROOT / builds[0].get("dockerfile", "Dockerfile")).is_file()


@pytest.mark.parametrize("name", sorted(GRPC_PORTS))
def test_compose_grpc_services_use_healthcheck_module(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    test = services[name]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "bulkhead.healthcheck"]
    assert test[4] == f"127.0.0.1:{GRPC_PORTS[name]}"


def test_compose_gateway_healthcheck_calls_healthz(
    services: dict[str, dict[str, Any]],
) -> None:
    test = services["gateway"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert "/healthz" in " ".join(test)


def test_compose_infrastructure_has_healthchecks(
    services: dict[str, dict[str, Any]],
) -> None:
    postgres_test = services["postgres"]["healthcheck"]["test"]
    nats_test = services["nats"]["healthcheck"]["test"]
    assert "pg_isready" in postgres_test
    assert any("/healthz?js-enabled-only=true" in part for part in nats_test)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["nats"]["image"].startswith("nats:2.10")
    assert "-js" in services["nats"]["command"]


def test_compose_services_wait_for_healthy_dependencies(
    services: dict[str, dict[str, Any]],
) -> None:
    expected = {
        "migrate": {"postgres": "service_healthy"},
        "chat_service": {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "nats": "service_healthy",
        },
        "chat_service_runs": {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "nats": "service_healthy",
        },
        "agent_service": {
            "chat_service_runs": "service_healthy",
            "nats": "service_healthy",
        },
        "executor_service": {
            "chat_service_runs": "service_healthy",
            "nats": "service_healthy",
        },
        "gateway": {"chat_service": "service_healthy"},
    }
    for name, dependencies in expected.items():
        depends_on = services[name]["depends_on"]
        conditions = {dep: entry["condition"] for dep, entry in depends_on.items()}
        assert conditions == dependencies, name


def test_compose_only_gateway_publishes_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    publishing = sorted(
        name for name, service in services.items() if "ports" in service
    )
    assert publishing == ["gateway"]
    assert services["gateway"]["ports"] == ["8000:8000"]


@pytest.mark.parametrize("name", ["agent_service", "executor_service"])
def test_compose_workers_scale_without_fixed_names(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    assert "container_name" not in services[name]
    assert "ports" not in services[name]


def test_compose_environment_points_at_containers(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["BULKHEAD_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert "@postgres:5432/" in env["BULKHEAD_DATABASE_URL"]
        assert env["BULKHEAD_NATS_URL"] == "nats://nats:4222"
        workers = ("agent_service", "executor_service")
        expected_target = "chat_service_runs" if name in workers else "chat_service"
        assert env["BULKHEAD_CHAT_SERVICE_ADDR"] == f"{expected_target}:50051"
        assert env["BULKHEAD_GATEWAY_SERVICE_TOKEN"].startswith("${")
        assert env["BULKHEAD_WORKER_SERVICE_TOKEN"].startswith("${")
        assert env["BULKHEAD_CHAT_SERVICE_LISTEN"] == "0.0.0.0:50051"
        assert env["BULKHEAD_AGENT_HEALTH_LISTEN"] == "0.0.0.0:50061"
        assert env["BULKHEAD_EXECUTOR_HEALTH_LISTEN"] == "0.0.0.0:50071"
        assert env["BULKHEAD_GATEWAY_HOST"] == "0.0.0.0"


def test_compose_ai_work_yields_the_cpu(services: dict[str, dict[str, Any]]) -> None:
    for name in ("chat_service_runs", "agent_service", "executor_service"):
        assert services[name]["cpu_shares"] < 1024, name
    for name in ("chat_service", "gateway"):
        assert "cpu_shares" not in services[name], name


def test_compose_migrate_runs_once(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["python", "-m", "chat_service.migrate"]
    assert migrate["restart"] == "no"


def test_dockerfile_runs_as_non_root_user() -> None:
    lines = (REPO_ROOT / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users
    assert users[-1] not in ("root", "0")
    assert any(line.startswith("FROM python:3.11-slim") for line in lines)


def test_dockerfile_points_services_at_the_models_file() -> None:
    # The package's default models path only exists in a source checkout.
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert "COPY config ./config" in text
    assert "ENV BULKHEAD_MODELS_FILE=/app/config/models.toml" in text
    assert "WORKDIR /app" in text
