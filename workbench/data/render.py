"""Render examples exactly as the model will see them, and mark which tokens carry loss.

Chat examples go through the tokenizer's chat template (rendered by transformers in a
sandboxed Jinja environment) when it has one, else through the plain template below. Text
examples are trained on whole. By default the loss is masked on everything but the
assistant turns (their content plus the end-of-turn token the template writes after it, so
the model learns to stop); ``train_on_prompt=True`` trains on every token.

Plain template (documented, used when a tokenizer has no chat template)::

    ### System:\\n{system}\\n\\n        (only when there is a system turn)
    ### User:\\n{user}\\n\\n
    ### Assistant:\\n{assistant}{eos}\\n\\n

Speed: a template is rendered once per conversation *shape* (the sequence of roles) with
placeholder contents, checked against a real rendering, and then filled in by string
assembly; a template that transforms contents falls back to rendering every example.
Segments of all examples are tokenized in one batched call of the fast tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TemplateError
from .formats import Example

SENTINEL = "\ue000{}\ue001"
SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


@dataclass
class Rendered:
    """One example as (text, carries_loss) segments and, after tokenization, token ids."""

    row: int
    segments: list[tuple[str, bool]]
    ids: list[int] | None = None
    loss_mask: list[bool] | None = None


class Renderer:
    def __init__(self, tokenizer, train_on_prompt: bool = False) -> None:
        self.tok = tokenizer
        self.train_on_prompt = train_on_prompt
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials = set(tokenizer.all_special_tokens) | {t.content for t in added.values() if t.special}
        self.specials = sorted((t for t in specials if t), key=len, reverse=True)
        self._shapes: dict[tuple[str, ...], list[str] | None] = {}

    @property
    def template_name(self) -> str:
        return "the tokenizer's chat template" if self.has_template else "the plain ### User / ### Assistant template"

    def render(self, example: Example) -> Rendered:
        if example.text is not None:
            bos, eos = self.tok.bos_token or "", self.tok.eos_token or ""
            segments = [(bos + example.text + eos, True)]
        elif self.has_template:
            segments = self._chat_segments(example.messages)
        else:
            segments = self._plain_segments(example.messages)
        if self.train_on_prompt:
            segments = [(t, True) for t, _ in segments]
        return Rendered(example.row, _merge(segments))

    # -- plain template -------------------------------------------------------------------
    def _plain_segments(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        eos = self.tok.eos_token or ""
        out = []
        for m in messages:
            header = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}[m["role"]]
            if m["role"] == "assistant":
                out += [(header, False), (m["content"] + eos, True), ("\n\n", False)]
            else:
                out.append((header + m["content"] + "\n\n", False))
        return out

    # -- chat template ----------------------------------------------------------------------
    def _apply(self, messages: list[dict[str, str]]) -> str:
        return apply_template(self.tok, messages)

    def _chat_segments(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        shape = tuple(m["role"] for m in messages)
        if shape not in self._shapes:
            self._shapes[shape] = self._compile(messages)
        pieces = self._shapes[shape]
        if pieces is None:
            return self._slow_segments(messages)
        out = [(pieces[0], False)]
        for i, m in enumerate(messages):
            tail = pieces[i + 1]
            if m["role"] == "assistant":
                end = self._end_of_turn(tail)
                out += [(m["content"] + tail[:end], True), (tail[end:], False)]
            else:
                out += [(m["content"], False), (tail, False)]
        return out

    def _compile(self, messages: list[dict[str, str]]) -> list[str] | None:
        """Literal pieces around each message's content, or None when the template does not
        just paste contents in (then every example is rendered on its own)."""
        try:
            skeleton = self._apply([{"role": m["role"], "content": SENTINEL.format(i)} for i, m in enumerate(messages)])
        except Exception:
            return None
        parts = SENTINEL_RE.split(skeleton)
        if [int(x) for x in parts[1::2]] != list(range(len(messages))):
            return None
        pieces = parts[0::2]
        assembled = pieces[0] + "".join(m["content"] + pieces[i + 1] for i, m in enumerate(messages))
        return pieces if assembled == self._apply(messages) else None

    def _end_of_turn(self, tail: str) -> int:
        """How much of the text after an assistant turn belongs to it: up to and including
        the first special token (e.g. ``<|im_end|>``, ``<|eot_id|>``, ``</s>``)."""
        hits = [(tail.find(s), s) for s in self.specials if s in tail]
        if not hits:
            return 0
        pos, token = min(hits)
        return pos + len(token)

    def _slow_segments(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        full = self._apply(messages)
        out, done = [], 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = apply_template(self.tok, messages[:i], add_generation_prompt=True) if i else ""
            through = self._apply(messages[: i + 1])
            if not (through.startswith(before) and full.startswith(through) and len(before) >= done):
                return [(full, True)]  # the template is not prefix-stable: train on everything, visibly
            out += [(full[done:len(before)], False), (full[len(before):len(through)], True)]
            done = len(through)
        out.append((full[done:], False))
        return out


def apply_template(tok, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The tokenizer's chat template rendered as text. transformers renders it in jinja's
    ``ImmutableSandboxedEnvironment``: a template that reaches for Python internals raises
    ``SecurityError``, which becomes a :class:`TemplateError` naming the problem."""
    import jinja2

    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"the model's chat template failed: {type(exc).__name__}: {exc}") from None
    except ValueError as exc:  # e.g. no chat template at all
        raise TemplateError(f"cannot render a chat: {exc}") from None


def _merge(segments: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    merged: list[tuple[str, bool]] = []
    for text, loss in segments:
        if not text:
            continue
        if merged and merged[-1][1] == loss:
            merged[-1] = (merged[-1][0] + text, loss)
        else:
            merged.append((text, loss))
    return merged


def tokenize_all(tokenizer, rendered: list[Rendered]) -> None:
    """Fill ``ids`` and ``loss_mask`` of every example with one batched tokenizer call."""
    flat = [text for r in rendered for text, _ in r.segments]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and flat:  # the Rust tokenizer, batched and parallel, without offsets
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        ids = [e.ids for e in encode(flat, add_special_tokens=False)]
    else:
        ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    k = 0
    for r in rendered:
        r.ids, r.loss_mask = [], []
        for _, loss in r.segments:
            r.ids += ids[k]
            r.loss_mask += [loss] * len(ids[k])
            k += 1
