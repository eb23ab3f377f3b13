"""Record formats: detect which one a table is in, say why, and turn each row into a
canonical example -- a list of chat messages, or plain text.

Formats: ``alpaca`` (instruction / input / output), ``sharegpt`` (conversations with
from / value), ``messages`` (OpenAI-style role / content, system turns included),
``prompt_completion`` (prompt/completion, question/answer, query/response, ...), ``text``
(one text field), ``self_instruct`` (instruction + a list of instances, one example per
instance; lists may arrive as JSON text in CSV/TSV cells), and ``mapped`` (the user says which column is the prompt, the response and the
system prompt). Rows that cannot be used are dropped *with their row number and reason*.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import DataFileError

FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion", "text", "self_instruct", "mapped")
PAIRS = (("prompt", "completion"), ("prompt", "response"), ("question", "answer"), ("query", "response"),
         ("input", "output"), ("instruction", "response"), ("context", "response"))
TEXT_COLUMNS = ("text", "content", "document", "body")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "bot": "assistant", "chatgpt": "assistant", "system": "system"}
MAPPING_KEYS = ("prompt", "response", "system")


class RowProblem(Exception):
    """Why one row cannot be used (it is dropped and reported)."""


@dataclass
class Example:
    """One training example: chat ``messages`` (role/content) or plain ``text``."""

    row: int  # 1-based row of the source table
    messages: list[dict[str, str]] | None = None
    text: str | None = None


@dataclass
class Detection:
    format: str
    why: str
    confidence: str  # "high" | "medium" | "user"
    columns: dict[str, str] = field(default_factory=dict)  # role -> column, for pair-like formats


def _text(value: Any, what: str) -> str:
    if value is None:
        raise RowProblem(f"{what} is missing")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RowProblem(f"{what} is a {type(value).__name__}, expected text")
    if not value.strip():
        raise RowProblem(f"{what} is empty")
    return value


def _nested(value: Any) -> Any:
    """Lists arrive as JSON text from CSV/TSV cells: parse them back."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # not JSON, a 5000-digit number, or nested too deep: text
            return value
    return value


def _optional_text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def detect(columns: list[str], first_row: dict[str, Any], override: str | None = None,
           mapping: dict[str, str] | None = None, display: str = "file") -> Detection:
    """Which format the table is in; ``override``/``mapping`` win but must fit the columns."""
    cols = set(columns)
    first_row = {k: _nested(v) for k, v in first_row.items()}
    if mapping:
        unknown = sorted(set(mapping) - set(MAPPING_KEYS))
        if unknown:
            raise DataFileError(display, f"unknown mapping key(s) {', '.join(unknown)}; use {', '.join(MAPPING_KEYS)}")
        missing = [c for c in mapping.values() if c not in cols]
        if missing or "prompt" not in mapping or "response" not in mapping:
            raise DataFileError(display, f"mapping needs prompt= and response= naming existing columns; "
                                         f"missing {', '.join(missing) or 'prompt/response'}; columns: {', '.join(columns)}")
        return Detection("mapped", f"column mapping given: {mapping}", "user", dict(mapping))
    candidates = _candidates(cols, first_row)
    if override:
        if override not in FORMATS or override == "mapped":
            raise DataFileError(display, f"unknown format {override!r}; choose from {', '.join(FORMATS[:-1])} "
                                         "(or give a column mapping)")
        match = next((c for c in candidates if c.format == override), None)
        if match is None:
            raise DataFileError(display, f"format {override!r} does not fit this file: it needs "
                                         f"{REQUIREMENTS[override]}; the columns are {', '.join(columns)}",
                                hint="pick another format, or map columns with prompt=...,response=...")
        return Detection(override, f"chosen by you; {match.why}", "user", match.columns)
    if not candidates:
        raise DataFileError(display, f"cannot tell the format from the columns {', '.join(columns)}",
                            hint="choose a format, or map columns with prompt=COL,response=COL[,system=COL]")
    return candidates[0]


REQUIREMENTS = {
    "alpaca": "columns instruction and output (input, system optional)",
    "sharegpt": "a conversations column: lists of {from, value}",
    "messages": "a messages column: lists of {role, content}",
    "prompt_completion": "a pair of columns such as prompt/completion or question/answer",
    "text": "one text column (text, content, ...)",
    "self_instruct": "columns instruction and instances (a list of {input, output})",
}


def _candidates(cols: set[str], first: dict[str, Any]) -> list[Detection]:
    """Every format the columns fit, most specific first."""
    found = []
    if {"instruction", "instances"} <= cols:
        found.append(Detection("self_instruct", "columns instruction + instances (a list of input/output "
                                                "tasks): self-instruct style, one example per instance", "high"))
    for name in ("conversations", "conversation"):
        value = first.get(name)
        if name in cols and isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]:
            found.append(Detection("sharegpt", f"column {name!r} holds turns with 'from'/'value': ShareGPT", "high",
                                   {"conversations": name}))
    if "messages" in cols:
        value = first.get("messages")
        if isinstance(value, list) and value and isinstance(value[0], dict) and "role" in value[0]:
            found.append(Detection("messages", "column 'messages' holds turns with 'role'/'content' "
                                               "(OpenAI chat format)", "high", {"messages": "messages"}))
    if {"instruction", "output"} <= cols:
        extra = " + input" if "input" in cols else ""
        found.append(Detection("alpaca", f"columns instruction{extra} + output: Alpaca", "high"))
    for prompt, response in PAIRS:
        if {prompt, response} <= cols:
            found.append(Detection("prompt_completion", f"columns {prompt!r} and {response!r} form a "
                                                        "prompt/answer pair", "high" if prompt == "prompt" else "medium",
                                   {"prompt": prompt, "response": response,
                                    **({"system": "system"} if "system" in cols else {})}))
            break
    text_cols = [c for c in TEXT_COLUMNS if c in cols]
    strings = [c for c in cols if isinstance(first.get(c), str)]
    if text_cols:
        found.append(Detection("text", f"column {text_cols[0]!r} holds plain text; all of it is trained on",
                               "high" if len(cols) == 1 else "medium", {"text": text_cols[0]}))
    elif len(strings) == 1 and len(cols) == 1:
        found.append(Detection("text", f"the only column, {strings[0]!r}, holds text", "medium", {"text": strings[0]}))
    return found


def _alpaca(row: dict[str, Any], columns: dict[str, str]) -> list[list[dict[str, str]]]:
    instruction = _text(row.get("instruction"), "'instruction'")
    extra = _optional_text(row.get("input"))
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [_with_system(row.get("system"), [{"role": "user", "content": user},
                                             {"role": "assistant", "content": _text(row.get("output"), "'output'")}])]


def _with_system(system: Any, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    system = _optional_text(system)
    return ([{"role": "system", "content": system}] if system else []) + messages


def _pairs(row: dict[str, Any], columns: dict[str, str]) -> list[list[dict[str, str]]]:
    prompt = _text(row.get(columns["prompt"]), repr(columns["prompt"]))
    response = _text(row.get(columns["response"]), repr(columns["response"]))
    system = row.get(columns["system"]) if "system" in columns else None
    return [_with_system(system, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])]


def _turns(value: Any, what: str, role_key: str, content_key: str, roles: dict[str, str]) -> list[dict[str, str]]:
    value = _nested(value)
    if not isinstance(value, list) or not value:
        raise RowProblem(f"{what} is not a non-empty list of turns")
    messages = []
    for i, turn in enumerate(value, 1):
        if not isinstance(turn, dict):
            raise RowProblem(f"{what} turn {i} is not an object")
        role = roles.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise RowProblem(f"{what} turn {i} has unknown {role_key} {turn.get(role_key)!r}")
        content = turn.get(content_key)
        if isinstance(content, list):  # OpenAI content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        messages.append({"role": role, "content": _text(content, f"{what} turn {i} {content_key!r}")})
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem(f"{what} has no assistant turn to learn from")
    return messages


def _sharegpt(row: dict[str, Any], columns: dict[str, str]) -> list[list[dict[str, str]]]:
    name = columns.get("conversations", "conversations")
    return [_with_system(row.get("system"), _turns(row.get(name), repr(name), "from", "value", SHAREGPT_ROLES))]


def _messages(row: dict[str, Any], columns: dict[str, str]) -> list[list[dict[str, str]]]:
    roles = {"system": "system", "user": "user", "assistant": "assistant"}
    return [_turns(row.get("messages"), "'messages'", "role", "content", roles)]


def _self_instruct(row: dict[str, Any], columns: dict[str, str]) -> list[list[dict[str, str]]]:
    instruction = _text(row.get("instruction"), "'instruction'")
    instances = _nested(row.get("instances"))
    if not isinstance(instances, list) or not instances:
        raise RowProblem("'instances' is not a non-empty list")
    out = []
    for i, inst in enumerate(instances, 1):
        if not isinstance(inst, dict):
            raise RowProblem(f"instance {i} is not an object")
        extra = _optional_text(inst.get("input"))
        user = f"{instruction}\n\n{extra}" if extra else instruction
        out.append([{"role": "user", "content": user},
                    {"role": "assistant", "content": _text(inst.get("output"), f"instance {i} 'output'")}])
    return out


CONVERTERS: dict[str, Callable[[dict[str, Any], dict[str, str]], list[list[dict[str, str]]]]] = {
    "alpaca": _alpaca, "prompt_completion": _pairs, "mapped": _pairs, "sharegpt": _sharegpt,
    "messages": _messages, "self_instruct": _self_instruct,
}


def to_examples(rows, detection: Detection) -> tuple[list[Example], list[dict[str, Any]]]:
    """(examples, dropped rows with their 1-based row number and reason)."""
    examples: list[Example] = []
    dropped: list[dict[str, Any]] = []
    if detection.format == "text":
        column = detection.columns["text"]
        for i, value in enumerate(rows[column], 1):
            if isinstance(value, str) and value.strip():
                examples.append(Example(i, text=value))
            else:
                dropped.append({"row": i, "reason": f"{column!r} is empty or not text"})
        return examples, dropped
    convert = CONVERTERS[detection.format]
    for i, row in enumerate(rows, 1):
        try:
            examples.extend(Example(i, messages=m) for m in convert(row, detection.columns))
        except RowProblem as problem:
            dropped.append({"row": i, "reason": str(problem)})
    return examples, dropped
