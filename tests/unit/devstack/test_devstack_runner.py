"""The dev runner's console output and demo key after `make up`."""

from __future__ import annotations

import io
from pathlib import Path

from bulkhead.devstack.cli import _demo_api_key, _open_private, _Paths
from bulkhead.devstack.console import LogFollower
from bulkhead.devstack.process import ManagedProcess


def test_log_follower_skips_lines_of_earlier_runs(tmp_path: Path) -> None:
    log_path = tmp_path / "chat_service.log"
    log_path.write_text("old line 1\nold line 2\n")
    process = ManagedProcess(
        "chat_service",
        ["true"],
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        log_path=log_path,
    )
    process.start()
    process.popen.wait(10)  # type: ignore[union-attr]
    with log_path.open("a") as log:
        log.write("new line\n")
    out = io.StringIO()
    follower = LogFollower(
        lambda: [(process.name, log_path, process.first_log_offset)], out=out
    )
    follower.start()
    follower.stop()
    printed = out.getvalue()
    assert "old line" not in printed
    assert "chat_service | new line" in printed
    assert "devstack: starting chat_service" in printed


class _KeyMaker:
    """Stands in for a Stack: a database URL and a counter of created keys."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.created: list[str] = []

    def create_api_key(self, user: str) -> str:
        key = f"bk_{user}_{len(self.created)}"
        self.created.append(key)
        return key


def test_demo_key_is_reused_for_its_database_only(tmp_path: Path) -> None:
    paths = _Paths(tmp_path)
    paths.var_dir.mkdir()
    sqlite = _KeyMaker("sqlite+aiosqlite:///var/bulkhead.db")
    first = _demo_api_key(sqlite, paths)  # type: ignore[arg-type]
    assert _demo_api_key(sqlite, paths) == first  # type: ignore[arg-type]
    assert len(sqlite.created) == 1

    postgres = _KeyMaker("postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    second = _demo_api_key(postgres, paths)  # type: ignore[arg-type]
    assert postgres.created == [second]
    assert paths.demo_key_file.read_text().strip() == second
    assert oct(paths.demo_key_file.stat().st_mode & 0o777) == "0o600"


def test_runner_log_is_private(tmp_path: Path) -> None:
    log_path = tmp_path / "devstack.log"
    log_path.write_text("an earlier run\n")
    log_path.chmod(0o644)

    with _open_private(log_path) as log:
        log.write(b"API key bk_demo\n")

    assert oct(log_path.stat().st_mode & 0o777) == "0o600"
    assert log_path.read_text() == "API key bk_demo\n"
