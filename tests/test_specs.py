"""ModelSpec: bundled snapshots, local folders, the tiny demo model, and clear errors."""

import json

import pytest

from workbench.errors import ConfigError, UnknownModelError
from workbench.specs import bundled_names, load_model_spec

from pathlib import Path

# Verified architecture fields of 22 popular models (a copy of the team's reference file; the ten
# later entries -- Qwen3, Gemma 2/3, Phi-3/4, Mistral-Nemo -- with their sources and notes).
REFERENCE = Path(__file__).parent / "fixtures" / "reference_models.json"


def test_all_reference_models_are_bundled():
    names = set(bundled_names())
    reference = json.loads(REFERENCE.read_text())["models"]
    assert len(reference) == 22
    for name, fields in reference.items():
        assert name in names
        spec = load_model_spec(name)
        for key, value in fields.items():
            if not key.startswith("_"):  # _sources, _notes: where each value was checked
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


PUBLISHED = {  # exact counts published by the model's makers or ports (tests/fixtures/reference_models.json)
    "Qwen/Qwen3-0.6B": 596_049_920, "Qwen/Qwen3-1.7B": 1_720_574_976, "Qwen/Qwen3-8B": 8_190_735_360,
    "google/gemma-2-2b": 2_614_341_888, "google/gemma-2-9b": 9_241_705_984, "google/gemma-3-1b-pt": 999_885_952,
    # keras-hub's gemma3_4b_text 3,880,099,328 has a vocabulary of 262,144; the hub config's 262,208 adds 64 x 2560
    "google/gemma-3-4b-pt": 3_880_099_328 + 64 * 2560,
    "microsoft/Phi-3-mini-4k-instruct": 3_821_079_552, "microsoft/phi-4": 14_659_507_200,
    "mistralai/Mistral-Nemo-Base-2407": 12_247_782_400,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_later_families_count_their_published_parameters(name):
    assert load_model_spec(name).total_params == PUBLISHED[name]


def test_only_measured_blocks_claim_exact_activations(tmp_path):
    """Llama, Mistral, Qwen2, Qwen3 (q/k norms), Phi-3/Phi-4 (fused projections) and Gemma 2/3
    blocks have a measured op-by-op walk; another architecture (GPT-NeoX here) keeps the
    flagged fallback, and the plan tab says so beside the peak."""
    import json

    from workbench.memory.activations import is_llama_like
    from workbench.runspec import build_run, plan_run
    from workbench.ui.plan_tab import KNOB_NAMES, plan_view
    from workbench.ui.views import APPROXIMATE_ACTIVATIONS
    from workbench.ui.views import compare_view

    exact = ["meta-llama/Llama-2-7b-hf", "mistralai/Mistral-Nemo-Base-2407", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen3-0.6B",
             "microsoft/Phi-3-mini-4k-instruct", "microsoft/phi-4", "google/gemma-2-2b", "google/gemma-3-1b-pt",
             "google/gemma-3-4b-pt", "tiny"]
    neox = tmp_path / "neox"
    neox.mkdir()
    (neox / "config.json").write_text(json.dumps({
        "model_type": "gpt_neox", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 1024, "vocab_size": 1000, "max_position_embeddings": 512}))
    assert all(is_llama_like(load_model_spec(n)) for n in exact)
    assert not is_llama_like(load_model_spec(str(neox)))
    flagged_plan = plan_run(build_run(str(neox), "lora", settings={"device": "cuda"})).as_dict()
    assert not flagged_plan["activations_exact_architecture"] and flagged_plan["activations_note"]
    for name in ("Qwen/Qwen3-0.6B", "google/gemma-3-1b-pt"):  # the browser may not open a temporary folder
        flagged = False
        p = plan_run(build_run(name, "lora", settings={"device": "cuda"})).as_dict()
        assert p["activations_exact_architecture"] is not flagged
        summary = plan_view(name, "lora", "bfloat16", "auto", 1, 256, 1, False, "adamw", "cuda",
                            *[None] * len(KNOB_NAMES))[0]
        assert (APPROXIMATE_ACTIVATIONS.strip() in summary) is flagged
        compared = compare_view(name, "bfloat16", 1, 256, False, "adamw", "H100 80 GB")[0]
        assert (APPROXIMATE_ACTIVATIONS.strip() in compared) is flagged


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
