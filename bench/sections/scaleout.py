"""Section 7: runs completed per second with 1, 2 and 4 executor replicas.

The model takes 200 ms per call and each executor runs at most
``scaleout_concurrency_per_replica`` runs at once. So one replica's
throughput is bounded by the model's latency, not by the CPU, and more
replicas should add throughput until the cores run out. The rate is taken from the
runs' ``finished_at`` times, over the middle 80 % of the completions.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bench.procs import CpuMeter
from bench.sections.common import (
    Context,
    executor_env,
    logger,
    run_client,
    summarise,
    wait_for,
)
from bench.stack import BenchStack
from bench.stats import ratio, spread

MODEL = "bench-200ms"


def measure(ctx: Context, replicas: int) -> dict[str, Any]:
    plan = ctx.plan
    runs = plan.scaleout_runs_per_replica * replicas
    service_env = executor_env(plan.scaleout_concurrency_per_replica)
    with BenchStack(
        ctx.work_dir,
        ctx.fake.models_file,
        replicas={"executor_service": replicas},
        service_env=service_env,
    ) as bench:
        meter = CpuMeter(bench.pids())
        meter.start()
        posted = run_client(
            "post",
            {
                "url": bench.gateway_url,
                "authorization": bench.authorization,
                "model": MODEL,
                "count": runs,
                "concurrency": 16,
            },
            time_limit_s=60,
        )
        accepted = sum(1 for r in posted["records"] if r["run_id"])
        finished = wait_for(
            lambda: (
                sum(
                    v
                    for k, v in bench.run_counts().items()
                    if k in ("completed", "failed")
                )
                >= accepted
            ),
            timeout_s=120,
            interval_s=0.5,
        )
        cores = meter.stop()
        rows = bench.query(
            "SELECT extract(epoch FROM finished_at) AS t FROM runs"
            " WHERE status = 'completed' ORDER BY finished_at"
        )
    times = [float(row["t"]) for row in rows]
    return {
        "replicas": replicas,
        "runs": accepted,
        "completed": len(times),
        "all_finished": finished,
        "runs_per_s": _middle_rate(times),
        "cores": cores,
    }


def _middle_rate(times: list[float]) -> float | None:
    """Completions per second between the 10th and 90th percentile completion."""
    if len(times) < 10:
        return None
    low, high = int(len(times) * 0.1), int(len(times) * 0.9)
    span = times[high] - times[low]
    return round((high - low) / span, 2) if span > 0 else None


def run(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    raw: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for repeat in range(plan.repeats):
        logger.info("scaleout: repeat %d of %d", repeat + 1, plan.repeats)
        for replicas in plan.scaleout_replicas:
            record = measure(ctx, replicas)
            raw[replicas].append(record)
            logger.info(
                "  %d executor(s): %s runs/s, %s cores busy on the machine",
                replicas,
                record["runs_per_s"],
                record["cores"]["machine"],
            )
    result: dict[str, Any] = {
        "model_latency_ms": 200,
        "concurrency_per_replica": plan.scaleout_concurrency_per_replica,
        "levels": {
            f"x{n}": summarise(records, ("runs_per_s",)) for n, records in raw.items()
        },
        "speedup": {},
    }
    base = raw.get(1, [])
    for replicas, records in raw.items():
        if replicas == 1 or not base:
            continue
        values = [
            ratio(records[r]["runs_per_s"], base[r]["runs_per_s"])
            for r in range(min(len(records), len(base)))
        ]
        result["speedup"][f"x{replicas}"] = spread(values)
    return result
