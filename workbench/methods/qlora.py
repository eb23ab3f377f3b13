"""QLoRA: the frozen base stored in 4-bit NormalFloat (NF4) with optional double
quantization, LoRA adapters trained in higher precision (Dettmers et al. 2023,
arXiv:2305.14314). Loading goes through bitsandbytes (``BitsAndBytesConfig``)."""

from .base import Knob
from .lora import LORA_KNOBS, LoraMethod


class QLoraMethod(LoraMethod):
    autocast_exact = False  # not yet measured under autocast
    name = "qlora"
    title = "QLoRA (4-bit base)"
    summary = "LoRA on a 4-bit NF4 base model: the smallest memory for the weights."
    quantization = "4bit"
    knobs = LORA_KNOBS + (
        Knob("quant_type", str, "nf4", "4-bit data type: nf4 (QLoRA paper) or fp4", choices=("nf4", "fp4")),
        Knob("double_quant", bool, True, "also quantize the quantization constants (saves ~0.37 bit/param)"),
    )


METHOD = QLoraMethod()
