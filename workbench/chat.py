"""Chat with the base model and adapters side by side: one copy of the base in memory,
adapters attached by name and switched in place (peft multi-adapter, ``disable_adapter``).

Every answer is generated with the same prompt, seed and sampling settings, so differences
come from the adapters. Adapters on one base share a peft type (LoRA beside LoRA, IA3
beside IA3): peft cannot combine types in one model, and a second base copy is not an option.
The model loads lazily on first use. The web server never runs this engine itself: it runs
inside the inference worker process (:mod:`workbench.inference.worker`), which the page
talks to through :class:`workbench.inference.client.InferenceClient` (the same calls); the
CLI's ``eval``, a process of its own, uses it directly.

Generation safety (issue 15, finding 7):

- **One user of the model at a time.** Every use (stream, answer_batch, perplexity,
  add_adapter, the tokenizer copy) holds the engine's lock, and the adapter choice
  (``set_adapter`` / ``disable_adapter``) is made inside it, so no other caller can switch
  adapters under a running answer. A streamed answer hands the lock to its generate thread,
  which releases it only after ``model.generate`` has returned: the next answer cannot start
  while an old one still runs.
- **A cancel really stops.** Closing the stream (a browser cancel: gradio closes the
  generator) or setting the caller's ``stop`` event sets a flag that a ``StoppingCriteria``
  checks after every token, so generation ends within one token. The closing thread does
  not wait for it (gradio closes generators on its event loop; a join there would stall the
  server), the lock is released by the generate thread once it has finished.
- **Long work can be cancelled.** ``answer``, ``answer_batch`` and ``perplexity`` take the
  caller's ``stop`` event too: generation ends at the next token, perplexity before the next
  text, and the call raises :class:`OperationCancelled` with the lock released, so the next
  request is served at once. ``progress(done, total)`` is called after each text scored.
- **Bounded waits.** A caller waits for the lock at most ``wait_seconds``
  (``WORKBENCH_MODEL_WAIT_S``, default 60 s) and then gets :class:`ModelBusyError`.
- **Bounded prompts.** A prompt over ``max_prompt_chars`` characters
  (``WORKBENCH_MAX_PROMPT_CHARS``, default 32,000) is refused before tokenizing; a rendered
  prompt whose tokens plus ``max_new_tokens`` exceed the model's context (the smaller of
  ``max_position_embeddings`` / ``n_positions`` and the tokenizer's ``model_max_length``,
  where known) is refused naming both numbers (:class:`PromptTooLongError`).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# the request checks live in chat_request; the engine's callers import them from here too
from .chat_request import (DEFAULT_MAX_PROMPT_CHARS, DEFAULT_WAIT_SECONDS, MAX_NEW_TOKENS,  # noqa: F401
                           PROMPT_CHARS_VARIABLE, WAIT_VARIABLE, ModelBusyError, OperationCancelled,
                           PromptTooLongError, Sampling, as_messages, check_stop, env_setting)
from .data.render import apply_template
from .errors import WorkbenchError

BASE = "base"
PERPLEXITY_TOKENS = 1024  # tokens of each text scored by perplexity (fewer when the context is shorter)


def _stopper(*events: threading.Event):
    """A StoppingCriteria that ends generation (every row) once any of ``events`` is set;
    transformers calls it after every new token."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stop = any(e.is_set() for e in events)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenSet()])


class ChatEngine:
    def __init__(self, model: str, dtype: str = "float32", *, max_prompt_chars: int | None = None,
                 wait_seconds: float | None = None, device: str = "cpu") -> None:
        self.model_name, self.dtype, self.device = model, dtype, device
        self.max_prompt_chars = int(max_prompt_chars if max_prompt_chars is not None
                                    else env_setting(PROMPT_CHARS_VARIABLE, DEFAULT_MAX_PROMPT_CHARS))
        self.wait_seconds = float(wait_seconds if wait_seconds is not None
                                  else env_setting(WAIT_VARIABLE, DEFAULT_WAIT_SECONDS))
        self._model = self._tokenizer = None
        self._context: int | None = None  # tokens the model attends to, where known
        self._adapters: dict[str, Path] = {}
        self._lock = threading.Lock()  # a plain Lock: a stream's generate thread releases it
        #: called as ``(batch, tokens, scoring)`` with the lock held, before each generate or
        #: scoring pass (the inference worker claims the memory it needs there; raising refuses it)
        self.before_run: Callable[[int, int, bool], None] | None = None

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    @property
    def tokenizer(self):
        """A copy of the model's tokenizer, the caller's own (to count or decode tokens): the
        engine's tokenizer is used only under its lock (a fast tokenizer must not be shared
        by threads: its padding and truncation settings are changed per call)."""
        import copy

        with self._hold():
            self._base()
            return copy.deepcopy(self._tokenizer)

    @property
    def context_tokens(self) -> int | None:
        """Prompt + answer tokens the model can take (None when neither config nor tokenizer says)."""
        with self._hold():
            self._base()
            return self._context

    def _acquire(self) -> None:
        if not self._lock.acquire(timeout=self.wait_seconds):
            raise ModelBusyError(f"the model {self.model_name} is busy with another answer (waited "
                                 f"{self.wait_seconds:g} s, {WAIT_VARIABLE}); try again in a moment")

    @contextmanager
    def _hold(self):
        self._acquire()
        try:
            yield
        finally:
            self._lock.release()

    def _base(self):
        """The model, loaded on first use (called with the lock held)."""
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM

            from .data import load_tokenizer
            from .loading import weights_dir
            from .specs import load_model_spec

            spec = load_model_spec(self.model_name)
            folder = weights_dir(spec)
            tok = load_tokenizer(self.model_name if spec.source == "builtin" else str(folder))
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    folder, dtype=getattr(torch, self.dtype), use_safetensors=True, trust_remote_code=False)
            except (OSError, ValueError, KeyError) as exc:  # broken or foreign files: a message, not a crash
                raise WorkbenchError(f"cannot load {self.model_name}: {type(exc).__name__}: {str(exc)[:300]}") from None
            model.to(self.device).eval()
            limits = [getattr(model.config, name, None) for name in ("max_position_embeddings", "n_positions")]
            known = [int(x) for x in [*limits, getattr(tok, "model_max_length", None)]
                     if isinstance(x, int) and 0 < x < 10**8]  # transformers says "unknown" with 1e30
            self._context = min(known) if known else None
            self._model, self._tokenizer = model, tok
        return self._model

    def _before_run(self, batch: int, tokens: int, scoring: bool = False) -> None:
        if self.before_run is not None:
            self.before_run(batch, tokens, scoring)

    def _check_who(self, who: str) -> None:
        if who != BASE and who not in self._adapters:
            raise WorkbenchError(f"no adapter {who!r}; attached: {', '.join(self._adapters) or 'none'}")

    def _check_chars(self, messages: list[dict[str, str]], where: str = "the prompt") -> None:
        chars = sum(len(m["content"]) for m in messages)
        if chars > self.max_prompt_chars:
            raise PromptTooLongError(f"{where} is {chars:,} characters, over the limit of {self.max_prompt_chars:,} "
                                     f"characters ({PROMPT_CHARS_VARIABLE}); shorten it")

    def _check_tokens(self, prompt_tokens: int, max_new_tokens: int, where: str = "the prompt") -> None:
        if self._context is not None and prompt_tokens + max_new_tokens > self._context:
            raise PromptTooLongError(
                f"{where} is {prompt_tokens:,} tokens and the answer may take {max_new_tokens:,} more: "
                f"{prompt_tokens + max_new_tokens:,} tokens, over the {self._context:,}-token context of "
                f"{self.model_name}; shorten the prompt or lower max new tokens")

    @contextmanager
    def _weights_of(self, model, who: str):
        """``who``'s weights active for the block (with the lock held: nobody else switches)."""
        if who == BASE and hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                yield
        else:
            if who != BASE:
                model.set_adapter(who)
            yield

    def check_adapter(self, folder: Path) -> None:
        """Refuse a folder that is not a peft adapter of this base, in safetensors."""
        from .training.artifacts import read_meta

        if not (folder / "adapter_config.json").is_file():
            raise WorkbenchError(f"{folder}: no peft adapter here (full/freeze/BitFit results are whole models)")
        if not (folder / "adapter_model.safetensors").is_file():
            raise WorkbenchError(f"{folder}: no adapter_model.safetensors (pickled adapters are never loaded)")
        meta_file = folder / "workbench_meta.json"
        if meta_file.is_file() and read_meta(folder)["base_model"] != self.model_name:
            raise WorkbenchError(f"{folder}: trained on {read_meta(folder)['base_model']}, not {self.model_name}")

    def add_adapter(self, name: str, folder: str | Path) -> None:
        """Attach a finished run's adapter (or a complete checkpoint) under ``name``."""
        from peft import PeftModel

        folder = Path(folder)
        if name == BASE or not name or name in self._adapters:
            raise WorkbenchError(f"adapter name {name!r} is taken or reserved")
        self.check_adapter(folder)
        kind = json.loads((folder / "adapter_config.json").read_text()).get("peft_type")
        with self._hold():
            if name in self._adapters:  # attached by another caller while this one waited
                return
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

    def stream(self, prompt: str | list[dict[str, str]], who: str, sampling: Sampling,
               stop: threading.Event | None = None) -> Iterator[str]:
        """The answer of ``who`` (``base`` or an adapter name), piece by piece as it is
        generated. ``prompt``: the user's text, or the messages of a conversation so far
        (rendered with the chat template, as in training). Holds the model for the whole
        answer; closing the generator, or setting ``stop``, ends generation at the next token
        (see the module docstring)."""
        import torch
        from transformers import TextIteratorStreamer

        self._check_who(who)
        messages = as_messages(prompt)
        self._check_chars(messages)
        closed = threading.Event()
        errors: list[BaseException] = []
        self._acquire()
        handed_over = False
        try:
            model, tok = self._base(), self._tokenizer
            text = apply_template(tok, messages, add_generation_prompt=True)
            ids = tok(text, return_tensors="pt", add_special_tokens=False, verbose=False)  # too long: our message
            ids = ids.to(model.device)
            self._check_tokens(ids["input_ids"].shape[1], sampling.max_new_tokens)
            self._before_run(1, ids["input_ids"].shape[1] + sampling.max_new_tokens)
            streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            torch.manual_seed(sampling.seed)
            kwargs = dict(**ids, streamer=streamer, max_new_tokens=sampling.max_new_tokens,
                          do_sample=sampling.temperature > 0, pad_token_id=tok.pad_token_id,
                          stopping_criteria=_stopper(closed, *([stop] if stop is not None else [])))
            if sampling.temperature > 0:
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)

            def run() -> None:  # owns the lock from here: releases it once generate has returned
                try:
                    with self._weights_of(model, who):
                        model.generate(**kwargs)
                except BaseException as exc:  # surfaced below, after the stream ends
                    errors.append(exc)
                    streamer.end()
                finally:
                    self._lock.release()

            worker = threading.Thread(target=run, name=f"generate-{self.model_name}-{who}", daemon=True)
            worker.start()
            handed_over = True
        finally:
            if not handed_over:
                self._lock.release()
        try:
            yield from streamer
        finally:
            closed.set()  # a cancelled (closed) stream stops generation at its next token
        worker.join()
        if errors:
            raise WorkbenchError(f"generation failed: {type(errors[0]).__name__}: {errors[0]}")

    def answer(self, prompt: str | list[dict[str, str]], who: str, sampling: Sampling,
               stop: threading.Event | None = None) -> str:
        """The whole answer of ``who``; :class:`OperationCancelled` when ``stop`` was set."""
        check_stop(stop, f"the answer of {who}")
        text = "".join(self.stream(prompt, who, sampling, stop=stop))
        check_stop(stop, f"the answer of {who}")
        return text

    def answer_batch(self, conversations: list[list[dict[str, str]]], who: str, max_new_tokens: int,
                     names: list[str] | None = None, stop: threading.Event | None = None) -> list[str]:
        """Greedy answers of ``who`` to several conversations at once, left-padded into one
        batch (the same answers as one at a time, up to float rounding: padding is masked).
        ``names`` (e.g. "row 12") name a conversation that is too long; ``stop`` ends
        generation at the next token (:class:`OperationCancelled`)."""
        import torch

        self._check_who(who)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise WorkbenchError(f"max_new_tokens: 1..{MAX_NEW_TOKENS}, got {max_new_tokens!r}")
        if not conversations:
            return []
        conversations = [as_messages(c) for c in conversations]
        names = names or [f"prompt {i + 1} of {len(conversations)}" for i in range(len(conversations))]
        for messages, name in zip(conversations, names):
            self._check_chars(messages, name)
        with self._hold():
            model = self._base()
            tok = self._tokenizer
            texts = [apply_template(tok, c, add_generation_prompt=True) for c in conversations]
            batch = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False,
                        verbose=False)
            for length, name in zip(batch["attention_mask"].sum(dim=1).tolist(), names):
                self._check_tokens(int(length), max_new_tokens, name)
            self._before_run(len(texts), batch["input_ids"].shape[1] + max_new_tokens)
            batch = batch.to(model.device)
            kwargs = dict(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            if stop is not None:
                kwargs["stopping_criteria"] = _stopper(stop)
            check_stop(stop, f"the answers of {who}")
            with torch.no_grad(), self._weights_of(model, who):
                out = model.generate(**kwargs)
            check_stop(stop, f"the answers of {who}")
            new = out[:, batch["input_ids"].shape[1]:]
            return [tok.decode(row, skip_special_tokens=True) for row in new]

    def perplexity(self, texts: list[str], who: str, stop: threading.Event | None = None,
                   progress: Callable[[int, int], None] | None = None) -> float:
        """exp(mean token loss) of ``who`` on ``texts`` (what an adapter gained or forgot).
        Each text is scored on its first ``PERPLEXITY_TOKENS`` tokens (or the model's context,
        when shorter), cut to the character cap before tokenizing. ``stop`` is checked before
        each text (:class:`OperationCancelled`); ``progress(done, total)`` after each."""
        import torch

        self._check_who(who)
        if not texts:
            raise WorkbenchError("perplexity needs at least one text")
        with self._hold():
            model = self._base()
            keep = min(PERPLEXITY_TOKENS, self._context or PERPLEXITY_TOKENS)
            total, count = 0.0, 0
            self._before_run(1, keep, scoring=True)
            with torch.no_grad(), self._weights_of(model, who):
                for done, text in enumerate(texts, 1):
                    check_stop(stop, f"perplexity of {who}")
                    ids = self._tokenizer(text[:self.max_prompt_chars], return_tensors="pt")["input_ids"][:, :keep]
                    ids = ids.to(model.device)
                    if ids.shape[1] >= 2:
                        loss = model(input_ids=ids, labels=ids).loss
                        total += float(loss) * (ids.shape[1] - 1)
                        count += ids.shape[1] - 1
                    if progress is not None:
                        progress(done, len(texts))
            return math.exp(total / max(count, 1))
