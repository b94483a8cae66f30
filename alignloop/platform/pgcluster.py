"""A throwaway PostgreSQL cluster (initdb + pg_ctl in a temp dir, loopback port) for tests and benchmarks.

The server binaries come from PATH or /usr/lib/postgresql/*/bin. initdb refuses to run as root,
so as root the cluster belongs to the `postgres` system user (through runuser), which is created
as a system account when the binaries came without it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bindir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb is None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = found[-1] if found else None
    return Path(initdb).resolve().parent if initdb else None


OWNER = "postgres"


def _ensure_owner() -> None:
    try:
        pwd.getpwnam(OWNER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", OWNER], check=True, timeout=60)


@dataclass
class Cluster:
    bindir: Path
    base: Path
    port: int
    user: str = "alignloop"
    durable: bool = False
    """fsync on (as a real deployment runs); tests run with it off, for speed."""
    settings: dict[str, str] = field(default_factory=dict)
    """Further server settings (`-c name=value`), e.g. commit_delay or shared_buffers."""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", OWNER, "--"] if os.geteuid() == 0 else []
        return subprocess.run(prefix + list(args), check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        data, sock = self.base / "data", self.base / "sock"
        sock.mkdir(exist_ok=True)
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the postgres user
            _ensure_owner()
            shutil.chown(self.base, OWNER)
            shutil.chown(sock, OWNER)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            self.user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        fsync = "on" if self.durable else "off"
        options = (
            f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync={fsync} -c max_connections=300"
        )
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self.base / "log"),
            "-w",
            "start",
        )

    def postmaster_pid(self) -> int:
        """The server's main process (its children are the backends, WAL writer and the rest)."""
        return int((self.base / "data" / "postmaster.pid").read_text().split("\n", 1)[0])

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def start_cluster(durable: bool = False, settings: dict[str, str] | None = None) -> Cluster:
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found (initdb); run `make setup` as root")
    base = Path(tempfile.mkdtemp(prefix="alignloop-pg-"))
    base.chmod(0o755)
    cluster = Cluster(
        bindir=bindir, base=base, port=free_port(), durable=durable, settings=dict(settings or {})
    )
    try:
        cluster.start()
    except subprocess.CalledProcessError as exc:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr}\n{log}") from exc
    return cluster
