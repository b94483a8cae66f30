"""`alignloop loop --demo toyworld|cheetah`: the whole loop on one machine, with a real server.

Starts `alignloop serve` on an SQLite file in the run directory, creates an admin and scripted
annotator accounts (passwords in run_dir/accounts/, readable by the owner only), starts one
`alignloop annotate` process per annotator, and runs the rounds against the server over HTTP.
Stopped at any point (Ctrl-C, a kill) and started again with the same command, it reuses the
database, the accounts and the loop's state and goes on from where it was.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from alignloop.loop.rounds import LoopConfig, drive, make_domain
from alignloop.platform.client import PlatformClient, PlatformError
from alignloop.platform.process import ServerProcess, stop_process, tied_popen

DEMOS: dict[str, dict[str, Any]] = {
    "toyworld": {
        "domain": "toyworld",
        "preset": "demo",
        "teacher": "toyworld",
        "annotators": 3,
        "pairs": 1000,
    },
    "cheetah": {
        "domain": "control",
        "preset": "cheetah",
        "env": "SafeHalfCheetahVelocity-v5",
        "teacher": "oracle",
        "annotators": 2,
        "pairs": 120,
        "rounds": 5,  # the cost model needs the unsafe clips of a fast policy before it can hold it back
    },
}
SMOKE: dict[str, dict[str, Any]] = {
    "toyworld": {"pairs": 24, "rounds": 2, "annotators": 2},
    "cheetah": {"pairs": 20, "rounds": 2},
}
"""What `--preset smoke` changes in each demo besides the models' sizes: a plumbing check that
ends in under a minute (few pairs, two rounds)."""
DEFAULT = LoopConfig()


def demo_spec(cfg: LoopConfig) -> dict[str, Any]:
    """The demo's settings, cut down by `SMOKE` under `--preset smoke`."""
    assert cfg.demo is not None
    return {**DEMOS[cfg.demo], **(SMOKE[cfg.demo] if cfg.preset == "smoke" else {})}


def demo_config(cfg: LoopConfig) -> LoopConfig:
    """The demo's options: its preset's, except where the command line changed a default."""
    assert cfg.demo is not None
    preset = {k: v for k, v in demo_spec(cfg).items() if k in {f.name for f in dataclasses.fields(cfg)}}
    chosen = {k: v for k, v in preset.items() if getattr(cfg, k) == getattr(DEFAULT, k)}
    run_dir = Path(f"runs/loop-{cfg.demo}") if cfg.run_dir == DEFAULT.run_dir else cfg.run_dir
    return dataclasses.replace(cfg, **chosen, run_dir=run_dir, project=f"loop-{cfg.demo}")


def password(accounts: Path, name: str) -> Path:
    """The account's password file, made once (owner-only) and reused on a restart."""
    accounts.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = accounts / f"{name}.txt"
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18) + "\n")
    return path


def local_platform(run_dir: Path) -> tuple[ServerProcess, Path]:
    """The demo's server on run_dir/platform.db (log and media in run_dir) and the admin's
    password file; the admin is created on the first start."""
    admin_password = password(run_dir / "accounts", "admin")
    args = ["--create-admin", "admin", "--password-file", str(admin_password.resolve())]
    return ServerProcess(
        f"sqlite:///{(run_dir / 'platform.db').resolve()}", run_dir, args=args
    ), admin_password


def start_annotators(
    cfg: LoopConfig, url: str, client: PlatformClient, teacher: str, n: int, pace: float = 0.0
) -> list[subprocess.Popen[bytes]]:
    """Create the scripted annotators' accounts (once) and start one process each, spending
    `pace` seconds on each item."""
    run_dir, processes = Path(cfg.run_dir), []
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        name = f"annotator-{i}"
        secret = password(run_dir / "accounts", name)
        try:
            client.create_user(name, secret.read_text().splitlines()[0], role="annotator")
        except PlatformError as exc:
            if exc.status != 409:  # 409: the account exists from an earlier start
                raise
        command = [
            sys.executable,
            "-m",
            "alignloop.cli",
            "annotate",
            "--url",
            url,
            "--project",
            cfg.project,
            "--user",
            name,
            "--password-file",
            str(secret),
            "--teacher",
            teacher,
            "--world-seed",
            str(cfg.seed),
            "--seed",
            str(1000 * cfg.seed + i),
            "--poll",
            "0.5",
            "--pace",
            str(pace),
        ]
        if teacher == "oracle":
            command += ["--oracle", str(run_dir / "oracle.jsonl")]
        with (run_dir / "logs" / f"{name}.log").open("ab") as out:
            processes.append(tied_popen(command, stdout=out, stderr=subprocess.STDOUT))
    return processes


def run_demo(cfg: LoopConfig) -> int:
    assert cfg.demo is not None
    spec = demo_spec(cfg)
    cfg = demo_config(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    domain = make_domain(cfg)  # bad options fail here, before any process starts
    platform, admin_password = local_platform(run_dir)
    annotators: list[subprocess.Popen[bytes]] = []
    try:
        platform.start()
        print(f"platform: {platform.url} (database {run_dir / 'platform.db'})")
        admin = PlatformClient.login(platform.url, "admin", admin_password.read_text().splitlines()[0])
        with admin:
            annotators = start_annotators(cfg, platform.url, admin, spec["teacher"], spec["annotators"])
            print(f"{len(annotators)} scripted annotators label through the API ({run_dir / 'logs'})")
            return drive(cfg, admin, domain)
    finally:
        for process in annotators:
            stop_process(process)
        platform.stop()
