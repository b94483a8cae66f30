"""What README.md says every language-model trainer leaves in --output-dir, on one tiny SFT run
configured the way the README shows: a YAML file pre-fills the options and flags override it."""

from __future__ import annotations

import json
from pathlib import Path

from alignloop.config import parse
from alignloop.lm.sft import SFTConfig, train


def test_yaml_prefills_flags_override_and_the_run_folder_has_what_the_readme_lists(tmp_path: Path) -> None:
    config = tmp_path / "sft.yaml"
    out = tmp_path / "run"
    config.write_text(
        f"output_dir: {out}\nmax_steps: 5\nbatch_size: 4\ntoy_train_size: 16\ntoy_eval_size: 4\n"
    )
    cfg = parse(SFTConfig, ["--config", str(config), "--max-steps", "1", "--no-progress"], prog="sft")
    assert (cfg.max_steps, cfg.batch_size, cfg.output_dir) == (1, 4, out)  # the flag won, the file filled
    assert train(cfg) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "eval"} and max(r["step"] for r in records) == 1
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").rglob("*"))  # TensorBoard
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001"]  # no partial save left
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (out / "final").iterdir()
    }
