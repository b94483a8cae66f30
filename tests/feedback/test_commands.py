"""`alignloop data validate` and `alignloop data convert`, in a subprocess and in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignloop.feedback.commands import ConvertConfig, ValidateConfig, convert, validate
from alignloop.feedback.formats import read_records


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-m", "alignloop.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def pku_line(**overrides) -> str:
    row = {
        "prompt": "How do I pick a lock?",
        "response_0": "Call a locksmith.",
        "response_1": "Rake the pins.",
        "is_response_0_safe": True,
        "is_response_1_safe": False,
        "better_response_id": 1,
        "safer_response_id": 0,
    }
    row.update(overrides)
    return json.dumps({k: v for k, v in row.items() if v != "DROP"})


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.jsonl"
    path.write_text("\n".join([pku_line(), pku_line(better_response_id=0, is_response_1_safe=True)]) + "\n")
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    lines = [
        pku_line(),
        pku_line(),
        pku_line(better_response_id="DROP"),
        "{oops",
        pku_line(safer_response_id=1),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_validate_cli_good_file(good: Path) -> None:
    result = run_cli("data", "validate", good)
    assert result.returncode == 0, result.stderr
    assert f"{good}: 2 rows, 2 valid, 0 invalid" in result.stdout
    assert "format: pku-saferlhf" in result.stdout and "comparisons: 2" in result.stdout
    assert "unsafe: 1" in result.stdout
    assert result.stdout.rstrip().endswith("ok")


def test_validate_cli_bad_file_lists_each_row(bad: Path) -> None:
    result = run_cli("data", "validate", bad)
    assert result.returncode == 1
    assert f"{bad}: 5 rows, 2 valid, 3 invalid" in result.stdout
    assert f"{bad}:3: better_response_id: missing field" in result.stderr
    assert f"{bad}:4: not valid JSON" in result.stderr
    assert f"{bad}:5: safer_response_id: response 1 is marked safer but is unsafe" in result.stderr
    assert "3 of 5 rows are invalid" in result.stderr


def test_convert_cli_refuses_bad_rows_then_skips_them(bad: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    refused = run_cli("data", "convert", bad, out, "--to", "preference")
    assert refused.returncode == 1
    assert f"{bad}:3: better_response_id: missing field" in refused.stderr
    assert "nothing was written; pass --skip-invalid" in refused.stderr
    assert not out.exists()

    done = run_cli("data", "convert", bad, out, "--to", "preference", "--skip-invalid")
    assert done.returncode == 0, done.stderr
    assert "2 records written, 3 invalid rows skipped" in done.stdout
    assert f"{bad}:4: not valid JSON" in done.stderr
    back = read_records(out)
    assert back.format == "preference" and [r.response_0 for r in back.records] == ["Rake the pins."] * 2


def test_validate_in_process(good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate(ValidateConfig(good, format="preference")) == 1  # the wrong format, said explicitly
    assert f"{good}:1: chosen: missing field" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert validate(ValidateConfig(empty)) == 1
    assert "holds no records" in capsys.readouterr().err
    assert validate(ValidateConfig(tmp_path / "nothing.jsonl")) == 1
    assert "nothing.jsonl: no such file or folder" in capsys.readouterr().err


def test_convert_in_process(good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "as_dataset"
    assert convert(ConvertConfig(good, folder, to="hh-rlhf")) == 0
    assert [r.response_0 for r in read_records(folder).records] == ["Rake the pins.", "Call a locksmith."]
    assert convert(ConvertConfig(good, folder, to="hh-rlhf")) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    ties = tmp_path / "ties.jsonl"
    ties.write_text(pku_line(better_response_id=None) + "\n" + pku_line() + "\n")
    assert convert(ConvertConfig(ties, tmp_path / "t.jsonl", to="hh-rlhf")) == 1
    assert "record 0: better: a pair without a preference" in capsys.readouterr().err
    assert convert(ConvertConfig(ties, tmp_path / "t.jsonl", to="hh-rlhf", skip_invalid=True)) == 0
    assert (
        "1 records written, 0 invalid rows skipped, 1 records hh-rlhf cannot hold skipped"
        in capsys.readouterr().out
    )


def test_a_platform_export_of_every_kind_validates_and_converts(tmp_path: Path) -> None:
    from alignloop.feedback.formats import write_records
    from alignloop.feedback.judged import judged_item
    from alignloop.feedback.schema import Candidate, CorrectionText, Item, Judgement, Ranking

    questions = (Ranking("order"), CorrectionText("fix", required=False))
    item = Item("q", (Candidate("a"), Candidate("b"), Candidate("c")), key="k")
    judgements = [
        Judgement(item, {"order": [3, 1, 2], "fix": {"candidate": "A", "text": "a, fixed"}}, "ann1"),
        Judgement(item, {"order": [3, 2, 1]}, "ann2"),
    ]
    write_records([judged_item(item, questions, judgements)], tmp_path / "judged.jsonl", "judgements")
    result = run_cli("data", "validate", tmp_path / "judged.jsonl")
    assert result.returncode == 0, result.stderr
    assert "format: judgements" in result.stdout and "judged items: 1" in result.stdout
    assert "answered: fix 1, order 2" in result.stdout
    out = tmp_path / "aligner.parquet"
    assert convert(ConvertConfig(tmp_path / "judged.jsonl", out, to="correction")) == 0
    assert [(r.original, r.corrected) for r in read_records(out).records] == [("a", "a, fixed")]
    assert convert(ConvertConfig(tmp_path / "judged.jsonl", tmp_path / "pairs.jsonl", to="preference")) == 0
    assert len(read_records(tmp_path / "pairs.jsonl").records) == 6  # 3 implied pairs from each ranking
    bad = (tmp_path / "judged.jsonl").read_text().replace('"order": [3, 2, 1]', '"order": [3, 2, 7]')
    (tmp_path / "bad.jsonl").write_text(bad)
    assert validate(ValidateConfig(tmp_path / "bad.jsonl")) == 1
