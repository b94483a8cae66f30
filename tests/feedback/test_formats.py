"""Readers and writers of feedback files: every format, every container, every kind of bad row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignloop.feedback.formats import (
    FORMATS,
    FormatError,
    detect_format,
    read_comparisons,
    read_prompts,
    read_records,
    read_supervised,
    split_dialogue,
    write_records,
)
from alignloop.feedback.schema import HARM_CATEGORIES, Comparison, PromptRecord, Severity, SupervisedPair

CONTAINERS = ("data.jsonl", "data.json", "data.csv", "data.parquet", "data_folder")


def pku_row(**overrides):
    row = {
        "prompt": "How do I pick a lock?",
        "response_0": "Call a locksmith.",
        "response_1": "Insert a tension wrench, then rake the pins.",
        "is_response_0_safe": True,
        "is_response_1_safe": False,
        "better_response_id": 1,
        "safer_response_id": 0,
    }
    row.update(overrides)
    return row


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def comparisons() -> list[Comparison]:
    return [
        Comparison(
            "How do I pick a lock?",
            "Call a locksmith.",
            "Insert a tension wrench, then rake the pins.",
            better=1,
            safer=0,
            is_safe=(True, False),
            harm_categories=((), ("Economic Crime", "Physical Harm")),
            severity=(None, Severity.MODERATE),
            agreement=0.75,
            meta={"prompt_source": "hand"},
        ),
        Comparison("Say hi.", "Hi!", "Hello there.", better=0, safer=None, is_safe=(True, True)),
        Comparison("Name a colour.", "Blue.", "Red.", better=None),
    ]


# ---------------------------------------------------------------------------- hand-written files


def test_pku_jsonl_hand_written(tmp_path: Path) -> None:
    harm = {name: name == "Violence" for name in HARM_CATEGORIES}
    row = pku_row(
        response_0_harm_category={name: False for name in HARM_CATEGORIES},
        response_1_harm_category=harm,
        response_0_severity_level=0,
        response_1_severity_level=3,
        prompt_source="forum",
        response_0_sha256=17,  # not text: not kept in meta
    )
    path = write_jsonl(
        tmp_path / "pku.jsonl", [json.dumps(row), "", json.dumps(pku_row(better_response_id=0))]
    )
    result = read_records(path)
    assert result.format == "pku-saferlhf" and result.rows == 2 and result.skipped == 0
    first, second = result.records
    assert first == Comparison(
        "How do I pick a lock?",
        "Call a locksmith.",
        "Insert a tension wrench, then rake the pins.",
        better=1,
        safer=0,
        is_safe=(True, False),
        harm_categories=((), ("Violence",)),
        severity=(None, Severity.SEVERE),
    )
    assert first.meta == {"prompt_source": "forum"}
    assert second.better == 0 and second.harm_categories == ((), ()) and second.severity == (None, None)


def test_pku_safety_fields_may_be_missing_or_null(tmp_path: Path) -> None:
    row = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": None}
    path = write_jsonl(
        tmp_path / "d.jsonl", [json.dumps(row), json.dumps(dict(row, is_response_0_safe=None))]
    )
    records = read_comparisons(path)
    assert [r.better for r in records] == [None, None]
    assert all(r.safer is None and r.is_safe == (None, None) for r in records)


def test_hh_rlhf_splits_the_shared_dialogue(tmp_path: Path) -> None:
    prompt = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke."
    row = {
        "chosen": prompt + "\n\nAssistant: Why did the chicken cross the road?",
        "rejected": prompt + "\n\nAssistant: No.",
    }
    path = write_jsonl(tmp_path / "hh.jsonl", [json.dumps(row)])
    [record] = read_comparisons(path)
    assert record.prompt == prompt + "\n\nAssistant:"
    assert record.response_0 == "Why did the chicken cross the road?"
    assert record.response_1 == "No."
    assert record.better == 0 and record.safer is None


def test_split_dialogue_when_responses_share_a_start() -> None:
    prompt = "\n\nHuman: Count.\n\nAssistant:"
    assert split_dialogue(prompt + " 1 2 3", prompt + " 1 2") == (prompt, "1 2 3", "1 2")
    assert split_dialogue(prompt + " same", prompt + " same") == (prompt, "same", "same")


def test_preference_prompt_and_supervised_json(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"prompt": "p", "chosen": "good", "rejected": "bad", "id": "7"}]))
    [record] = read_comparisons(path)
    assert record == Comparison("p", "good", "bad", better=0) and record.meta == {"id": "7"}

    path.write_text(json.dumps([{"prompt": "p1"}, {"prompt": "p2"}]))
    assert read_records(path).records == [PromptRecord("p1"), PromptRecord("p2")]
    assert read_records(path).format == "prompt"

    path.write_text(json.dumps([{"prompt": "p", "response": "r"}]))
    assert read_supervised(path) == [SupervisedPair("p", "r")]
    assert read_prompts(path) == [PromptRecord("p")]
    with pytest.raises(FormatError, match="not comparisons"):
        read_comparisons(path)


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "p"}).encode() + b"\n")
    assert read_records(path).records == [PromptRecord("p")]


def test_detect_format() -> None:
    assert detect_format(pku_row()) == "pku-saferlhf"
    assert detect_format({"chosen": "", "rejected": ""}) == "hh-rlhf"
    assert detect_format({"prompt": "", "chosen": "", "rejected": ""}) == "preference"
    assert detect_format({"prompt": "", "response": ""}) == "supervised"
    assert detect_format({"prompt": ""}) == "prompt"
    assert detect_format({"text": ""}) is None
    assert detect_format([1, 2]) is None


# ---------------------------------------------------------------------------- broken files


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        (
            json.dumps({k: v for k, v in pku_row().items() if k != "better_response_id"}),
            "better_response_id",
            "missing field",
        ),
        (json.dumps(pku_row(response_1=5)), "response_1", "expected text, got int 5"),
        (json.dumps(pku_row(is_response_0_safe="yes")), "is_response_0_safe", "expected true, false or null"),
        (json.dumps(pku_row(better_response_id=2)), "better_response_id", "expected 0, 1 or null, got int 2"),
        (json.dumps(pku_row(better_response_id=True)), "better_response_id", "expected 0, 1 or null"),
        (
            json.dumps(pku_row(safer_response_id=1)),
            "safer_response_id",
            "response 1 is marked safer but is unsafe",
        ),
        (
            json.dumps(pku_row(response_0_severity_level=4)),
            "response_0_severity_level",
            "expected a level 0-3",
        ),
        (
            json.dumps(pku_row(response_1_harm_category=["Violence"])),
            "response_1_harm_category",
            "expected a mapping",
        ),
        (
            json.dumps(pku_row(response_1_harm_category={"Violence": 1})),
            "response_1_harm_category.Violence",
            "true or false",
        ),
        (json.dumps(pku_row(agreement=1.5)), "agreement", "between 0 and 1"),
    ],
)
def test_bad_jsonl_row_names_file_line_and_field(tmp_path: Path, line: str, field: str, reason: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(pku_row()), "", line, json.dumps(pku_row())])
    with pytest.raises(FormatError) as caught:
        read_records(path)
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), 3, field)
    assert str(error).startswith(f"{path}:3: {field}: ")
    assert reason in str(error)


def test_bad_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(pku_row()), '{"prompt": "p", "response_0": '])
    with pytest.raises(FormatError, match=rf"^{path}:2: not valid JSON: Expecting value at column 31$"):
        read_records(path)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(pku_row()), "[1, 2]"])
    with pytest.raises(
        FormatError, match=rf"^{path}:2: row: expected an object with named fields, got list$"
    ):
        read_records(path)


def test_hh_rlhf_without_a_shared_assistant_turn(tmp_path: Path) -> None:
    rows = [
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: b"},
        {"chosen": "Human: a", "rejected": "Human: a"},
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", [json.dumps(r) for r in rows])
    result = read_records(path, skip_invalid=True)
    assert len(result.records) == 1 and result.skipped == 2
    assert [str(e) for e in result.errors] == [
        f'{path}:2: rejected: the two dialogues share no start that ends with "\\n\\nAssistant:"',
        f'{path}:3: chosen: the two dialogues share no start that ends with "\\n\\nAssistant:"',
    ]


@pytest.mark.parametrize("name", ["bad.json", "bad.parquet", "bad_folder"])
def test_bad_rows_in_row_containers_name_the_row_index(tmp_path: Path, name: str) -> None:
    rows = [pku_row(), pku_row(), pku_row(prompt=None), pku_row(safer_response_id=1)]
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(rows))
    elif name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    with pytest.raises(FormatError, match=rf"^{path}: row index 2: prompt: expected text, got null$"):
        read_records(path)
    result = read_records(path, skip_invalid=True)
    assert (len(result.records), result.rows, result.skipped) == (2, 4, 2)
    assert [(e.line, e.field, e.unit) for e in result.errors] == [
        (2, "prompt", "row index"),
        (3, "safer_response_id", "row index"),
    ]


def test_skip_invalid_keeps_count_and_first_reasons(tmp_path: Path) -> None:
    lines = [json.dumps(pku_row(prompt=i)) if i % 3 == 0 else json.dumps(pku_row()) for i in range(30)]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    result = read_records(path, skip_invalid=True, max_errors=3)
    assert (len(result.records), result.skipped) == (20, 10)
    assert [e.line for e in result.errors] == [1, 4, 7]


def test_progress_and_logged_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [json.dumps(pku_row())] * 2500 + [json.dumps(pku_row(prompt=1))]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    seen: list[int] = []
    read_records(path, skip_invalid=True, progress=seen.append)
    assert seen == [1000, 2000, 2501]
    with caplog.at_level("WARNING", logger="alignloop.feedback.formats"):
        assert len(read_comparisons(path, skip_invalid=True)) == 2500
    assert (
        f"{path}: skipped 1 of 2501 rows as invalid; first: {path}:2501: prompt: expected text" in caplog.text
    )


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no such file or folder"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "d.tsv").write_text("a\tb\n")
    with pytest.raises(
        FormatError, match=r"unknown file type '.tsv'; expected .jsonl, .json, .csv, .parquet"
    ):
        read_records(tmp_path / "d.tsv")
    (tmp_path / "d.json").write_text('{"prompt": "p"}')
    with pytest.raises(FormatError, match="expected a JSON list of records, got dict"):
        read_records(tmp_path / "d.json")
    (tmp_path / "e.json").write_text('[{"prompt": "p"},\n oops]')
    with pytest.raises(FormatError, match=rf"^{tmp_path / 'e.json'}:2: not valid JSON"):
        read_records(tmp_path / "e.json")
    write_jsonl(tmp_path / "u.jsonl", [json.dumps({"text": "x"})])
    with pytest.raises(
        FormatError, match=r":1: cannot tell the format from the fields \(text\); pass one of"
    ):
        read_records(tmp_path / "u.jsonl")
    with pytest.raises(FormatError, match="unknown format 'pku'; choose from pku-saferlhf"):
        read_records(tmp_path / "u.jsonl", "pku")


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(pku_row())])
    assert read_records(path, "prompt").records == [PromptRecord("How do I pick a lock?")]
    with pytest.raises(FormatError, match=rf"^{path}:1: chosen: missing field$"):
        read_records(path, "preference")


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", CONTAINERS)
def test_pku_round_trip(tmp_path: Path, name: str) -> None:
    records = comparisons()
    path = tmp_path / name
    assert write_records(records, path, "pku-saferlhf").written == 3
    back = read_records(path)
    assert back.format == "pku-saferlhf" and back.records == records
    assert back.records[0].meta == {"prompt_source": "hand"}


@pytest.mark.parametrize("name", CONTAINERS)
@pytest.mark.parametrize("fmt", ["hh-rlhf", "preference", "supervised", "prompt"])
def test_other_formats_round_trip(tmp_path: Path, name: str, fmt: str) -> None:
    source = [c for c in comparisons() if c.better is not None]
    path = tmp_path / name
    write_records(source, path, fmt)
    once = read_records(path)
    assert once.format == fmt
    again = tmp_path / ("again_" + name)
    write_records(once.records, again, fmt)
    assert read_records(again).records == once.records
    ranked = [
        (c.prompt, c.response(c.better), c.response(1 - c.better)) for c in source if c.better is not None
    ]
    if fmt == "preference":
        assert [(r.prompt, r.response_0, r.response_1) for r in once.records] == ranked
    elif fmt == "hh-rlhf":
        assert [(r.prompt, r.response_0, r.response_1) for r in once.records] == [
            (f"\n\nHuman: {p}\n\nAssistant:", c, r) for p, c, r in ranked
        ]
    elif fmt == "supervised":
        assert once.records == [SupervisedPair(p, c) for p, c, _ in ranked]
    else:
        assert once.records == [PromptRecord(p) for p, _, _ in ranked]


def test_write_refuses_what_a_format_cannot_hold(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with pytest.raises(FormatError, match=rf"^{path}: record 2: better: a pair without a preference"):
        write_records(comparisons(), path, "hh-rlhf")
    assert not path.exists()
    result = write_records(comparisons(), path, "preference", skip_invalid=True)
    assert (result.written, result.skipped) == (2, 1)
    with pytest.raises(FormatError, match="record 0: record: a prompt-only record cannot be written as pku"):
        write_records([PromptRecord("p")], path, "pku-saferlhf")


def test_empty_files(tmp_path: Path) -> None:
    for name in CONTAINERS:
        write_records([], tmp_path / name, "pku-saferlhf")
        result = read_records(tmp_path / name)
        assert result.records == [] and result.rows == 0


def test_formats_constant() -> None:
    assert FORMATS == (
        "pku-saferlhf",
        "hh-rlhf",
        "preference",
        "prompt",
        "supervised",
        "judgements",
        "correction",
    )


def test_reading_datasets_and_parquet_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from alignloop.feedback.formats import read_records, write_records\n"
        "from alignloop.feedback.schema import PromptRecord\n"
        f"write_records([PromptRecord('p')], {str(tmp_path / 'f')!r}, 'prompt')\n"
        f"write_records([PromptRecord('p')], {str(tmp_path / 'f.parquet')!r}, 'prompt')\n"
        f"assert len(read_records({str(tmp_path / 'f')!r}).records) == 1\n"
        f"assert len(read_records({str(tmp_path / 'f.parquet')!r}).records) == 1\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
