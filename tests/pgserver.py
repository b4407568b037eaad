"""A throw-away PostgreSQL server for the tests: initdb in a temporary folder, loopback only,
trust authentication (any password is accepted, so a test can give one and look for it in the
output), stopped and removed at the end. As root, the server runs as the `postgres` user
(initdb refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import needs_system


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def available() -> bool:
    return all(_binary(n) for n in ("initdb", "pg_ctl", "createdb"))


class Server:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="nas-pg-", dir="/tmp"))
        self.data = self.root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres", "postgres")
        self._run(_binary("initdb"), "-D", str(self.data), "-U", "nas", "--auth=trust", "-E", "UTF8")
        self.start()
        self._run(_binary("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "nas", "nas")
        self.url = f"postgresql+psycopg://nas@127.0.0.1:{self.port}/nas"

    def _run(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self.as_postgres else list(args)
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
        self._run(
            _binary("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    """A fresh server per test module; skipped, saying so, where PostgreSQL is not installed
    (failed instead under NAS_REQUIRE_SYSTEM_DEPS=1, as in CI: .ci/run installs it)."""
    needs_system("the PostgreSQL tests", "postgresql", available())
    server = Server()
    yield server
    server.close()
