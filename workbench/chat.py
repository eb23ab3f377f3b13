"""Chat with the base model and adapters side by side: one copy of the base in memory,
adapters attached by name and switched in place (peft multi-adapter, ``disable_adapter``).

Every answer is generated with the same prompt, seed and sampling settings, so differences
come from the adapters. Adapters on one base share a peft type (LoRA beside LoRA, IA3
beside IA3): peft cannot combine types in one model, and a second base copy is not an option. Generation is serialised by a lock: switching adapters changes the
shared model. The model loads lazily on first use, on the CPU in the UI process (the
tiny model answers in well under a second per token; larger models belong on a GPU worker).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .data.render import apply_template
from .errors import WorkbenchError

BASE = "base"


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 4096 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise WorkbenchError("sampling: max_new_tokens 1..4096, temperature >= 0, top_p in (0, 1]")


class ChatEngine:
    def __init__(self, model: str, dtype: str = "float32") -> None:
        self.model_name, self.dtype = model, dtype
        self._model = self._tokenizer = None
        self._adapters: dict[str, Path] = {}
        self._lock = threading.Lock()

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    @property
    def tokenizer(self):
        with self._lock:
            self._base()
            return self._tokenizer

    def _base(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM

            from .data import load_tokenizer
            from .loading import weights_dir
            from .specs import load_model_spec

            spec = load_model_spec(self.model_name)
            folder = weights_dir(spec)
            self._tokenizer = load_tokenizer(self.model_name if spec.source == "builtin" else str(folder))
            try:
                self._model = AutoModelForCausalLM.from_pretrained(
                    folder, dtype=getattr(torch, self.dtype), use_safetensors=True, trust_remote_code=False)
            except (OSError, ValueError, KeyError) as exc:  # broken or foreign files: a message, not a crash
                raise WorkbenchError(f"cannot load {self.model_name}: {type(exc).__name__}: {str(exc)[:300]}") from None
            self._model.eval()
        return self._model

    def add_adapter(self, name: str, folder: str | Path) -> None:
        """Attach a finished run's adapter (or a complete checkpoint) under ``name``."""
        from peft import PeftModel

        from .training.artifacts import read_meta

        folder = Path(folder)
        if name == BASE or not name or name in self._adapters:
            raise WorkbenchError(f"adapter name {name!r} is taken or reserved")
        if not (folder / "adapter_config.json").is_file():
            raise WorkbenchError(f"{folder}: no peft adapter here (full/freeze/BitFit results are whole models)")
        if not (folder / "adapter_model.safetensors").is_file():
            raise WorkbenchError(f"{folder}: no adapter_model.safetensors (pickled adapters are never loaded)")
        meta_file = folder / "workbench_meta.json"
        if meta_file.is_file() and read_meta(folder)["base_model"] != self.model_name:
            raise WorkbenchError(f"{folder}: trained on {read_meta(folder)['base_model']}, not {self.model_name}")
        kind = json.loads((folder / "adapter_config.json").read_text()).get("peft_type")
        with self._lock:
            model = self._base()
            if isinstance(model, PeftModel):
                have = {c.peft_type.value if hasattr(c.peft_type, "value") else str(c.peft_type)
                        for c in model.peft_config.values()}
                if kind not in have:
                    raise WorkbenchError(f"cannot attach a {kind} adapter beside {', '.join(sorted(have))} adapters "
                                         "on one base (peft keeps one adapter type per model); compare it separately")
                model.load_adapter(str(folder), adapter_name=name)
            else:
                self._model = PeftModel.from_pretrained(model, str(folder), adapter_name=name)
                self._model.eval()
            self._adapters[name] = folder

    def stream(self, prompt: str | list[dict[str, str]], who: str, sampling: Sampling) -> Iterator[str]:
        """The answer of ``who`` (``base`` or an adapter name), piece by piece as it is
        generated. ``prompt``: the user's text, or the messages of a conversation so far
        (rendered with the chat template, as in training). Holds the model for the whole answer."""
        import torch
        from transformers import TextIteratorStreamer

        if who != BASE and who not in self._adapters:
            raise WorkbenchError(f"no adapter {who!r}; attached: {', '.join(self._adapters) or 'none'}")
        with self._lock:
            model = self._base()
            tok = self._tokenizer
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            text = apply_template(tok, messages, add_generation_prompt=True)
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            torch.manual_seed(sampling.seed)
            kwargs = dict(**ids, streamer=streamer, max_new_tokens=sampling.max_new_tokens,
                          do_sample=sampling.temperature > 0, pad_token_id=tok.pad_token_id)
            if sampling.temperature > 0:
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
            errors: list[BaseException] = []

            def run() -> None:
                try:
                    if who == BASE and hasattr(model, "disable_adapter"):
                        with model.disable_adapter():
                            model.generate(**kwargs)
                    else:
                        if who != BASE:
                            model.set_adapter(who)
                        model.generate(**kwargs)
                except BaseException as exc:  # surfaced below, after the stream ends
                    errors.append(exc)
                    streamer.end()

            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            yield from streamer
            worker.join()
            if errors:
                raise WorkbenchError(f"generation failed: {type(errors[0]).__name__}: {errors[0]}")

    def answer(self, prompt: str | list[dict[str, str]], who: str, sampling: Sampling) -> str:
        return "".join(self.stream(prompt, who, sampling))

    def answer_batch(self, conversations: list[list[dict[str, str]]], who: str, max_new_tokens: int) -> list[str]:
        """Greedy answers of ``who`` to several conversations at once, left-padded into one
        batch (the same answers as one at a time, up to float rounding: padding is masked)."""
        import torch

        if who != BASE and who not in self._adapters:
            raise WorkbenchError(f"no adapter {who!r}; attached: {', '.join(self._adapters) or 'none'}")
        with self._lock:
            model = self._base()
            tok = self._tokenizer
            texts = [apply_template(tok, c, add_generation_prompt=True) for c in conversations]
            side, tok.padding_side = tok.padding_side, "left"
            try:
                batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            finally:
                tok.padding_side = side
            kwargs = dict(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            with torch.no_grad():
                if who == BASE and hasattr(model, "disable_adapter"):
                    with model.disable_adapter():
                        out = model.generate(**kwargs)
                else:
                    if who != BASE:
                        model.set_adapter(who)
                    out = model.generate(**kwargs)
            new = out[:, batch["input_ids"].shape[1]:]
            return [tok.decode(row, skip_special_tokens=True) for row in new]

    def perplexity(self, texts: list[str], who: str) -> float:
        """exp(mean token loss) of ``who`` on ``texts`` (what an adapter gained or forgot)."""
        import math

        import torch

        if not texts:
            raise WorkbenchError("perplexity needs at least one text")
        with self._lock:
            model = self._base()
            total, count = 0.0, 0
            for text in texts:
                ids = self._tokenizer(text, return_tensors="pt")["input_ids"][:, :1024]
                if ids.shape[1] < 2:
                    continue
                with torch.no_grad():
                    if who == BASE and hasattr(model, "disable_adapter"):
                        with model.disable_adapter():
                            loss = model(input_ids=ids, labels=ids).loss
                    else:
                        if who != BASE:
                            model.set_adapter(who)
                        loss = model(input_ids=ids, labels=ids).loss
                total += float(loss) * (ids.shape[1] - 1)
                count += ids.shape[1] - 1
            return math.exp(total / max(count, 1))
