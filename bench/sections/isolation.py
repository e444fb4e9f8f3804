"""Section 3: POST latency while every model call is fast, slow, hangs or fails.

Each case gets a fresh stack and posts to the case's fake model. The cases
run one after the other in each repeat, in the split and in the single
layout (bench.stack.LAYOUTS), and each case's p99 is divided by the fast
case's p99 of the same layout and repeat.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from bench.procs import CpuMeter
from bench.sections.common import Context, logger, post_load, summarise
from bench.stack import BenchStack
from bench.stats import ratio, spread

CASE_MODELS = {
    "fast": "bench-fast",
    "slow": "bench-slow",
    "hang": "bench-hang",
    "fail": "bench-fail",
}
RUN_STATUSES = ("completed", "failed", "cancelled", "running", "queued")


def measure_case(ctx: Context, case: str, layout: str) -> dict[str, Any]:
    body = json.dumps(
        {"content": "Hello, how are you today?", "model": CASE_MODELS[case]}
    )
    with BenchStack(ctx.work_dir, ctx.fake.models_file, layout=layout) as bench:
        meter = CpuMeter(bench.pids())
        meter.start()
        result = post_load(
            bench.gateway_url,
            ctx.plan.isolation_clients,
            ctx.plan,
            authorization=bench.authorization,
            body=body,
        )
        result["cores"] = meter.stop()
        counts = bench.run_counts()
        result["runs"] = {status: counts.get(status, 0) for status in RUN_STATUSES}
    return result


def run(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {
        layout: defaultdict(list) for layout in plan.layouts
    }
    for repeat in range(plan.repeats):
        logger.info("isolation: repeat %d of %d", repeat + 1, plan.repeats)
        for layout in plan.layouts:
            for case in plan.isolation_cases:
                record = measure_case(ctx, case, layout)
                raw[layout][case].append(record)
                logger.info(
                    "  %-6s %-5s %8.1f/s  p50 %6.1f ms  p99 %6.1f ms  runs %s",
                    layout,
                    case,
                    record["rate_per_s"] or 0.0,
                    record["p50_ms"],
                    record["p99_ms"],
                    record["runs"],
                )
    return {
        "clients": plan.isolation_clients,
        "layouts": {
            layout: _summarise_layout(cases, plan.isolation_cases)
            for layout, cases in raw.items()
        },
    }


def _summarise_layout(
    raw: dict[str, list[dict[str, Any]]], cases: tuple[str, ...]
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "cases": {case: summarise(records) for case, records in raw.items()},
        "p99_ratio": {},
        "p50_ratio": {},
    }
    for case in cases:
        if case == "fast" or "fast" not in raw:
            continue
        for key, name in (("p99_ms", "p99_ratio"), ("p50_ms", "p50_ratio")):
            values = [
                ratio(raw[case][r][key], raw["fast"][r][key])
                for r in range(len(raw[case]))
            ]
            result[name][case] = spread(values)
    return result
