"""The method registry: knobs, errors, and trainable counts equal to peft's own."""

import pytest

from workbench.errors import MethodError
from workbench.methods import METHODS, get_method
from workbench.specs import bundled_names, load_model_spec

PEFT_METHODS = [name for name, m in METHODS.items() if m.uses_peft]
REQUIRED = {"full", "freeze", "bitfit", "lora", "rslora", "dora", "qlora", "lora-8bit", "ia3", "adalora", "prefix",
            "prompt", "loha", "lokr", "oft", "vera"}


def test_registry_has_every_required_method():
    assert REQUIRED <= set(METHODS)


@pytest.mark.parametrize("name", list(METHODS))
def test_knobs_have_defaults_and_help(name):
    method = METHODS[name]
    resolved = method.resolve({})
    for knob in method.knobs:
        assert knob.help and resolved[knob.name] == knob.default


def test_unknown_method_lists_choices():
    with pytest.raises(MethodError, match="choose from: full, freeze"):
        get_method("lorax")


@pytest.mark.parametrize("knobs, pattern", [
    ({"rank": 0}, "below the minimum 1"),
    ({"rank": "abc"}, "expected int"),
    ({"dropout": 1.5}, "above the maximum"),
    ({"ranks": 4}, "has no knob 'ranks'"),
])
def test_bad_knob_values(knobs, pattern):
    with pytest.raises(MethodError, match=pattern):
        METHODS["lora"].resolve(knobs)


def test_bad_target_modules():
    spec = load_model_spec("tiny")
    with pytest.raises(MethodError, match="q_proj"):
        METHODS["lora"].trainable_groups(spec, METHODS["lora"].resolve({"target_modules": "attn"}))


def _peft_count(spec, method):
    import peft

    model = spec.meta_model()
    for p in model.parameters():
        p.requires_grad_(False)
    knobs = method.resolve({})
    wrapped = peft.get_peft_model(model, method.peft_config(spec, knobs))
    trainable, _ = wrapped.get_nb_trainable_parameters()
    ranknum = sum(p.numel() for n, p in wrapped.named_parameters() if ".ranknum." in n and p.requires_grad)
    return trainable - ranknum  # AdaLoRA's rank counters are bookkeeping (we freeze them)


@pytest.mark.parametrize("model", bundled_names())
@pytest.mark.parametrize("name", PEFT_METHODS)
def test_trainable_params_equal_peft_count(model, name):
    spec = load_model_spec(model)
    method = METHODS[name]
    knobs = method.resolve({})
    fused = {lin.short_name for lin in spec.inventory.linears} >= {"qkv_proj", "gate_up_proj"}  # Phi-3, Phi-4
    if fused and name in ("ia3", "vera"):  # their defaults name k_proj / q_proj, v_proj: Phi fuses them
        with pytest.raises(MethodError, match=r"not found in .*choose from: all-linear, down_proj, gate_up_proj, "
                                              r"o_proj, qkv_proj \(q_proj, k_proj, v_proj are fused into qkv_proj "
                                              r"here; adapting qkv_proj adapts all of them\)"):
            method.trainable_groups(spec, knobs)
        return
    ours = sum(g.total for g in method.trainable_groups(spec, knobs))
    assert ours == _peft_count(spec, method)
