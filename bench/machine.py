"""The machine and the software versions a benchmark ran on."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from typing import Any

import asyncpg

from bench.stack import asyncpg_dsn, postgres_admin_url, shared_nats_url
from bench.wrk import wrk_version
from bulkhead.devstack import find_nats_server

PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "grpcio",
    "protobuf",
    "asyncpg",
    "sqlalchemy",
    "aiosqlite",
    "nats-py",
    "openai",
    "pydantic",
    "orjson",
)


def describe_machine() -> dict[str, Any]:
    """Return cores, memory and CPU model from /proc."""
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "cpu_model": model,
        "kernel": platform.release(),
    }


def describe_versions() -> dict[str, Any]:
    """Return the versions of Python, the servers, wrk and the key packages."""
    versions: dict[str, Any] = {"python": platform.python_version()}
    versions["postgresql"] = _postgres_version()
    versions["nats_server"] = _nats_version()
    versions["wrk"] = wrk_version()
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["uvicorn_http"] = (
        "httptools" if importlib.util.find_spec("httptools") else "h11"
    )
    return versions


def _postgres_version() -> str:
    async def fetch() -> str:
        connection = await asyncpg.connect(asyncpg_dsn(postgres_admin_url()))
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()

    try:
        return asyncio.run(fetch())
    except (OSError, asyncpg.PostgresError) as error:
        return f"unavailable: {error}"


def _nats_version() -> str:
    where = "shared server" if shared_nats_url() else "started per stack"
    try:
        binary = find_nats_server()
        output = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except Exception as error:  # noqa: BLE001 - reported, not fatal
        output = f"unknown ({error})"
    return f"{output} (binary on this machine; {where})"
