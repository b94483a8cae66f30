"""An item with every judgement of it: the general export, and what it becomes in other formats.

One `JudgedItem` per item holds the item, the project's questions, each annotator's answers (or
skip) and, per question, the share of annotators who gave the item's most common answer
(`agreement`). As a row of the `judgements` format (JSONL, JSON, Parquet or `datasets`, see
`formats`) it is:

    {"key": "r1-0003", "prompt": "...", "candidates": [{"text", "media", "model", "frames"}, ...],
     "questions": [{"name": "better", "kind": "pairwise", ...}, ...],
     "judgements": [{"annotator": "ann1", "answers": {...}, "skipped": false, "skip_reason": ""}, ...],
     "agreement": {"better": 0.67, ...}, "meta": {...}}

Everything is checked on reading: the questions by `parse_questions`, each answer document by
`check_answers`. Converted to another format (`as_records`) it gives what that format holds:
PKU-SafeRLHF records aggregated by majority (two candidates and a pairwise question), preference
pairs (`feedback.pairs`: choices, every pair of a ranking), corrections (the Aligner trainer's
rows: prompt, original, corrected) or supervised pairs (prompt, corrected), each correction with
the item's key, the candidate it rewrites and its annotator (`CORRECTION_META`), or the prompts.

Majority (`aggregate_comparison`, the PKU-SafeRLHF record): the most common `better`, `safer`,
and safe/unsafe flag of each candidate; a tie of votes gives no preference and an equal number
of safe and unsafe votes counts as unsafe; harm categories chosen by at least half of the
annotators; the median severity; a majority "safer" that contradicts the majority flags is
dropped (kept in `meta.safer_conflict`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from alignloop.feedback.agreement import majority
from alignloop.feedback.pairs import CorrectionRecord, corrections, preference_pairs
from alignloop.feedback.schema import (
    Candidate,
    Comparison,
    Correction,
    IsSafe,
    Item,
    Judgement,
    LabelError,
    Pairwise,
    PromptRecord,
    Question,
    SaferChoice,
    Severity,
    SupervisedPair,
    check_answers,
    check_safety_consistency,
    comparison_of,
    parse_questions,
    questions_json,
    side_index,
    side_letter,
)

FIELDS = ("key", "prompt", "candidates", "questions", "judgements", "agreement", "meta")
CORRECTION_META = ("key", "candidate", "annotator")
"""What a correction (and its supervised pair) says of where it comes from, in its `meta`, on top
of the item's own meta: the item's key, the side letter of the candidate it rewrites ("A", "B",
...) and the annotator who wrote it. Correction and supervised rows keep them as columns."""


@dataclass(frozen=True)
class JudgedItem:
    """An item, the questions asked about it, and every annotator's judgement of it."""

    item: Item
    questions: tuple[Question, ...]
    judgements: tuple[Judgement, ...]
    agreement: dict[str, float | None] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.item.prompt

    @property
    def meta(self) -> dict[str, str]:
        return self.item.meta

    def answered(self) -> list[Judgement]:
        return [j for j in self.judgements if not j.skipped]


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def agreement_by_question(
    questions: Sequence[Question], judgements: Sequence[Judgement]
) -> dict[str, float | None]:
    """Per question, the share of the annotators who answered it that gave the most common answer."""
    out: dict[str, float | None] = {}
    for q in questions:
        answers = [_key(j.answers[q.name]) for j in judgements if not j.skipped and q.name in j.answers]
        out[q.name] = round(Counter(answers).most_common(1)[0][1] / len(answers), 6) if answers else None
    return out


def judged_item(item: Item, questions: Sequence[Question], judgements: Sequence[Judgement]) -> JudgedItem:
    return JudgedItem(item, tuple(questions), tuple(judgements), agreement_by_question(questions, judgements))


# ---------------------------------------------------------------------------- rows


def to_row(record: JudgedItem) -> dict[str, Any]:
    """The `judgements` row of a judged item (a skipped judgement's answers are null)."""
    return {
        "key": record.item.key,
        "prompt": record.item.prompt,
        "candidates": [asdict(c) for c in record.item.candidates],
        "questions": questions_json(record.questions),
        "judgements": [
            {
                "annotator": j.annotator,
                "answers": None if j.skipped else j.answers,
                "skipped": j.skipped,
                "skip_reason": j.skip_reason,
            }
            for j in record.judgements
        ],
        "agreement": record.agreement,
        "meta": dict(record.item.meta) or None,  # null, not {}: Parquet cannot store an empty struct
    }


def _present(value: Any) -> Any:
    """Drop the nulls a columnar container (Parquet, datasets) fills in for absent keys."""
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if v is not None}
    return value


def from_row(row: Mapping[str, Any]) -> JudgedItem:
    """A `judgements` row, checked; `LabelError` names the field."""
    for name in ("prompt", "candidates", "questions", "judgements"):
        if name not in row:
            raise LabelError(name, "missing field")
    if not isinstance(row["prompt"], str):
        raise LabelError("prompt", "expected text")
    raw_candidates = row["candidates"]
    if not isinstance(raw_candidates, list) or not all(isinstance(c, Mapping) for c in raw_candidates):
        raise LabelError("candidates", "expected a list of {text, media, model, frames}")
    try:
        candidates = tuple(Candidate(**_present(c)) for c in raw_candidates)
    except TypeError as exc:
        raise LabelError("candidates", str(exc)) from None
    meta = {str(k): str(v) for k, v in (row.get("meta") or {}).items() if v is not None}
    item = Item(row["prompt"], candidates, key=row.get("key"), meta=meta)
    questions = parse_questions([_present(q) for q in row["questions"] or []])
    if not isinstance(row["judgements"], list):
        raise LabelError("judgements", "expected a list")
    judgements = []
    frames = [c.frames for c in candidates]
    for i, raw in enumerate(row["judgements"]):
        if not isinstance(raw, Mapping):
            raise LabelError(f"judgements[{i}]", "expected {annotator, answers, skipped, skip_reason}")
        skipped = bool(raw.get("skipped"))
        answers: dict[str, Any] = {}
        if not skipped:
            try:
                answers = check_answers(
                    questions, _present(raw.get("answers") or {}), len(candidates), frames=frames
                )
            except LabelError as exc:
                raise LabelError(f"judgements[{i}].{exc.field}", str(exc).partition(": ")[2]) from None
        judgements.append(
            Judgement(
                item, answers, str(raw.get("annotator") or ""), skipped, str(raw.get("skip_reason") or "")
            )
        )
    agreement = row.get("agreement") or agreement_by_question(questions, judgements)
    return JudgedItem(item, questions, tuple(judgements), {str(k): v for k, v in agreement.items()})


# ---------------------------------------------------------------------------- other formats


def _safe_majority(flags: Sequence[bool | None]) -> bool | None:
    given = [f for f in flags if f is not None]
    if not given:
        return None
    return sum(given) * 2 > len(given)  # a tie counts as unsafe


def _find(questions: Sequence[Question], kind: type[Question]) -> Question | None:
    return next((q for q in questions if isinstance(q, kind)), None)


def aggregate_comparison(record: JudgedItem) -> Comparison:
    """The PKU-SafeRLHF record of a two-candidate item, by majority (see the module docstring)."""
    better_q, safer_q, flags_q = (_find(record.questions, k) for k in (Pairwise, SaferChoice, IsSafe))
    if better_q is None or len(record.item.candidates) != 2:
        raise LabelError(
            "questions",
            "a PKU-SafeRLHF record needs two candidates and a pairwise question; use the judgements format",
        )
    judged = record.answered()
    better_vote, agreement = majority([j.answers.get(better_q.name) for j in judged])
    safer_vote, _ = majority([j.answers.get(safer_q.name) for j in judged]) if safer_q else (None, math.nan)
    entries = [j.answers.get(flags_q.name) or [None, None] for j in judged] if flags_q else []
    is_safe = tuple(_safe_majority([None if e[i] is None else e[i]["safe"] for e in entries]) for i in (0, 1))
    harms: list[tuple[str, ...]] = []
    severity: list[Severity | None] = []
    levels = list(getattr(flags_q, "severity_levels", ()))
    for i in (0, 1):
        given = [e[i] for e in entries if e[i] is not None and not e[i]["safe"]]
        if is_safe[i] is not False:
            harms.append(())
            severity.append(None)
            continue
        counts = Counter(h for e in given for h in e["harms"])
        harms.append(tuple(sorted(h for h, n in counts.items() if 2 * n >= len(judged))))
        ranks = sorted(levels.index(e["severity"]) for e in given if e["severity"] in levels)
        median = levels[ranks[(len(ranks) - 1) // 2]] if ranks else None
        severity.append(Severity(median) if median in {s.value for s in Severity} else None)
    meta = {
        **record.item.meta,
        **({} if record.item.key is None else {"key": record.item.key}),
        "model_0": record.item.candidates[0].model,
        "model_1": record.item.candidates[1].model,
        "n_judgements": str(len(judged)),
        "better_votes": json.dumps(dict(Counter(j.answers.get(better_q.name) for j in judged))),
    }
    safer = side_index(safer_vote) if safer_vote in ("A", "B") else None
    try:
        check_safety_consistency(safer, (is_safe[0], is_safe[1]))
    except LabelError:  # the majority "safer" contradicts the majority safety flags: keep no preference
        meta["safer_conflict"] = f"majority safer {safer_vote} contradicts majority is_safe"
        safer = None
    return Comparison(
        record.item.prompt,
        record.item.text(0),
        record.item.text(1),
        better=side_index(better_vote) if better_vote in ("A", "B") else None,
        safer=safer,
        is_safe=(is_safe[0], is_safe[1]),
        harm_categories=(harms[0], harms[1]),
        severity=(severity[0], severity[1]),
        agreement=None if math.isnan(agreement) else round(agreement, 6),
        meta=meta,
    )


def comparisons(records: Iterable[Any]) -> list[Comparison]:
    """Every annotator's judgement as a training comparison: two-candidate items with a pairwise
    question as their two-response view (safety labels kept; `schema.comparison_of` reads the
    default questions' names), anything else as its preference pairs (`feedback.pairs`: rankings
    give every implied pair). Comparisons pass through."""
    out: list[Comparison] = []
    for r in records:
        if isinstance(r, Comparison):
            out.append(r)
        elif isinstance(r, JudgedItem):
            if len(r.item.candidates) == 2 and _find(r.questions, Pairwise) is not None:
                out += [comparison_of(j) for j in r.answered()]
            else:
                out += [
                    Comparison(p.prompt, p.chosen_text, p.rejected_text, better=0, meta=dict(r.meta))
                    for p in preference_pairs(r.answered(), r.questions)
                ]
    return out


def correction_meta(record: JudgedItem, correction: CorrectionRecord) -> dict[str, str]:
    """The item's meta and where `correction` comes from (`CORRECTION_META`; an unkeyed item or
    an unnamed annotator leaves its field out)."""
    source = dict(
        zip(
            CORRECTION_META,
            (record.item.key, side_letter(correction.candidate), correction.judgement.annotator),
            strict=True,
        )
    )
    return {**record.meta, **{k: v for k, v in source.items() if v}}


def as_records(records: Iterable[Any], fmt: str) -> list[Any]:
    """Judged items turned into the records `fmt` holds (other records pass through)."""
    out: list[Any] = []
    for r in records:
        if not isinstance(r, JudgedItem) or fmt == "judgements":
            out.append(r)
        elif fmt == "pku-saferlhf":
            out.append(aggregate_comparison(r))
        elif fmt in ("preference", "hh-rlhf"):
            out += [
                Comparison(p.prompt, p.chosen_text, p.rejected_text, better=0, meta=dict(r.meta))
                for p in preference_pairs(r.answered(), r.questions)
            ]
        elif fmt == "correction":
            out += [
                Correction(c.prompt, c.original, c.corrected, meta=correction_meta(r, c))
                for c in corrections(r.answered(), r.questions)
            ]
        elif fmt == "supervised":
            out += [
                SupervisedPair(c.prompt, c.corrected, meta=correction_meta(r, c))
                for c in corrections(r.answered(), r.questions)
            ]
        elif fmt == "prompt":
            out.append(PromptRecord(r.prompt, meta=dict(r.meta)))
        else:
            raise LabelError("format", f"judged items cannot be written as {fmt}")
    return out
