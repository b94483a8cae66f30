"""TRL's conversational rows and CSV files, in every reader, with the same line-and-field errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignloop.feedback.formats import FormatError, from_conversational, read_records, write_records
from alignloop.feedback.schema import Comparison, PromptRecord, SupervisedPair


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_each_trl_conversational_format_reads_as_text(tmp_path: Path) -> None:
    cases = [  # (TRL's dataset type, row, the record alignloop reads)
        ("prompt-only", {"prompt": [user("Hi")]}, PromptRecord("Hi")),
        ("prompt-completion", {"prompt": [user("Hi")], "completion": [assistant("Hello")]}, SupervisedPair("Hi", "Hello")),
        ("standard prompt-completion", {"prompt": "Hi", "completion": "Hello"}, SupervisedPair("Hi", "Hello")),
        ("language modeling", {"messages": [user("Hi"), assistant("Hello")]}, SupervisedPair("Hi", "Hello")),
        (
            "preference",
            {"prompt": [user("Sky?")], "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")]},
            Comparison("Sky?", "Blue.", "Green.", better=0),
        ),
        (
            "preference, implicit prompt",
            {"chosen": [user("Sky?"), assistant("Blue.")], "rejected": [user("Sky?"), assistant("Green.")]},
            Comparison("Sky?", "Blue.", "Green.", better=0),
        ),
    ]  # fmt: skip
    for kind, row, expected in cases:
        records = read_records(write_jsonl(tmp_path / "data.jsonl", [row])).records
        assert records == [expected], kind


def test_a_multi_turn_prompt_becomes_an_hh_dialogue() -> None:
    row = {"messages": [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello"), user("Sky?"),
                        assistant("Blue.")]}  # fmt: skip
    out = from_conversational(row)
    assert out == {
        "prompt": "\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Sky?\n\nAssistant:",
        "response": "Blue.",
    }
    # the shared turns of two whole conversations are the prompt, as HH-RLHF's shared dialogue is
    chosen = [user("Hi"), assistant("Hello"), user("Sky?"), assistant("Blue.")]
    rejected = [*chosen[:3], assistant("Green.")]
    out = from_conversational({"chosen": chosen, "rejected": rejected})
    assert out["prompt"] == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Sky?\n\nAssistant:"
    assert (out["chosen"], out["rejected"]) == ("Blue.", "Green.")


@pytest.mark.parametrize(
    ("row", "where"),
    [
        ({"prompt": [user("Hi")], "chosen": [assistant("a")], "rejected": [{"role": "bot", "content": "b"}]},
         "rejected[0].role: expected one of user, assistant, system, got str 'bot'"),
        ({"prompt": [user("Hi")], "chosen": [{"role": "assistant"}], "rejected": [assistant("b")]},
         "chosen[0].content: expected text, got null"),
        ({"prompt": [], "chosen": [assistant("a")], "rejected": [assistant("b")]}, "prompt: an empty list of messages"),
        ({"messages": [user("Hi")]}, "messages: the last message must be the assistant's answer"),
        ({"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("d")]},
         "chosen: the two conversations share no messages"),
        ({"prompt": "p", "completion": "c", "label": True}, "label: unpaired preferences"),
    ],
)  # fmt: skip
def test_bad_messages_are_named_by_file_line_and_field(tmp_path: Path, row: dict, where: str) -> None:
    good = {"prompt": [user("Hi")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    path = write_jsonl(tmp_path / "data.jsonl", [good, row])
    with pytest.raises(FormatError) as exc:
        read_records(path)
    assert str(exc.value).startswith(f"{path}:2: {where}")


def test_csv_cells_of_text_fields_stay_text_and_the_others_are_values(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text(
        "prompt,response_0,response_1,is_response_0_safe,is_response_1_safe,better_response_id,safer_response_id,id\n"
        '"2 + 2, please",4,"five, or ""5""",true,False,0,,17\n'
    )
    [record] = read_records(path).records
    assert isinstance(record, Comparison)
    assert (record.prompt, record.response_0, record.response_1) == ("2 + 2, please", "4", 'five, or "5"')
    assert record.is_safe == (True, False) and record.better == 0 and record.safer is None


def test_csv_errors_name_the_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected\na,b,c\n"multi\nline",b,c\nd,e\n')
    with pytest.raises(FormatError, match=rf"^{path}:5: rejected: missing field"):
        read_records(path)
    path.write_text('prompt,chosen,rejected\na,b,c\n"multi\nline",b\nd,e,f\n')
    with pytest.raises(FormatError, match=rf"^{path}:4: rejected: missing field"):
        read_records(path)  # a row over several lines is named by its last
    path.write_text("prompt,chosen,rejected\na,b,c,d\n")
    with pytest.raises(FormatError, match=rf"^{path}:2: more cells than the header has"):
        read_records(path)
    path.write_text('prompt,response\n"[{""role"": ""user""}]",b\n')
    with pytest.raises(FormatError, match=rf"^{path}:2: prompt\[0\]\.content: expected text, got null"):
        read_records(path)  # a JSON list of messages in a text cell is a conversation


def test_conversational_csv_and_every_format_round_trip_through_csv(tmp_path: Path) -> None:
    path = tmp_path / "conv.csv"
    chosen, rejected = json.dumps([assistant("Blue.")]), json.dumps([assistant("Green.")])
    prompt = json.dumps([user("Sky?")])
    path.write_text(
        "prompt,chosen,rejected\n"
        + ",".join('"' + c.replace('"', '""') + '"' for c in (prompt, chosen, rejected))
        + "\n"
    )
    records = read_records(path).records
    assert records == [Comparison("Sky?", "Blue.", "Green.", better=0)]
    out = tmp_path / "out.csv"
    tricky = Comparison("true", "1", "null", better=1, safer=0, is_safe=(True, None), meta={"note": "3"})
    write_records([tricky], out, "pku-saferlhf")
    assert read_records(out).records == [tricky]  # text that looks like a value stays text


def test_not_utf8_and_not_parquet_are_file_errors(tmp_path: Path) -> None:
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n')
    with pytest.raises(FormatError, match=rf"^{jsonl}:2: not UTF-8 text \(byte 0xff\)"):
        read_records(jsonl)
    csv_file = tmp_path / "data.csv"
    csv_file.write_bytes(b"prompt\na\n\xfe\n")
    with pytest.raises(FormatError, match=rf"^{csv_file}:3: not UTF-8 text \(byte 0xfe\)"):
        read_records(csv_file)
    parquet = tmp_path / "data.parquet"
    parquet.write_text("not parquet")
    with pytest.raises(FormatError, match=rf"^{parquet}: not a Parquet file"):
        read_records(parquet)


def test_the_aligner_reads_csv_and_conversational_prompts(tmp_path: Path) -> None:
    from alignloop.lm.aligner import read_corrections

    path = tmp_path / "fix.csv"
    path.write_text('prompt,original,corrected\n"[{""role"": ""user"", ""content"": ""Hi""}]",1,2\nq,a\n')
    with pytest.raises(FormatError, match=rf"^{path}:3: corrected: missing field"):
        read_corrections(path)
    path.write_text('prompt,original,corrected\n"[{""role"": ""user"", ""content"": ""Hi""}]",1,2\n')
    [fix] = read_corrections(path)
    assert (fix.prompt, fix.original, fix.corrected) == ("Hi", "1", "2")


def test_judged_items_round_trip_through_csv_and_name_the_line(tmp_path: Path) -> None:
    """The `judgements` format in CSV: nested cells are JSON, a key or text that looks like a
    number stays text, and a bad answer names its CSV line and field."""
    from alignloop.feedback.judged import judged_item
    from alignloop.feedback.schema import DEFAULT_QUESTIONS, Candidate, Item, Judgement

    records = []
    for key, prompt, text in (("r1-0001", "which?", "x"), ("12", "true", "1")):
        item = Item(
            prompt, (Candidate(text, model="2"), Candidate(media="clip.mp4", model="m", frames=5)), key=key
        )
        votes = [Judgement(item, {"better": "A"}, "ann1"), Judgement(item, {}, "ann2", True, "cannot tell")]
        records.append(judged_item(item, DEFAULT_QUESTIONS, votes))
    path = tmp_path / "judged.csv"
    write_records(records, path, "judgements")
    result = read_records(path)
    assert (result.format, result.records) == ("judgements", records)
    assert result.records[1].item.key == "12" and result.records[1].item.candidates[0].text == "1"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1] + lines[2].replace('""better"": ""A""', '""better"": ""Q""'))
    with pytest.raises(
        FormatError, match=rf"^{path}:3: judgements\[0\]\.questions\.better: expected one of A, B"
    ):
        read_records(path)
