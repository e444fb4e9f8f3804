"""Sections 4 and 5: time to first token overhead, and streaming throughput.

TTFT overhead is the client's receipt of the first ``message.delta`` minus
the fake model's write of the first content chunk (both ``time.time()`` on
this machine). The model used waits 50 ms before that chunk, so POST to
first delta includes those 50 ms.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from bench.fake_model import TOKENS_PER_STREAM
from bench.procs import CpuMeter
from bench.sections.common import Context, executor_env, logger, run_client, summarise
from bench.stack import BenchStack
from bench.stats import percentile

TTFT_MODEL = "bench-ttft"
TOKENS_MODEL = "bench-tokens"
TOKEN_CHARS = len("tok ")
# Enough executor slots for every stream to be streaming at once.
WIDE_EXECUTOR_ENV = executor_env(256)


def _first_chunk_times(calls: list[dict[str, Any]]) -> dict[str, float]:
    """Map each message marker to the fake model's first-chunk time for it."""
    times: dict[str, float] = {}
    for call in calls:
        first = call.get("first_chunk_at")
        if first is None:
            continue
        for message in call.get("request", {}).get("messages", []):
            content = message.get("content")
            if isinstance(content, str) and content.startswith("bench message "):
                marker = content.rsplit(" ", 1)[-1]
                # A retried call writes a later first chunk; keep the first.
                times.setdefault(marker, first)
    return times


def measure_ttft(ctx: Context, concurrency: int, per_worker: int) -> dict[str, Any]:
    with BenchStack(
        ctx.work_dir,
        ctx.fake.models_file,
        service_env=WIDE_EXECUTOR_ENV,
        layout=ctx.plan.primary_layout,
    ) as bench:
        ctx.fake.reset()
        data = run_client(
            "streams",
            {
                "url": bench.gateway_url,
                "authorization": bench.authorization,
                "model": TTFT_MODEL,
                "concurrency": concurrency,
                "per_worker": per_worker,
            },
            time_limit_s=120,
        )
        first_chunks = _first_chunk_times(ctx.fake.calls())
    overheads, post_to_delta, post_ms = [], [], []
    errors = 0
    for record in data["records"]:
        first_delta = record["first_delta_at"]
        if record["error"] or first_delta is None:
            errors += 1
            continue
        post_ms.append((record["post_done"] - record["post_sent"]) * 1000)
        post_to_delta.append((first_delta - record["post_sent"]) * 1000)
        model_first = first_chunks.get(record["marker"])
        if model_first is not None:
            overheads.append((first_delta - model_first) * 1000)
    return {
        "streams": len(data["records"]),
        "errors": errors,
        "overhead_p50_ms": percentile(overheads, 0.5),
        "overhead_p99_ms": percentile(overheads, 0.99),
        "post_to_first_delta_p50_ms": percentile(post_to_delta, 0.5),
        "post_to_first_delta_p99_ms": percentile(post_to_delta, 0.99),
        "post_p50_ms": percentile(post_ms, 0.5),
        "matched": len(overheads),
    }


def run_ttft(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    raw: dict[str, list[dict[str, Any]]] = defaultdict(list)
    shapes = {"c1": (1, plan.ttft_single_streams)}
    if plan.ttft_concurrency > 1:
        shapes[f"c{plan.ttft_concurrency}"] = (
            plan.ttft_concurrency,
            plan.ttft_concurrent_per_worker,
        )
    for repeat in range(plan.repeats):
        logger.info("ttft: repeat %d of %d", repeat + 1, plan.repeats)
        for name, (concurrency, per_worker) in shapes.items():
            record = measure_ttft(ctx, concurrency, per_worker)
            raw[name].append(record)
            logger.info(
                "  %-4s overhead p50 %s ms p99 %s ms; POST to first delta p50 %s ms",
                name,
                _fmt(record["overhead_p50_ms"]),
                _fmt(record["overhead_p99_ms"]),
                _fmt(record["post_to_first_delta_p50_ms"]),
            )
    keys = (
        "overhead_p50_ms",
        "overhead_p99_ms",
        "post_to_first_delta_p50_ms",
        "post_to_first_delta_p99_ms",
        "post_p50_ms",
        "errors",
    )
    return {
        "model_first_chunk_delay_ms": 50,
        "levels": {name: summarise(records, keys) for name, records in raw.items()},
    }


def measure_streaming(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    with BenchStack(
        ctx.work_dir,
        ctx.fake.models_file,
        service_env=WIDE_EXECUTOR_ENV,
        layout=ctx.plan.primary_layout,
    ) as bench:
        before = _database_counters(bench)
        meter = CpuMeter(bench.pids())
        meter.start()
        data = run_client(
            "streams",
            {
                "url": bench.gateway_url,
                "authorization": bench.authorization,
                "model": TOKENS_MODEL,
                "concurrency": plan.streaming_concurrency,
                "per_worker": plan.streaming_per_worker,
            },
            time_limit_s=180,
        )
        cores = meter.stop()
        after = _database_counters(bench)
    records = data["records"]
    wall_s = data["ended"] - data["started"]
    delta_events = sum(r["delta_events"] for r in records)
    tokens = sum(r["delta_chars"] for r in records) / TOKEN_CHARS
    stored = after["delta_rows"] - before["delta_rows"]
    commits = after["xact_commit"] - before["xact_commit"]
    complete = sum(1 for r in records if r["terminal"] == "run.completed")
    return {
        "streams": len(records),
        "completed": complete,
        "expected_tokens": len(records) * TOKENS_PER_STREAM,
        "tokens_delivered": round(tokens),
        "tokens_per_s": round(tokens / wall_s, 1),
        "delta_events_per_s": round(delta_events / wall_s, 1),
        "tokens_per_delta_event": round(tokens / delta_events, 2)
        if delta_events
        else None,
        "delta_rows_per_token": round(stored / tokens, 4) if tokens else None,
        "commits_per_token": round(commits / tokens, 4) if tokens else None,
        "wall_s": round(wall_s, 2),
        "cores": cores,
    }


def _database_counters(bench: BenchStack) -> dict[str, int]:
    rows = bench.query(
        "SELECT (SELECT count(*) FROM run_events WHERE type = 'message.delta')"
        " AS delta_rows, (SELECT xact_commit FROM pg_stat_database"
        " WHERE datname = current_database()) AS xact_commit"
    )
    return {key: int(value) for key, value in rows[0].items()}


def run_streaming(ctx: Context) -> dict[str, Any]:
    raw = []
    for repeat in range(ctx.plan.repeats):
        logger.info("streaming: repeat %d of %d", repeat + 1, ctx.plan.repeats)
        record = measure_streaming(ctx)
        raw.append(record)
        logger.info(
            "  %s tokens/s, %s delta events/s, %s delta rows per token",
            record["tokens_per_s"],
            record["delta_events_per_s"],
            record["delta_rows_per_token"],
        )
    keys = (
        "tokens_per_s",
        "delta_events_per_s",
        "tokens_per_delta_event",
        "delta_rows_per_token",
        "commits_per_token",
    )
    return {
        "concurrency": ctx.plan.streaming_concurrency,
        "tokens_per_stream": TOKENS_PER_STREAM,
        **summarise(raw, keys),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
