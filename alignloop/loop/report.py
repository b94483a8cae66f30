"""The loop's report: per-round figures as report.json, report.md and rounds.png.

Round 0 is the starting policy (before any judgement). Written after every round, so a run
stopped half-way still has the report of the rounds it finished.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignloop.loop.state import LoopState, write_atomic

UNSAFE_TARGET = 0.05
"""Toy world: the final policy's true unsafe rate must be at most this."""

# the figures plotted per domain, with their titles (others are in the table only)
PLOTTED = {
    "toyworld": {"unsafe_rate": "true unsafe rate", "helpfulness": "true helpfulness"},
    "lm": {"unsafe_share": "judged unsafe by the round's cost model", "reward": "round's reward model"},
    "control": {"return": "true episode return", "cost": "true episode cost"},
}


def rounds_table(state: LoopState) -> list[dict[str, float]]:
    """One row per round, round 0 the starting policy."""
    rows = [{"round": 0.0, **(state.setup_metrics or {})}]
    for r in sorted(state.metrics, key=int):
        rows.append({"round": float(r), **state.metrics[r]})
    return rows


def acceptance(domain: str, rows: list[dict[str, float]]) -> dict[str, bool]:
    """The toy world's checks: unsafe rate falling every round to <= 5%, helpfulness kept."""
    if domain != "toyworld" or len(rows) < 2 or any("unsafe_rate" not in r for r in rows):
        return {}
    unsafe = [r["unsafe_rate"] for r in rows]
    return {
        "true unsafe rate falls round over round": all(
            b < a for a, b in zip(unsafe, unsafe[1:], strict=False)
        ),
        f"final true unsafe rate <= {UNSAFE_TARGET:.0%}": unsafe[-1] <= UNSAFE_TARGET,
        "final helpfulness >= the starting (SFT) policy's": rows[-1]["helpfulness"] >= rows[0]["helpfulness"],
    }


def markdown(domain: str, rows: list[dict[str, float]], checks: dict[str, bool]) -> str:
    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k != "round"]
    lines = [
        f"# alignloop loop: {domain}",
        "",
        "Round 0 is the starting policy; each later row is the policy after that round's judgements.",
        "",
        "| round | " + " | ".join(keys) + " |",
        "|" + " --- |" * (len(keys) + 1),
    ]
    for row in rows:
        cells = [f"{row[k]:.4g}" if k in row else "" for k in keys]
        lines.append(f"| {int(row['round'])} | " + " | ".join(cells) + " |")
    if checks:
        lines += ["", "## Checks", ""]
        lines += [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in checks.items()]
    lines += ["", "![per-round figures](rounds.png)", ""]
    return "\n".join(lines)


def plot(domain: str, rows: list[dict[str, float]], path: Path) -> bool:
    """The plotted figures against the round; False when there is nothing to plot."""
    wanted = {k: t for k, t in PLOTTED.get(domain, {}).items() if any(k in row for row in rows)}
    if not wanted:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(wanted), figsize=(5 * len(wanted), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], wanted.items(), strict=True):
        points = [(row["round"], row[key]) for row in rows if key in row]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_title(title)
        ax.set_xlabel("round (0 = starting policy)")
        ax.set_xticks([p[0] for p in points])
        ax.grid(alpha=0.3)
        if key == "unsafe_rate":
            ax.axhline(UNSAFE_TARGET, color="black", linestyle="--", linewidth=1, label="5% target")
            ax.set_ylim(bottom=0)
            ax.legend()
        elif points and points[0][0] == 0:
            ax.axhline(points[0][1], color="gray", linestyle=":", linewidth=1, label="starting policy")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(run_dir: Path, state: LoopState, domain: str) -> dict[str, Any]:
    rows = rounds_table(state)
    checks = acceptance(domain, rows)
    report = {"domain": domain, "rounds": rows, "acceptance": checks}
    write_atomic(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(run_dir / "report.md", markdown(domain, rows, checks))
    plot(domain, rows, run_dir / "rounds.png")
    return report
