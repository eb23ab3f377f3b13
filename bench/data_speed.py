"""How fast is dataset inspection? A generated 100,000-row alpaca-style JSONL file, the
``tiny`` tokenizer: rows/second for loading, formatting (detection + conversion + chat
template rendering) and tokenizing, and the whole ``inspect`` call. Target: whole
inspection < 15 s on 2 cores. Writes bench/results/data_speed.{json,md}.

    python bench/data_speed.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.data import inspect, load_tokenizer  # noqa: E402
from workbench.data.files import read_table  # noqa: E402
from workbench.data.formats import detect, to_examples  # noqa: E402
from workbench.data.render import Renderer, tokenize_all  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_S = 15.0
WORDS = ("memory model train adapter rank gradient token batch layer weight answer question explain "
         "why how the a of to in and is for with").split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(rows):
            sentence = lambda n: " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."  # noqa: E731
            fh.write(json.dumps({"instruction": sentence(rng.randint(5, 20)),
                                 "input": sentence(rng.randint(0, 30)) if i % 3 == 0 else "",
                                 "output": sentence(rng.randint(10, 60))}) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    tokenizer = load_tokenizer("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "alpaca.jsonl"
        generate(path, args.rows)
        size = path.stat().st_size
        t0 = time.perf_counter()
        table = read_table(path)
        t1 = time.perf_counter()
        detection = detect(table.dataset.column_names, table.dataset[0])
        examples, _ = to_examples(table.dataset.to_list(), detection)
        renderer = Renderer(tokenizer)
        rendered = [renderer.render(e) for e in examples]
        t2 = time.perf_counter()
        tokenize_all(tokenizer, rendered)
        t3 = time.perf_counter()
        report = inspect(path, tokenizer=tokenizer)
        t4 = time.perf_counter()
    n = len(examples)
    phases = {"load": t1 - t0, "format": t2 - t1, "tokenize": t3 - t2, "inspect_total": t4 - t3}
    rows = [{"phase": k, "seconds": round(v, 3), "rows_per_second": round(n / v)} for k, v in phases.items()]
    tokens = report.token_lengths["total"]
    met = phases["inspect_total"] < TARGET_S
    lines = ["| phase | seconds | rows/s |", "|---|---:|---:|"]
    lines += [f"| {r['phase']} | {r['seconds']} | {r['rows_per_second']:,} |" for r in rows]
    summary = (f"{n:,} rows ({size / 1e6:.1f} MB, {tokens:,} tokens): whole inspection "
               f"{phases['inspect_total']:.2f} s, target < {TARGET_S:.0f} s: {'met' if met else 'NOT met'}")
    print("\n".join(lines))
    print(summary)
    from _meta import markdown_header, run_metadata

    meta = {**run_metadata("cpu"), "rows": n}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_speed.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    (RESULTS / "data_speed.md").write_text("\n".join(markdown_header("Dataset inspection speed", meta))
                                           + f"\n{summary}\n\n" + "\n".join(lines) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
