"""A burst of wrong logins against the platform on SQLite, and what it does to everyone else.

N threads each try one wrong password for the same account at the same moment (half through the
login form, half through `POST /api/tokens`) against `alignloop serve` in a subprocess, with real
argon2 hashes; meanwhile a bystander repeats an authenticated read (`GET /api/projects` with an
API token). Reports the bystander's latency (p50, p99, max), the server's CPU per login, the
machine's load average, and what the next wrong password gets (429 once the account has N = 50
failures in its window).

    python bench/platform_logins.py --logins 50 --output bench/results/platform_logins.json

Run it against another checkout with PYTHONPATH=/path/to/checkout (the old code has no throttle:
its 51st answer is 401).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from argon2 import PasswordHasher
from sqlalchemy import select, update

from alignloop.platform import crud
from alignloop.platform.db import make_engine, make_sessionmaker, migrate
from alignloop.platform.models import User
from alignloop.platform.process import ServerProcess
from alignloop.platform.schemas import ProjectIn

RESULTS = Path(__file__).parent / "results" / "platform_logins.json"
PASSWORD = "the right password"


def seed(url: str) -> str:
    """The attacked account (a real-cost argon2 hash) and a bystander's token; answers the token."""
    engine = make_engine(url, pool_size=1)
    with make_sessionmaker(engine)() as session:
        crud.create_user(session, name="target", password=PASSWORD, role="annotator")
        bystander = crud.create_user(session, name="bystander", password=PASSWORD, role="trainer")
        token = crud.create_token(session, user=bystander)
        crud.create_project(session, spec=ProjectIn(name="p"))
        real_cost = PasswordHasher().hash(PASSWORD)  # the default parameters, whatever the caller's
        session.execute(update(User).where(User.name == "target").values(password_hash=real_cost))
        session.commit()
        assert session.scalar(select(User.id).where(User.name == "target")) is not None
    engine.dispose()
    return token


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wrong_login(url: str, i: int) -> int:
    """One wrong password for `target`: even i through the form, odd i through the token route."""
    with httpx.Client(base_url=url, timeout=120) as client:
        if i % 2:
            return client.post("/api/tokens", json={"name": "target", "password": f"wrong {i}"}).status_code
        page = client.get("/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf is not None
        form = {"name": "target", "password": f"wrong {i}", "csrf_token": csrf.group(1)}
        return client.post("/login", data=form).status_code


def burst(url: str, token: str, logins: int, pause_s: float = 0.01) -> dict[str, Any]:
    """`logins` parallel wrong logins while a bystander reads; the bystander's latencies and more.
    A request that fails (the old code: the database stayed locked past its timeout) counts by
    the name of its error."""
    statuses: list[int | str] = [0] * logins
    start = threading.Barrier(logins + 1)

    def attacker(i: int) -> None:
        start.wait()
        try:
            statuses[i] = wrong_login(url, i)
        except httpx.HTTPError as exc:
            statuses[i] = type(exc).__name__

    threads = [threading.Thread(target=attacker, args=(i,)) for i in range(logins)]
    for thread in threads:
        thread.start()
    latencies: list[float] = []
    failed_reads: list[str] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as reader:
        assert reader.get("/api/projects").status_code == 200  # the token is cached from now on
        start.wait()
        began = time.perf_counter()
        while any(thread.is_alive() for thread in threads):
            sent = time.perf_counter()
            try:
                status = reader.get("/api/projects").status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__  # type: ignore[assignment]
            latencies.append(time.perf_counter() - sent)
            if status != 200:
                failed_reads.append(str(status))
            time.sleep(pause_s)
        burst_s = time.perf_counter() - began
    for thread in threads:
        thread.join()
    return {"statuses": statuses, "latencies": latencies, "failed_reads": failed_reads, "burst_s": burst_s}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    latencies, statuses = result["latencies"], [str(s) for s in result["statuses"]]
    return {
        "bystander_reads": len(latencies),
        "bystander_p50_s": round(statistics.median(latencies), 4),
        "bystander_p99_s": round(_percentile(latencies, 0.99), 4),
        "bystander_max_s": round(max(latencies), 4),
        "bystander_failed_reads": len(result["failed_reads"]),
        "burst_s": round(result["burst_s"], 2),
        "login_statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
    }


def _cpu(times: Any) -> float:
    return float(times.user + times.system)


def read_cost(url: str, token: str, process: psutil.Process, reads: int = 200) -> float:
    """The server's CPU seconds per bystander read, measured alone (to take out of the burst's)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as reader:
        reader.get("/api/projects")
        before = _cpu(process.cpu_times())
        for _ in range(reads):
            reader.get("/api/projects")
        return (_cpu(process.cpu_times()) - before) / reads


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logins", type=int, default=50, help="parallel wrong logins")
    parser.add_argument("--password-checks", type=int, default=None, help="ALIGNLOOP_PASSWORD_CHECKS")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    output = args.output.resolve()  # before moving into the server's folder
    if args.password_checks is not None:
        os.environ["ALIGNLOOP_PASSWORD_CHECKS"] = str(args.password_checks)
    with tempfile.TemporaryDirectory() as tmp:
        url_db = f"sqlite:///{tmp}/logins.db"
        migrate(url_db)
        token = seed(url_db)
        os.chdir(tmp)  # the server runs the code on PYTHONPATH, not a ./alignloop
        server = ServerProcess(url_db, Path(tmp))
        server.start()
        try:
            assert server.process is not None
            process = psutil.Process(server.process.pid)
            cpu_per_read = read_cost(server.url, token, process)
            load_before = os.getloadavg()
            cpu_before = process.cpu_times()
            result = burst(server.url, token, args.logins)
            cpu_after = process.cpu_times()
            load_after = os.getloadavg()
            try:
                next_status: int | str = wrong_login(server.url, 1)  # the token route: one more
            except httpx.HTTPError as exc:
                next_status = type(exc).__name__
        finally:
            server.stop()
    cpu_s = _cpu(cpu_after) - _cpu(cpu_before) - cpu_per_read * len(result["latencies"])
    row = {
        "logins": args.logins,
        **summary(result),
        "server_cpu_per_login_s": round(cpu_s / args.logins, 3),
        "server_cpu_per_read_ms": round(1000 * cpu_per_read, 2),
        "next_wrong_login_status": next_status,
        "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
        "code": os.environ.get("PYTHONPATH", "."),
        "at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(row, indent=2))
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(output.read_text()) if output.exists() else []
    output.write_text(json.dumps([*rows, row], indent=2) + "\n")


if __name__ == "__main__":
    main()
