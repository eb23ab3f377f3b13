"""Multi-process training through ``accelerate launch``: the launch files of a run.

The workbench does not distribute anything itself. For a run with more than one process
(or any strategy but ``single``) it writes, into the session folder:

- ``accelerate_config.yaml``: accelerate's own config (DDP, FSDP or DeepSpeed, processes,
  machines, rendezvous port), loadable by ``accelerate launch --config_file``;
- ``ds_config.json`` (DeepSpeed only): the ZeRO stage, offload devices and the optimizer,
  with ``"auto"`` where the Trainer fills in batch size, accumulation and learning rate;
- ``launch_command.txt``: the exact command, to rerun the run by hand (or on each node of a
  multi-node job, with ``--machine_rank``).

The worker itself is then started as ``python -m accelerate.commands.launch --config_file
... -m workbench.training.worker job.json`` (an argument list, never a shell string); the
Trainer picks the strategy up from the environment accelerate sets.

On CPU (``device="cpu"``, ``strategy="ddp"``) accelerate's ``MULTI_CPU`` type needs
``mpirun``; the config says ``MULTI_GPU`` so that accelerate's torchrun launcher starts the
processes, and the Trainer (``use_cpu=True``) joins them over gloo.
"""

from __future__ import annotations

import json
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from ..errors import SettingsError
from ..memory.settings import TrainingSettings

CONFIG_FILE = "accelerate_config.yaml"
DS_CONFIG_FILE = "ds_config.json"
COMMAND_FILE = "launch_command.txt"
DS_OPTIMIZERS = {"adamw": "AdamW", "sgd": None, "sgd_momentum": None}


def is_distributed(settings: TrainingSettings) -> bool:
    """Does this run go through ``accelerate launch`` (several processes, or a sharding
    strategy even on one GPU, e.g. single-GPU ZeRO-3 with offload)?"""
    return settings.world_size > 1 or settings.strategy != "single"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_config(settings: TrainingSettings, ds_config_path: Path | None = None, port: int = 29500,
                      layer_class: str | None = None) -> dict[str, Any]:
    """accelerate's config for ``settings`` (the keys ``accelerate config`` writes)."""
    s = settings
    if not is_distributed(s):
        raise SettingsError("a single-process run needs no accelerate config")
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE", "debug": False, "num_processes": s.world_size,
        "num_machines": s.nodes, "machine_rank": 0, "main_process_ip": "127.0.0.1", "main_process_port": port,
        "rdzv_backend": "static", "same_network": True, "use_cpu": False, "downcast_bf16": "no",
        # the run's precision, as TrainingArguments' bf16/fp16 flags say (DeepSpeed: its 16-bit mode)
        "mixed_precision": mixed_precision(s),
        "main_training_function": "main", "enable_cpu_affinity": False,
        "tpu_env": [], "tpu_use_cluster": False, "tpu_use_sudo": False,
    }
    if s.strategy in ("single", "ddp"):
        config["distributed_type"] = "MULTI_GPU"  # also on CPU: see the module docstring
    elif s.strategy.startswith("fsdp"):
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_sharding_strategy": "FULL_SHARD" if s.strategy == "fsdp" else "SHARD_GRAD_OP",
            "fsdp_offload_params": s.offload in ("params", "both"),
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            **({"fsdp_transformer_layer_cls_to_wrap": layer_class} if layer_class else {}),
            "fsdp_backward_prefetch": "BACKWARD_PRE", "fsdp_forward_prefetch": False,
            "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_sync_module_states": True,
            "fsdp_use_orig_params": True,  # peft: frozen and trainable parameters share flat buffers
            "fsdp_cpu_ram_efficient_loading": True,
        }
    else:
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {"deepspeed_config_file": str(ds_config_path),
                                      "zero3_init_flag": s.strategy == "deepspeed-zero3"}
    return config


def mixed_precision(settings: TrainingSettings) -> str:
    """accelerate's ``mixed_precision`` for the run: the same mode as ``TrainingArguments``
    (:meth:`TrainingSettings.trainer_flags`), so the launcher and the Trainer never disagree."""
    flags = settings.trainer_flags()
    return "bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "no"


def deepspeed_config(settings: TrainingSettings) -> dict[str, Any]:
    """DeepSpeed's JSON config: ZeRO stage, offload, precision and optimizer; batch sizes,
    accumulation and the learning rate are ``"auto"`` (the Trainer fills them in)."""
    s = settings
    if not s.strategy.startswith("deepspeed"):
        raise SettingsError(f"strategy {s.strategy} has no DeepSpeed config")
    if s.optimizer not in DS_OPTIMIZERS:
        raise SettingsError(f"DeepSpeed brings its own optimizer: choose adamw, sgd or sgd_momentum, not {s.optimizer}")
    stage = int(s.strategy[-1])
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto", "allgather_bucket_size": 5e8 if stage < 3 else None}
    if stage == 3:
        zero.pop("allgather_bucket_size")
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     "stage3_gather_16bit_weights_on_model_save": True})
    if s.offload in ("optimizer", "both"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if s.offload in ("params", "both"):
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "gradient_clipping": "auto", "zero_optimization": zero,
        # the same flags TrainingArguments gets (transformers refuses a mismatch in trainer_config_finalize)
        **{mode: {"enabled": on} for mode, on in s.trainer_flags().items()},
        "zero_force_ds_cpu_optimizer": False,
    }
    if DS_OPTIMIZERS[s.optimizer]:
        config["optimizer"] = {"type": DS_OPTIMIZERS[s.optimizer],
                               "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}
    return config


def launch_command(folder: Path, resume: bool = False) -> list[str]:
    """The worker's command line under accelerate (an argument list)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(folder / CONFIG_FILE),
            "-m", "workbench.training.worker", str(folder / "job.json")] + (["--resume"] if resume else [])


def write_launch_files(folder: Path, settings: TrainingSettings, layer_class: str | None = None) -> list[Path]:
    """Write the run's launch files (see the module docstring); returns their paths."""
    import yaml

    written = []
    ds_path = folder / DS_CONFIG_FILE
    if settings.strategy.startswith("deepspeed"):
        ds_path.write_text(json.dumps(deepspeed_config(settings), indent=2))
        written.append(ds_path)
    config = accelerate_config(settings, ds_path, free_port(), layer_class)
    header = ("# Generated by PEFT Workbench for this run. Rerun by hand:\n#   "
              + shlex.join(["accelerate", "launch", "--config_file", str(folder / CONFIG_FILE), "-m",
                            "workbench.training.worker", str(folder / "job.json")])
              + ("\n# Several machines: copy this folder to each node, set main_process_ip to the first node's "
                 "address and machine_rank to 0..N-1." if settings.nodes > 1 else "") + "\n")
    (folder / CONFIG_FILE).write_text(header + yaml.safe_dump(config, sort_keys=True))
    (folder / COMMAND_FILE).write_text(shlex.join(launch_command(folder)) + "\n")
    return written + [folder / CONFIG_FILE, folder / COMMAND_FILE]
