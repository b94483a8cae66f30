"""alignloop's feedback platform and Label Studio side by side, on one PostgreSQL and one machine.

    python bench/platform_vs_label_studio.py --rates 25 50 100 200 300 --seconds 20 --annotators 50

Both servers hold the same project: items of 4 candidates, each judged by a ranking of the four,
a 1-5 rating of each and which of them are unsafe (alignloop's `--project multi` of
`bench/platform_load.py`; for Label Studio a labelling configuration of a Ranker, four Ratings and
a multiple Choices). Both run on one throwaway PostgreSQL cluster (fsync on), one database each,
with two server processes each: alignloop as `alignloop serve --workers 2` (uvicorn), Label Studio
1.23.2 under uWSGI (`core.wsgi:application`, master and 2 processes, as its production deployment
runs it; `bench/setup_label_studio.sh` builds its environment), both seeded before the clock
starts (`bench/label_studio_seed.py` for Label Studio: its own migrations, users, API tokens,
project and tasks through its ORM).

The same load generator (`bench/platform_load.py`'s open-loop schedule: each annotator on its own
keep-alive connection, latency counted from the scheduled send time) drives both at each offered
rate, one server after the other and in alternating order from rate to rate, so both see the same
machine. A submission is, for alignloop, `POST /api/assignments/{id}/judgement-and-next` (the
judgement stored and the next item assigned in one request); for Label Studio,
`POST /api/tasks/{id}/annotations` on the annotator's next task of a list handed out before the
clock (Label Studio's own next-task call is left out, which favours it).

For each server and rate: submissions/s achieved, p50/p99 latency, errors, CPU per submission of
the server processes and of PostgreSQL, and whether every acknowledged submission was stored. A
rate is sustained when at least 95% of it was achieved with no error and p99 <= 100 ms; the
sustainable rate is the highest sustained rate offered. Before the first rate each server is
driven for `--warmup-seconds` at the lowest rate, unrecorded (its workers' first requests import
and connect). Results go to
bench/results/platform_vs_label_studio.json, the plot to bench/results/platform_vs_label_studio.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platform_load import (
    PROJECTS,
    Alignloop,
    measure,
    post,
    seed,
    start_alignloop,
    stored_rows,
    wait_until_up,
)
from sqlalchemy import text

from alignloop.platform.db import make_engine, migrate
from alignloop.platform.pgcluster import Cluster, free_port, start_cluster

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "platform_vs_label_studio.json"
LS_VENV = HERE / ".venv-label-studio"
P99_TARGET_MS = 100.0
SUSTAINED_SHARE = 0.95
CANDIDATES = 4


def label_studio_result(candidates: int = CANDIDATES) -> list[dict[str, Any]]:
    """One Label Studio annotation answering the project's questions (what alignloop's multi
    project's submissions say: an order, a rating of each candidate, all safe)."""
    order = {"from_name": "order", "to_name": "candidates", "type": "ranker"}
    ranked = [str(i) for i in (1, 0, 3, 2)][:candidates]
    return [
        {**order, "value": {"ranker": {"_": ranked}}},
        *(
            {
                "from_name": f"helpfulness_{i}",
                "to_name": "prompt",
                "type": "rating",
                "value": {"rating": 1 + (3 + i) % 5},
            }
            for i in range(candidates)
        ),
        {"from_name": "unsafe", "to_name": "prompt", "type": "choices", "value": {"choices": []}},
    ]


@dataclass
class Tasks:
    """An annotator's share of Label Studio's tasks, taken in order."""

    ids: list[int]
    pos: int = 0


@dataclass
class LabelStudio:
    """How the load generator talks to Label Studio: each annotator submits annotations to its
    own list of tasks, `POST /api/tasks/{id}/annotations`, one request per submission."""

    task_ids: list[int]
    annotators: int
    result: list[dict[str, Any]] = field(default_factory=label_studio_result)
    shares: dict[int, Tasks] = field(default_factory=dict)
    """Each annotator's tasks and how far it got: a later rate goes on from there."""

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Token {token}"}

    async def first(self, client: Any, token: str, index: int, out: dict[str, list[Any]]) -> Tasks:
        return self.shares.setdefault(index, Tasks(self.task_ids[index :: self.annotators]))

    async def submit(
        self, client: Any, token: str, work: Tasks, n: int, name: str, out: dict[str, list[Any]]
    ) -> tuple[int, Tasks | None]:
        body = {"result": self.result, "lead_time": 1.0}
        r = await post(
            client,
            f"/api/tasks/{work.ids[work.pos]}/annotations",
            out,
            json=body,
            headers=self.headers(token),
        )
        if r.status_code != 201:
            return r.status_code, work
        work.pos += 1
        return r.status_code, work if work.pos < len(work.ids) else None


def label_studio_env(cluster: Cluster, database: str, data_dir: Path) -> dict[str, str]:
    """Label Studio's settings for the benchmark: the cluster's database, offline, quiet."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {
        **env,
        "DJANGO_DB": "default",
        "POSTGRE_HOST": "127.0.0.1",
        "POSTGRE_PORT": str(cluster.port),
        "POSTGRE_NAME": database,
        "POSTGRE_USER": cluster.user,
        "POSTGRE_PASSWORD": "unused-trust-auth",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "SECRET_KEY": "platform-vs-label-studio",
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }


def seed_label_studio(env: dict[str, str], annotators: int, tasks: int) -> dict[str, Any]:
    """Label Studio's migrations, users, tokens, project and tasks (`bench/label_studio_seed.py`)."""
    done = subprocess.run(
        [
            str(LS_VENV / "bin" / "python"),
            str(HERE / "label_studio_seed.py"),
            "--annotators",
            str(annotators),
            "--tasks",
            str(tasks),
            "--candidates",
            str(CANDIDATES),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"seeding Label Studio failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def start_label_studio(
    env: dict[str, str], workers: int, workdir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """Label Studio under uWSGI on a free loopback port, up and answering; (the process, its URL)."""
    ls_dir = subprocess.run(
        [
            str(LS_VENV / "bin" / "python"),
            "-c",
            "import label_studio, os; print(os.path.dirname(label_studio.__file__))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    with (workdir / "label-studio.log").open("w") as log:
        server = subprocess.Popen(
            [
                str(LS_VENV / "bin" / "uwsgi"),
                "--http",
                f"127.0.0.1:{port}",
                "--http-keepalive",
                "--chdir",
                ls_dir,
                "--module",
                "core.wsgi:application",
                "--master",
                "--processes",
                str(workers),
                "--single-interpreter",
                "--need-app",
                "--die-on-term",
                "--disable-logging",
                "--buffer-size",
                "65535",
            ],
            env={**env, "DJANGO_SETTINGS_MODULE": "core.settings.label_studio"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base, "/health", server)
    return server, base


def label_studio_stored(cluster: Cluster, database: str) -> int:
    engine = make_engine(cluster.url(database), pool_size=1)
    with engine.connect() as connection:
        n = connection.execute(text("SELECT count(*) FROM task_completion")).scalar()
    engine.dispose()
    return int(n or 0)


def sustainable(runs: list[dict[str, Any]], p99_ms: float | None = P99_TARGET_MS) -> float | None:
    """The highest offered rate that was sustained (see the module docstring), None if none was;
    with ``p99_ms=None`` latency is not asked about (the rate kept up with, however slowly)."""
    held = [
        r["offered_rate_per_s"]
        for r in runs
        if r["submissions_per_s"] >= SUSTAINED_SHARE * r["offered_rate_per_s"]
        and r["errors"] == 0
        and (p99_ms is None or r["submit_p99_ms"] <= p99_ms)
    ]
    return max(held) if held else None


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per server: the sustainable rate, the highest rate kept up with at any latency, and the
    most submissions/s achieved at any offered rate."""
    out: dict[str, dict[str, float | None]] = {}
    for name in ("alignloop", "label-studio"):
        mine = [r for r in runs if r["server"] == name]
        out[name] = {
            "sustainable_rate_per_s": sustainable(mine),
            "kept_up_rate_per_s": sustainable(mine, p99_ms=None),
            "most_achieved_per_s": max((r["submissions_per_s"] for r in mine), default=None),
        }
    return out


def plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_p99) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("alignloop", "label-studio"):
        runs = [r for r in document["runs"] if r["server"] == name]
        offered = [r["offered_rate_per_s"] for r in runs]
        ax_rate.plot(offered, [r["submissions_per_s"] for r in runs], marker="o", label=name)
        ax_p99.plot(offered, [r["submit_p99_ms"] for r in runs], marker="o", label=name)
    top = max(r["offered_rate_per_s"] for r in document["runs"])
    ax_rate.plot([0, top], [0, top], color="grey", linestyle=":", label="offered")
    ax_rate.set(xlabel="offered submissions/s", ylabel="achieved submissions/s", title="throughput")
    ax_p99.axhline(P99_TARGET_MS, color="grey", linestyle=":", label="p99 target")
    ax_p99.set(xlabel="offered submissions/s", ylabel="p99 latency (ms)", yscale="log", title="p99 latency")
    for ax in (ax_rate, ax_p99):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("one PostgreSQL, 2 server processes each, 50 annotators, ranking of 4 + ratings + safety")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[25, 50, 100, 200, 300])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each rate is offered")
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="server processes of each")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=5.0,
        help="before the first rate, drive each server this long at the lowest rate, unrecorded",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (LS_VENV / "bin" / "uwsgi").exists():
        print(
            f"no Label Studio environment at {LS_VENV}: run bash bench/setup_label_studio.sh", file=sys.stderr
        )
        return 2
    budget = int(sum(args.rates) * args.seconds * 1.2) + 20 * args.annotators  # more than can be judged
    runs: list[dict[str, Any]] = []
    cluster = start_cluster(durable=True)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        admin = make_engine(cluster.url(), pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE alignloop"))
            connection.execute(text("CREATE DATABASE label_studio"))
        admin.dispose()
        with tempfile.TemporaryDirectory(prefix="alignloop-vs-ls-") as tmp:
            workdir = Path(tmp)
            url = cluster.url("alignloop")
            migrate(url)
            project_id, al_tokens = seed(url, args.annotators, budget, "multi")
            env = label_studio_env(cluster, "label_studio", workdir / "label-studio-data")
            ls = seed_label_studio(env, args.annotators, budget)
            al_server, al_base = start_alignloop(url, args.workers, workdir, "alignloop.log")
            servers.append(al_server)
            ls_server, ls_base = start_label_studio(env, args.workers, workdir)
            servers.append(ls_server)
            targets = {
                "alignloop": (al_base, al_tokens, Alignloop(project_id, PROJECTS["multi"][2]), al_server.pid),
                "label-studio": (
                    ls_base,
                    ls["tokens"],
                    LabelStudio(ls["task_ids"], args.annotators),
                    ls_server.pid,
                ),
            }
            warmed = dict.fromkeys(targets, 0)
            if args.warmup_seconds > 0:  # the first requests of each worker: imports, connections
                for name, (base, tokens, target, pid) in targets.items():
                    warm = Alignloop(project_id, PROJECTS["multi"][2]) if name == "alignloop" else target
                    figures, _ = measure(
                        base,
                        tokens,
                        warm,
                        seconds=args.warmup_seconds,
                        mode="combined",
                        raw=True,
                        rate=min(args.rates),
                        server_pid=pid,
                        postmaster_pid=cluster.postmaster_pid(),
                    )
                    warmed[name] = figures["submissions"]
            for i, rate in enumerate(args.rates):
                order = ["alignloop", "label-studio"] if i % 2 == 0 else ["label-studio", "alignloop"]
                for name in order:
                    base, tokens, target, pid = targets[name]
                    if isinstance(target, Alignloop):  # fresh idempotency keys for each rate
                        target = Alignloop(project_id, PROJECTS["multi"][2])
                    figures, _ = measure(
                        base,
                        tokens,
                        target,
                        seconds=args.seconds,
                        mode="combined",
                        raw=True,
                        rate=rate,
                        server_pid=pid,
                        postmaster_pid=cluster.postmaster_pid(),
                    )
                    keep = {
                        k: v
                        for k, v in figures.items()
                        if k not in ("client_loop_lags_over_10ms", "stall_windows")
                    }
                    run = {"server": name, "offered_rate_per_s": rate, **keep}
                    runs.append(run)
                    print(json.dumps(run), flush=True)
            acked = {
                name: warmed[name] + sum(r["submissions"] for r in runs if r["server"] == name)
                for name in targets
            }
            stored = {
                "alignloop": stored_rows(url),
                "label-studio": label_studio_stored(cluster, "label_studio"),
            }
    finally:
        for server in servers:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
        cluster.stop()
    figures = summary(runs)
    document = {
        "command": " ".join(["python", "bench/platform_vs_label_studio.py", *sys.argv[1:]]),
        "annotators": args.annotators,
        "workers": args.workers,
        "seconds_per_rate": args.seconds,
        "cpus": os.cpu_count(),
        "acked": acked,
        "stored": stored,
        "acked_equals_stored": acked == stored,
        "warmup_seconds": args.warmup_seconds,
        "summary": figures,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=1) + "\n")
    plot(document, args.output.with_suffix(".png"))
    print(
        f"{'server':<14}{'offered':>8}{'subm/s':>8}{'p50 ms':>8}{'p99 ms':>9}{'err':>5}{'srv ms':>8}{'pg ms':>7}"
    )
    for r in runs:
        print(
            f"{r['server']:<14}{r['offered_rate_per_s']:>8.0f}{r['submissions_per_s']:>8}{r['submit_p50_ms']:>8}"
            f"{r['submit_p99_ms']:>9}{r['errors']:>5}{r['server_cpu_ms_per_submission']:>8}"
            f"{r['postgres_cpu_ms_per_submission']:>7}"
        )
    print("summary:", json.dumps(figures), "acked == stored:", acked == stored)
    return 0 if acked == stored else 1


if __name__ == "__main__":
    sys.exit(main())
