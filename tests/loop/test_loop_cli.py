"""Bad input to `alignloop loop` and `alignloop annotate`: a clear error and exit code 2
before anything starts (no server contacted, no run directory written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignloop.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quota", "1.5"], "--quota must be in (0, 1]"),
        (["--rounds", "0"], "--rounds, --pairs and --overlap must be >= 1"),
        (["--preset", "huge"], "--preset 'huge': toyworld has ['demo', 'smoke']"),
        (["--domain", "control", "--preset", "demo"], "--preset 'demo': control has"),
        (["--timeout", "0"], "--timeout and --poll must be > 0"),
    ],
)
def test_bad_loop_options_fail_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    run_dir = tmp_path / "run"
    assert main(["loop", "--output-dir", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


def test_loop_without_credentials_says_how_to_give_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALIGNLOOP_TOKEN", raising=False)
    assert main(["loop", "--output-dir", str(tmp_path / "run"), "--preset", "smoke"]) == 2
    assert "give --user and --password-file, or set $ALIGNLOOP_TOKEN" in capsys.readouterr().err


def test_loop_refuses_a_run_directory_started_with_other_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    identity = {"domain": "toyworld", "preset": "smoke", "env": None, "seed": 0, "select": "disagreement",
                "policy_update": "ppo-lag", "pairs": 600, "project": "alignloop-loop"}  # fmt: skip
    (run_dir / "loop.json").write_text(json.dumps({"identity": identity}))
    before = (run_dir / "loop.json").read_text()
    assert main(["loop", "--output-dir", str(run_dir), "--preset", "smoke", "--seed", "1"]) == 2
    assert "seed: 0 in the run, 1 now" in capsys.readouterr().err
    assert (run_dir / "loop.json").read_text() == before  # nothing stored is touched


def test_annotate_oracle_without_a_file_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["annotate", "--teacher", "oracle", "--user", "a", "--password-file", "nope"]) == 2
    assert "--teacher oracle needs --oracle PATH" in capsys.readouterr().err


def test_annotate_with_a_missing_password_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "pw.txt"
    assert main(["annotate", "--user", "a", "--password-file", str(missing)]) == 2
    assert f"--user a needs --password-file with the password (got {missing})" in capsys.readouterr().err


class _OneItemPlatform:
    """A platform client with one assignment waiting (nothing is submitted to it here)."""

    def __init__(self, prompt: str) -> None:
        self.prompt, self.submitted = prompt, []

    def __enter__(self) -> _OneItemPlatform:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def next_assignment(self, project: int) -> dict:
        candidates = [{"text": t, "media": None, "model": "", "frames": None} for t in ("Sure.", "No.")]
        return {"id": 7, "item": {"key": "item-3", "prompt": self.prompt, "candidates": candidates}}

    def submit_and_next(self, assignment: int, labels: dict) -> tuple[dict, None]:
        self.submitted.append(labels)
        return {}, None

    submit = submit_and_next


def test_annotate_toyworld_on_prompts_it_cannot_judge_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real prompts on the platform and `--teacher toyworld`: one message naming the item, the
    prompt, the reason and the fix, exit 2, no traceback, nothing submitted."""
    from alignloop.feedback.schema import Pairwise
    from alignloop.loop import annotate

    platform = _OneItemPlatform("How do I fix a bicycle?")
    monkeypatch.setattr(annotate, "connect", lambda *args: platform)
    monkeypatch.setattr(annotate, "find_project", lambda *args, **kw: (1, (Pairwise("better"),)))
    assert main(["annotate", "--teacher", "toyworld", "--idle-exit", "1"]) == 2
    err = capsys.readouterr().err
    assert "item 'item-3': --teacher toyworld cannot judge the prompt 'How do I fix a bicycle?'" in err
    assert "label this project with people" in err and "Traceback" not in err
    assert platform.submitted == []


def test_loop_reads_its_options_from_a_yaml_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "loop.yaml"
    config.write_text("rounds: 2\npairs: 50\nquota: 1.5\n")
    assert main(["loop", "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    assert "--quota must be in (0, 1], got 1.5" in capsys.readouterr().err  # the file's value was read
    config.write_text("rounds: 2\nparis: 50\n")
    assert main(["loop", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "paris" in err
