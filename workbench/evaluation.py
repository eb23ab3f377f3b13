"""Task evaluation: the base model and adapters answer the same held-out prompts, scored.

For each held-out example (a conversation whose last turn is the assistant's reference
answer) every contender -- ``base`` and each adapter -- generates greedily with the same
settings from the conversation before that turn, rendered by the chat template as in
training. Scores, per contender (:func:`score`):

- **exact match**: the answer equals the reference after trimming whitespace;
- **parse rate** (only when references are JSON or Python literals): the share of answers
  that parse the same way (JSON first, then ``ast.literal_eval``; a Markdown code fence
  around the answer is removed first, nothing else is forgiven);
- **field accuracy** (when references are objects): per key of the reference, the share of
  answers whose parsed object has that key with an equal value (strings compared after
  trimming and case folding, numbers by value: ``3 == 3.0``, never ``"3" == 3``); an
  answer that does not parse scores 0 on every field.

Where the held-out prompts come from (:func:`heldout_source`): a file given by the user,
else the file named ``<stem>_heldout<suffix>`` that was next to the run's dataset when the
run started (copied into the run's folder with the data; the bundled demo ships one), else
the run's own validation split (the seeded split training used).
"""

from __future__ import annotations

import ast
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import WorkbenchError

FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)
MAX_CASES = 500
BATCH = 16  # prompts per generate call (CPU generation of a small model is memory-bound: batching is cheap)


@dataclass(frozen=True)
class Case:
    row: int
    prompt: list[dict[str, str]]
    reference: str


@dataclass
class Scores:
    contender: str
    cases: int
    exact_match: float
    parse_rate: float | None
    field_accuracy: dict[str, float] = field(default_factory=dict)
    mean_field_accuracy: float | None = None
    generated_tokens: int = 0
    seconds: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def parse_literal(text: str) -> tuple[bool, Any]:
    """(parsed?, value): JSON, else a Python literal; an enclosing code fence is removed."""
    text = text.strip()
    fenced = FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; a hostile file may nest deeply
        pass
    try:
        return True, ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False, None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().casefold() == b.strip().casefold()
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def score(contender: str, answers: list[str], cases: list[Case]) -> Scores:
    references = [parse_literal(c.reference) for c in cases]
    structured = all(ok for ok, _ in references)
    objects = structured and all(isinstance(v, dict) for _, v in references)
    exact = sum(a.strip() == c.reference.strip() for a, c in zip(answers, cases)) / len(cases)
    parsed = [parse_literal(a) for a in answers] if structured else []
    parse_rate = (sum(ok and type(v) is type(ref) for (ok, v), (_, ref) in zip(parsed, references)) / len(cases)
                  if structured else None)
    fields: dict[str, float] = {}
    if objects:
        keys = list(dict.fromkeys(k for _, ref in references for k in ref))
        for key in keys:
            having = [(ok, v, ref) for (ok, v), (_, ref) in zip(parsed, references) if key in ref]
            right = sum(ok and isinstance(v, dict) and key in v and _same(v[key], ref[key]) for ok, v, ref in having)
            fields[key] = right / len(having)
    return Scores(contender, len(cases), exact, parse_rate, fields,
                  sum(fields.values()) / len(fields) if fields else None)


def cases_from(path: str | Path, format: str | None = None, mapping: dict[str, str] | None = None,
               limit: int | None = None, rows: list[int] | None = None) -> list[Case]:
    """Held-out cases of a dataset file (only the examples at ``rows``, 0-based, when given)."""
    from .data import conversations

    display, examples = conversations(path, format, mapping)
    picked = [examples[i] for i in rows] if rows is not None else examples
    cases = [Case(e.row, e.messages[:-1], e.messages[-1]["content"]) for e in picked
             if e.messages and e.messages[-1]["role"] == "assistant" and len(e.messages) > 1]
    if not cases:
        raise WorkbenchError(f"{display}: no example ends with an assistant answer to compare with")
    return cases[:min(limit or MAX_CASES, MAX_CASES)]


def heldout_source(job, data: str | None = None) -> tuple[str, list[int] | None, str]:
    """(file, rows or None for all, what it is) for a run's evaluation (see the module docstring)."""
    if data:
        return data, None, f"{Path(data).name} (given)"
    source = Path(job.data.path)
    shown = Path(job.data.name or source.name)
    sibling = source.with_name(f"{source.stem}_heldout{source.suffix}")  # copied with the run's data
    if sibling.is_file():
        return str(sibling), None, f"{shown.stem}_heldout{shown.suffix} (held out beside the training file)"
    if job.data.val_fraction > 0:
        from .data import conversations, split_indices

        _, examples = conversations(source, job.data.format, job.data.mapping)
        _, val = split_indices(len(examples), job.data.val_fraction, job.data.seed)
        if val:
            return str(source), val, f"the run's validation split of {source.name} ({len(val)} examples)"
    raise WorkbenchError(f"run has no held-out prompts: {shown.name} had no {shown.stem}_heldout{shown.suffix} "
                         "beside it and the run had no validation split; give a held-out file")


def evaluate(engine, contenders: list[str], cases: list[Case], max_new_tokens: int | None = None,
             samples: int = 5, batch_size: int = BATCH, stop=None, progress=None) -> list[Scores]:
    """Every contender answers every case greedily, ``batch_size`` prompts per generate
    call; the answer budget is 1.5x the longest reference of the batch + 16 tokens (at most
    512) unless ``max_new_tokens`` is given. See :func:`score`. Each generate call holds the
    engine for its batch only (another user's answer may come between batches, never inside
    one); a prompt too long for the model is refused naming its row. ``stop`` (an event)
    cancels: generation ends at the next token and :class:`workbench.chat.OperationCancelled`
    is raised; ``progress(done, total, contender)`` is called before each batch, in prompts."""
    tok = engine.tokenizer  # our own copy: counting here never touches the tokenizer of a running answer
    results = []
    for who in contenders:
        answers, tokens, started = [], 0, time.perf_counter()
        for i in range(0, len(cases), batch_size):
            chunk = cases[i:i + batch_size]
            if progress is not None:
                progress(len(results) * len(cases) + len(answers), len(contenders) * len(cases), who)
            longest = max(len(tok(c.reference, add_special_tokens=False)["input_ids"]) for c in chunk)
            budget = max_new_tokens or min(512, int(1.5 * longest) + 16)
            got = engine.answer_batch([c.prompt for c in chunk], who, budget, names=[f"row {c.row}" for c in chunk],
                                      stop=stop)
            answers += got
            tokens += sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in got)
        result = score(who, answers, cases)
        result.generated_tokens, result.seconds = tokens, round(time.perf_counter() - started, 3)
        result.samples = [{"row": c.row, "prompt": c.prompt[-1]["content"], "reference": c.reference, "answer": a}
                          for c, a in zip(cases[:samples], answers[:samples])]
        results.append(result)
    return results


def as_dict(results: list[Scores], **about: Any) -> dict[str, Any]:
    return {**about, "results": [{**asdict(r), "tokens_per_second": round(r.tokens_per_second, 2)} for r in results]}


def table_rows(results: list[dict[str, Any]]) -> list[list]:
    """One row per contender of a report's ``results``: exact match, parse rate, mean field
    accuracy (percent) and per field."""
    def pct(x):
        return None if x is None else round(100 * x, 1)

    return [[r["contender"], r["cases"], pct(r["exact_match"]), pct(r["parse_rate"]), pct(r["mean_field_accuracy"]),
             ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["field_accuracy"].items()), round(r["tokens_per_second"], 1)]
            for r in results]


TABLE_HEADERS = ["model", "prompts", "exact match %", "parse rate %", "field accuracy %", "per field", "tokens/s"]


def evaluate_runs(run_ids: list[str], data: str | None = None, limit: int | None = None,
                  user: str | None = None, engine=None, stop=None, progress=None) -> dict[str, Any]:
    """Base + the adapter of each run (all trained on one base model) on the first run's
    held-out prompts; the result is also written to each run's ``eval.json`` (not when
    cancelled: ``stop`` and ``progress`` as in :func:`evaluate`)."""
    from .chat import BASE, ChatEngine
    from .sessions import check_access
    from .training.checkpoints import newest_complete
    from .training.job import TrainJob

    if not run_ids:
        raise WorkbenchError("evaluation needs at least one run")
    folders = [check_access(r, user) for r in run_ids]
    jobs = [TrainJob.load(f / "job.json") for f in folders]
    model = jobs[0].model
    for run_id, job in zip(run_ids, jobs):
        if job.model != model:
            raise WorkbenchError(f"run {run_id} was trained on {job.model}, not {model}: one base per evaluation")
    source, rows, what = heldout_source(jobs[0], data)
    first = jobs[0].data
    cases = cases_from(source, None if data else first.format, None if data else first.mapping, limit, rows)
    engine = engine or ChatEngine(model)
    for run_id, folder in zip(run_ids, folders):
        if run_id not in engine.adapters:
            adapter = newest_complete(folder)
            if adapter is None:
                raise WorkbenchError(f"run {run_id} has no complete adapter or checkpoint yet")
            engine.add_adapter(run_id, adapter)
    results = evaluate(engine, [BASE, *run_ids], cases, stop=stop, progress=progress)
    report = as_dict(results, model=model, runs=run_ids, data=what, prompts=len(cases),
                     decoding="greedy, the same for every contender", time=time.time())
    for folder in folders:  # written beside, then renamed: a reader never sees half a file
        tmp = folder / ".eval.json.tmp"
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        tmp.replace(folder / "eval.json")
    return report
