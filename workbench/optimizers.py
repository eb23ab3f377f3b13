"""The optimizers the workbench offers, built the same way for measuring and training.

Each maps to the class ``transformers.Trainer`` would build for its ``optim`` name, so the
planner's optimizer formulas (``workbench.memory.optimizer``) describe what really runs.
"""

from __future__ import annotations

TRAINER_OPTIM = {
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "sgd": "sgd",
    "sgd_momentum": "sgd",
    "adafactor": "adafactor",
}
#: what the Trainer's ``optim_args`` must say for its optimizer to be ours (its ``sgd`` has no
#: momentum unless told: the planner counts sgd_momentum's buffer)
SGD_MOMENTUM = 0.9
TRAINER_OPTIM_ARGS = {"sgd_momentum": f"momentum={SGD_MOMENTUM}"}


def build_optimizer(params, name: str, lr: float = 1e-3):
    """An optimizer over ``params`` (trainable tensors only)."""
    import torch

    params = [p for p in params if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if name.startswith("paged") else bnb.optim.AdamW8bit
        return cls(params, lr=lr, weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r}")
