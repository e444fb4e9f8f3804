"""The whole Bulkhead stack as child processes: NATS, migrations and four services.

:class:`Stack` is what ``make up`` runs and what end-to-end and crash tests
use. It is blocking; from async tests call its methods through
``asyncio.to_thread`` so that the event loop keeps serving meanwhile.

Process names: ``"nats"`` (only when the stack started its own server) and
one name per service replica: the first replica of a service has the
service's name (``"executor_service"``), further replicas get a suffix
(``"executor_service-1"``, ``"executor_service-2"``).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from bulkhead.devstack.config import (
    LISTEN_ENV,
    NATS_PROCESS,
    SERVICES,
    START_GROUPS,
    Instance,
    StackConfig,
)
from bulkhead.devstack.errors import StackError
from bulkhead.devstack.nats import NatsServer, jetstream_problem
from bulkhead.devstack.ports import free_port, port_is_free
from bulkhead.devstack.process import ManagedProcess, wait_until
from bulkhead.devstack.tokens import (
    GATEWAY_TOKEN_ENV,
    TOKENS_FILE,
    TOKENS_OF_SERVICE,
    WORKER_TOKEN_ENV,
    read_or_create_tokens,
)
from bulkhead.healthcheck import is_serving


class Stack:
    """A running (or startable) Bulkhead stack.

    ``nats_url`` is used when a server with JetStream enabled responds there; with
    ``nats_url=None`` the stack starts a nats-server of its own under
    ``var_dir/nats`` and can kill and restart it like a service.
    """

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.workdir = self.config.workdir.resolve()
        self.var_dir = (self.config.var_dir or self.workdir / "var").resolve()
        self.log_dir = self.var_dir / "log"
        self.database_url = self.config.database_url or (
            f"sqlite+aiosqlite:///{self.var_dir / 'bulkhead.db'}"
        )
        self.nats: NatsServer | None = None
        self.nats_url = self.config.nats_url or ""
        self.instances = self._plan_instances()
        self.processes: dict[str, ManagedProcess] = {}
        # Service credentials, created at the first start (see devstack.tokens).
        self.service_tokens: dict[str, str] = {}
        self._started = False
        self._validate()

    # --- lifecycle -------------------------------------------------------

    def start(self) -> Self:
        """Start NATS if needed, migrate, start every service and wait until healthy.

        Raises :class:`StackError` (after stopping what it started) if a port
        is taken, NATS does not respond, the migration fails, or a service
        exits or is not healthy within ``startup_timeout_s``.
        """
        if self._started:
            raise StackError("the stack is already started")
        self._started = True
        atexit.register(self.stop)
        try:
            self._check_ports_free()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.service_tokens = read_or_create_tokens(self.var_dir / TOKENS_FILE)
            self._start_nats()
            self._create_processes()
            if self.config.run_migrations:
                self.run_migrations()
            for group in START_GROUPS:
                names = [i.name for i in self.instances if i.service in group]
                for name in names:
                    self.processes[name].start()
                for name in names:
                    self.wait_healthy(name)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop services in reverse start order, then the NATS the stack started.

        Each group gets SIGTERM and ``stop_grace_s`` seconds, then SIGKILL.
        Safe to call more than once.
        """
        atexit.unregister(self.stop)
        grace_s = self.config.stop_grace_s
        for group in reversed(START_GROUPS):
            members = [
                self.processes[i.name]
                for i in self.instances
                if i.service in group and i.name in self.processes
            ]
            _stop_together(members, grace_s)
        if self.nats is not None:
            self.nats.stop(grace_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- one process -----------------------------------------------------

    def process(self, name: str) -> ManagedProcess:
        """Return the process called ``name`` (a replica name or ``"nats"``)."""
        if name == NATS_PROCESS:
            if self.nats is None:
                raise StackError(
                    f"the stack uses the NATS server at {self.nats_url} "
                    "and did not start it; start the stack with nats_url=None"
                )
            return self.nats
        try:
            return self.processes[name]
        except KeyError:
            known = ", ".join([*self.processes, *(["nats"] if self.nats else [])])
            raise StackError(f"no process named {name!r}; known: {known}") from None

    def replicas_of(self, service: str) -> list[str]:
        """Return the process names of a service's replicas."""
        return [i.name for i in self.instances if i.service == service]

    def kill(self, name: str) -> int | None:
        """SIGKILL one process and wait for it; returns its exit status."""
        return self.process(name).kill()

    def terminate(self, name: str) -> int | None:
        """Stop one process with SIGTERM, then SIGKILL after the grace period."""
        return self.process(name).stop(self.config.stop_grace_s)

    def start_process(self, name: str, *, wait: bool = True) -> None:
        """Start a stopped process again and, with ``wait``, wait until healthy."""
        process = self.process(name)
        if name == NATS_PROCESS and self.nats is not None:
            if wait:
                self.nats.start_and_wait(self.config.startup_timeout_s)
            else:
                self.nats.start()
            return
        process.start()
        if wait:
            self.wait_healthy(name)

    def restart(self, name: str, *, kill: bool = False) -> None:
        """Stop one process (SIGTERM, or SIGKILL with ``kill``), start it, wait."""
        if kill:
            self.kill(name)
        else:
            self.terminate(name)
        self.start_process(name)

    def wait_healthy(self, name: str, timeout_s: float | None = None) -> None:
        """Wait until a service replica reports healthy; raises StackError."""
        timeout = timeout_s if timeout_s is not None else self.config.startup_timeout_s
        process = self.process(name)
        instance = self._instance(name)
        if instance.service == "gateway":
            base = self.url_of(name)
            for path in ("/healthz", "/readyz"):
                wait_until(
                    process,
                    lambda path=path: _http_ok(base + path),
                    timeout_s=timeout,
                    condition=f"returning 200 on GET {path}",
                )
            return
        address = self.address_of(name)
        wait_until(
            process,
            lambda: is_serving(address, timeout_s=1.0),
            timeout_s=timeout,
            condition=f"SERVING on gRPC health at {address}",
        )

    def is_healthy(self, name: str) -> bool:
        """Check a replica once: gRPC health SERVING, or gateway /readyz 200."""
        instance = self._instance(name)
        if instance.service == "gateway":
            return _http_ok(self.url_of(name) + "/readyz")
        return is_serving(self.address_of(name), timeout_s=1.0)

    def exited(self) -> list[str]:
        """Return the names of service processes that were started and have exited."""
        names = [
            n for n, p in self.processes.items() if p.starts and not p.is_running()
        ]
        if self.nats is not None and self.nats.starts and not self.nats.is_running():
            names.append(NATS_PROCESS)
        return names

    # --- logs ------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        return self.process(name).log_path

    def read_log(self, name: str) -> str:
        return self.process(name).read_log()

    def log_tail(self, name: str, lines: int = 30) -> str:
        return self.process(name).log_tail(lines)

    # --- addresses -------------------------------------------------------

    def address_of(self, name: str) -> str:
        """host:port that clients dial for a replica."""
        return f"{_connect_host(self.config.host)}:{self._instance(name).port}"

    def url_of(self, name: str) -> str:
        """Base URL of a gateway replica."""
        return f"http://{self.address_of(name)}"

    @property
    def gateway_url(self) -> str:
        """Base URL of the first gateway replica."""
        return self.url_of("gateway")

    @property
    def gateway_urls(self) -> list[str]:
        return [self.url_of(name) for name in self.replicas_of("gateway")]

    @property
    def chat_service_addr(self) -> str:
        """gRPC target of every chat_service replica: one address, or an
        ``ipv4:`` list that channels spread calls over (round robin), skipping
        a replica that is down."""
        return _target([self.address_of(n) for n in self.replicas_of("chat_service")])

    def serves_ai_work(self, name: str) -> bool:
        """Return whether a replica serves only the asynchronous side: an agent, an
        executor, or a chat_service replica that only the workers dial."""
        service = self._instance(name).service
        if service in ("agent_service", "executor_service"):
            return True
        if service != "chat_service" or not self.config.split_chat_service:
            return False
        front = (len(self.replicas_of("chat_service")) + 1) // 2
        return name not in self.replicas_of("chat_service")[:front]

    def chat_service_addr_for(self, service: str) -> str:
        """gRPC target of chat_service that ``service`` dials.

        Without ``split_chat_service`` every service dials every replica.
        With it, the gateway dials the first half and the workers the rest.
        """
        names = self.replicas_of("chat_service")
        if self.config.split_chat_service and service != "chat_service":
            is_worker = service != "gateway"
            names = [n for n in names if self.serves_ai_work(n) == is_worker]
        return _target([self.address_of(n) for n in names])

    @property
    def gateway_service_token(self) -> str:
        """Token that allows ChatService and AuthService calls to chat_service."""
        return self.service_tokens.get(GATEWAY_TOKEN_ENV, "")

    @property
    def worker_service_token(self) -> str:
        """Token that allows RunService calls to chat_service."""
        return self.service_tokens.get(WORKER_TOKEN_ENV, "")

    # --- tools -----------------------------------------------------------

    def env_for(
        self, service: str | None = None, name: str | None = None
    ) -> dict[str, str]:
        """Environment of a process: the stack's shared settings, then overrides.

        With ``service`` and ``name``, the replica's own listen address and
        the service's ``service_env`` are applied too.
        """
        env = dict(os.environ) if self.config.inherit_env else {}
        env.setdefault("PATH", os.environ.get("PATH", ""))
        env.update(self._shared_env())
        if name is not None:
            env.update(self._listen_env(self._instance(name)))
        if service is not None:
            env["BULKHEAD_CHAT_SERVICE_ADDR"] = self.chat_service_addr_for(service)
            for variable in TOKENS_OF_SERVICE.get(service, ()):
                env[variable] = self.service_tokens.get(variable, "")
        env.update(self.config.env)
        if service is not None:
            env.update(self.config.service_env.get(service, {}))
        return env

    def run_migrations(self) -> None:
        """Apply the database migrations; raises StackError with the output."""
        command = self.config.migrate_command or [
            sys.executable,
            "-m",
            "chat_service.migrate",
        ]
        self._run_tool(
            command, "migrate", self.log_dir / "migrate.log", log_stdout=True
        )

    def create_api_key(self, user: str) -> str:
        """Create an API key for ``user`` with chat_service's admin command."""
        command = self.config.admin_command or [
            sys.executable,
            "-m",
            "chat_service.admin",
        ]
        output = self._run_tool(
            [*command, "create-api-key", "--user", user],
            "create-api-key",
            self.log_dir / "admin.log",
        )
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if not lines:
            raise StackError(f"create-api-key for user {user!r} printed no key")
        return lines[-1]

    # --- internals -------------------------------------------------------

    def _plan_instances(self) -> list[Instance]:
        instances = []
        for group in START_GROUPS:
            for service in group:
                count = self.config.replicas.get(service, 1)
                if count < 1:
                    raise StackError(f"{service} needs at least 1 replica, not {count}")
                for index in range(count):
                    name = service if index == 0 else f"{service}-{index}"
                    port = self.config.ports.get(service) if index == 0 else None
                    instances.append(
                        Instance(name, service, port or free_port(self.config.host))
                    )
        return instances

    def _validate(self) -> None:
        unknown = set(self.config.replicas) | set(self.config.ports)
        unknown |= set(self.config.commands) | set(self.config.service_env)
        unknown -= set(SERVICES)
        if unknown:
            raise StackError(f"unknown service names: {sorted(unknown)}")
        chat_replicas = self.config.replicas.get("chat_service", 1)
        if chat_replicas > 1 and self.database_url.startswith("sqlite"):
            raise StackError(
                "chat_service replicas need PostgreSQL: SQLite allows one "
                "chat_service process"
            )
        if not 0 <= self.config.async_nice <= 19:
            raise StackError(
                f"async_nice must be 0 to 19, not {self.config.async_nice}"
            )
        if self.config.split_chat_service and chat_replicas < 2:
            raise StackError(
                "split_chat_service needs at least 2 chat_service replicas, "
                f"not {chat_replicas}"
            )

    def _instance(self, name: str) -> Instance:
        for instance in self.instances:
            if instance.name == name:
                return instance
        raise StackError(f"no service replica named {name!r}")

    def _check_ports_free(self) -> None:
        taken = [
            f"{i.name} port {i.port}"
            for i in self.instances
            if not port_is_free(self.config.host, i.port)
        ]
        if taken:
            raise StackError(
                "ports already in use: " + ", ".join(taken) + ". Stop the other "
                "stack (make down) or choose other ports with the BULKHEAD_* settings."
            )

    def _start_nats(self) -> None:
        if self.config.nats_url:
            problem = jetstream_problem(self.config.nats_url)
            if problem is not None:
                raise StackError(f"NATS at {self.config.nats_url}: {problem}")
            self.nats_url = self.config.nats_url
            return
        self.nats = NatsServer(
            self.var_dir / "nats",
            self.log_dir / "nats.log",
            port=self.config.nats_port,
            host=_connect_host(self.config.host),
        )
        self.nats.start_and_wait(self.config.startup_timeout_s)
        self.nats_url = self.nats.url

    def _create_processes(self) -> None:
        for instance in self.instances:
            command = self.config.commands.get(instance.service) or [
                sys.executable,
                "-m",
                instance.service,
            ]
            self.processes[instance.name] = ManagedProcess(
                instance.name,
                command,
                env=self.env_for(instance.service, instance.name),
                cwd=self.workdir,
                log_path=self.log_dir / f"{instance.name}.log",
                nice=self.config.async_nice
                if self.serves_ai_work(instance.name)
                else 0,
            )

    def _shared_env(self) -> dict[str, str]:
        env = {
            "PYTHONUNBUFFERED": "1",
            "BULKHEAD_DATABASE_URL": self.database_url,
            "BULKHEAD_NATS_URL": self.nats_url,
            "BULKHEAD_NATS_STREAM": self.config.nats_stream,
            "BULKHEAD_NATS_SUBJECT_PREFIX": self.config.nats_subject_prefix,
            "BULKHEAD_CHAT_SERVICE_ADDR": self.chat_service_addr,
        }
        if self.config.models_file is not None:
            env["BULKHEAD_MODELS_FILE"] = str(self.config.models_file)
        for service in SERVICES:
            env.update(self._listen_env(self._instance(service)))
        return env

    def _listen_env(self, instance: Instance) -> dict[str, str]:
        if instance.service == "gateway":
            return {
                "BULKHEAD_GATEWAY_HOST": self.config.host,
                "BULKHEAD_GATEWAY_PORT": str(instance.port),
            }
        return {LISTEN_ENV[instance.service]: f"{self.config.host}:{instance.port}"}

    def _run_tool(
        self, command: list[str], what: str, log_path: Path, *, log_stdout: bool = False
    ) -> str:
        """Run a one-shot command with the stack's environment; return its stdout.

        stderr always goes to ``log_path``, stdout only with ``log_stdout``,
        because create-api-key prints a secret there.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = subprocess.run(
                command,
                check=False,
                env=self.env_for(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.config.startup_timeout_s,
            )
        except subprocess.TimeoutExpired as error:
            raise StackError(
                f"{what} timed out after {self.config.startup_timeout_s:g} s"
            ) from error
        with log_path.open("a") as log:
            log.write(f"--- devstack: {' '.join(command)}\n")
            log.write((result.stdout if log_stdout else "") + result.stderr)
        if result.returncode != 0:
            raise StackError(
                f"{what} failed with exit status {result.returncode}: "
                f"{' '.join(command)}\n{result.stdout}{result.stderr}"
            )
        return result.stdout


def _stop_together(processes: list[ManagedProcess], grace_s: float) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill_after_grace(grace_s)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _connect_host(host: str) -> str:
    """Address to dial for a listen host: wildcard addresses mean loopback."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _target(addresses: list[str]) -> str:
    """Return one address as it is, several as an ``ipv4:`` list for round robin."""
    if len(addresses) == 1:
        return addresses[0]
    return "ipv4:" + ",".join(addresses)
