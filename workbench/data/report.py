"""``inspect``: load a data file, detect its format, render and tokenize every example, and
report what the model will see -- the numbers the UI shows and the planner can use.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataFileError, UnknownModelError
from .files import read_table
from .formats import detect, to_examples
from .render import Renderer, tokenize_all

ROUND_CUTOFFS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
COVERAGE = 0.95
PREVIEW_MARK = ("⟦", "⟧")  # wraps the text that carries loss in `marked`


@dataclass
class DatasetReport:
    file: str
    file_type: str
    note: str
    format: str
    why: str
    confidence: str
    columns: list[str]
    rows: int  # examples after expansion and after dropping bad rows
    source_rows: int
    dropped: dict[str, Any]
    duplicates: int
    template: str
    train_on_prompt: bool
    token_lengths: dict[str, Any]
    cutoff: int
    truncated_fraction: float
    truncated_tokens_fraction: float
    suggested_cutoff: int
    loss_tokens_fraction: float
    preview: list[dict[str, Any]]
    split: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_tokenizer(model: str):
    """The tokenizer of ``model``: ``tiny``, a local folder, or a hub id (online)."""
    from transformers import AutoTokenizer

    from ..smollm2 import ensure_smollm2, is_smollm2
    from ..tiny import TINY_NAME, ensure_tiny

    if model == TINY_NAME:
        return AutoTokenizer.from_pretrained(ensure_tiny(), trust_remote_code=False)
    if is_smollm2(model):  # the offline copy (converted on first use), never the hub
        return AutoTokenizer.from_pretrained(ensure_smollm2(), trust_remote_code=False)
    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    except Exception as exc:
        raise UnknownModelError(f"no tokenizer for {model!r} ({type(exc).__name__}); offline, use --model tiny "
                                "or a local folder that holds a tokenizer") from None


def parse_mapping(text: str | None) -> dict[str, str] | None:
    """``prompt=col,response=col[,system=col]`` -> dict."""
    if not text:
        return None
    mapping = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DataFileError("--map", f"expected role=column pairs like prompt=question,response=answer; got {part!r}")
        mapping[key.strip()] = value.strip()
    return mapping


def inspect(path: str | Path, model: str = "tiny", format: str | None = None, mapping: dict[str, str] | None = None,
            cutoff: int | None = None, train_on_prompt: bool = False, val_fraction: float = 0.0, seed: int = 42,
            preview: int = 3, display: str | None = None, max_bytes: int | None = None, tokenizer=None) -> DatasetReport:
    """The report of ``path`` as ``model``'s tokenizer and template will see it."""
    return _analyse(path, model, format, mapping, cutoff, train_on_prompt, val_fraction, seed, preview, display,
                    max_bytes, tokenizer)[0]


def training_data(path: str | Path, tokenizer, format: str | None = None, mapping: dict[str, str] | None = None,
                  cutoff: int | None = None, train_on_prompt: bool = False, val_fraction: float = 0.0,
                  seed: int = 42):
    """(report, train, validation): ``datasets.Dataset`` of ``input_ids``/``labels`` (-100 where
    no loss), truncated at the cutoff, split exactly as the report counts."""
    import datasets

    report, rendered = _analyse(path, "", format, mapping, cutoff, train_on_prompt, val_fraction, seed, 0, None,
                                None, tokenizer)
    cut = report.cutoff
    columns = {"input_ids": [r.ids[:cut] for r in rendered],
               "labels": [[t if m else -100 for t, m in zip(r.ids[:cut], r.loss_mask[:cut])] for r in rendered]}
    full = datasets.Dataset.from_dict(columns)
    train_idx, val_idx = split_indices(len(rendered), val_fraction, seed)
    return report, full.select(train_idx), (full.select(val_idx) if val_idx else None)


def conversations(path: str | Path, format: str | None = None, mapping: dict[str, str] | None = None,
                  max_bytes: int | None = None) -> tuple[str, list]:
    """(the file's display name, its examples as chat messages), read and detected exactly
    as for training; a file of plain text records has no prompts and is refused."""
    table = read_table(path, None, max_bytes)
    ds = table.dataset
    detection = detect(ds.column_names, ds[0] if len(ds) else {}, format, mapping, table.display)
    if detection.format == "text":
        raise DataFileError(table.display, "plain text records have no prompt and answer to compare",
                            hint="use prompt/response records (alpaca, messages, sharegpt, prompt/completion)")
    examples, _ = to_examples(ds.to_list(), detection)
    if not examples:
        raise DataFileError(table.display, f"no usable examples as {detection.format}")
    return table.display, examples


def _analyse(path, model, format, mapping, cutoff, train_on_prompt, val_fraction, seed, preview, display, max_bytes,
             tokenizer):
    table = read_table(path, display, max_bytes)
    ds = table.dataset
    first = ds[0] if len(ds) else {}
    detection = detect(ds.column_names, first, format, mapping, table.display)
    rows = ds if detection.format == "text" else ds.to_list()
    examples, dropped = to_examples(rows, detection)
    if not examples:
        reasons = "; ".join(f"row {d['row']}: {d['reason']}" for d in dropped[:3])
        raise DataFileError(table.display, f"no usable examples as {detection.format} ({reasons})",
                            hint="check the format, or map the columns")
    tok = tokenizer or load_tokenizer(model)
    renderer = Renderer(tok, train_on_prompt)
    rendered = [renderer.render(e) for e in examples]
    tokenize_all(tok, rendered)

    import numpy as np

    lengths = np.array([len(r.ids) for r in rendered], dtype=np.int64)
    loss_tokens = int(sum(sum(r.loss_mask) for r in rendered))
    suggested = _suggest_cutoff(lengths)
    cut = int(cutoff) if cutoff else suggested
    if cut < 1:
        raise DataFileError("--cutoff", f"must be at least 1, got {cut}")
    counts, edges = np.histogram(lengths, bins=min(30, max(1, len(np.unique(lengths)))))
    seen, duplicates = set(), 0
    for e in examples:
        digest = hashlib.blake2b(json.dumps(e.messages or e.text, sort_keys=True).encode(), digest_size=16).digest()
        duplicates += digest in seen
        seen.add(digest)
    total_tokens = int(lengths.sum())
    report = DatasetReport(
        file=table.display, file_type=table.file_type, note=table.note, format=detection.format, why=detection.why,
        confidence=detection.confidence, columns=list(ds.column_names), rows=len(examples), source_rows=len(ds),
        dropped={"count": len(dropped), "first": dropped[:5]}, duplicates=duplicates,
        template=renderer.template_name, train_on_prompt=train_on_prompt,
        token_lengths={
            "min": int(lengths.min()), "p50": int(np.percentile(lengths, 50)), "p95": int(np.percentile(lengths, 95)),
            "max": int(lengths.max()), "mean": round(float(lengths.mean()), 2), "total": total_tokens,
            "histogram": {"edges": [round(float(x), 2) for x in edges], "counts": [int(c) for c in counts]},
        },
        cutoff=cut, truncated_fraction=round(float((lengths > cut).mean()), 6),
        truncated_tokens_fraction=round(float(np.maximum(lengths - cut, 0).sum() / max(total_tokens, 1)), 6),
        suggested_cutoff=suggested, loss_tokens_fraction=round(loss_tokens / max(total_tokens, 1), 6),
        preview=[_preview(tok, r) for r in rendered[:preview]],
        split=_split(len(examples), val_fraction, seed),
    )
    return report, rendered


def _suggest_cutoff(lengths) -> int:
    """Smallest round length that keeps at least 95% of all tokens (and of examples whole)."""
    import numpy as np

    total = lengths.sum()
    for c in ROUND_CUTOFFS:
        kept = np.minimum(lengths, c).sum()
        if kept >= COVERAGE * total and (lengths <= c).mean() >= COVERAGE:
            return c
    return ROUND_CUTOFFS[-1]


def _preview(tok, r) -> dict[str, Any]:
    open_, close = PREVIEW_MARK
    return {
        "row": r.row,
        "segments": [{"text": t, "loss": loss} for t, loss in r.segments],
        "marked": "".join(f"{open_}{t}{close}" if loss else t for t, loss in r.segments),
        "tokens": len(r.ids), "loss_tokens": int(sum(r.loss_mask)),
        "token_pieces": [[tok.convert_ids_to_tokens(i), m] for i, m in zip(r.ids[:64], r.loss_mask[:64])],
    }


def _split(n: int, val_fraction: float, seed: int) -> dict[str, Any]:
    if not 0 <= val_fraction < 1:
        raise DataFileError("--val-fraction", f"must be in [0, 1), got {val_fraction}")
    val = math.floor(n * val_fraction) if val_fraction else 0
    if val_fraction and (val == 0 or val == n):
        raise DataFileError("--val-fraction", f"{val_fraction} of {n} examples leaves an empty split")
    return {"train": n - val, "validation": val, "seed": seed, "val_fraction": val_fraction}


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The train/validation indices the report counts (a seeded permutation)."""
    import numpy as np

    val = _split(n, val_fraction, seed)["validation"]
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[val:].tolist()), sorted(order[:val].tolist())
