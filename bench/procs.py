"""Child processes of the benchmark: start, wait for a port, read RSS and CPU time."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bulkhead.devstack import ManagedProcess, StackError

REPO_ROOT = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_process(
    name: str,
    command: Sequence[str],
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout_s: float = 60.0,
    cwd: Path = REPO_ROOT,
) -> ManagedProcess:
    """Start ``command`` with its output in ``log_dir/NAME.log``.

    With ``port``, wait until 127.0.0.1:port accepts connections. Raises
    StackError with the log's last lines if the process exits or the port
    stays closed for ``timeout_s`` seconds.
    """
    process = ManagedProcess(
        name,
        command,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=cwd,
        log_path=log_dir / f"{name}.log",
    )
    process.start()
    if port is None:
        return process
    deadline = time.monotonic() + timeout_s
    while not _port_open(port):
        if not process.is_running():
            raise StackError(
                f"{name} {process.describe_exit()} before listening on port {port}:"
                f"\n{process.log_tail()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise StackError(
                f"{name} did not listen on port {port} within {timeout_s:g} s:"
                f"\n{process.log_tail()}"
            )
        time.sleep(0.05)
    return process


def python_module(module: str, *args: str) -> list[str]:
    """Return the command line that runs ``python -m module args``."""
    return [sys.executable, "-m", module, *args]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def memory_kb(pid: int | None) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of a process in KiB; {} if it is gone."""
    if pid is None:
        return {}
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
    except OSError:
        return {}
    return values


def cpu_seconds(pid: int | None) -> float:
    """Return user + system CPU seconds a process has used; 0.0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name (field 2) may contain spaces; fields after it
            # start behind its closing parenthesis. utime and stime are
            # fields 14 and 15 (proc(5)).
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """Return the CPU seconds all cores spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ... (proc(5)); idle and
    # iowait are not busy, guest time is already counted in user.
    return (sum(fields[:8]) - fields[3] - fields[4]) / _CLOCK_TICKS


class CpuMeter:
    """CPU used by a set of processes between :meth:`start` and :meth:`stop`.

    ``machine`` is the busy time of every core, including PostgreSQL, the
    load generator and any other process on the machine.
    """

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self._pids = dict(pids)
        self._before: dict[str, float] = {}
        self._machine_before = 0.0
        self._started = 0.0

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self._machine_before = machine_busy_seconds()
        self._started = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Return cores used per process (CPU seconds / wall seconds) and in total."""
        wall_s = max(time.monotonic() - self._started, 1e-6)
        cores = {
            name: round((cpu_seconds(pid) - self._before[name]) / wall_s, 3)
            for name, pid in self._pids.items()
        }
        cores["total"] = round(sum(cores.values()), 3)
        machine = (machine_busy_seconds() - self._machine_before) / wall_s
        cores["machine"] = round(machine, 3)
        return cores
