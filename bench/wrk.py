"""POST load with wrk (C, one event loop per thread), run as its own process.

wrk is the Debian package ``wrk``; ``make bench`` checks for it. Each run is
bounded by time (``duration_s``) and sends traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulkhead.devstack import StackError

LUA_SCRIPT = Path(__file__).resolve().parent / "lua" / "post.lua"
_RESULT_PREFIX = "BENCH_JSON "


@dataclass(frozen=True)
class PostLoad:
    """One wrk run: POST ``body`` to ``url + path`` from ``connections`` clients."""

    url: str
    path: str
    body: str
    connections: int
    duration_s: float
    authorization: str = ""
    per_request_uuid: bool = False
    threads: int = 1
    timeout_s: float = 10.0


def wrk_binary() -> str:
    """Return the path of wrk; raises StackError naming the package if missing."""
    found = shutil.which("wrk")
    if found is None:
        raise StackError(
            "wrk not found: install the Debian package (apt-get install -y wrk)"
        )
    return found


def wrk_version() -> str:
    """Return wrk's version line, for example "wrk 4.1.0"."""
    result = subprocess.run(
        [wrk_binary(), "-v"], capture_output=True, text=True, check=False
    )
    first = (result.stdout or result.stderr).strip().splitlines()
    return first[0].split(" [")[0] if first else "unknown"


def run_post_load(load: PostLoad) -> dict[str, Any]:
    """Run wrk once and return its counts, rate and latency percentiles in ms.

    ``accepted`` counts 2xx and 3xx responses; ``rate_per_s`` is accepted
    responses per second. Raises StackError if wrk fails or prints no result.
    """
    if not load.url.startswith("http://127.0.0.1:"):
        raise StackError(f"load only goes to 127.0.0.1, not {load.url}")
    threads = max(1, min(load.threads, load.connections))
    command = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{load.connections}",
        f"-d{max(1, round(load.duration_s))}s",
        f"--timeout={load.timeout_s:g}s",
        "-s",
        str(LUA_SCRIPT),
        load.url,
    ]
    env = {
        **os.environ,
        "BENCH_PATH": load.path,
        "BENCH_BODY": load.body,
        "BENCH_AUTH": load.authorization,
        "BENCH_UUID": "1" if load.per_request_uuid else "0",
    }
    result = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=load.duration_s + 60,
    )
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(_RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        raise StackError(
            f"wrk failed with exit status {result.returncode}: "
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    raw = json.loads(lines[-1][len(_RESULT_PREFIX) :])
    return _summarise(raw)


def _summarise(raw: dict[str, Any]) -> dict[str, Any]:
    duration_s = raw["duration_us"] / 1e6
    errors = (
        raw["connect_errors"]
        + raw["read_errors"]
        + raw["write_errors"]
        + raw["timeouts"]
    )
    accepted = max(0, raw["requests"] - raw["status_errors"])
    return {
        "requests": raw["requests"],
        "accepted": accepted,
        "status_errors": raw["status_errors"],
        "socket_errors": errors,
        "duration_s": round(duration_s, 3),
        "rate_per_s": round(accepted / duration_s, 1) if duration_s else None,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
    }
