"""Shared pieces of the sections: the context, warm-up and load helpers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fake_model import FakeModelServer
from bench.plan import Plan
from bench.procs import REPO_ROOT
from bench.stats import spread
from bench.wrk import PostLoad, run_post_load

logger = logging.getLogger("bench")
POST_BODY = json.dumps({"content": "Hello, how are you today?"})


@dataclass
class Context:
    """What every section needs: the plan, a work directory and the fake model."""

    plan: Plan
    work_dir: Path
    fake: FakeModelServer

    def log_dir(self, name: str) -> Path:
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def executor_env(concurrency: int) -> dict[str, dict[str, str]]:
    """Service settings for executors that serve ``concurrency`` runs at once.

    Each section drives one model route, so that route may use every slot.
    """
    value = str(concurrency)
    return {
        "executor_service": {
            "BULKHEAD_EXECUTOR_CONCURRENCY": value,
            "BULKHEAD_EXECUTOR_ROUTE_CONCURRENCY": value,
        }
    }


def post_load(
    url: str,
    connections: int,
    plan: Plan,
    *,
    authorization: str = "",
    path: str = "/api/chat",
    body: str = POST_BODY,
    per_request_uuid: bool = False,
) -> dict[str, Any]:
    """Warm up for ``plan.warmup_s``, then measure ``plan.load_s`` of POST load."""
    load = PostLoad(
        url=url,
        path=path,
        body=body,
        connections=connections,
        duration_s=plan.warmup_s,
        authorization=authorization,
        per_request_uuid=per_request_uuid,
    )
    warmup = run_post_load(load)
    measured = PostLoad(**{**load.__dict__, "duration_s": plan.load_s})
    result = run_post_load(measured)
    result["warmup_accepted"] = warmup["accepted"]
    return result


def summarise(
    records: list[dict[str, Any]],
    keys: tuple[str, ...] = ("rate_per_s", "p50_ms", "p99_ms"),
) -> dict[str, Any]:
    """Turn one record per repeat into a spread per key, keeping the raw records."""
    summary: dict[str, Any] = {
        key: spread([r.get(key) for r in records]) for key in keys
    }
    summary["repeats"] = records
    return summary


def run_client(
    mode: str, params: dict[str, Any], time_limit_s: float
) -> dict[str, Any]:
    """Run ``python -m bench.client`` in its own process and return its JSON."""
    params = {**params, "time_limit_s": time_limit_s}
    result = subprocess.run(
        [sys.executable, "-m", "bench.client", mode, json.dumps(params)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=time_limit_s + 60,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"bench.client {mode} failed with exit status {result.returncode}: "
            f"{result.stderr[-2000:]}"
        )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def sample_while(
    process: subprocess.Popen[str],
    sample: Callable[[], dict[str, Any]],
    interval_s: float = 0.5,
) -> list[dict[str, Any]]:
    """Call ``sample`` every ``interval_s`` until ``process`` exits; return samples."""
    samples = []
    while process.poll() is None:
        samples.append({"t": time.time(), **sample()})
        time.sleep(interval_s)
    return samples


def wait_for(
    condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.25
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()
