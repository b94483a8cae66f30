"""Load test of the feedback platform: N simulated annotators over loopback for a fixed time.

Each annotator loops: POST /api/projects/{id}/next, then POST the judgement (with an
idempotency key). Reports submissions per second, p50/p99 latency of the submission request
(and of the whole next+submit cycle), and checks that acknowledged submissions == stored rows.

    python bench/platform_load.py --backend both --annotators 50 --seconds 20 --workers 2 --sqlite-workers 1
    python bench/platform_load.py --backend postgresql --mode combined --client raw --rate 300 --project multi

`--project default` asks today's default questions about two candidates (better, safer, is_safe);
`--project multi` a ranking of 4 candidates, a rating of each and whether each is safe.

PostgreSQL runs on a throwaway cluster started here (initdb + pg_ctl); SQLite on a temp file.
The server is `alignloop serve` (uvicorn) in a subprocess; the annotators are asyncio tasks in
this process, sharing an httpx connection pool or (`--client raw`) each on its own hand-written
HTTP/1.1 keep-alive connection, which costs the shared CPU far less. `--mode ceiling` only sends
`GET /api/me` (authenticated, no queue work): the most this machine serves through the same stack.

To find where a latency tail comes from, the results also say in which 100-ms windows some
submission took over 30 ms (`stall_windows`: stalls that hit everyone come as runs of windows),
when the generator's own event loop woke late (`client_loop_lags_over_10ms`), and which tables
autovacuum vacuumed or analysed during the run (`pg_autovacuum`); `--trace` keeps every
submission's send time and latency (`bench/platform_trace_plot.py` plots them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import func, select, text

from alignloop.feedback.schema import DEFAULT_QUESTIONS, IsSafe, Question, Ranking, Rating
from alignloop.platform import crud
from alignloop.platform.db import make_engine, make_sessionmaker, migrate
from alignloop.platform.models import Item, Judgement
from alignloop.platform.pgcluster import free_port, start_cluster
from alignloop.platform.schemas import ProjectIn

RESULTS = Path(__file__).parent / "results" / "platform_load.json"
SAFE = {"safe": True, "harms": [], "severity": None}
PROJECTS: dict[str, tuple[tuple[Question, ...], int, dict[str, Any]]] = {
    "default": (DEFAULT_QUESTIONS, 2, {"better": "A", "safer": "A", "is_safe": [SAFE, SAFE]}),
    "multi": (
        (Ranking("order"), Rating("quality", aspects=("helpfulness",)), IsSafe("safe")),
        4,
        {"order": [2, 1, 4, 3], "quality": {"helpfulness": [4, 5, 2, 3]}, "safe": [SAFE] * 4},
    ),
}
"""The load's projects: questions, candidates per item, and the answers each submission sends."""


def seed(url: str, annotators: int, items: int, project_kind: str = "default") -> tuple[int, list[str]]:
    """A project (k = 1) with `items` items and an API token per annotator, inserted in bulk."""
    questions, candidates, _ = PROJECTS[project_kind]
    engine = make_engine(url, pool_size=1)
    with make_sessionmaker(engine)() as session:
        tokens = []
        for i in range(annotators):
            user = crud.create_user(session, name=f"load{i}", password="load-test-password", role="annotator")
            tokens.append(crud.create_token(session, user=user))
        project = crud.create_project(
            session, spec=ProjectIn(name="load", overlap=1, questions=list(questions))
        )
        session.execute(
            Item.__table__.insert(),
            [
                dict(
                    project_id=project.id,
                    prompt=f"prompt {i}",
                    candidates=[
                        {"text": "abcd"[j % 4] * 200, "media": None, "model": f"m{j}", "frames": None}
                        for j in range(candidates)
                    ],
                    priority=0.0,
                    is_gold=False,
                    gold=None,
                    meta={},
                    taken=0,
                    done=0,
                )
                for i in range(items)
            ],
        )
        session.commit()
        crud.refresh_queue_statistics(session, added=items)  # as the items route does on PostgreSQL
        session.commit()
        project_id = project.id
    engine.dispose()
    return project_id, tokens


def stored_rows(url: str) -> int:
    engine = make_engine(url, pool_size=1)
    with make_sessionmaker(engine)() as session:
        n = session.scalar(select(func.count(Judgement.id)))
    engine.dispose()
    return int(n or 0)


class RawResponse:
    def __init__(self, status_code: int, body: bytes):
        self.status_code, self.body = status_code, body

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """One keep-alive HTTP/1.1 connection over asyncio streams, written out by hand.

    The same requests as httpx for a fraction of the CPU, so that the load generator, which shares
    the machine with the server, takes less of it. A dropped connection raises `ConnectionError`
    and is reopened by the next request.
    """

    def __init__(self, base: str):
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> RawResponse:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        body = b"" if json is None else _dumps(json).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
        if json is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        try:
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
            data = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, IndexError) as exc:
            await self.close()
            raise ConnectionError(f"{method} {path}: connection dropped") from exc
        if "connection: close" in head:
            await self.close()
        return RawResponse(int(head[9:12]), data)

    async def post(self, path: str, **kwargs: Any) -> RawResponse:
        return await self.request("POST", path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> RawResponse:
        return await self.request("GET", path, **kwargs)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


_dumps = json.dumps


async def post(client: Any, url: str, out: dict[str, list[Any]], **kwargs: Any) -> Any:
    """POST, retried on a dropped connection (a submission keeps its idempotency key, so no duplicate)."""
    for attempt in range(5):
        try:
            return await client.post(url, **kwargs)
        except (httpx.TransportError, ConnectionError):
            out["retries"].append(1)
            if attempt == 4:
                raise
            await asyncio.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


class Alignloop:
    """How the generator talks to alignloop: the first assignment from `POST /api/projects/{id}/next`,
    then one `judgement-and-next` per submission, with a fresh idempotency key each time.

    Another server is driven by the same generator through an object with the same three methods
    (`bench/platform_vs_label_studio.py`)."""

    def __init__(self, project_id: int, answers: dict[str, Any] | None):
        self.project_id, self.answers = project_id, answers
        self.run = uuid.uuid4().hex[:8]  # idempotency keys unique to this run: a later run is new work

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def first(self, client: Any, token: str, index: int, out: dict[str, list[Any]]) -> Any:
        """The annotator's first piece of work (here: an assignment), taken before the clock starts."""
        r = await post(client, f"/api/projects/{self.project_id}/next", out, headers=self.headers(token))
        return r.json()["assignment"]

    async def submit(
        self, client: Any, token: str, work: Any, n: int, name: str, out: dict[str, list[Any]]
    ) -> tuple[int, Any]:
        """Submit one judgement of `work`: (status code, the next piece of work or None when done)."""
        body = {"idempotency_key": f"{self.run}-{name}-{n}", "answers": self.answers}
        r = await post(
            client,
            f"/api/assignments/{work['id']}/judgement-and-next",
            out,
            json=body,
            headers=self.headers(token),
        )
        return r.status_code, r.json()["assignment"] if r.status_code in (200, 201) else work


async def annotator(
    client: Any,
    token: str,
    target: Any,
    deadline: float,
    out: dict[str, list[Any]],
    name: str,
    mode: str,
    interval: float = 0.0,
    offset: float = 0.0,
    index: int = 0,
    first: Any = None,
) -> None:
    """One simulated annotator; with `interval` > 0 (combined mode) it submits on a fixed schedule,
    one submission every `interval` seconds from `offset`, and latency counts from the scheduled
    time, so a server that falls behind is charged for the wait (no coordinated omission). In
    combined mode `first` is the annotator's first piece of work, taken before the clock started,
    and `target` (e.g. `Alignloop`) says how to submit it and what comes next."""
    headers = target.headers(token)
    if mode == "ceiling":  # the cheapest authenticated request: what HTTP + auth alone allow
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = await client.get("/api/me", headers=headers)
            t1 = time.perf_counter()
            if r.status_code == 200:
                out["submit"].append(t1 - t0)
                out["cycle"].append(t1 - t0)
                out["requests"].append(1)
            else:
                out["errors"].append(r.status_code)
        return
    if mode == "combined":  # one request per submission: the answer carries the next piece of work
        work = first
        n = 0
        scheduled = time.perf_counter() + offset
        while work is not None and time.perf_counter() < deadline:
            if interval > 0:
                if scheduled >= deadline:  # the schedule ends here (no idle wait past the window)
                    break
                await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            t0 = scheduled if interval > 0 else time.perf_counter()
            scheduled += interval
            status, work = await target.submit(client, token, work, n, name, out)
            t1 = time.perf_counter()
            if status in (200, 201):
                out["submit"].append(t1 - t0)
                out["cycle"].append(t1 - t0)
                out["acked"].append(1)
                out["trace"].append((t0, t1 - t0, index))
            else:
                out["errors"].append(status)
            n += 1
        return
    n = 0
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        r = await post(client, f"/api/projects/{target.project_id}/next", out, headers=headers)
        if r.status_code != 200:
            out["errors"].append(r.status_code)
            continue
        assignment = r.json()["assignment"]
        if assignment is None:
            return
        body = {"idempotency_key": f"{name}-{n}", "answers": target.answers}
        t1 = time.perf_counter()
        r = await post(
            client, f"/api/assignments/{assignment['id']}/judgement", out, json=body, headers=headers
        )
        t2 = time.perf_counter()
        if r.status_code in (200, 201):
            out["submit"].append(t2 - t1)
            out["cycle"].append(t2 - t0)
            out["acked"].append(1)
        else:
            out["errors"].append(r.status_code)
        n += 1


async def watch_loop(start: float, deadline: float, lags: list[Any], tick: float = 0.005) -> None:
    """Note every moment the load generator's own event loop woke more than 10 ms late: a stall
    there delays the annotators' sends and is charged to the server's latency."""
    while time.perf_counter() < deadline:
        before = time.perf_counter()
        await asyncio.sleep(tick)
        late = time.perf_counter() - before - tick
        if late > 0.010:
            lags.append((before - start, late))


async def drive(
    url: str,
    tokens: list[str],
    target: Any,
    seconds: float,
    mode: str,
    raw: bool,
    rate: float = 0.0,
) -> dict[str, list[Any]]:
    """Run one annotator per token against the server at `url` for `seconds` (see `annotator`)."""
    out: dict[str, list[Any]] = {
        "submit": [],
        "cycle": [],
        "acked": [],
        "requests": [],
        "errors": [],
        "retries": [],
        "trace": [],
        "loop_lag": [],
    }
    limits = httpx.Limits(max_connections=len(tokens), max_keepalive_connections=len(tokens))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as shared:
        clients: list[Any] = [RawClient(url) for _ in tokens] if raw else [shared] * len(tokens)
        interval = len(tokens) / rate if rate > 0 else 0.0
        first: list[Any] = [None] * len(tokens)
        if mode == "combined":  # every annotator holds its first piece of work before the clock starts
            first = list(
                await asyncio.gather(
                    *(
                        target.first(c, t, i, out)
                        for i, (c, t) in enumerate(zip(clients, tokens, strict=True))
                    )
                )
            )
        start = time.perf_counter()
        out["wall_start"] = [time.time()]
        deadline = start + seconds
        heartbeat = asyncio.create_task(watch_loop(start, deadline, out["loop_lag"]))
        await asyncio.gather(
            *(
                annotator(
                    c,
                    t,
                    target,
                    deadline,
                    out,
                    f"a{i}",
                    mode,
                    interval,
                    i * interval / len(tokens),
                    i,
                    first[i],
                )
                for i, (c, t) in enumerate(zip(clients, tokens, strict=True))
            )
        )
        out["elapsed"] = [time.perf_counter() - start]
        await heartbeat
        out["trace"] = [(t0 - start, latency, i) for t0, latency, i in out["trace"]]
        for c in clients:
            if raw:
                await c.close()
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process, its live children, and its children already reaped.

    For the PostgreSQL postmaster that is every backend, the WAL writer and the checkpointer,
    including backends that exited during the run.
    """
    root = psutil.Process(pid)
    times = root.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in root.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return float(total)


def query(url: str, sql: str, **params: object) -> list[Any]:
    """The rows of one statement, on a connection of its own."""
    engine = make_engine(url, pool_size=1)
    with engine.connect() as connection:
        rows = connection.execute(text(sql), params).all()
    engine.dispose()
    return list(rows)


def top_statements(url: str, n: int = 6) -> list[dict[str, object]]:
    """The statements that took the most PostgreSQL time (needs pg_stat_statements preloaded)."""
    rows = query(
        url,
        "SELECT calls, total_exec_time, mean_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 160)"
        " FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT :n",
        n=n,
    )
    return [
        {"calls": r[0], "total_ms": round(r[1], 1), "mean_ms": round(r[2], 3), "query": r[3]} for r in rows
    ]


def maintenance(url: str, wall_start: float) -> list[dict[str, object]]:
    """When autovacuum vacuumed or analysed each table, in seconds since the clock started."""
    rows = query(
        url,
        "SELECT relname, autovacuum_count, autoanalyze_count,"
        " extract(epoch FROM last_autovacuum), extract(epoch FROM last_autoanalyze)"
        " FROM pg_stat_user_tables WHERE autovacuum_count + autoanalyze_count > 0 ORDER BY relname",
    )
    return [
        {
            "table": name,
            "autovacuums": vacuums,
            "autoanalyzes": analyzes,
            "last_autovacuum_s": None if vacuumed is None else round(float(vacuumed) - wall_start, 2),
            "last_autoanalyze_s": None if analysed is None else round(float(analysed) - wall_start, 2),
        }
        for name, vacuums, analyzes, vacuumed, analysed in rows
    ]


def pg_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--pg-setting: expected NAME=VALUE, got {pair!r}")
        settings[name] = value
    return settings


def stall_windows(trace: list[Any], width_s: float = 0.1, slow_s: float = 0.03) -> list[list[float]]:
    """The 100-ms windows of the run in which some submission took over 30 ms: [start s, how many
    were sent in the window, the slowest in ms]. Stalls that hit everyone show up as runs of these."""
    windows: dict[int, list[float]] = {}
    for start, latency, _ in trace:
        window = windows.setdefault(int(start / width_s), [0, 0.0])
        window[0] += 1
        window[1] = max(window[1], latency)
    return [
        [round(k * width_s, 1), n, round(1000 * slowest, 1)]
        for k, (n, slowest) in sorted(windows.items())
        if slowest > slow_s
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def start_alignloop(
    url: str, workers: int, workdir: Path, log_name: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`alignloop serve` on a free loopback port, up and answering; (the process, its base URL)."""
    port = free_port()
    with (workdir / log_name).open("w") as log:  # the child keeps its own handle
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alignloop.cli",
                "serve",
                "--db",
                url,
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
                "--media-dir",
                str(workdir / "media"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base, "/login", server)
    return server, base


def wait_until_up(base: str, path: str, server: subprocess.Popen[bytes], timeout_s: float = 600.0) -> None:
    """Wait until `base + path` answers 200 (a server that exits first is an error)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server at {base} exited with code {server.returncode}")
        try:
            if httpx.get(f"{base}{path}", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base}{path} did not answer within {timeout_s:.0f} s")


def measure(
    base: str,
    tokens: list[str],
    target: Any,
    *,
    seconds: float,
    mode: str,
    raw: bool,
    rate: float,
    server_pid: int,
    postmaster_pid: int | None,
    trace: bool = False,
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Drive the server at `base` (process `server_pid` and its children) for `seconds` and say how it
    went: rates, latencies, CPU per submission of the server, PostgreSQL and this generator, the load
    average; and the raw record of the run."""
    server_before = tree_cpu_s(server_pid)
    pg_before = tree_cpu_s(postmaster_pid) if postmaster_pid is not None else 0.0
    load_before = os.getloadavg()[0]
    client_before = time.process_time()
    out = asyncio.run(drive(base, tokens, target, seconds, mode, raw, rate))
    client_cpu = time.process_time() - client_before
    server_cpu = tree_cpu_s(server_pid) - server_before
    pg_cpu = tree_cpu_s(postmaster_pid) - pg_before if postmaster_pid is not None else 0.0
    load_after = os.getloadavg()[0]
    elapsed = out["elapsed"][0]
    done = len(out["requests"] if mode == "ceiling" else out["acked"])
    figures = {
        "seconds": round(elapsed, 2),
        "submissions": done,
        "submissions_per_s": round(done / elapsed, 1),
        "submit_p50_ms": round(1000 * percentile(out["submit"], 0.50), 1),
        "submit_p99_ms": round(1000 * percentile(out["submit"], 0.99), 1),
        "cycle_p50_ms": round(1000 * percentile(out["cycle"], 0.50), 1),
        "cycle_p99_ms": round(1000 * percentile(out["cycle"], 0.99), 1),
        "errors": len(out["errors"]),
        "error_codes": {str(code): n for code, n in sorted(Counter(out["errors"]).items())},
        "retries": len(out["retries"]),
        "server_cpu_ms_per_submission": round(1000 * server_cpu / max(done, 1), 2),
        "client_cpu_ms_per_submission": round(1000 * client_cpu / max(done, 1), 2),
        "postgres_cpu_ms_per_submission": (
            round(1000 * pg_cpu / max(done, 1), 2) if postmaster_pid is not None else None
        ),
        "stall_windows": stall_windows(out["trace"]),
        "client_loop_max_lag_ms": round(1000 * max((lag for _, lag in out["loop_lag"]), default=0.0), 1),
        "client_loop_lags_over_10ms": [[round(t, 3), round(1000 * lag, 1)] for t, lag in out["loop_lag"]],
        "load_average_before_after": [round(load_before, 2), round(load_after, 2)],
        **({"trace": [[round(t, 4), round(lat, 4), i] for t, lat, i in out["trace"]]} if trace else {}),
    }
    return figures, out


def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    cluster = None
    if backend == "postgresql":
        cluster = start_cluster(durable=not args.pg_no_fsync, settings=pg_settings(args.pg_setting))
        admin = make_engine(cluster.url(), pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE load"))
        admin.dispose()
        url = cluster.url("load")
    else:
        url = f"sqlite:///{workdir}/load.db"
    try:
        migrate(url)
        statements = "pg_stat_statements" in pg_settings(args.pg_setting).get("shared_preload_libraries", "")
        if statements:
            with make_engine(url, pool_size=1).begin() as connection:
                connection.execute(text("CREATE EXTENSION pg_stat_statements"))
        items = int(args.annotators * args.seconds * 40) + 1000  # more than can be judged in the time
        project_id, tokens = seed(url, args.annotators, items, args.project)
        workers = args.sqlite_workers if backend == "sqlite" else args.workers
        server, base = start_alignloop(url, workers, workdir, f"server-{backend}.log")
        try:
            if statements:
                with make_engine(url, pool_size=1).begin() as connection:
                    connection.execute(text("SELECT pg_stat_statements_reset()"))
            figures, out = measure(
                base,
                tokens,
                Alignloop(project_id, PROJECTS[args.project][2]),
                seconds=args.seconds,
                mode=args.mode,
                raw=args.client == "raw",
                rate=args.rate,
                server_pid=server.pid,
                postmaster_pid=cluster.postmaster_pid() if cluster is not None else None,
                trace=args.trace,
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
        # GET /api/me (ceiling): the "submission" columns are these requests
        acked = figures["submissions"]
        stored = acked if args.mode == "ceiling" else stored_rows(url)
        top = top_statements(url) if statements else None
        upkeep = maintenance(url, out["wall_start"][0]) if cluster is not None and out["wall_start"] else None
        return {
            "backend": backend,
            "project": args.project,
            "annotators": args.annotators,
            "workers": workers,
            "mode": args.mode,
            "client": args.client,
            "offered_rate_per_s": args.rate or None,
            **{k: v for k, v in figures.items() if k != "trace"},
            "pg_settings": pg_settings(args.pg_setting) if cluster else None,
            "pg_top_statements": top,
            "pg_autovacuum": upkeep,
            "stored_rows": stored,
            "acked_equals_stored": acked == stored,
            **({"trace": figures["trace"]} if args.trace else {}),
        }
    finally:
        if cluster is not None:
            cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--annotators", type=int, default=50, help="concurrent simulated annotators")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to drive the load")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes on PostgreSQL")
    parser.add_argument(
        "--sqlite-workers",
        type=int,
        default=1,
        help="uvicorn worker processes on SQLite (writes are serialised)",
    )
    parser.add_argument(
        "--mode",
        choices=["two-requests", "combined", "ceiling"],
        default="two-requests",
        help="next + submit per judgement, judgement-and-next (one request per judgement), or"
        " ceiling: GET /api/me only (the submission columns then count those requests)",
    )
    parser.add_argument(
        "--client",
        choices=["httpx", "raw"],
        default="httpx",
        help="httpx (one shared pool), or raw: a hand-written HTTP/1.1 keep-alive connection per"
        " annotator over asyncio streams (much less client CPU)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="combined mode: offer this many submissions/s in all, spread evenly over the annotators"
        " (latency from the scheduled time); 0: every annotator submits again as soon as answered",
    )
    parser.add_argument(
        "--pg-no-fsync",
        action="store_true",
        help="run the PostgreSQL cluster with fsync off (faster, not crash-safe; default: fsync on)",
    )
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the benchmark's PostgreSQL cluster (repeatable), e.g. commit_delay=200",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="combined mode: keep every submission's start (s), latency (s) and annotator in the results",
    )
    parser.add_argument(
        "--project",
        choices=sorted(PROJECTS),
        default="default",
        help="default: two candidates, better/safer/is_safe; multi: a ranking of 4, a rating, is_safe",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON results go")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = []
    with tempfile.TemporaryDirectory(prefix="alignloop-load-") as tmp:
        for backend in backends:
            result = run_backend(backend, args, Path(tmp))
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "trace"}), flush=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": machine, "results": results}  # one line when it holds traces: they are long
    args.output.write_text(json.dumps(document, indent=None if args.trace else 1) + "\n")
    header = (
        f"{'backend':<11}{'annot.':>7}{'subm/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'cycle p99':>10}{'errors':>7}"
        f"{'srv cpu ms':>11}{'pg cpu ms':>10}  acked==stored"
    )
    print(header)
    for r in results:
        print(
            f"{r['backend']:<11}{r['annotators']:>7}{r['submissions_per_s']:>9}{r['submit_p50_ms']:>8}"
            f"{r['submit_p99_ms']:>8}{r['cycle_p99_ms']:>10}{r['errors']:>7}"
            f"{r['server_cpu_ms_per_submission']:>11}{'-' if r['postgres_cpu_ms_per_submission'] is None else r['postgres_cpu_ms_per_submission']:>10}"
            f"  {r['acked_equals_stored']}"
        )
    return 0 if all(r["acked_equals_stored"] and not r["errors"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
