"""``python -m bulkhead.devstack up|down``: the development stack behind ``make up``.

``up`` runs in the foreground and copies every service's log lines to the
console with a name prefix; Ctrl-C or SIGTERM stops the services in reverse
order and exits 0. ``up --background`` starts the same runner detached, waits
until the stack is healthy and returns; ``down`` stops it through the runner's
pid file. Everything the stack writes goes under ``var/`` of the current
directory: logs in ``var/log/``, the SQLite database, NATS's store, the demo
API key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import BinaryIO
from urllib.parse import urlsplit

from bulkhead.devstack.config import DEFAULT_PORTS, LISTEN_ENV, SERVICES, StackConfig
from bulkhead.devstack.console import LogFollower
from bulkhead.devstack.errors import StackError
from bulkhead.devstack.nats import jetstream_problem
from bulkhead.devstack.ports import port_is_free
from bulkhead.devstack.stack import Stack

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///var/bulkhead.db"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEMO_USER = "demo"
DEMO_KEY_DATABASE_FILE = "demo-api-key.database"
BACKGROUND_START_TIMEOUT_S = 300.0
DOWN_TIMEOUT_S = 120.0
RUNNER_MARKER = b"bulkhead.devstack"


class _Paths:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.var_dir = workdir / "var"
        self.log_dir = self.var_dir / "log"
        self.pid_file = self.var_dir / "devstack.pid"
        self.state_file = self.var_dir / "devstack.json"
        self.demo_key_file = self.var_dir / "demo-api-key"
        self.runner_log = self.log_dir / "devstack.log"


def config_from_env(workdir: Path, replicas: dict[str, int]) -> StackConfig:
    """Build the ``make up`` configuration from the ``BULKHEAD_*`` environment.

    Uses the NATS server at ``BULKHEAD_NATS_URL`` if it responds with
    JetStream enabled; otherwise the stack starts its own, on that URL's port if the
    URL points at this machine and the port is free, else on a free port.
    ``BULKHEAD_SPLIT_CHAT_SERVICE=true`` and ``BULKHEAD_ASYNC_NICE=N`` set
    ``split_chat_service`` and ``async_nice``.
    """
    env = os.environ
    nats_url: str | None = env.get("BULKHEAD_NATS_URL") or DEFAULT_NATS_URL
    nats_port = None
    problem = jetstream_problem(nats_url)
    if problem is None:
        print(f"devstack: using the NATS server at {nats_url}")
    else:
        print(
            f"devstack: no NATS with JetStream at {nats_url} ({problem}); starting one"
        )
        parts = urlsplit(nats_url)
        local = parts.hostname in ("127.0.0.1", "localhost")
        if local and parts.port and port_is_free("127.0.0.1", parts.port):
            nats_port = parts.port
        nats_url = None
    # People read the console, and a local stack has no production secrets.
    defaults = {"BULKHEAD_LOG_FORMAT": "console", "BULKHEAD_DEV_MODE": "true"}
    return StackConfig(
        workdir=workdir,
        env={name: env.get(name) or value for name, value in defaults.items()},
        database_url=env.get("BULKHEAD_DATABASE_URL") or DEFAULT_DATABASE_URL,
        nats_url=nats_url,
        nats_port=nats_port,
        nats_stream=env.get("BULKHEAD_NATS_STREAM") or "BULKHEAD_TASKS",
        nats_subject_prefix=env.get("BULKHEAD_NATS_SUBJECT_PREFIX") or "bulkhead",
        ports=_ports_from_env(),
        replicas=replicas,
        split_chat_service=_flag(env.get("BULKHEAD_SPLIT_CHAT_SERVICE", "")),
        async_nice=_parse_int("BULKHEAD_ASYNC_NICE", env.get("BULKHEAD_ASYNC_NICE")),
    )


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _parse_int(variable: str, value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        raise StackError(f"{variable} must be a whole number, not {value!r}") from None


def _ports_from_env() -> dict[str, int]:
    ports = dict(DEFAULT_PORTS)
    for service, variable in LISTEN_ENV.items():
        value = os.environ.get(variable)
        if value:
            ports[service] = _parse_port(variable, value.rpartition(":")[2])
    gateway_port = os.environ.get("BULKHEAD_GATEWAY_PORT")
    if gateway_port:
        ports["gateway"] = _parse_port("BULKHEAD_GATEWAY_PORT", gateway_port)
    return ports


def _parse_port(variable: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise StackError(f"{variable} has an invalid port {text!r}; expected 1-65535")
    return port


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_up(paths: _Paths, replicas: dict[str, int], echo: bool) -> int:
    """Run the stack in the foreground until Ctrl-C, SIGTERM or a service exits."""
    if (running := _running_pid(paths.pid_file)) is not None:
        print(f"devstack: a stack is already running (pid {running}); run make down")
        return 1
    # A closed terminal (SIGHUP) stops the stack like Ctrl-C, so that no
    # service outlives the runner that make down relies on.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGHUP, _raise_keyboard_interrupt)
    # A shell starting the runner in the background (`&`) makes it inherit
    # SIGINT as ignored; Ctrl-C and kill -INT must still stop it.
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    paths.pid_file.write_text(f"{os.getpid()}\n")
    stack: Stack | None = None
    follower: LogFollower | None = None
    code = 1
    try:
        stack = Stack(config_from_env(paths.workdir, replicas))
        if echo:
            follower = LogFollower(lambda: _log_sources(stack))
            follower.start()
        stack.start()
        api_key = _demo_api_key(stack, paths)
        _write_state(paths, stack, api_key)
        print(banner(stack.gateway_url, api_key, background=not echo), flush=True)
        exited = _wait_for_exit(stack)
        process = stack.process(exited)
        print(f"devstack: {exited} {process.describe_exit()}; stopping the stack")
        print(process.log_tail(), file=sys.stderr)
    except KeyboardInterrupt:
        print("devstack: stopping the stack", flush=True)
        code = 0
    except StackError as error:
        print(f"devstack: {error}", file=sys.stderr)
    finally:
        # A second Ctrl-C must not cut the orderly stop short; stragglers
        # still get SIGKILL after the grace period.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if stack is not None:
            stack.stop()
        if follower is not None:
            follower.stop()
        paths.state_file.unlink(missing_ok=True)
        paths.pid_file.unlink(missing_ok=True)
    return code


def _log_sources(stack: Stack | None) -> list[tuple[str, Path, int]]:
    if stack is None:
        return []
    processes = list(stack.processes.values())
    if stack.nats is not None:
        processes.insert(0, stack.nats)
    # Log files keep earlier runs' lines; only this run's are printed.
    return [(p.name, p.log_path, p.first_log_offset) for p in processes if p.starts]


def _wait_for_exit(stack: Stack) -> str:
    while True:
        exited = stack.exited()
        if exited:
            return exited[0]
        time.sleep(0.5)


def _demo_api_key(stack: Stack, paths: _Paths) -> str:
    """Return the demo key of the stack's database, creating it on first use.

    The key file is reused only for the database it was created in: a file
    beside it contains a fingerprint of that database's URL.
    """
    database = hashlib.sha256(stack.database_url.encode()).hexdigest()
    fingerprint_file = paths.demo_key_file.with_name(DEMO_KEY_DATABASE_FILE)
    if paths.demo_key_file.exists() and fingerprint_file.exists():
        key = paths.demo_key_file.read_text().strip()
        if key and fingerprint_file.read_text().strip() == database:
            return key
    key = stack.create_api_key(DEMO_USER)
    paths.demo_key_file.write_text(key + "\n")
    paths.demo_key_file.chmod(0o600)
    fingerprint_file.write_text(database + "\n")
    return key


def _write_state(paths: _Paths, stack: Stack, api_key: str) -> None:
    processes = dict(stack.processes)
    if stack.nats is not None:
        processes["nats"] = stack.nats
    state = {
        "runner_pid": os.getpid(),
        "gateway_url": stack.gateway_url,
        "api_key_file": str(paths.demo_key_file.relative_to(paths.workdir)),
        "processes": {
            name: {"pid": p.pid, "command": p.command} for name, p in processes.items()
        },
    }
    paths.state_file.write_text(json.dumps(state, indent=2) + "\n")


def banner(gateway_url: str, api_key: str, *, background: bool) -> str:
    """Return the text printed once the stack is healthy, with a curl example."""
    stop = "make down" if background else "Ctrl-C"
    return f"""
Bulkhead is up.
  gateway  {gateway_url}
  API key  {api_key}   (stored in var/demo-api-key)
  logs     var/log/

Send a message; the response's run.id names the run that answers it:
  curl -sS -X POST {gateway_url}/api/chat \\
    -H 'Authorization: Bearer {api_key}' \\
    -H 'Content-Type: application/json' \\
    -H "Idempotency-Key: $(python3 -c 'import uuid; print(uuid.uuid4())')" \\
    -d '{{"content": "Hello, Bulkhead"}}'

Stream the answer as server-sent events (put that id in place of <run_id>):
  curl -N -H 'Authorization: Bearer {api_key}' \\
    {gateway_url}/api/runs/<run_id>/events

Stop the stack with {stop}.
"""


def run_up_background(paths: _Paths, replicas: dict[str, int]) -> int:
    """Start the runner detached and return once its stack is healthy."""
    if (running := _running_pid(paths.pid_file)) is not None:
        print(f"devstack: a stack is already running (pid {running}); run make down")
        return 1
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    paths.state_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "bulkhead.devstack", "up", "--no-echo"]
    command += [f"--replicas={service}={n}" for service, n in replicas.items()]

    with _open_private(paths.runner_log) as log:
        runner = subprocess.Popen(
            command,
            cwd=paths.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    deadline = time.monotonic() + BACKGROUND_START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = _read_state(paths.state_file)
        if state is not None and state.get("runner_pid") == runner.pid:
            key = paths.demo_key_file.read_text().strip()
            print(banner(str(state["gateway_url"]), key, background=True))
            print(f"runner pid {runner.pid}, its output in {paths.runner_log}")
            return 0
        if runner.poll() is not None:
            print(f"devstack: the stack failed to start; {paths.runner_log}:")
            print(paths.runner_log.read_text(errors="replace")[-4000:])
            return 1
        time.sleep(0.2)

    print(f"devstack: the stack was not up within {BACKGROUND_START_TIMEOUT_S:g} s")
    runner.send_signal(signal.SIGTERM)
    return 1


def _open_private(path: Path) -> BinaryIO:
    """Open ``path`` for writing, readable by its owner only.

    The runner's log contains the demo API key, like the key file.
    """
    path.touch(mode=0o600)
    path.chmod(0o600)
    return path.open("wb")


def run_down(paths: _Paths) -> int:
    """Stop a background stack: SIGTERM to its runner, SIGKILL if it hangs."""
    pid = _running_pid(paths.pid_file)
    if pid is None:
        print("devstack: no stack is running")
        paths.pid_file.unlink(missing_ok=True)
        return 0
    state = _read_state(paths.state_file)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not _pid_alive(pid):
        print("devstack: stack stopped")
        return 0
    print(f"devstack: runner {pid} did not stop in {DOWN_TIMEOUT_S:g} s; killing it")
    os.kill(pid, signal.SIGKILL)
    _kill_recorded_processes(state)
    paths.pid_file.unlink(missing_ok=True)
    paths.state_file.unlink(missing_ok=True)
    return 1


def _kill_recorded_processes(state: dict[str, object] | None) -> None:
    """SIGKILL the children the runner recorded, if each still runs that command."""
    if state is None:
        return
    processes = state.get("processes")
    if not isinstance(processes, dict):
        return
    for name, entry in processes.items():
        pid = entry.get("pid")
        command = entry.get("command") or []
        if isinstance(pid, int) and _cmdline(pid) == [c.encode() for c in command]:
            print(f"devstack: killing {name} (pid {pid})")
            os.kill(pid, signal.SIGKILL)


def _read_state(path: Path) -> dict[str, object] | None:
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def _running_pid(pid_file: Path) -> int | None:
    """Return the pid in ``pid_file`` if that process is a devstack runner."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if pid == os.getpid() or not _pid_alive(pid):
        return None
    cmdline = _cmdline(pid)
    return pid if any(RUNNER_MARKER in part for part in cmdline) else None


def _cmdline(pid: int) -> list[bytes]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.rstrip(b"\0").split(b"\0")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_replicas(values: list[str]) -> dict[str, int]:
    replicas = {}
    for value in values:
        service, _, count = value.partition("=")
        if service not in SERVICES or not count.isdigit() or int(count) < 1:
            raise SystemExit(
                f"invalid --replicas {value!r}: expected SERVICE=N with N >= 1 and "
                f"SERVICE one of {', '.join(SERVICES)}"
            )
        replicas[service] = int(count)
    return replicas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bulkhead.devstack",
        description="Run the Bulkhead development stack on this machine (127.0.0.1).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the stack and wait until it is healthy")
    up.add_argument(
        "--background",
        action="store_true",
        help="run detached; stop it with 'down'",
    )
    up.add_argument(
        "--no-echo",
        action="store_true",
        help="do not copy service logs to the console (they stay in var/log/)",
    )
    up.add_argument(
        "--replicas",
        action="append",
        default=[],
        metavar="SERVICE=N",
        help="number of processes of a service (repeatable; default 1 each)",
    )
    commands.add_parser("down", help="stop a stack started with 'up --background'")
    args = parser.parse_args(argv)

    paths = _Paths(Path.cwd())
    if args.command == "down":
        return run_down(paths)
    replicas = _parse_replicas(args.replicas)
    if args.background:
        return run_up_background(paths, replicas)
    return run_up(paths, replicas, echo=not args.no_echo)
