"""8-bit LoRA: the frozen base in LLM.int8() format (Dettmers et al. 2022,
arXiv:2208.07339), LoRA adapters in fp32."""

from .lora import LoraMethod


class Lora8bitMethod(LoraMethod):
    autocast_exact = False  # not yet measured under autocast
    name = "lora-8bit"
    title = "LoRA on an 8-bit base"
    summary = "LoRA on an int8 base model: half the weight memory of bf16."
    quantization = "8bit"


METHOD = Lora8bitMethod()
