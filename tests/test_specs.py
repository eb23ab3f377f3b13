"""ModelSpec: bundled snapshots, local folders, the tiny demo model, and clear errors."""

import json

import pytest

from workbench.errors import ConfigError, UnknownModelError
from workbench.specs import bundled_names, load_model_spec

from pathlib import Path

# Verified architecture fields of 12 popular models (a copy of the team's reference file).
REFERENCE = Path(__file__).parent / "fixtures" / "reference_models.json"


def test_all_reference_models_are_bundled():
    names = set(bundled_names())
    reference = json.loads(REFERENCE.read_text())["models"]
    assert len(reference) == 12
    for name, fields in reference.items():
        assert name in names
        spec = load_model_spec(name)
        for key, value in fields.items():
            assert spec.config[key] == value, (name, key)


@pytest.mark.parametrize("name", [n for n in bundled_names()])
def test_total_params_equal_meta_model(name):
    spec = load_model_spec(name)
    model = spec.meta_model()
    unique = {id(p): p.numel() for p in model.parameters()}
    assert spec.total_params == sum(unique.values())


def test_well_known_parameter_counts():
    assert load_model_spec("meta-llama/Llama-2-7b-hf").total_params == 6_738_415_616
    assert load_model_spec("mistralai/Mistral-7B-v0.1").total_params == 7_241_732_096
    assert load_model_spec("Qwen/Qwen2.5-0.5B").total_params == 494_032_768


def test_unknown_model_lists_bundled_names():
    with pytest.raises(UnknownModelError, match="meta-llama/Llama-2-7b-hf"):
        load_model_spec("not a model!")


def test_hub_id_offline_gives_clear_error():
    with pytest.raises(UnknownModelError, match="bundled name"):
        load_model_spec("someone/does-not-exist-anywhere")


def test_local_folder_and_missing_field(tmp_path):
    cfg = dict(load_model_spec("meta-llama/Llama-3.2-1B").config)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    spec = load_model_spec(str(tmp_path))
    assert spec.source == "local" and spec.total_params == 1_235_814_400
    del cfg["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="hidden_size"):
        load_model_spec(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        load_model_spec(str(tmp_path))


def test_tiny_loads_offline_with_auto_classes():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.tiny import ensure_tiny

    path = ensure_tiny()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    spec = load_model_spec("tiny")
    assert spec.is_demo and "demo" in spec.label
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) == spec.total_params < 20_000_000
    ids = tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False)
    assert ids.startswith("<s><|im_start|>user")
    assert "workbench_demo" in json.loads((path / "config.json").read_text())
    assert ensure_tiny() == path  # reused, not rebuilt
