"""Feedback files on disk: judged items, PKU-SafeRLHF, HH-RLHF, prompt/chosen/rejected, prompts,
supervised pairs, corrections.

A *format* says which fields a row has; a *container* says how rows are stored (JSONL, a JSON
list, CSV, Parquet, or a `datasets` folder written by `save_to_disk`). Any format goes in any
container. Rows become the records of `schema` (`Comparison`, `PromptRecord`, `SupervisedPair`,
`Correction`) or `judged.JudgedItem`.

Rows in TRL's conversational form, lists of `{"role", "content"}` messages, are read as text
first (`from_conversational`), so every format may come that way: `prompt` (prompt-only),
`prompt` + `completion` (read as supervised), `messages` (the last assistant message is the
response), `prompt` + `chosen` + `rejected` (preference), and `chosen` + `rejected` holding
whole conversations (the messages they share are the prompt). A one-message prompt becomes
its text; a longer one the HH-RLHF dialogue "\n\nHuman: ...\n\nAssistant:". In CSV, cells
of text fields stay text (a JSON list of messages excepted) and other cells are read as JSON
values (`true`, `1`, `{"a": true}`; Python's `True`/`False` too; empty = null).

Formats (`FORMATS`):

- `pku-saferlhf`: `prompt, response_0, response_1, is_response_0_safe, is_response_1_safe,
  better_response_id, safer_response_id`; optional `response_{i}_harm_category` (a mapping of
  category name to bool), `response_{i}_severity_level` (0 = none, 1 minor, 2 moderate,
  3 severe) and `agreement` (share of annotators who agreed with `better_response_id`).
  `better_response_id`/`safer_response_id` may be null (no preference); the safety fields may be
  missing or null (not judged).
- `hh-rlhf`: `chosen, rejected`, full dialogues "\\n\\nHuman: ...\\n\\nAssistant: ...". The prompt is
  the shared dialogue up to and including the last "\\n\\nAssistant:"; the responses are the rest.
- `preference`: `prompt, chosen, rejected`.
- `prompt`: `prompt` only; TRL's conversational prompts (`prompt` a list of `{role, content}`
  messages) are read too, as one dialogue text (`conversation_text`).
- `supervised`: `prompt, response`; TRL's conversational `messages` rows are read too: the
  prompt is the dialogue before the last assistant message, the response that message.
- `judgements`: one item with every judgement of it, any question kind (`feedback.judged`):
  `key, prompt, candidates, questions, judgements, agreement, meta`. Written as any other
  format, a file of judged items gives what that format holds (`judged.as_records`): majority
  PKU-SafeRLHF records, preference pairs, corrections, supervised (prompt, corrected) pairs.
- `correction`: `prompt, original, corrected` (the Aligner trainer's input); a row
  `prompt, response, original` reads the same (`response` is the corrected answer). Written from
  judged items, a row also names its item's `key`, the `candidate` it rewrites ("A", "B", ...)
  and the `annotator` (`judged.CORRECTION_META`), as do the supervised rows of corrections.

Every error names the file, the place (JSONL and CSV line number, else the 0-based row index)
and the field. Fields a format does not know are kept in the record's `meta` when they hold text.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args

from alignloop.errors import UserError
from alignloop.feedback import judged
from alignloop.feedback.judged import JudgedItem
from alignloop.feedback.schema import (
    HARM_CATEGORIES,
    Comparison,
    Correction,
    LabelError,
    PromptRecord,
    Severity,
    SupervisedPair,
)

Format = Literal["pku-saferlhf", "hh-rlhf", "preference", "prompt", "supervised", "judgements", "correction"]
FORMATS: tuple[str, ...] = get_args(Format)
Container = Literal["jsonl", "json", "csv", "parquet", "datasets"]
Record = Union[Comparison, PromptRecord, SupervisedPair, Correction, JudgedItem]

# Fields each format reads; anything else in a row goes to `meta` (when it is text).
FIELDS: dict[str, tuple[str, ...]] = {
    "pku-saferlhf": (
        "prompt",
        "response_0",
        "response_1",
        "is_response_0_safe",
        "is_response_1_safe",
        "better_response_id",
        "safer_response_id",
        "response_0_harm_category",
        "response_1_harm_category",
        "response_0_severity_level",
        "response_1_severity_level",
        "agreement",
    ),
    "hh-rlhf": ("chosen", "rejected"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt": ("prompt",),
    "supervised": ("prompt", "response", "messages"),
    "judgements": judged.FIELDS,
    "correction": ("prompt", "original", "corrected", "response"),
}
SEVERITY_LEVELS: dict[int, Severity | None] = {
    0: None,
    1: Severity.MINOR,
    2: Severity.MODERATE,
    3: Severity.SEVERE,
}
ASSISTANT = "\n\nAssistant:"
log = logging.getLogger(__name__)
HUMAN = "\n\nHuman:"
SYSTEM = "\n\nSystem:"
ROLE_MARKERS: dict[str, str] = {"system": SYSTEM, "user": HUMAN, "assistant": ASSISTANT}
"""The dialogue marker of each chat role: a conversation is held as one text (`conversation_text`)."""


class FormatError(UserError, ValueError):
    """A file or row that cannot be read or written: `path`, `line` (or row index), `field`."""

    def __init__(
        self,
        path: str | Path,
        line: int | None,
        field: str | None,
        reason: str,
        *,
        unit: Literal["line", "row index", "record"] = "line",
    ):
        self.path, self.line, self.field, self.reason, self.unit = str(path), line, field, reason, unit
        where = self.path
        if line is not None:
            where += f":{line}" if unit == "line" else f": {unit} {line}"
        super().__init__(f"{where}: {field}: {reason}" if field else f"{where}: {reason}")


@dataclass
class ReadResult:
    """Records read from one file, with the rows skipped (only when `skip_invalid`)."""

    records: list[Record]
    format: str | None  # None for an empty file read without an explicit format
    rows: int  # rows seen, valid or not
    skipped: int = 0
    errors: list[FormatError] = field(default_factory=list)  # the first few, in file order


@dataclass
class WriteResult:
    written: int
    skipped: int = 0
    errors: list[FormatError] = field(default_factory=list)


# ---------------------------------------------------------------------------- rows -> records


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _text(row: Mapping[str, Any], name: str) -> str:
    if name not in row:
        raise LabelError(name, "missing field")
    value = row[name]
    if not isinstance(value, str):
        raise LabelError(name, f"expected text, got {_describe(value)}")
    return value


def _flag(row: Mapping[str, Any], name: str) -> bool | None:
    value = row.get(name)
    if value is not None and not isinstance(value, bool):
        raise LabelError(name, f"expected true, false or null, got {_describe(value)}")
    return value


def _choice(row: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    if required and name not in row:
        raise LabelError(name, "missing field")
    value = row.get(name)
    if value is not None and (isinstance(value, bool) or value not in (0, 1)):
        raise LabelError(name, f"expected 0, 1 or null, got {_describe(value)}")
    return None if value is None else int(value)


def _harm_categories(row: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = row.get(name)
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise LabelError(name, f"expected a mapping of category name to true/false, got {_describe(value)}")
    for key, flag in value.items():
        if flag is not None and not isinstance(flag, bool):
            raise LabelError(f"{name}.{key}", f"expected true or false, got {_describe(flag)}")
    return tuple(str(key) for key, flag in value.items() if flag)


def _severity(row: Mapping[str, Any], name: str) -> Severity | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or value not in SEVERITY_LEVELS:
        raise LabelError(
            name, f"expected a level 0-3 (0 none, 1 minor, 2 moderate, 3 severe), got {_describe(value)}"
        )
    return SEVERITY_LEVELS[int(value)]


def _meta(row: Mapping[str, Any], fmt: str) -> dict[str, str]:
    known = FIELDS[fmt]
    return {k: v for k, v in row.items() if k not in known and isinstance(v, str)}


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH-RLHF dialogues into (prompt, chosen response, rejected response).

    The prompt is the longest shared start of both that ends with "\\n\\nAssistant:"; one space
    after that marker belongs to the format, not to the response.
    """
    shared = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(ASSISTANT, 0, shared)
    if cut < 0 or cut + len(ASSISTANT) > shared:
        where = "chosen" if ASSISTANT not in chosen else "rejected"
        raise LabelError(where, 'the two dialogues share no start that ends with "\\n\\nAssistant:"')
    end = cut + len(ASSISTANT)

    def response(text: str) -> str:
        rest = text[end:]
        return rest[1:] if rest.startswith(" ") else rest

    return chosen[:end], response(chosen), response(rejected)


def conversation_text(messages: Any, name: str = "messages") -> str:
    """Chat messages (``[{"role": "user", "content": ...}, ...]``, TRL's conversational rows) as
    the one text form every prompt has here: a lone user message as itself, more as a dialogue
    ending with the assistant's marker, ``"\\n\\nSystem: be brief\\n\\nHuman: hi\\n\\nAssistant:"``
    (`conversation_turns` gives the messages back)."""
    pairs = _messages(messages, name)
    if pairs is None:
        raise LabelError(name, f"expected a non-empty list of messages, got {_describe(messages)}")
    if pairs[-1][0] == "assistant":
        raise LabelError(name, "a prompt must not end with an assistant message")
    return _dialogue_text(pairs)


_MARKER = re.compile("|".join(re.escape(m) for m in ROLE_MARKERS.values()))


def conversation_turns(text: str) -> list[dict[str, str]] | None:
    """The messages of a dialogue text written by `conversation_text` (or an HH-RLHF prompt), the
    final empty assistant marker left out; None when `text` is not a dialogue."""
    if not _MARKER.match(text) or not text.endswith(ASSISTANT):
        return None
    roles = {marker: role for role, marker in ROLE_MARKERS.items()}
    markers = list(_MARKER.finditer(text))
    turns = []
    for here, after in zip(markers, [*markers[1:], None], strict=True):
        end = len(text) if after is None else after.start()
        content = text[here.end() : end]
        turns.append(
            {"role": roles[here.group()], "content": content[1:] if content.startswith(" ") else content}
        )
    return turns[:-1]


def _conversation_pair(row: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, response) of a TRL ``messages`` row: the dialogue before the last assistant
    message, and that message."""
    messages = row["messages"]
    if not isinstance(messages, list):
        raise LabelError("messages", f"expected a list of messages, got {_describe(messages)}")
    last = max(
        (i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "assistant"),
        default=None,
    )
    if last is None or last == 0:
        raise LabelError("messages", "no assistant message after the first message (nothing to answer)")
    response = messages[last].get("content")
    if not isinstance(response, str):
        raise LabelError(f"messages[{last}].content", f"expected text, got {_describe(response)}")
    return conversation_text(messages[:last]), response


def _prompt_text(row: Mapping[str, Any]) -> str:
    if isinstance(row.get("prompt"), list):
        return conversation_text(row["prompt"], "prompt")
    return _text(row, "prompt")


def parse_row(row: Any, fmt: str) -> Record:
    """One row (a mapping) in format `fmt` as a record; raises `LabelError` naming the field."""
    if not isinstance(row, Mapping):
        raise LabelError("row", f"expected an object with named fields, got {type(row).__name__}")
    if fmt not in FIELDS:
        raise LabelError("format", f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "judgements":
        return judged.from_row(row)
    meta = _meta(row, fmt)
    if fmt == "correction":
        target = "corrected" if "corrected" in row or "response" not in row else "response"
        return Correction(_text(row, "prompt"), _text(row, "original"), _text(row, target), meta=meta)
    if fmt == "prompt":
        return PromptRecord(_prompt_text(row), meta=meta)
    if fmt == "supervised":
        if "messages" in row and "prompt" not in row:
            return SupervisedPair(*_conversation_pair(row), meta=meta)
        return SupervisedPair(_prompt_text(row), _text(row, "response"), meta=meta)
    if fmt == "preference":
        return Comparison(
            _text(row, "prompt"), _text(row, "chosen"), _text(row, "rejected"), better=0, meta=meta
        )
    if fmt == "hh-rlhf":
        prompt, chosen, rejected = split_dialogue(_text(row, "chosen"), _text(row, "rejected"))
        return Comparison(prompt, chosen, rejected, better=0, meta=meta)
    # pku-saferlhf
    prompt, response_0, response_1 = (_text(row, k) for k in ("prompt", "response_0", "response_1"))
    better = _choice(row, "better_response_id", required=True)
    safer = _choice(row, "safer_response_id", required=False)
    is_safe = (_flag(row, "is_response_0_safe"), _flag(row, "is_response_1_safe"))
    categories = tuple(_harm_categories(row, f"response_{i}_harm_category") for i in (0, 1))
    severity = tuple(_severity(row, f"response_{i}_severity_level") for i in (0, 1))
    agreement = row.get("agreement")
    if agreement is not None and (
        isinstance(agreement, bool) or not isinstance(agreement, (int, float)) or not 0 <= agreement <= 1
    ):
        raise LabelError("agreement", f"expected a share between 0 and 1 or null, got {_describe(agreement)}")
    try:
        return Comparison(
            prompt,
            response_0,
            response_1,
            better=better,
            safer=safer,
            is_safe=is_safe,
            harm_categories=(categories[0], categories[1]),
            severity=(severity[0], severity[1]),
            agreement=None if agreement is None else float(agreement),
            meta=meta,
        )
    except LabelError as exc:  # the schema names its own fields; say the file's names
        name = {"better": "better_response_id", "safer": "safer_response_id"}.get(exc.field, exc.field)
        raise LabelError(name, str(exc).partition(": ")[2]) from None


def detect_format(row: Any) -> str | None:
    """The format a row's field names point to, or None when they point to none."""
    if not isinstance(row, Mapping):
        return None
    keys = set(row)
    if {"candidates", "judgements"} <= keys:
        return "judgements"
    if "original" in keys:
        return "correction"
    if keys & {"response_0", "response_1", "better_response_id", "safer_response_id"}:
        return "pku-saferlhf"
    if keys & {"chosen", "rejected"}:
        return "preference" if "prompt" in keys else "hh-rlhf"
    if keys & {"response", "messages"}:
        return "supervised"
    if "prompt" in keys:
        return "prompt"
    return None


# ---------------------------------------------------------------------------- records -> rows


def _dialogue(prompt: str, response: str) -> str:
    if prompt.startswith(HUMAN) and prompt.endswith(ASSISTANT):
        return f"{prompt} {response}"
    return f"{HUMAN} {prompt}{ASSISTANT} {response}"


def _ranked(record: Comparison, fmt: str) -> tuple[str, str]:
    if record.better is None:
        raise LabelError("better", f"a pair without a preference (a tie) cannot be written as {fmt}")
    return record.response(record.better), record.response(1 - record.better)


def to_row(record: Record, fmt: str) -> dict[str, Any]:
    """A record as a row of format `fmt`; raises `LabelError` when the format cannot hold it."""
    if fmt not in FIELDS:
        raise LabelError("format", f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    row: dict[str, Any]
    if isinstance(record, JudgedItem):
        if fmt != "judgements":
            raise LabelError("record", f"a judged item is written as {fmt} through judged.as_records")
        return judged.to_row(record)
    if fmt == "judgements":
        raise LabelError("record", "only judged items can be written in the judgements format")
    if fmt == "correction":
        if not isinstance(record, Correction):
            raise LabelError("record", "only corrections can be written as correction rows")
        row = {"prompt": record.prompt, "original": record.original, "corrected": record.corrected}
    elif isinstance(record, Correction):
        if fmt != "supervised":
            raise LabelError("record", f"a correction cannot be written as {fmt}")
        row = {"prompt": record.prompt, "response": record.corrected}
    elif fmt == "prompt":
        row = {"prompt": record.prompt}
    elif isinstance(record, PromptRecord):
        raise LabelError("record", f"a prompt-only record cannot be written as {fmt}")
    elif fmt == "supervised":
        response = record.response if isinstance(record, SupervisedPair) else _ranked(record, fmt)[0]
        row = {"prompt": record.prompt, "response": response}
    elif isinstance(record, SupervisedPair):
        raise LabelError("record", f"a prompt/response pair cannot be written as {fmt}")
    elif fmt == "preference":
        chosen, rejected = _ranked(record, fmt)
        row = {"prompt": record.prompt, "chosen": chosen, "rejected": rejected}
    elif fmt == "hh-rlhf":
        chosen, rejected = _ranked(record, fmt)
        row = {"chosen": _dialogue(record.prompt, chosen), "rejected": _dialogue(record.prompt, rejected)}
    else:
        row = {
            "prompt": record.prompt,
            "response_0": record.response_0,
            "response_1": record.response_1,
            "is_response_0_safe": record.is_safe[0],
            "is_response_1_safe": record.is_safe[1],
            "better_response_id": record.better,
            "safer_response_id": record.safer,
        }
        if any(record.harm_categories) or any(s is not None for s in record.severity):
            levels = {s: level for level, s in SEVERITY_LEVELS.items()}
            for i in (0, 1):
                chosen_categories = record.harm_categories[i]
                flags = {name: name in chosen_categories for name in HARM_CATEGORIES}
                flags.update({name: True for name in chosen_categories if name not in flags})
                row[f"response_{i}_harm_category"] = flags
                row[f"response_{i}_severity_level"] = levels[record.severity[i]]
        if record.agreement is not None:
            row["agreement"] = record.agreement
    row.update({k: v for k, v in record.meta.items() if k not in FIELDS[fmt] and k not in row})
    return row


# ---------------------------------------------------------------------------- containers


def container_of(path: str | Path, *, for_writing: bool = False) -> Container:
    """How rows are stored at `path`, from its suffix; a folder (or no suffix) is `datasets`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not for_writing and not path.exists():
        raise FormatError(path, None, None, "no such file or folder")
    if path.is_dir():
        return "datasets"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if for_writing and not suffix:
        return "datasets"
    raise FormatError(
        path,
        None,
        None,
        f"unknown file type {suffix!r}; expected .jsonl, .json, .csv, .parquet or a datasets folder",
    )


def place_unit(path: str | Path) -> Literal["line", "row index"]:
    """What the places `iter_rows` yields for `path` count: lines (JSONL, CSV) or row indices."""
    return "line" if container_of(path) in ("jsonl", "csv") else "row index"


# Fields that hold text (a prompt, a response, a dialogue): in CSV their cells stay text, however
# they look ("1", "true"), unless they hold a JSON list of messages.
TEXT_FIELDS = frozenset(
    {"prompt", "response", "chosen", "rejected", "response_0", "response_1", "completion", "messages"}
    | {"original", "corrected"}  # Aligner corrections
)
_PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def _csv_cell(name: str, text: str) -> Any:
    """A CSV cell as the value a JSON row would hold (see the module docstring)."""
    stripped = text.strip()
    if name in TEXT_FIELDS:
        if stripped.startswith("[") and stripped.endswith("]"):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError:
                return text
            return value if isinstance(value, list) and all(isinstance(m, dict) for m in value) else text
        return text
    if not stripped:
        return None
    if stripped in _PYTHON_LITERALS:
        return _PYTHON_LITERALS[stripped]
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        return text


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc, path.read_bytes()) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if None in row:  # more cells than the header names
                yield (
                    reader.line_num,
                    FormatError(path, reader.line_num, None, "more cells than the header has"),
                )
                continue
            yield reader.line_num, {k: _csv_cell(k, v) for k, v in row.items() if v is not None}
    except csv.Error as exc:
        raise FormatError(path, reader.line_num, None, f"not valid CSV: {exc}") from None


def _not_utf8(path: Path, exc: UnicodeDecodeError, data: bytes) -> FormatError:
    line = data[: exc.start].count(b"\n") + 1
    return FormatError(path, line, None, f"not UTF-8 text (byte {data[exc.start]:#04x})")


def iter_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (place, row): place is the 1-based line for JSONL and CSV, else the 0-based row index.

    Conversational rows come as text (`from_conversational`). A JSONL line that is not valid
    JSON, or a row whose messages cannot be read, is yielded as a `FormatError` instead of a row.
    """
    path = Path(path)
    unit = place_unit(path)
    for place, row in _raw_rows(path, container_of(path)):
        if not isinstance(row, FormatError):
            try:
                row = from_conversational(row)
            except LabelError as exc:
                row = FormatError(path, place, exc.field, str(exc).partition(": ")[2], unit=unit)
        yield place, row


def _raw_rows(path: Path, kind: Container) -> Iterator[tuple[int, Any]]:
    if kind == "jsonl":
        with path.open("rb") as lines:
            for number, raw in enumerate(lines, 1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    yield (
                        number,
                        FormatError(path, number, None, f"not UTF-8 text (byte {raw[exc.start]:#04x})"),
                    )
                    continue
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    yield (
                        number,
                        FormatError(path, number, None, f"not valid JSON: {exc.msg} at column {exc.colno}"),
                    )
    elif kind == "json":
        data = path.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc, data) from None
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(
                path, exc.lineno, None, f"not valid JSON: {exc.msg} at column {exc.colno}"
            ) from None
        if not isinstance(rows, list):
            raise FormatError(path, None, None, f"expected a JSON list of records, got {type(rows).__name__}")
        yield from enumerate(rows)
    elif kind == "csv":
        yield from _csv_rows(path)
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        except pa.ArrowException as exc:
            raise FormatError(path, None, None, f"not a Parquet file ({exc})") from None
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield index, row
                index += 1
    else:
        import datasets

        try:
            dataset = datasets.load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise FormatError(
                path, None, None, f"not a datasets folder saved with save_to_disk ({exc})"
            ) from None
        if isinstance(dataset, datasets.DatasetDict):
            splits = list(dataset)
            if len(splits) != 1:
                raise FormatError(
                    path,
                    None,
                    None,
                    f"holds splits {', '.join(splits)}; pass one of them, e.g. {path / splits[0]}",
                )
            dataset = dataset[splits[0]]
        yield from enumerate(dataset)


# ---------------------------------------------------------------------------- conversations


def _messages(value: Any, name: str) -> list[tuple[str, str]] | None:
    """(role, content) pairs of a message list, None when `value` is not a list."""
    if not isinstance(value, list):
        return None
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise LabelError(
                f"{name}[{i}]", f"expected a message {{role, content}}, got {_describe(message)}"
            )
        role, content = message.get("role"), message.get("content")
        if role not in ROLE_MARKERS:
            raise LabelError(
                f"{name}[{i}].role", f"expected one of {', '.join(ROLE_MARKERS)}, got {_describe(role)}"
            )
        if not isinstance(content, str):
            raise LabelError(f"{name}[{i}].content", f"expected text, got {_describe(content)}")
        out.append((str(role), content))
    if not out:
        raise LabelError(name, "an empty list of messages")
    return out


def _dialogue_text(messages: list[tuple[str, str]]) -> str:
    """A prompt's messages as text: a lone user message as itself, more as an HH-RLHF dialogue
    that ends where the assistant answers."""
    if len(messages) == 1 and messages[0][0] == "user":
        return messages[0][1]
    text = _joined(messages)
    return text + ASSISTANT if messages[-1][0] != "assistant" else text


def _answer(messages: list[tuple[str, str]], name: str) -> str:
    """A completion's text: its one message (or, if several, the dialogue without a trailing cue)."""
    if len(messages) == 1:
        return messages[0][1]
    return _joined(messages).lstrip("\n")


def _joined(messages: list[tuple[str, str]]) -> str:
    """Messages as HH-RLHF dialogue text, each after its role's marker (``ROLE_MARKERS``)."""
    return "".join(f"{ROLE_MARKERS[role]} {content}" for role, content in messages)


def from_conversational(row: Any) -> Any:
    """A row whose fields hold TRL conversational messages, as the same row with text fields
    (see the module docstring); any other row as it is. Raises `LabelError` naming the field
    (`chosen[1].content`) of a message that cannot be read."""
    if not isinstance(row, Mapping):
        return row
    if "completion" in row and "response" not in row:
        if "label" in row:
            raise LabelError("label", "unpaired preferences (prompt, completion, label) are not read; "
                             "give pairs of chosen and rejected responses")  # fmt: skip
        row = {("response" if k == "completion" else k): v for k, v in row.items()}
    fields = {name: _messages(row[name], name) for name in ("prompt", "response", "chosen", "rejected", "messages")
              if name in row}  # fmt: skip
    if not any(m is not None for m in fields.values()):
        return row
    out = {k: v for k, v in row.items() if k != "messages"}
    if fields.get("messages") is not None:
        messages = fields["messages"]
        assert messages is not None
        if messages[-1][0] != "assistant" or len(messages) < 2:
            raise LabelError(
                "messages", "the last message must be the assistant's answer to what comes before"
            )
        out["prompt"], out["response"] = _dialogue_text(messages[:-1]), messages[-1][1]
        return out
    chosen, rejected = fields.get("chosen"), fields.get("rejected")
    if "prompt" not in row and chosen is not None and rejected is not None:  # implicit prompt
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise LabelError("chosen", "the two conversations share no messages to be the prompt")
        out["prompt"] = _dialogue_text(chosen[:shared])
        fields["chosen"], fields["rejected"] = chosen[shared:], rejected[shared:]
    for name, messages in fields.items():
        if messages is not None:
            out[name] = _dialogue_text(messages) if name == "prompt" else _answer(messages, name)
    return out


def _columns(rows: list[dict[str, Any]], fmt: str) -> dict[str, list[Any]]:
    names = [k for k in FIELDS[fmt] if not rows or any(k in row for row in rows)]
    for row in rows:
        names.extend(k for k in row if k not in names)
    return {name: [row.get(name) for row in rows] for name in names}


def _csv_text(name: str, value: Any) -> str:
    """A value as the CSV cell `_csv_cell` reads back as that value."""
    if value is None:
        return ""
    if isinstance(value, str) and name in TEXT_FIELDS:
        return value
    if isinstance(value, str):  # keep text that looks like a number or true as text
        return value if _csv_cell(name, value) == value else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def write_rows(rows: list[dict[str, Any]], path: str | Path, fmt: str) -> None:
    """Store rows at `path` in the container its suffix names (see `container_of`)."""
    path = Path(path)
    kind = container_of(path, for_writing=True)
    if kind != "datasets":
        path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        with path.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif kind == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    elif kind == "csv":
        columns = _columns(rows, fmt)
        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(columns)
            for i in range(len(rows)):
                writer.writerow(_csv_text(name, columns[name][i]) for name in columns)
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(_columns(rows, fmt)), path)
    else:
        import datasets

        dataset = datasets.Dataset.from_dict(_columns(rows, fmt))
        dataset.save_to_disk(str(path), num_shards=1 if not rows else None)  # 0 shards would not load


# ---------------------------------------------------------------------------- read and write


def read_records(
    path: str | Path,
    format: str | None = None,
    *,
    skip_invalid: bool = False,
    max_errors: int = 10,
    progress: Callable[[int], None] | None = None,
) -> ReadResult:
    """Read every row of `path` as a record.

    `format` None detects it from the first readable row's fields. A bad row raises
    `FormatError` (file, line or row index, field); with `skip_invalid` it is skipped, counted
    in `skipped`, and its error kept in `errors` (the first `max_errors`). `progress`, if given,
    is called with the number of rows read so far every 1000 rows and at the end.
    """
    if format is not None and format not in FORMATS:
        raise FormatError(
            path, None, "format", f"unknown format {format!r}; choose from {', '.join(FORMATS)}"
        )
    unit = place_unit(path)
    result = ReadResult(records=[], format=format, rows=0)
    for place, row in iter_rows(path):
        result.rows += 1
        if progress is not None and result.rows % 1000 == 0:
            progress(result.rows)
        try:
            if isinstance(row, FormatError):
                raise row
            if result.format is None:
                result.format = detect_format(row)
                if result.format is None:
                    names = ", ".join(map(str, row)) if isinstance(row, Mapping) else type(row).__name__
                    raise FormatError(
                        path,
                        place,
                        None,
                        f"cannot tell the format from the fields ({names}); pass one of {', '.join(FORMATS)}",
                        unit=unit,
                    )
            try:
                result.records.append(parse_row(row, result.format))
            except LabelError as exc:
                raise FormatError(path, place, exc.field, str(exc).partition(": ")[2], unit=unit) from None
        except FormatError as exc:
            if not skip_invalid:
                raise
            result.skipped += 1
            if len(result.errors) < max_errors:
                result.errors.append(exc)
    if progress is not None:
        progress(result.rows)
    return result


def _read_logged(path: str | Path, format: str | None, skip_invalid: bool) -> ReadResult:
    result = read_records(path, format, skip_invalid=skip_invalid)
    if result.skipped:
        log.warning(
            "%s: skipped %d of %d rows as invalid; first: %s",
            path,
            result.skipped,
            result.rows,
            result.errors[0],
        )
    return result


def read_comparisons(
    path: str | Path, format: str | None = None, *, skip_invalid: bool = False
) -> list[Comparison]:
    """The comparisons in a pku-saferlhf, hh-rlhf or preference file (skips are logged)."""
    result = _read_logged(path, format, skip_invalid)
    if result.format in ("prompt", "supervised"):
        raise FormatError(
            path, None, None, f"holds {result.format} records, not comparisons of two responses"
        )
    return [r for r in result.records if isinstance(r, Comparison)]


def read_prompts(
    path: str | Path, format: str | None = None, *, skip_invalid: bool = False
) -> list[PromptRecord]:
    """The prompts of any file: each record's prompt, with its meta (skips are logged)."""
    result = _read_logged(path, format, skip_invalid)
    return [PromptRecord(r.prompt, meta=dict(r.meta)) for r in result.records]


def read_judged(path: str | Path, *, skip_invalid: bool = False) -> list[JudgedItem]:
    """The judged items of a `judgements` file (skips are logged)."""
    result = _read_logged(path, "judgements", skip_invalid)
    return [r for r in result.records if isinstance(r, JudgedItem)]


def read_corrections(
    path: str | Path, format: str | None = None, *, skip_invalid: bool = False
) -> list[Correction]:
    """(prompt, original, corrected) records of a correction file, or the corrections of a file of
    judged items; a `FormatError` when it holds none."""
    if format is None:  # a file of judged items, else correction rows (so a bad row is read as one)
        first = next((row for _, row in iter_rows(path) if isinstance(row, Mapping)), None)
        format = "judgements" if detect_format(first) == "judgements" else "correction"
    result = _read_logged(path, format, skip_invalid)
    out = [r for r in judged.as_records(result.records, "correction") if isinstance(r, Correction)]
    if not out:
        raise FormatError(path, None, None, "holds no corrections (rows of prompt, original, corrected)")
    return out


def read_supervised(
    path: str | Path, format: str | None = None, *, skip_invalid: bool = False
) -> list[SupervisedPair]:
    """The prompt/response pairs of a supervised file (skips are logged)."""
    result = _read_logged(path, format, skip_invalid)
    if result.format not in (None, "supervised"):
        raise FormatError(path, None, None, f"holds {result.format} records, not prompt/response pairs")
    return [r for r in result.records if isinstance(r, SupervisedPair)]


def write_records(
    records: Iterable[Record],
    path: str | Path,
    format: str,
    *,
    skip_invalid: bool = False,
    max_errors: int = 10,
) -> WriteResult:
    """Write records to `path` in `format`; the container follows the suffix (see `container_of`).

    A record the format cannot hold (a tie as chosen/rejected, a prompt as a comparison) raises
    `FormatError` naming its 0-based index, before anything is written; with `skip_invalid` it
    is left out and counted.
    """
    if format not in FORMATS:
        raise FormatError(
            path, None, "format", f"unknown format {format!r}; choose from {', '.join(FORMATS)}"
        )
    rows: list[dict[str, Any]] = []
    result = WriteResult(written=0)
    try:
        records = judged.as_records(records, format)
    except LabelError as exc:
        raise FormatError(path, None, exc.field, str(exc).partition(": ")[2]) from None
    for index, record in enumerate(records):
        try:
            rows.append(to_row(record, format))
        except LabelError as exc:
            error = FormatError(path, index, exc.field, str(exc).partition(": ")[2], unit="record")
            if not skip_invalid:
                raise error from None
            result.skipped += 1
            if len(result.errors) < max_errors:
                result.errors.append(error)
    write_rows(rows, path, format)
    result.written = len(rows)
    return result
