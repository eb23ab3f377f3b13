"""ModelSpec: what the planner knows about a model, built from its ``config.json`` alone.

A spec comes from one of five places (:func:`load_model_spec`):

- ``SmolLM2-135M-Instruct`` (or its hub id): the offline default, real pretrained weights
  (:mod:`workbench.smollm2`; its architecture is known without the weights installed);
- ``tiny``: the built-in offline demo model (random weights, see :mod:`workbench.tiny`);
- a bundled snapshot name such as ``meta-llama/Llama-2-7b-hf`` (``assets/models/``);
- a local folder holding a ``config.json``;
- a hub id, fetched with ``AutoConfig`` (never with remote code) when online, else from the
  local hub cache (:mod:`workbench.hub`: offline it fails within seconds, and remembers that).

Messages name a folder as :func:`shown_path` does: never the server's absolute layout.

Parameter counts and module shapes come from the real transformers class instantiated on
the ``meta`` device (no memory, no weights), so any causal LM that transformers knows works.
That inventory is cached per config, so a second plan of the same model is pure arithmetic.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownModelError
from .paths import BUNDLED_MODELS_DIR
from .smollm2 import SMOLLM2_CONFIG, SMOLLM2_LABEL, SMOLLM2_NAME, is_smollm2
from .tiny import TINY_CONFIG, TINY_LABEL, TINY_NAME

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REQUIRED_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class LinearInfo:
    """One ``nn.Linear`` of the model: its dotted name and shape (``in -> out``)."""

    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class ParamInfo:
    """One parameter tensor: dotted name and number of elements."""

    name: str
    numel: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BufferInfo:
    """One buffer (e.g. rotary ``inv_freq``): name, elements and its dtype, ``"model"`` when it
    follows the dtype the model is loaded in (a buffer made in the default dtype, such as Gemma's
    ``embed_scale``; rotary ``inv_freq`` is made in fp32 and stays fp32)."""

    name: str
    numel: int
    dtype: str


@dataclass(frozen=True)
class Inventory:
    """Every parameter and linear layer of the model, read off the meta-device instance."""

    params: tuple[ParamInfo, ...]
    buffers: tuple[BufferInfo, ...]
    linears: tuple[LinearInfo, ...]
    block_prefix: str  # e.g. "model.layers", the ModuleList of decoder blocks
    head_name: str  # e.g. "lm_head"
    tied_embeddings: bool

    @property
    def total_params(self) -> int:
        return sum(p.numel for p in self.params)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts for planning. No weights: everything comes from the config."""

    name: str
    source: str  # "builtin" | "bundled" | "local" | "hub"
    config: dict[str, Any] = field(repr=False, compare=False, hash=False)
    label: str = ""

    def _get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def num_heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def num_kv_heads(self) -> int:
        return int(self._get("num_key_value_heads") or self.num_heads)

    @property
    def head_dim(self) -> int:
        return int(self._get("head_dim") or self.hidden_size // self.num_heads)

    @property
    def intermediate_size(self) -> int:
        return int(self._get("intermediate_size") or 4 * self.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self._get("tie_word_embeddings", False))

    @property
    def is_demo(self) -> bool:
        return "workbench_demo" in self.config

    @property
    def inventory(self) -> Inventory:
        return _inventory(_config_key(self.config))

    @property
    def total_params(self) -> int:
        return self.inventory.total_params

    def meta_model(self):
        """A fresh instance of the real model class on the ``meta`` device (no memory)."""
        return _meta_model(self.config)

    @property
    def attention_facts(self) -> AttentionFacts:
        return _attention_facts(_config_key(self.config))


@dataclass(frozen=True)
class AttentionFacts:
    """What the model class does in attention, read off transformers' config and class."""

    supports_sdpa: bool  # the class has an sdpa path (Gemma 2 has none: it soft-caps the scores)
    windows: tuple[int | None, ...]  # per block: its sliding window, None for full causal attention
    layer_types: tuple[str, ...]  # per block: the rotary/mask type (Gemma 3 keeps a cos/sin pair per type)
    class_name: str


@functools.lru_cache(maxsize=64)
def _attention_facts(config_json: str) -> AttentionFacts:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    raw = json.loads(config_json)
    try:
        config = AutoConfig.for_model(**_clean_config(raw))
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"transformers cannot build model_type {raw.get('model_type')!r}: {exc}") from None
    n = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    types = tuple(getattr(config, "layer_types", None) or ("full_attention",) * n)[:n]
    if not window:
        windows = (None,) * n
    elif getattr(config, "layer_types", None) is None:  # Mistral, Phi-3: a window in every layer
        windows = (int(window),) * n
    else:
        windows = tuple(int(window) if t == "sliding_attention" else None for t in types)
    return AttentionFacts(bool(getattr(cls, "_supports_sdpa", False)), windows, types, cls.__name__)


def _config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "auto_map")}


def _meta_model(config: dict[str, Any], dtype=None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        hf_config = AutoConfig.for_model(**_clean_config(config))
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"transformers cannot build model_type {config.get('model_type')!r}: {exc}") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config, **({"dtype": dtype} if dtype else {}))


@functools.lru_cache(maxsize=64)
def _inventory(config_json: str) -> Inventory:
    import torch

    # built in float64, which no buffer asks for by name: a float64 buffer follows the load dtype
    model = _meta_model(json.loads(config_json), dtype=torch.float64)
    seen: set[int] = set()
    params = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # tied weights are one tensor
            continue
        seen.add(id(p))
        params.append(ParamInfo(name, p.numel(), tuple(p.shape)))
    buffers = tuple(
        BufferInfo(name, b.numel(), "model" if b.dtype == torch.float64 else str(b.dtype).removeprefix("torch."))
        for name, b in model.named_buffers()
    )
    linears = tuple(
        LinearInfo(name, m.in_features, m.out_features, m.bias is not None)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    )
    block_prefix = next(
        (n for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0), ""
    )
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), "lm_head")
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    return Inventory(tuple(params), buffers, linears, block_prefix, head_name, tied)


def default_model() -> str:
    """The model the UI preselects and the CLI assumes: ``$WORKBENCH_DEFAULT_MODEL`` when an
    operator sets one (the test suite sets ``tiny``), else SmolLM2-135M-Instruct where it is
    installed (real weights), else ``tiny`` (see :data:`workbench.smollm2.INSTALL_HINT`)."""
    import os

    from .smollm2 import available

    configured = os.environ.get("WORKBENCH_DEFAULT_MODEL", "").strip()
    if configured:
        return configured
    return SMOLLM2_NAME if available() else TINY_NAME


def bundled_names() -> list[str]:
    """The built-in models (SmolLM2-135M-Instruct, ``tiny``), then the bundled snapshots."""
    names = [p.parent.name.replace("__", "/") for p in BUNDLED_MODELS_DIR.glob("*/config.json")]
    return [SMOLLM2_NAME, TINY_NAME] + sorted(names)


def _validate(config: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    for key in REQUIRED_FIELDS:
        if key not in config or config[key] in (None, ""):
            raise ConfigError(f"{where}: missing field {key!r}; a causal LM config.json needs {', '.join(REQUIRED_FIELDS)}")
    for key in REQUIRED_FIELDS[1:]:
        if not isinstance(config[key], int) or config[key] <= 0:
            raise ConfigError(f"{where}: field {key!r} must be a positive integer, got {config[key]!r}")
    return config


def shown_path(path: str | Path) -> str:
    """A file or folder as a message shows it: relative to the working directory when inside
    it, else ``.../<parent>/<name>`` -- never the server's absolute layout (the message may
    reach a browser)."""
    absolute = Path(os.path.abspath(Path(path).expanduser()))
    try:
        return str(absolute.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(Path("...", *absolute.parts[-2:]))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc  # an OSError's text repeats the path
        raise ConfigError(f"{shown_path(path)}: cannot read config.json ({reason})") from None


def load_model_spec(name: str) -> ModelSpec:
    """A :class:`ModelSpec` for ``name`` (``tiny``, bundled name, local folder or hub id)."""
    name = (name or "").strip()
    if name == TINY_NAME:
        return ModelSpec(TINY_NAME, "builtin", dict(TINY_CONFIG), TINY_LABEL)
    if is_smollm2(name):  # its hub id too: the same offline copy, never the hub
        return ModelSpec(SMOLLM2_NAME, "builtin", dict(SMOLLM2_CONFIG), SMOLLM2_LABEL)
    bundled = BUNDLED_MODELS_DIR / name.replace("/", "__") / "config.json"
    if HUB_ID.match(name) and bundled.is_file():
        return ModelSpec(name, "bundled", _validate(_read_config(bundled), shown_path(bundled)),
                         f"{name} (bundled config)")
    local = Path(name).expanduser()
    if name and local.is_dir():
        cfg_path = local / "config.json"
        if not cfg_path.is_file():
            raise UnknownModelError(f"{shown_path(local)}: folder has no config.json")
        return ModelSpec(str(local.resolve()), "local", _validate(_read_config(cfg_path), shown_path(cfg_path)),
                         shown_path(local))
    from .hub import is_hub_id  # gpt2 as well as org/name: huggingface_hub's own rule

    if is_hub_id(name):
        return ModelSpec(name, "hub", _validate(_hub_config(name), name), name)
    raise UnknownModelError(
        f"unknown model {name!r}: use a hub id like 'org/name', a local folder with a config.json, "
        f"or a bundled name: {', '.join(bundled_names())}"
    )


def _hub_config(name: str) -> dict[str, Any]:
    """The config of hub model ``name`` (:mod:`workbench.hub`: fails fast offline, remembers answers)."""
    from .hub import hub_config

    return hub_config(name)
