"""One definition of a judgement (`alignloop.feedback.schema`); every other form agrees with it.

The pydantic wire models, the ORM tables, the SQL of the hot path, the export rows, the loop's
records, the scripted annotators, the labelling page and the statistics are each checked against
the question kinds and the item, candidate and judgement fields defined there, so a field or a
question kind added in one place only fails here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from starlette.datastructures import FormData

from alignloop.feedback import judged, schema
from alignloop.feedback.formats import FIELDS
from alignloop.feedback.teachers import ScriptedAnnotator, Truth
from alignloop.loop.domain import Judged, Proposal
from alignloop.platform import hotpath, models, schemas, stats
from alignloop.platform.web.routes import answers_from_form

N = 3
FRAMES = 6


def fields(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def one_of_each() -> tuple[schema.Question, ...]:
    """A question of every kind, with options that let three candidates answer it."""
    made = []
    for kind, cls in schema.QUESTION_KINDS.items():
        options: dict[str, Any] = {"name": f"q_{kind}", "required": False}
        if cls is schema.IsSafe:
            options |= {"harm_categories": ("Violence",), "severity_levels": ("minor", "severe")}
        made.append(cls(**options))
    return tuple(made)


def test_every_question_kind_is_one_pydantic_member_with_the_dataclass_fields() -> None:
    members = get_args(get_args(schemas.QuestionSpec)[0])
    assert set(members) == set(schema.QUESTION_KINDS.values())
    definitions = schemas.ProjectIn.model_json_schema()["$defs"]
    for kind, cls in schema.QUESTION_KINDS.items():
        assert set(definitions[cls.__name__]["properties"]) == fields(cls), kind
        assert definitions[cls.__name__]["properties"]["kind"]["const"] == kind
    assert (
        set(schemas.CandidateIn.model_fields)
        == set(schemas.CandidateOut.model_fields)
        == fields(schema.Candidate)
    )


def test_the_tables_hold_every_field_the_wire_carries() -> None:
    columns = {
        table: {c.name for c in models.Base.metadata.tables[table].columns}
        for table in ("items", "judgements")
    }
    item_in = set(schemas.ItemIn.model_fields) - {"candidates"}
    assert set(schemas.ItemOut.model_fields) <= columns["items"] and item_in <= columns["items"]
    assert set(schemas.JudgementOut.model_fields) | {"updated_at"} == columns["judgements"]
    assert set(schemas.JudgementIn.model_fields) <= columns["judgements"]
    judgement = set(fields(schema.Judgement)) - {"item", "annotator"}  # the item and annotator are keys there
    assert judgement <= columns["judgements"]
    project = {c.name for c in models.Base.metadata.tables["projects"].columns}
    assert set(schemas.ProjectOut.model_fields) <= project


def _keys(sql_object: str) -> list[str]:
    return re.findall(r"'([a-z_]+)', ", sql_object)


def test_the_hot_path_sql_is_built_from_the_response_models() -> None:
    assert _keys(hotpath.ITEM_JSON) == list(schemas.ItemOut.model_fields)
    assert _keys(hotpath.JUDGEMENT_JSON) == list(schemas.JudgementOut.model_fields)
    judgement_columns = {c.name for c in models.Base.metadata.tables["judgements"].columns} - {"id"}
    assert set(hotpath.JUDGEMENT_COLUMNS) == judgement_columns
    assert f"INSERT INTO judgements ({', '.join(hotpath.JUDGEMENT_COLUMNS)})" in hotpath.SUBMIT_AND_NEXT
    with pytest.raises(AssertionError, match="no SQL for"):
        hotpath.json_object(schemas.ItemOut, {"id": "i.id"})


def _every_kind_item() -> tuple[tuple[schema.Question, ...], schema.Item, dict[str, Any]]:
    questions = tuple(q for q in one_of_each() if not q.pairs_only)
    item = schema.Item(
        "p", tuple(schema.Candidate(f"r{i}", model=f"m{i}", frames=FRAMES) for i in range(N)), key="k1"
    )
    answers = ScriptedAnnotator(questions, seed=0).answer(
        Truth(
            np.array([0.2, 0.9, 0.5]),
            np.array([0.2, 0.9, 0.5]),
            costs=np.array([0.0, 1.0, 0.0]),
            step_costs=np.array([[0.0] * FRAMES, [0, 0, 1, 1, 0, 0], [0.0] * FRAMES]),
            corrected=lambda i: f"fixed {i}",
        )
    )
    assert answers is not None
    return questions, item, answers


def test_scripted_annotators_answer_every_kind_as_the_definition_accepts() -> None:
    questions, item, answers = _every_kind_item()
    pairs_questions = tuple(q for q in one_of_each() if q.pairs_only)
    two = ScriptedAnnotator(pairs_questions, seed=0).answer(
        Truth(np.array([0.1, 0.7]), np.array([0.1, 0.7]), costs=np.array([1.0, 0.0]))
    )
    assert two is not None and set(two) == {q.name for q in pairs_questions}
    assert schema.check_answers(pairs_questions, two, 2) == two
    assert set(answers) == {q.name for q in questions}  # every kind answered
    assert schema.check_answers(questions, answers, N, frames=[FRAMES] * N) == answers
    assert answers["q_mark"] == [None, 2, None]


def test_export_rows_and_loop_records_carry_every_field(tmp_path: Path) -> None:
    questions, item, answers = _every_kind_item()
    record = judged.judged_item(item, questions, [schema.Judgement(item, answers, "ann1")])
    row = judged.to_row(record)
    assert set(row) == set(judged.FIELDS) == set(FIELDS["judgements"])
    assert all(set(c) == fields(schema.Candidate) for c in row["candidates"])
    assert all(set(q) == fields(type(q_)) for q, q_ in zip(row["questions"], questions, strict=True))
    assert set(row["judgements"][0]) == {"annotator", "answers", "skipped", "skip_reason"}
    assert judged.from_row(row) == record
    assert set(record.agreement) == {q.name for q in questions}
    proposal = Proposal(item, priority=1.5)
    assert Proposal.from_json(proposal.to_json()) == proposal
    assert all(set(c) == fields(schema.Candidate) for c in proposal.to_json()["candidates"])
    pulled = Judged(7, 2, schema.Judgement(item, answers, "3"))
    assert Judged.from_json(pulled.to_json()) == pulled


def test_the_labelling_page_and_the_statistics_know_every_kind() -> None:
    page = (Path(schema.__file__).parents[1] / "platform" / "web" / "templates" / "label.html").read_text()
    script = (Path(schema.__file__).parents[1] / "platform" / "web" / "static" / "label.js").read_text()
    for kind in schema.QUESTION_KINDS:
        assert f'"{kind}"' in page, f"label.html shows no {kind} question"
        assert re.search(rf"(^|\s|\.){kind}\s*[:,=]", script), f"label.js has no keys for {kind} questions"
    measured = {cls for cls in stats.AGREEMENT} | {schema.Rating}
    unmeasured = {schema.CorrectionText, schema.FreeText}  # free text has no agreement to measure
    assert measured | unmeasured == set(schema.QUESTION_KINDS.values())
    questions, item, answers = _every_kind_item()
    form = [("q.q_ranking." + str(i), str(r)) for i, r in enumerate(answers["q_ranking"])]
    form += [
        (f"q.q_is_safe.{i}.safe", "safe" if e["safe"] else "unsafe")
        for i, e in enumerate(answers["q_is_safe"])
    ]
    form += [(f"q.q_rating.overall.{i}", str(s)) for i, s in enumerate(answers["q_rating"]["overall"])]
    form += [
        ("q.q_correction.candidate", answers["q_correction"]["candidate"]),
        ("q.q_correction.text", answers["q_correction"]["text"]),
    ]
    form += [(f"q.q_mark.{i}", "safe" if m is None else str(m)) for i, m in enumerate(answers["q_mark"])]
    form += [("q.q_text", answers["q_text"])]
    parsed = answers_from_form(questions, FormData(form), N)
    assert schema.check_answers(questions, parsed, N, frames=[FRAMES] * N) == answers


def test_a_correction_says_where_it_comes_from_in_every_form(tmp_path: Path) -> None:
    """Platform export -> correction and supervised rows -> `feedback.formats` -> the Aligner's
    input: the item's meta, its key, the candidate rewritten and the annotator survive each step."""
    from alignloop.feedback.formats import parse_row, read_corrections, to_row, write_records

    questions, item, answers = _every_kind_item()
    item = dataclasses.replace(item, meta={"item_id": "12", "source": "s1"})
    record = judged.judged_item(item, questions, [schema.Judgement(item, answers, "ann1")])
    letter = answers["q_correction"]["candidate"]
    source = {"item_id": "12", "source": "s1", "key": "k1", "candidate": letter, "annotator": "ann1"}
    assert set(source) == set(item.meta) | set(judged.CORRECTION_META)
    (correction,) = judged.as_records([record], "correction")
    (pair,) = judged.as_records([record], "supervised")
    assert correction.original == item.text(schema.side_index(letter))
    assert correction.meta == pair.meta == source
    own = {"correction": {"prompt", "original", "corrected"}, "supervised": {"prompt", "response"}}
    for fmt, written in (("correction", correction), ("supervised", pair)):
        row = to_row(written, fmt)
        assert own[fmt] <= set(FIELDS[fmt]) and set(row) == own[fmt] | set(source), row
        read = parse_row(row, fmt)
        assert read == written and read.meta == source, fmt
    for name in ("c.jsonl", "c.parquet", "judged.jsonl"):
        path = tmp_path / name
        write_records([record], path, "judgements" if name.startswith("judged") else "correction")
        (read,) = read_corrections(path)
        assert read == correction and read.meta == source, name
