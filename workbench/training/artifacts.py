"""What a finished run leaves behind, and how to load and export it.

``final/`` holds the result in safetensors only: peft's adapter files for adapter methods,
the whole model for full fine-tuning, only the trained tensors for freeze/BitFit; the
tokenizer; and ``workbench_meta.json``: base model, method and knobs, dataset name and
content hash, steps, final loss, date, workbench version, and a *logits probe* (the output
of a fixed input at the end of training) so a reload can be checked to be the same model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import WorkbenchError

META = "workbench_meta.json"
TRAINED_TENSORS = "trained_weights.safetensors"
PROBE_TEXT = "The workbench checks that a reloaded model is the trained one."


def logits_probe(model, tokenizer) -> dict[str, Any]:
    import torch

    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    model.train(was_training)
    return {"text": PROBE_TEXT, "sum": float(logits.sum()), "last": [float(x) for x in logits[0, -1, :8]]}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_artifacts(trainer, job, folder: Path, weights_written: bool = False) -> None:
    """The result's files in ``folder``. ``weights_written``: a sharded run (FSDP, DeepSpeed)
    already gathered and wrote its weights with ``trainer.save_model`` on every rank; only
    the tokenizer and the metadata are added here (no logits probe: a forward pass of a
    sharded model is collective)."""
    from peft import PeftModel
    from safetensors.torch import save_file

    model = trainer.model
    if weights_written:
        kind = "adapter" if (folder / "adapter_config.json").is_file() else "full_model"
    elif isinstance(model, PeftModel):
        model.save_pretrained(str(folder), safe_serialization=True)
        kind = "adapter"
    elif job.method == "full":
        model.save_pretrained(str(folder), safe_serialization=True)
        kind = "full_model"
    else:
        tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(folder / TRAINED_TENSORS), metadata={"format": "pt"})
        kind = "trained_tensors"
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(str(folder))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    meta = {
        "kind": kind, "base_model": job.model, "method": job.method, "knobs": job.knobs, "settings": job.settings,
        "dataset": {"name": job.data.name or Path(job.data.path).name, "sha256": _sha256(job.data.path)},
        "steps": trainer.state.global_step, "final_loss": losses[-1] if losses else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "workbench_version": __version__,
        "probe": None if weights_written else logits_probe(model, trainer.processing_class),
    }
    (folder / META).write_text(json.dumps(meta, indent=2))


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / META).read_text())
    except (OSError, json.JSONDecodeError):
        raise WorkbenchError(f"{folder}: not a finished workbench result (no {META})") from None


def load_result(folder: Path):
    """(model, tokenizer) of a finished run: the base in the run's storage plus its result."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..loading import load_base
    from ..memory import TrainingSettings
    from ..methods import get_method
    from ..specs import load_model_spec

    folder = Path(folder)
    meta = read_meta(folder)
    spec, method = load_model_spec(meta["base_model"]), get_method(meta["method"])
    settings = TrainingSettings.from_dict(meta["settings"])
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    if meta["kind"] == "full_model":
        import torch

        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, settings.dtype),
                                                     use_safetensors=True, trust_remote_code=False)
    elif meta["kind"] == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_base(spec, method, meta["knobs"], settings), str(folder))
    else:
        from safetensors.torch import load_file

        model = load_base(spec, method, meta["knobs"], settings)
        missing = set(load_file(str(folder / TRAINED_TENSORS))) - set(dict(model.named_parameters()))
        if missing:
            raise WorkbenchError(f"{folder}: trained tensors do not fit {spec.name}: {sorted(missing)[:3]}")
        model.load_state_dict(load_file(str(folder / TRAINED_TENSORS)), strict=False)
    model.eval()
    return model, tokenizer


def export_zip(folder: Path, destination: Path) -> Path:
    """A zip of the result folder (adapter files, tokenizer, metadata)."""
    folder = Path(folder)
    read_meta(folder)
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                zf.write(path, f"{folder.parent.name}/{path.name}")
    return destination


def export_merged(folder: Path, destination: Path) -> Path:
    """A standalone model directory: the adapter merged into the base weights."""
    from peft import PeftModel

    model, tokenizer = load_result(folder)
    if isinstance(model, PeftModel):
        try:
            model = model.merge_and_unload()
        except Exception as exc:  # prompt/prefix tuning, quantized bases
            raise WorkbenchError(f"method {read_meta(folder)['method']!r} cannot be merged into the base "
                                 f"({type(exc).__name__}); export the adapter zip instead") from None
    tmp = Path(str(destination) + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(destination)
    return destination
