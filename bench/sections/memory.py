"""Section 6: gateway and chat_service memory with many open and stalled streams.

RSS (VmRSS) and peak RSS (VmHWM) come from /proc/PID/status, sampled every
half second while a client process keeps the streams open.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.procs import REPO_ROOT
from bench.sections.common import Context, executor_env, logger, sample_while
from bench.stack import BenchStack

WATCHED = ("gateway", "chat_service")
DRIP_MODEL = "bench-drip"
FLOOD_MODEL = "bench-flood"


def _hold(
    ctx: Context, mode: str, model: str, streams: int, hold_s: float, executors: int
) -> dict[str, Any]:
    service_env = executor_env(executors)
    with BenchStack(
        ctx.work_dir,
        ctx.fake.models_file,
        service_env=service_env,
        layout=ctx.plan.primary_layout,
    ) as bench:
        baseline = {name: bench.memory(name) for name in WATCHED}
        params = {
            "url": bench.gateway_url,
            "authorization": bench.authorization,
            "model": model,
            "count": streams,
            "concurrency": 32,
            "hold_s": hold_s,
            "time_limit_s": hold_s + 90,
        }
        client = subprocess.Popen(
            [sys.executable, "-m", "bench.client", mode, json.dumps(params)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        samples = sample_while(
            client, lambda: {n: bench.memory(n).get("VmRSS", 0) for n in WATCHED}
        )
        output, _ = client.communicate()
        final = {name: bench.memory(name) for name in WATCHED}
    held = json.loads(output)
    return _summarise(baseline, final, samples, held)


def _summarise(
    baseline: dict[str, dict[str, int]],
    final: dict[str, dict[str, int]],
    samples: list[dict[str, Any]],
    held: dict[str, Any],
) -> dict[str, Any]:
    result: dict[str, Any] = {"client": held}
    opened_at = held.get("opened_at") or 0.0
    for name in WATCHED:
        base_mb = baseline[name].get("VmRSS", 0) / 1024
        peak_mb = final[name].get("VmHWM", 0) / 1024
        # Growth while every stream was open: the last third of the hold
        # against its first third. Bounded memory shows no slope there.
        during = [s[name] / 1024 for s in samples if s["t"] >= opened_at]
        third = max(1, len(during) // 3)
        result[name] = {
            "baseline_rss_mb": round(base_mb, 1),
            "peak_rss_mb": round(peak_mb, 1),
            "growth_mb": round(peak_mb - base_mb, 1),
            "late_minus_early_mb": round(
                sum(during[-third:]) / third - sum(during[:third]) / third, 1
            )
            if during
            else None,
        }
    return result


def run(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    logger.info(
        "memory: %d open streams for %g s", plan.memory_streams, plan.memory_hold_s
    )
    open_streams = _hold(
        ctx, "hold", DRIP_MODEL, plan.memory_streams, plan.memory_hold_s, 256
    )
    logger.info(
        "  gateway +%s MB, chat_service +%s MB, %s of %s streams open",
        open_streams["gateway"]["growth_mb"],
        open_streams["chat_service"]["growth_mb"],
        open_streams["client"]["opened"],
        open_streams["client"]["streams"],
    )
    logger.info(
        "memory: %d stalled readers for %g s", plan.stalled_readers, plan.stalled_hold_s
    )
    stalled = _hold(
        ctx, "stall", FLOOD_MODEL, plan.stalled_readers, plan.stalled_hold_s, 64
    )
    logger.info(
        "  gateway +%s MB (late-early %s MB), chat_service +%s MB (late-early %s MB)",
        stalled["gateway"]["growth_mb"],
        stalled["gateway"]["late_minus_early_mb"],
        stalled["chat_service"]["growth_mb"],
        stalled["chat_service"]["late_minus_early_mb"],
    )
    return {
        "open_streams": {"streams": plan.memory_streams, **open_streams},
        "stalled_readers": {"readers": plan.stalled_readers, **stalled},
    }
