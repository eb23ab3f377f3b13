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
    (["--model", "no-such-model", "--method", "lora"], "unknown model"),
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
