"""How fast is planning? Every bundled model x every method, first call and warm.

The first call of a model builds its inventory (meta-device instantiation, plus peft's
helpers for some methods); later calls are pure arithmetic. Target: warm plan < 200 ms for
a 70B-class config. Prints a table and writes bench/results/planner_speed.{json,md}.

    python bench/planner_speed.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.memory import TrainingSettings, plan  # noqa: E402
from workbench.methods import METHODS  # noqa: E402
from workbench.specs import _inventory, bundled_names, load_model_spec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_WARM_MS = 200.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    settings = TrainingSettings()
    rows = []
    for model in bundled_names():
        spec = load_model_spec(model)
        _inventory.cache_clear()
        start = time.perf_counter()
        spec.inventory
        inventory_ms = (time.perf_counter() - start) * 1e3
        for name, method in METHODS.items():
            start = time.perf_counter()
            plan(spec, method, {}, settings)
            first_ms = (time.perf_counter() - start) * 1e3
            warm = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                plan(spec, method, {}, settings)
                warm.append((time.perf_counter() - start) * 1e3)
            rows.append({"model": model, "params": spec.total_params, "method": name,
                         "inventory_ms": round(inventory_ms, 1), "first_ms": round(first_ms, 2),
                         "warm_ms": round(statistics.median(warm), 2)})
    worst = max(rows, key=lambda r: r["warm_ms"])
    big = [r for r in rows if r["params"] > 60e9]
    worst_big = max(big, key=lambda r: r["warm_ms"]) if big else None
    lines = ["| model | method | inventory (ms, once per model) | first plan (ms) | warm plan (ms, median) |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['method']} | {r['inventory_ms']} | {r['first_ms']} | {r['warm_ms']} |" for r in rows]
    summary = (f"worst warm plan: {worst['warm_ms']} ms ({worst['model']}, {worst['method']}); "
               + (f"worst warm plan of a 65B+/70B config: {worst_big['warm_ms']} ms ({worst_big['model']}, "
                  f"{worst_big['method']}); target < {TARGET_WARM_MS:.0f} ms: "
                  f"{'met' if worst_big['warm_ms'] < TARGET_WARM_MS else 'NOT met'}" if worst_big else ""))
    print("\n".join(lines))
    print()
    print(summary)
    from _meta import markdown_header, run_metadata

    meta = {**run_metadata("cpu"), "repeat": args.repeat, "settings": settings.as_dict()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "planner_speed.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    (RESULTS / "planner_speed.md").write_text(
        "\n".join(markdown_header("Planner speed", meta)) + f"\n{summary}\n\n" + "\n".join(lines) + "\n")
    return 0 if worst_big is None or worst_big["warm_ms"] < TARGET_WARM_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
