"""Every method side by side, and what fits a GPU."""

from workbench.compare import compare_methods, what_fits
from workbench.memory import TrainingSettings
from workbench.methods import METHODS
from workbench.specs import load_model_spec


def test_compare_lists_every_method_with_sizes():
    rows = compare_methods(load_model_spec("meta-llama/Llama-2-7b-hf"), TrainingSettings())
    assert [r["method"] for r in rows] == list(METHODS)
    by = {r["method"]: r for r in rows}
    assert by["full"]["peak_bytes"] > by["lora"]["peak_bytes"] > by["qlora"]["peak_bytes"]
    assert by["lora"]["adapter_file_bytes"] == by["lora"]["trainable_params"] * 4
    assert by["full"]["adapter_file_bytes"] == 2 * by["full"]["trainable_params"]
    assert by["ia3"]["trainable_params"] < by["lora"]["trainable_params"]


def test_what_fits_respects_the_budget_and_orders_by_speed():
    spec = load_model_spec("meta-llama/Llama-2-7b-hf")
    fits = what_fits(spec, 24 * 10**9, TrainingSettings(seq_len=1024))
    assert fits and all(r["peak_bytes"] <= 24e9 for r in fits)
    assert "full" not in {r["method"] for r in fits}  # 7B full fine-tuning does not fit 24 GB
    assert {"qlora", "lora"} & {r["method"] for r in fits}
    speeds = [r["relative_speed"] for r in fits]
    assert speeds == sorted(speeds, reverse=True) and all("GiB of at most 22.35 GiB allocated" in r["reason"] for r in fits)
    assert what_fits(spec, 10**9, TrainingSettings()) == []  # nothing trains a 7B model in 1 GB
