"""The command line: JSON schemas, human output, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest

from workbench.methods import METHODS


def run(*args):
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=300)


def test_methods_json_lists_registry_with_knobs():
    out = run("methods", "--json")
    assert out.returncode == 0
    data = json.loads(out.stdout)
    assert [m["name"] for m in data] == list(METHODS)
    lora = next(m for m in data if m["name"] == "lora")
    assert {k["name"] for k in lora["knobs"]} >= {"rank", "alpha", "dropout", "target_modules"}
    assert all(k["help"] for m in data for k in m["knobs"])


def test_plan_json_schema():
    out = run("plan", "--model", "meta-llama/Llama-2-7b-hf", "--method", "lora", "--rank", "16",
              "--target-modules", "q_proj,v_proj", "--batch-size", "2", "--seq-len", "1024", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in ("model", "method", "total_params", "trainable_params", "trainable_percent", "components",
                "peak_bytes", "inference_bytes", "peak_over_inference"):
        assert key in d
    assert [c["name"] for c in d["components"]] == ["weights", "trainable_weights", "gradients", "optimizer",
                                                    "activations", "logits", "overhead"]
    assert all(set(c) == {"name", "bytes", "formula"} for c in d["components"])
    assert d["trainable_params"] == 32 * 2 * 16 * (4096 + 4096)
    assert d["knobs"]["rank"] == 16 and d["settings"]["seq_len"] == 1024


def test_plan_human_table():
    out = run("plan", "--model", "tiny", "--method", "qlora", "--gradient-checkpointing")
    assert out.returncode == 0, out.stderr
    assert "demo model" in out.stdout and "peak / inference" in out.stdout and "NF4" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "no such model", "--method", "lora"], "unknown model"),  # no-such-model is a valid hub id
    (["--model", "tiny", "--method", "lorax"], "unknown method 'lorax'; choose from"),
    (["--model", "tiny", "--method", "lora", "--rank", "0"], "below the minimum"),
    (["--model", "tiny", "--method", "lora", "--batch-size", "-2"], "--batch-size: must be at least 1"),
    (["--model", "tiny", "--method", "lora", "--seq-len", "abc"], "--seq-len"),
    (["--model", "tiny", "--method", "full", "--quant", "4bit"], "cannot train on a 4bit base"),
    (["--model", "tiny", "--method", "full", "--rank", "4"], "has no knob --rank"),
    (["--model", "tiny", "--method", "prefix", "--gradient-checkpointing"], "gradient checkpointing"),
])
def test_bad_input_exits_2_with_one_line(args, message):
    out = run("plan", *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_missing_config_field_exits_2(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    out = run("plan", "--model", str(tmp_path), "--method", "lora")
    assert out.returncode == 2 and "missing field 'num_hidden_layers'" in out.stderr
    assert "Traceback" not in out.stderr


def test_measure_json_same_component_names(tmp_path):
    out = run("measure", "--model", "tiny", "--method", "lora", "--batch-size", "1", "--seq-len", "32",
              "--dtype", "float32", "--steps", "1", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    names = [c["name"] for c in d["components"]]
    assert names == list(d["planned"])
    assert d["planned"]["gradients"] == next(c["bytes"] for c in d["components"] if c["name"] == "gradients")


def test_training_output_is_for_people(tmp_path):
    """`train`, `sessions list` and `sessions show` without --json: every loss with 4 decimals,
    memory in GiB, ISO 8601 times, and no field printed as None (issue 18)."""
    import re

    rows = [{"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."} for i in range(40)]
    data = tmp_path / "numbers.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    root = str(tmp_path / "runs")
    out = run("train", "--model", "tiny", "--method", "lora", "--data", str(data), "--batch-size", "4",
              "--seq-len", "128", "--max-steps", "2", "--val-fraction", "0.2", "--sessions-dir", root)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "None" not in text and "{" not in text, text  # no Python/JSON reprs for people
    steps = [line for line in text.splitlines() if line.startswith("step ")]
    assert re.fullmatch(r"step 1/2  loss \d+\.\d{4}  [\d,]+ tokens/s  ETA \d+\.\d s", steps[0]), steps
    assert any(re.search(r"eval loss \d+\.\d{4}\b", line) for line in steps), steps
    assert re.search(r"\[completed\] adapter .*measured peak \d+\.\d{3} GiB, predicted peak \d+\.\d{3} GiB, "
                     r"plan error [+-]\d+\.\d%, measured as live tensor bytes", text), text
    listed = run("sessions", "list", "--sessions-dir", root)
    assert listed.returncode == 0 and "None" not in listed.stdout
    assert re.search(r"completed .* \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  step 2/2 +loss \d+\.\d{4}$", listed.stdout.strip())
    session_id = listed.stdout.split()[0]
    shown = run("sessions", "show", session_id, "--sessions-dir", root)
    assert shown.returncode == 0 and "None" not in shown.stdout, shown.stdout
    fields = dict(line.split(": ", 1) for line in shown.stdout.strip().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["created"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["finished"])
    assert re.fullmatch(r"\d+\.\d{4}", fields["last_loss"])
    assert re.fullmatch(r"\d+\.\d{3} GiB \([\d,]+ B\)", fields["measured_peak_bytes"])
    assert "pid" not in fields and "reason" not in fields  # not set for a finished run: left out


def test_status_and_step_lines_leave_out_what_was_not_measured():
    from workbench.training.cli import loss_text, status_line, step_line

    assert step_line({"step": 3, "max_steps": 9, "loss": None, "eval_loss": 1.234567, "tokens_per_second": None,
                      "eta_seconds": None}) == "step 3/9  eval loss 1.2346"
    assert loss_text(float("nan")).startswith("nan (") and loss_text(0.5) == "0.5000"
    line = status_line({"kind": "status", "time": 1.0, "status": "failed", "reason": "out_of_memory",
                        "measured_peak_bytes": 3 * 2**30, "plan_error_percent": -0.01, "suggestions": ["a", "b"],
                        "message": None, "log_tail": ["x"]})
    assert line == "[failed] reason out_of_memory, measured peak 3.000 GiB, plan error +0.0%, suggestions a; b"


def test_measure_human_output_rounds_losses_and_names_units():
    import re

    out = run("measure", "--model", "tiny", "--method", "lora", "--batch-size", "1", "--seq-len", "32",
              "--dtype", "float32", "--steps", "2")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert re.search(r"losses \d+\.\d{4}(, \d+\.\d{4})+$", lines[0]), lines[0]
    assert "planned bytes" in lines[1] and "measured bytes" in lines[1]
    assert re.search(r"peak_tensor_bytes +[\d,]+ B  \(\d+\.\d{3} GiB\)", out.stdout), out.stdout
