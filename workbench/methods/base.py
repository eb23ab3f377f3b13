"""What a fine-tuning method is: knobs with help text, a peft config or freeze rule, and
the formulas the planner needs (which tensors are trainable, what adapters save for backward).

A method is one module under ``workbench/methods/`` plus one line in ``registry.py``.
Everything a method knows about memory is a formula over the :class:`~workbench.specs.ModelSpec`
inventory; the tests check each formula against peft's own count and against real tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import MethodError
from ..specs import LinearInfo, ModelSpec


@dataclass(frozen=True)
class Knob:
    """One setting of a method, with its default, valid range and one-line help."""

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, method: str) -> Any:
        where = f"method {method!r}, knob {self.name!r}"
        try:
            if self.kind is bool and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("true", "1", "yes")
            elif self.kind is int and (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            else:
                value = self.kind(value)
        except (TypeError, ValueError):
            raise MethodError(f"{where}: expected {self.kind.__name__}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise MethodError(f"{where}: {value!r} is not one of {', '.join(self.choices)}")
        if self.minimum is not None and value < self.minimum:
            raise MethodError(f"{where}: {value!r} is below the minimum {self.minimum:g} ({self.help})")
        if self.maximum is not None and value > self.maximum:
            raise MethodError(f"{where}: {value!r} is above the maximum {self.maximum:g} ({self.help})")
        return value

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "flag": self.flag, "type": self.kind.__name__, "default": self.default,
            "minimum": self.minimum, "maximum": self.maximum, "choices": list(self.choices) if self.choices else None,
            "help": self.help,
        }


@dataclass(frozen=True)
class TensorGroup:
    """``count`` tensors of one ``shape`` (trainable, or frozen extras a method adds).

    ``role`` is ``"base"`` for the model's own weights (stored in the model dtype) or
    ``"adapter"`` for weights a method adds (kept in fp32 by peft's ``autocast_adapter_dtype``).
    """

    label: str
    shape: tuple[int, ...]
    count: int = 1
    role: str = "adapter"
    element_bytes: int | None = None  # fixed storage size (e.g. int64 index buffers)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def total(self) -> int:
        return self.numel * self.count


@dataclass(frozen=True)
class Saved:
    """A tensor saved for backward, per token: ``bytes_per_token`` and a storage ``key`` so
    that two consumers of one tensor (q/k/v reading the same normalised input) count once."""

    name: str
    bytes_per_token: float
    key: str


@dataclass
class AdapterContext:
    """What an adapter's activation rule needs to know about its linear layer's input."""

    input_key: str  # storage key of the input tensor
    input_bytes: int  # element size of the input (compute dtype)
    input_requires_grad: bool  # autograd saves a dropout mask only when the input needs a gradient
    device: str  # dropout masks are bool (1 B) on CUDA, input-typed on CPU
    adapter_bytes: int = 4  # adapters are fp32 (peft autocast_adapter_dtype=True)
    autocast_bytes: int | None = None  # the autocast dtype's size under torch.autocast, else None
    extra: dict[str, Any] = field(default_factory=dict)


TARGETS_HELP = "comma list of linear layer names (e.g. q_proj,v_proj) or all-linear"


def dropout_saved(linear: LinearInfo, ctx: AdapterContext) -> list[Saved]:
    """``nn.Dropout`` on the adapter input (cast to fp32): autograd keeps the mask when the
    input requires grad -- a bool tensor from CUDA's fused ``native_dropout``, an input-typed
    one from the CPU kernel -- and the adapter's first matmul keeps the dropped-out copy."""
    a, n_in = ctx.adapter_bytes, linear.in_features
    return [Saved(f"{linear.name}: dropped-out input ({a} B x in)", a * n_in, f"{linear.name}:drop")] \
        + dropout_mask_saved(linear, ctx)


def dropout_mask_saved(linear: LinearInfo, ctx: AdapterContext) -> list[Saved]:
    """Dropout's mask, which autograd keeps only when the input requires grad: bool (1 B) from
    CUDA's fused ``native_dropout``, in the adapters' dtype from the CPU kernel."""
    if not ctx.input_requires_grad:
        return []
    mask = 1 if ctx.device == "cuda" else ctx.adapter_bytes
    return [Saved(f"{linear.name}: dropout mask ({mask} B x in)", mask * linear.in_features, f"{linear.name}:mask")]


def autocast_input_saved(linear: LinearInfo, ctx: AdapterContext) -> list[Saved]:
    """Under autocast an adapter's first matmul keeps its own cast of its (fp32) input in the
    autocast dtype: never shared, as a cast of a non-leaf tensor is not cached."""
    c = ctx.autocast_bytes
    return [Saved(f"{linear.name}: input cast by autocast ({c} B x in)", c * linear.in_features, f"{linear.name}:a_in")]


def materialised_delta_saved(linear: LinearInfo, ctx: AdapterContext) -> int:
    """``F.linear(x, ΔW)`` with a materialised out x in delta (LoHa, LoKr) keeps ΔW -- fp32, or
    its cast under autocast -- only when x needs a gradient."""
    return (ctx.autocast_bytes or 4) * linear.in_features * linear.out_features if ctx.input_requires_grad else 0


def input_saved(linear: LinearInfo, ctx: AdapterContext) -> list[Saved]:
    """The adapter's first matmul keeps its input: a fp32 copy when the model runs in 16-bit
    (peft casts x to the adapter dtype), else x itself (shared by adapters on one input)."""
    a, n_in = ctx.adapter_bytes, linear.in_features
    if ctx.input_bytes != a:
        return [Saved(f"{linear.name}: input cast to fp32 (4 B x in)", a * n_in, f"{linear.name}:cast")]
    return [Saved(f"{linear.name}: input ({a} B x in)", a * n_in, ctx.input_key)]


class Method:
    """Base class. Subclasses set the class attributes and override what differs."""

    name: str = ""
    title: str = ""
    summary: str = ""
    knobs: tuple[Knob, ...] = ()
    quantization: str | None = None  # "4bit" | "8bit" | None: how the base weights are stored
    #: its activation rules hold under autocast (measured: tests/test_planner_exact.py)
    autocast_exact: bool = False
    uses_peft: bool = True
    supports_gradient_checkpointing: bool = True
    #: can train on a bitsandbytes 8-bit/4-bit base (peft has quantized layers for it)
    supports_quantization: bool = True
    #: under autocast the adapted layer returns its input's dtype (fp32), not the autocast dtype
    output_in_input_dtype: bool = False
    #: the adapter transforms the layer's input before the frozen weight (OFT's rotation)
    rotates_input: bool = False
    #: how the token sequence grows: prompt tuning prepends virtual tokens to every example
    extra_tokens_knob: str | None = None

    # -- knobs --------------------------------------------------------------------------
    def resolve(self, knobs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults filled in and every value checked; unknown knob names are an error."""
        knobs = dict(knobs or {})
        valid = {k.name: k for k in self.knobs}
        unknown = sorted(set(knobs) - set(valid))
        if unknown:
            raise MethodError(
                f"method {self.name!r} has no knob {', '.join(map(repr, unknown))}; "
                f"its knobs are: {', '.join(valid) or '(none)'}"
            )
        return {name: knob.check(knobs.get(name, knob.default), self.name) for name, knob in valid.items()}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "summary": self.summary,
            "quantization": self.quantization, "uses_peft": self.uses_peft,
            "knobs": [k.as_dict() for k in self.knobs],
        }

    # -- formulas for the planner --------------------------------------------------------
    def trainable_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        raise NotImplementedError

    def extra_weight_groups(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[TensorGroup]:
        """Frozen tensors the method adds (e.g. VeRA's shared random projections)."""
        return []

    def trains_base(self, spec: ModelSpec, knobs: dict[str, Any]) -> set[str]:
        """Names of the model's own parameters that are trained (empty for adapters)."""
        return set()

    def adapted_linears(self, spec: ModelSpec, knobs: dict[str, Any]) -> list[LinearInfo]:
        """Linear layers that get an adapter: those its ``target_modules`` knob selects."""
        return resolve_targets(spec, knobs["target_modules"]) if "target_modules" in knobs else []

    def adapter_saved(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> list[Saved]:
        """Tensors the adapter on ``linear`` saves for backward, per token."""
        return []

    def adapter_saved_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """Bytes the adapter saves per forward that do not grow with the batch (e.g. a
        materialised delta weight)."""
        return 0

    def adapter_transient_constant(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """Bytes the adapter allocates and frees within its own forward (batch-independent);
        they matter when a checkpointed block is recomputed during backward."""
        return 0

    def adapter_transient_per_token(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> float:
        """Bytes per token the adapter's forward allocates and does not save (alive while it
        runs); they matter when a checkpointed block is recomputed during backward."""
        return 0

    def adapter_backward_transient(self, linear: LinearInfo, knobs: dict[str, Any], ctx: AdapterContext) -> int:
        """Bytes the adapter's backward allocates beyond its saved tensors (e.g. the gradient
        of a materialised delta weight); they matter while a checkpointed block is redone."""
        return 0

    def autocast_approximation(self, spec: ModelSpec, knobs: dict[str, Any]) -> str:
        """Why this method's activations under autocast are not walked exactly here ("" when
        they are: ``autocast_exact``, measured in tests/test_precision.py). A method whose
        layers return fp32 there (``output_in_input_dtype``) is walked through the MLP and the
        q/k norms (``out_bytes`` in :func:`..memory.blocks.walk_block`; attention casts q/k/v
        back, the residual stream is fp32 anyway) but not through Phi-3's fused qkv_proj."""
        if not self.autocast_exact:
            return f"{self.name}'s adapters under autocast have no measured walk yet"
        fused_qkv = any(lin.short_name == "qkv_proj" for lin in self.adapted_linears(spec, knobs))
        if self.output_in_input_dtype and fused_qkv:
            return (f"{self.name}'s fp32 outputs on qkv_proj under autocast are not walked yet (sdpa's casts of "
                    "the fused q/k/v slices)")
        return ""

    def loss_saved(self, spec: ModelSpec, knobs: dict[str, Any], settings) -> tuple[int, str]:
        """Bytes a loss term of the method's own saves beside the model's loss (AdaLoRA's
        orthogonal regularizer), and the formula; (0, "") for most methods."""
        return 0, ""

    def early_gradient(self, group: TensorGroup) -> bool:
        """Is this trained tensor's gradient made before the model's backward starts (a term of
        the method's own loss, back-propagated first)? Then it is alive through all of it."""
        return False

    def extra_kv_positions(self, knobs: dict[str, Any]) -> int:
        """Key/value positions added in every attention layer (prefix tuning)."""
        return 0

    def extra_tokens(self, knobs: dict[str, Any]) -> int:
        return int(knobs[self.extra_tokens_knob]) if self.extra_tokens_knob else 0

    # -- building the real thing ----------------------------------------------------------
    def peft_config(self, spec: ModelSpec, knobs: dict[str, Any]):
        return None

    def apply(self, model, spec: ModelSpec, knobs: dict[str, Any]):
        """Wrap or freeze ``model`` for training; returns the model to train."""
        import peft

        return peft.get_peft_model(model, self.peft_config(spec, knobs))


def resolve_targets(spec: ModelSpec, targets: str) -> list[LinearInfo]:
    """The block linears matched by ``targets`` (peft's rule: ``all-linear`` is every linear
    layer inside the decoder blocks; the output head is never targeted)."""
    inv = spec.inventory
    in_blocks = [lin for lin in inv.linears if lin.name.startswith(inv.block_prefix + ".")]
    if targets.strip() == "all-linear":
        return in_blocks
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    known = sorted({lin.short_name for lin in in_blocks})
    missing = [t for t in wanted if t not in known]
    if missing or not wanted:
        raise MethodError(
            f"target modules {', '.join(missing) or '(none)'} not found in {spec.name}; "
            f"choose from: all-linear, {', '.join(known)}" + _fused_hint(missing, known)
        )
    return [lin for lin in in_blocks if lin.short_name in wanted]


#: layers some architectures fuse (Phi-3, Phi-4): the separate names a method's defaults use -> the fused one
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def _fused_hint(missing: list[str], known: list[str]) -> str:
    """Where the missing layers are fused into one (Phi-3's qkv_proj), say so. The defaults are
    not mapped onto the fused layer on purpose: adapting qkv_proj also adapts q (and IA3 would
    scale queries too), which is another method than the one whose defaults name k and v."""
    hints = [f"{', '.join(parts)} are fused into {fused} here; adapting {fused} adapts all of them"
             for fused, parts in FUSED.items() if fused in known and any(m in parts for m in missing)]
    return f" ({'; '.join(hints)})" if hints else ""


def peft_targets(targets: str) -> str | list[str]:
    return "all-linear" if targets.strip() == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
