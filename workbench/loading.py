"""Load a model for training the way a method needs it: dtype, bitsandbytes quantization,
attention implementation, then the method's peft wrap or freeze rule.

Safety: weights only from safetensors, never remote code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import SettingsError, UnknownModelError
from .memory.planner import resolve_quant
from .memory.settings import TrainingSettings
from .methods.base import Method
from .smollm2 import SMOLLM2_NAME, ensure_smollm2
from .specs import ModelSpec, shown_path
from .tiny import TINY_NAME, ensure_tiny


def weights_dir(spec: ModelSpec) -> Path:
    """Folder with the model's weights: a built-in model's cache (tiny, or SmolLM2 converted
    from its verified GGUF file on first use), or a local folder holding ``.safetensors``
    files. Pickle checkpoints (``pytorch_model.bin``, ``*.pt``) are never loaded: unpickling
    can run code."""
    if spec.name == TINY_NAME:
        return ensure_tiny()
    if spec.name == SMOLLM2_NAME and spec.source == "builtin":
        return ensure_smollm2()
    if spec.source == "local":
        folder = Path(spec.name)
        if not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            found = (f" (found {', '.join(pickles[:3])}: pickle files are never loaded, convert them to "
                     "safetensors)") if pickles else ""
            raise UnknownModelError(f"{shown_path(folder)}: no .safetensors weights{found}")
        return folder
    raise UnknownModelError(
        f"{spec.name}: no local weights; measuring and training need {SMOLLM2_NAME}, 'tiny' or a local folder "
        "with safetensors"
    )


def quantization_config(method: Method, knobs: dict[str, Any], settings: TrainingSettings):
    import torch
    from transformers import BitsAndBytesConfig

    quant = resolve_quant(method, settings)
    if quant == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=knobs.get("quant_type", "nf4"),
            bnb_4bit_use_double_quant=bool(knobs.get("double_quant", True)),
            bnb_4bit_compute_dtype=getattr(torch, settings.dtype),
        )
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_base(spec: ModelSpec, method: Method, knobs: dict[str, Any], settings: TrainingSettings):
    """The base model in the method's storage (dtype, 8-bit or 4-bit), all weights frozen."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = settings.device == "cuda" and torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        weights_dir(spec),
        dtype=getattr(torch, settings.dtype),
        quantization_config=quantization_config(method, knobs, settings),
        attn_implementation=settings.attention,
        use_safetensors=True,
        trust_remote_code=False,
        # one GPU per process (its LOCAL_RANK under accelerate); FSDP and DeepSpeed place weights themselves
        device_map={"": int(os.environ.get("LOCAL_RANK", "0"))} if cuda and settings.strategy in ("single", "ddp")
        else None,
    )
    model.config.use_cache = False
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_for_training(spec: ModelSpec, method: Method, knobs: dict[str, Any], settings: TrainingSettings):
    """The model, wrapped/frozen by ``method`` and ready for ``model(**batch).loss.backward()``."""
    knobs = method.resolve(knobs)
    if settings.gradient_checkpointing and not method.supports_gradient_checkpointing:
        raise SettingsError(f"method {method.name!r} cannot be combined with gradient checkpointing")
    model = method.apply(load_base(spec, method, knobs, settings), spec, knobs)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    return model
