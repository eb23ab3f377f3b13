"""The prepared GPU check's dry run (issue 16): ``bench/gpu_check.py --device cpu --quick`` runs
every part -- planner accuracy, the worker end to end, throughput against the plain script,
the inference worker with two adapters -- on ``tiny``, and writes one folder of results with
commit, date, device and versions. On a GPU the same command without ``--quick`` is the check."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_exercises_every_part(tmp_path):
    env = {**os.environ, "WORKBENCH_SESSIONS": str(tmp_path / "sessions")}
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    parts = {p["part"]: p for p in report["parts"]}
    assert list(parts) == ["models", "accuracy", "worker", "throughput", "inference"]
    assert all(p["status"] == "done" for p in parts.values()), {k: p["status"] for k, p in parts.items()}
    assert report["meta"]["commit"] and report["meta"]["date"] and report["meta"]["versions"]["torch"]

    accuracy = parts["accuracy"]["result"]
    assert accuracy["summary"]["measured"] == 2 and abs(accuracy["summary"]["worst_error_pct"]) < 5
    worker = parts["worker"]["result"]
    assert worker["status"] == "completed" and worker["memory_samples"] > 0 and worker["step_records"] > 0
    assert worker["error_pct"] is not None and abs(worker["error_pct"]) < 10
    throughput = parts["throughput"]["result"]
    assert {v["variant"] for v in throughput["variants"]} == {"plain", "workbench"}
    assert throughput["variants"][1]["ratio_to_plain"]["median"] > 0
    chat = parts["inference"]["result"]
    assert [c["who"] for c in chat["contenders"]] == ["base", "a1", "a2"] and chat["adapters"] == ["a1", "a2"]
    assert chat["claimed_bytes"] > 0 and chat["measured"]["tensor_bytes"] > 0
    text = (out / "gpu_check.md").read_text()
    assert "commit:" in text and "versions:" in text and "## inference: done" in text
