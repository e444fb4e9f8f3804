"""``python -m bench``: run the benchmark and write its results and report.

``--quick`` runs the short plan (``make bench-quick``); ``--sections`` picks
sections; ``--repeats`` and ``--load-s`` shorten or lengthen the plan. Each
section that fails is reported with its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shlex
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bench import report
from bench.fake_model import FakeModelServer
from bench.machine import describe_machine, describe_versions
from bench.plan import ALL_SECTIONS, FULL, QUICK, Plan
from bench.procs import REPO_ROOT
from bench.sections import isolation, memory, scaleout, streams, throughput
from bench.sections.common import Context, logger
from bench.wrk import wrk_binary
from bulkhead.devstack import StackError

SECTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "throughput": throughput.run,
    "isolation": isolation.run,
    "ttft": streams.run_ttft,
    "streaming": streams.run_streaming,
    "memory": memory.run,
    "scaleout": scaleout.run,
}
# Open SSE streams, their gRPC calls and database connections need far more
# file descriptors than the usual soft limit of 1,024 in one process.
WANTED_OPEN_FILES = 65536


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Run the short plan.")
    parser.add_argument(
        "--sections",
        help=f"Comma-separated sections to run, from: {', '.join(ALL_SECTIONS)}. "
        "'peer' adds the LangGraph comparison to 'throughput'.",
    )
    parser.add_argument("--repeats", type=int, help="Repeats of every figure.")
    parser.add_argument("--load-s", type=float, help="Seconds of load per figure.")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="Only regenerate docs/benchmarks.md from bench/results/latest.json.",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="Keep the processes' logs under var/bench/ (removed by default).",
    )
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.sections:
        chosen = tuple(s.strip() for s in args.sections.split(",") if s.strip())
        unknown = set(chosen) - set(ALL_SECTIONS)
        if unknown:
            sys.exit(f"unknown sections {sorted(unknown)}; choose from {ALL_SECTIONS}")
        changes["sections"] = chosen
    if args.repeats is not None:
        changes["repeats"] = max(1, args.repeats)
    if args.load_s is not None:
        changes["load_s"] = max(1.0, args.load_s)
    return plan.with_overrides(**changes)


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(wanted, WANTED_OPEN_FILES), hard)
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.render_only:
        report.write_markdown(json.loads(report.RESULTS_FILE.read_text()))
        logger.info("bench: wrote %s", report.DOC_FILE)
        return 0
    plan = make_plan(args)
    try:
        wrk_binary()
    except StackError as error:
        logger.error("%s", error)
        return 2
    raise_open_files_limit()

    started = time.time()
    work_dir = REPO_ROOT / "var" / "bench" / uuid.uuid4().hex[:8]
    work_dir.mkdir(parents=True)
    logger.info("bench: plan %s, work directory %s", plan.name, work_dir)
    meta: dict[str, Any] = {
        "plan": {
            "name": plan.name,
            "repeats": plan.repeats,
            "load_s": plan.load_s,
            "warmup_s": plan.warmup_s,
            "sections": list(plan.sections),
        },
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "versions": describe_versions(),
        "commands": _commands(argv),
    }
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    fake = FakeModelServer(work_dir)
    try:
        context = Context(plan, work_dir, fake)
        for name, section in SECTIONS.items():
            if name not in plan.sections:
                continue
            try:
                results[name] = section(context)
            except Exception as error:  # noqa: BLE001 - reported per section
                logger.error("section %s failed:\n%s", name, traceback.format_exc())
                errors[name] = f"{type(error).__name__}: {error}"
    finally:
        fake.stop()
        if not args.keep_logs and not errors:
            shutil.rmtree(work_dir, ignore_errors=True)

    meta["duration_s"] = round(time.time() - started, 1)
    if "peer" in plan.sections and "throughput" in results:
        meta["versions"]["peer"] = results["throughput"]["peer_status"].get("version")
    document = {
        "summary": report.build_summary(results, complete=plan.name == "full"),
        "meta": meta,
        "sections": results,
        "errors": errors,
    }
    report.write_results(document)
    report.write_markdown(document)
    logger.info("bench: wrote %s and %s", report.RESULTS_FILE, report.DOC_FILE)
    for key, value in document["summary"].items():
        logger.info("  %-36s %s", key, value)
    if errors:
        logger.error(
            "bench: sections failed: %s; logs in %s", ", ".join(errors), work_dir
        )
    return 1 if errors else 0


def _commands(argv: list[str] | None) -> list[str]:
    arguments = sys.argv[1:] if argv is None else argv
    return [
        "python -m bench " + " ".join(shlex.quote(a) for a in arguments),
        "wrk -t1 -cN -dDs --timeout=10s -s bench/lua/post.lua URL (POST load)",
        "python -m bench.client MODE JSON (SSE streams, in its own process)",
    ]


if __name__ == "__main__":
    sys.exit(main())
