"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl start`` in a temporary folder.

Where the PostgreSQL server binaries are on the machine (``make test`` installs Debian's postgresql
when it can), a private ``postgres`` runs on a free loopback port for the session and is stopped and
removed at the end; each test asks it for a database of its own (``new_database``). Where they are
not, tests that need it skip and say why.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _pg_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")) and os.path.exists(os.path.join(candidate, "pg_ctl")):
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``initdb`` + ``pg_ctl start`` in a temporary folder; every wait bounded."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = _free_port()
        # Not under pytest's tmp_path: that folder is 0700 root, and initdb must run as a non-root user.
        self.root = Path(tempfile.mkdtemp(prefix="moorage-pg-"))
        self.data = self.root / "data"
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError("running as root and runuser is missing; initdb refuses to run as root")
            shutil.chown(self.root, "postgres", "postgres")
            self.run_as = [runuser, "-u", "postgres", "--"]
        self._counter = itertools.count(1)

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.run_as, *args], check=True, timeout=timeout, capture_output=True, text=True)

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "30",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
                  timeout=45)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "30",
                          "stop", timeout=45)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        import psycopg

        name = f"moorage_test_{next(self._counter)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; "
                    "install Debian's postgresql package to run the store tests against PostgreSQL")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'moorage[postgres]' (psycopg[binary])")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb refuses to run as root")
    server = PostgresServer(bindir)
    try:
        server.start()
    except (subprocess.SubprocessError, OSError, KeyError) as exc:
        server.stop()
        detail = getattr(exc, "stderr", "") or ""
        pytest.skip(f"could not start a throwaway PostgreSQL server: {exc} {detail}")
    try:
        yield server
    finally:
        server.stop()


