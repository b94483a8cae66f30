"""Plot the latency of every submission against when it was sent, from `platform_load.py --trace` runs.

    python bench/platform_trace_plot.py before.json after.json --labels before after --output latency.png

One panel per run, stacked on one time axis: a dot per submission (latency from its scheduled send
time, log scale) and the run's p99 as a line. Stalls show up as columns of slow dots at the same
moment; a queue shows up as a rising band.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def load_trace(path: Path) -> tuple[dict[str, object], list[list[float]]]:
    results = json.loads(path.read_text())["results"]
    result = results[0]
    trace = result.get("trace")
    if not trace:
        raise SystemExit(f"{path}: no trace in the results; run platform_load.py with --trace")
    return result, trace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="results JSON files written with --trace")
    parser.add_argument("--labels", nargs="*", default=None, help="one title per run (default: file names)")
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    labels = args.labels or [p.stem for p in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels: {len(labels)} given for {len(args.runs)} runs")
    fig, axes = plt.subplots(len(args.runs), 1, figsize=(10, 2.6 * len(args.runs)), squeeze=False)
    for ax, path, label in zip(axes[:, 0], args.runs, labels, strict=True):
        result, trace = load_trace(path)
        start = [t for t, _, _ in trace]
        latency_ms = [1000 * latency for _, latency, _ in trace]
        ax.scatter(start, latency_ms, s=2, alpha=0.4, linewidths=0)
        p99 = float(result["submit_p99_ms"])  # type: ignore[arg-type]
        ax.axhline(p99, color="tab:red", linewidth=1, label=f"p99 {p99:.1f} ms")
        ax.axhline(100, color="grey", linewidth=1, linestyle="--", label="target p99 100 ms")
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(
            f"{label}: {result['submissions_per_s']} submissions/s, p50 {result['submit_p50_ms']} ms",
            fontsize=10,
        )
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("scheduled send time (s since the clock started)")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
