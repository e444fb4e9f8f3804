"""Install and run the LangGraph dev server for the peer comparison.

The server lives in its own virtual environment under ``var/`` (never
committed), is installed from PyPI on first use, listens on a free port of
127.0.0.1, and runs with its analytics and version check turned off.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.procs import REPO_ROOT, start_process
from bulkhead.devstack import ManagedProcess, StackError, free_port

PEER_PACKAGE = "langgraph-cli[inmem]==0.4.40"
VENV_DIR = REPO_ROOT / "var" / "langgraph-venv"
CONFIG_FILE = Path(__file__).resolve().parent / "langgraph.json"
GRAPH_FILE = CONFIG_FILE.parent / "graph.py"
ASSISTANT_ID = "fixed"
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGSMITH_TRACING": "false",
}
INSTALL_TIMEOUT_S = 900


def ensure_installed(log_dir: Path) -> Path:
    """Return the ``langgraph`` command, installing it into VENV_DIR if needed.

    Raises StackError with pip's output when the install fails.
    """
    command = VENV_DIR / "bin" / "langgraph"
    if command.exists():
        return command
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "peer-install.log"
    steps = [
        [sys.executable, "-m", "venv", str(VENV_DIR)],
        [str(VENV_DIR / "bin" / "pip"), "install", "--quiet", PEER_PACKAGE],
    ]
    for step in steps:
        result = subprocess.run(
            step,
            capture_output=True,
            text=True,
            check=False,
            timeout=INSTALL_TIMEOUT_S,
        )
        with log.open("a") as out:
            out.write(f"$ {' '.join(step)}\n{result.stdout}{result.stderr}\n")
        if result.returncode != 0:
            raise StackError(
                f"installing {PEER_PACKAGE} failed ({' '.join(step[:3])}): "
                f"{result.stderr.strip()[-800:]}"
            )
    return command


def peer_version() -> str:
    """Return the installed langgraph-api and langgraph-cli versions."""
    python = VENV_DIR / "bin" / "python"
    code = (
        "import importlib.metadata as m;"
        "print(*(f'{n} {m.version(n)}' for n in ('langgraph-cli', 'langgraph-api',"
        " 'langgraph')), sep=', ')"
    )
    result = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


class PeerServer:
    """A running LangGraph dev server; stop() ends it by pid."""

    def __init__(self, command: Path, log_dir: Path) -> None:
        self.port = free_port()
        # The dev server keeps its threads and runs in .langgraph_api/ under
        # its working directory and reloads them on start, so every server
        # starts in an empty copy of the graph's directory.
        run_dir = Path(tempfile.mkdtemp(prefix="langgraph-", dir=log_dir))
        for name in (CONFIG_FILE.name, GRAPH_FILE.name):
            shutil.copy(CONFIG_FILE.parent / name, run_dir / name)
        self.process: ManagedProcess = start_process(
            "langgraph",
            [
                str(command),
                "dev",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-browser",
                "--no-reload",
                "--config",
                str(run_dir / CONFIG_FILE.name),
            ],
            log_dir,
            env=OFFLINE_ENV,
            port=self.port,
            timeout_s=120.0,
            # langgraph.json names the graph file relative to the working
            # directory.
            cwd=run_dir,
        )
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ok", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise StackError(
            f"the LangGraph dev server did not answer GET /ok within {timeout_s:g} s:"
            f"\n{self.process.log_tail()}"
        )

    def stop(self) -> None:
        self.process.stop(10.0)
