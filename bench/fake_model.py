"""The fake OpenAI-compatible model server of the benchmark, as its own process.

The server is ``tests/support/fake_openai.py`` run with ``python -m``. This
module sets the behaviour of each benchmark model, writes the models file
that points the stack at the server, and reads its call log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from bench.procs import python_module, start_process
from bulkhead.devstack import ManagedProcess, free_port

MODELS_TEMPLATE = Path(__file__).resolve().parent / "models.toml"
API_KEY_ENV = "BENCH_FAKE_API_KEY"
FLOOD_CHUNK = "x" * 99 + " "

# Behaviour fields of tests.support.fake_openai.Behaviour, per model name.
BEHAVIOURS: dict[str, dict[str, Any]] = {
    "bench-fast": {"reply": "A fast answer from the fake model."},
    "bench-slow": {
        "reply": "slow " * 9 + "slow",
        "chunks": 10,
        "first_chunk_delay_s": 3.0,
        "chunk_delay_s": 3.0,
    },
    "bench-hang": {"stall_after_chunks": 0},
    "bench-fail": {"fail_status": 503, "fail_times": -1},
    "bench-ttft": {
        "reply": "one two three four five",
        "first_chunk_delay_s": 0.05,
        "chunk_delay_s": 0.01,
    },
    "bench-tokens": {"reply": " ".join(["tok"] * 400), "chunk_delay_s": 0.002},
    "bench-drip": {
        "reply": " ".join(["drip"] * 100),
        "first_chunk_delay_s": 0.5,
        "chunk_delay_s": 0.5,
    },
    "bench-flood": {"reply": FLOOD_CHUNK * 4000, "chunks": 4000},
    "bench-200ms": {"reply": "done in 200 ms", "first_chunk_delay_s": 0.2},
}
TOKENS_PER_STREAM = 400


class FakeModelServer:
    """A running fake model server on 127.0.0.1 and the models file for it."""

    def __init__(self, work_dir: Path) -> None:
        self.port = free_port()
        self.models_file = work_dir / "models.toml"
        template = MODELS_TEMPLATE.read_text()
        self.models_file.write_text(template.replace("{fake_port}", str(self.port)))
        self.process: ManagedProcess = start_process(
            "fake_model",
            python_module(
                "tests.support.fake_openai",
                "--port",
                str(self.port),
            ),
            work_dir,
            port=self.port,
        )
        # Sent over HTTP, not on the command line: the flood reply alone is
        # larger than the kernel's limit for one argument.
        httpx.post(
            f"{self.url}/_fake/config", json=BEHAVIOURS, timeout=10.0
        ).raise_for_status()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self) -> list[dict[str, Any]]:
        """Return the call log (see tests.support.fake_openai.CallRecord)."""
        response = httpx.get(f"{self.url}/_fake/calls", timeout=60.0)
        response.raise_for_status()
        calls: list[dict[str, Any]] = response.json()
        return calls

    def reset(self) -> None:
        """Clear the call log and the per-model call counts."""
        httpx.post(f"{self.url}/_fake/reset", timeout=10.0).raise_for_status()

    def stop(self) -> None:
        self.process.stop(5.0)
