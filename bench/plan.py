"""Benchmark plans: the sections, durations, client counts and repeats of a run."""

from __future__ import annotations

from dataclasses import dataclass, replace

ALL_SECTIONS = (
    "throughput",
    "isolation",
    "ttft",
    "streaming",
    "memory",
    "scaleout",
    "peer",
)


@dataclass(frozen=True)
class Plan:
    """Durations in seconds, client counts and repeats of every section."""

    name: str
    repeats: int
    load_s: float
    warmup_s: float
    sections: tuple[str, ...] = ALL_SECTIONS
    reference_clients: tuple[int, ...] = (16, 64)
    post_clients: tuple[int, ...] = (1, 16, 64, 256)
    sqlite_clients: tuple[int, ...] = (16, 64)
    peer_clients: tuple[int, ...] = (16, 64)
    # Stack layouts (bench.stack.LAYOUTS) that sections 2 and 3 measure. The
    # first is the primary layout: sections 4 to 6 run in it. The summary
    # keys report the split layout.
    layouts: tuple[str, ...] = ("split", "single")
    # Clients of the split layout measured again with agent and executor
    # stopped, which shows what the AI work on the same cores costs.
    api_only_clients: tuple[int, ...] = (16, 64)
    isolation_clients: int = 16
    isolation_cases: tuple[str, ...] = ("fast", "slow", "hang", "fail")
    ttft_single_streams: int = 30
    ttft_concurrent_per_worker: int = 3
    ttft_concurrency: int = 64
    streaming_concurrency: int = 100
    streaming_per_worker: int = 2
    memory_streams: int = 1000
    memory_hold_s: float = 20.0
    stalled_readers: int = 50
    stalled_hold_s: float = 20.0
    scaleout_replicas: tuple[int, ...] = (1, 2, 4)
    scaleout_runs_per_replica: int = 150
    scaleout_concurrency_per_replica: int = 4

    @property
    def primary_layout(self) -> str:
        return self.layouts[0]

    def with_overrides(self, **changes: object) -> Plan:
        return replace(self, **changes)  # type: ignore[arg-type]


FULL = Plan(name="full", repeats=3, load_s=10.0, warmup_s=2.0)

# Under two minutes on 2 cores: one repeat, short loads, a subset per section.
QUICK = Plan(
    name="quick",
    repeats=1,
    load_s=3.0,
    warmup_s=1.0,
    sections=("throughput", "isolation", "ttft", "scaleout"),
    reference_clients=(16, 64),
    post_clients=(16, 64),
    sqlite_clients=(),
    peer_clients=(),
    api_only_clients=(),
    layouts=("split",),
    isolation_cases=("fast", "fail"),
    ttft_single_streams=10,
    # 0: only the single-stream TTFT figure.
    ttft_concurrency=0,
    scaleout_replicas=(1, 2),
    scaleout_runs_per_replica=60,
)
