"""rsLoRA: LoRA scaled by alpha/sqrt(r) instead of alpha/r, so high ranks keep learning
(Kalajdzievski 2023, arXiv:2312.03732). Same memory as LoRA."""

from .lora import LoraMethod


class RsLoraMethod(LoraMethod):
    name = "rslora"
    title = "rsLoRA"
    summary = "LoRA with rank-stabilised scaling alpha/sqrt(r); same memory as LoRA."
    use_rslora = True


METHOD = RsLoraMethod()
