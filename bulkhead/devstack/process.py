"""One child process of the development stack, with its own log file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bulkhead.devstack.errors import StackError


class ManagedProcess:
    """A child process started and stopped by the stack, never by name.

    stdout and stderr go to ``log_path``, which is truncated on the first start
    and appended to on restarts, with a marker line before each start. The
    child gets a session of its own, so that a Ctrl-C in the terminal reaches
    only the stack, which then stops its children in order. Signals go to the
    child's pid only.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        nice: int = 0,
    ) -> None:
        self.name = name
        self.nice = nice
        self.command = list(command)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # Size of the log file when this object first started the process:
        # what came before belongs to earlier runs.
        self.first_log_offset = 0

    @property
    def pid(self) -> int | None:
        """Process id of the current (or last) child, None before the first start."""
        return self.popen.pid if self.popen is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last child, None while it runs or before a start."""
        if self.popen is None:
            return None
        return self.popen.poll()

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        """Start the child; raises :class:`StackError` if it is already running."""
        if self.is_running():
            raise StackError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        mode = "ab"  # keep the logs of earlier starts: they explain a crash
        with self.log_path.open(mode) as log:
            if not self.starts:
                self.first_log_offset = log.tell()
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"--- devstack: starting {self.name} at {stamp}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.nice:
            _lower_priority(self.popen.pid, self.nice)
        self.starts += 1

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the child's pid if it still runs."""
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def stop(self, grace_s: float) -> int | None:
        """Send SIGTERM, wait up to ``grace_s`` seconds, then SIGKILL.

        Returns the exit status, or None if the child was never started.
        """
        if self.popen is None:
            return None
        self.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            return self.kill_after_grace(grace_s)

    def kill_after_grace(self, grace_s: float) -> int | None:
        """SIGKILL a child that outlived its grace period, noting it in its log."""
        self._append_log_line(f"did not stop within {grace_s:g} s, sending SIGKILL")
        return self.kill()

    def kill(self) -> int | None:
        """Send SIGKILL and wait for the child to exit."""
        if self.popen is None:
            return None
        self.send_signal(signal.SIGKILL)
        return self.popen.wait()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the child to exit; raises subprocess.TimeoutExpired."""
        if self.popen is None:
            return None
        return self.popen.wait(timeout=timeout_s)

    def read_log(self) -> str:
        """Return the whole log file, or "" if there is none yet."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines of the log file."""
        return "\n".join(self.read_log().splitlines()[-lines:])

    def describe_exit(self) -> str:
        """Describe how the child ended, naming the signal if one killed it."""
        code = self.returncode
        if code is None:
            return "is running"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with status {code}"

    def _append_log_line(self, text: str) -> None:
        with self.log_path.open("a") as log:
            log.write(f"--- devstack: {text}\n")


def wait_until(
    process: ManagedProcess,
    check: Callable[[], bool],
    *,
    timeout_s: float,
    condition: str,
    interval_s: float = 0.1,
) -> None:
    """Poll ``check`` until it returns True.

    Raises :class:`StackError` with the last log lines of ``process`` if the
    process exits first or ``timeout_s`` seconds pass.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if not process.is_running():
            raise StackError(
                f"{process.name} {process.describe_exit()} before it was {condition}; "
                f"last lines of {process.log_path}:\n{process.log_tail()}"
            )
        if check():
            return
        if time.monotonic() >= deadline:
            raise StackError(
                f"{process.name} was not {condition} within {timeout_s:g} s; "
                f"last lines of {process.log_path}:\n{process.log_tail()}"
            )
        time.sleep(interval_s)


def _lower_priority(pid: int, nice: int) -> None:
    """Give a child started in a session of its own the CPU niceness ``nice``.

    With the kernel's autogroup scheduling, each session is scheduled as one
    group. A process's own niceness then only counts inside its group, and
    the group's niceness (/proc/PID/autogroup) weighs it against other
    sessions. Both are set, so the priority applies with autogroup on or off.
    """
    os.setpriority(os.PRIO_PROCESS, pid, nice)
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    except OSError:
        pass  # no autogroup support: the process niceness above applies
