"""The offline ``tiny`` demo model: a byte-level BPE tokenizer trained here, random weights.

It exists so that everything in the workbench (planning, measuring, training, chat) works
on a machine with no internet and no GPU. It is **a demo with random weights**: it learns
a little from a few training steps but it knows nothing. The label is in its config
(``workbench_demo``), in a README next to the weights and everywhere the UI shows it.

The model is built once per cache directory (``$WORKBENCH_CACHE/models/tiny-v2``), written
to a temporary folder and renamed into place, so a crash never leaves a half-written model
behind; afterwards it loads with ``AutoModelForCausalLM.from_pretrained`` /
``AutoTokenizer.from_pretrained`` with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .paths import TEXT_DIR, cache_dir, publish_folder

TINY_NAME = "tiny"
TINY_VERSION = "tiny-v2"
TINY_LABEL = "tiny (demo model: random weights, offline)"
VOCAB_SIZE = 4096
SEED = 1234

#: Llama architecture, a few million parameters; GQA (8 query heads, 4 key/value heads)
#: so that the planner's grouped-query terms are exercised by the tests.
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "torch_dtype": "float32",
    "workbench_demo": "random weights; a demo model for offline use, it knows nothing",
}

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]

#: ChatML-style template. Assistant turns are wrapped in {% generation %} so that
#: ``return_assistant_tokens_mask`` can mark the tokens that carry the loss.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_dir() -> Path:
    """The folder holding the tiny model (it may not exist yet: see :func:`ensure_tiny`)."""
    return cache_dir() / "models" / TINY_VERSION


def corpus_texts() -> list[str]:
    """The tokenizer's training text: our CC0 notes plus the English topic help in CPython."""
    import pydoc_data.topics

    texts = [p.read_text(encoding="utf-8") for p in sorted(TEXT_DIR.glob("*.txt"))]
    texts += [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    return texts


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=TINY_CONFIG["max_position_embeddings"],
    )


def _build(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = _train_tokenizer()
    cfg = dict(TINY_CONFIG)
    for key, token in (("pad_token_id", "<pad>"), ("bos_token_id", "<s>"), ("eos_token_id", "</s>")):
        cfg[key] = tokenizer.convert_tokens_to_ids(token)
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    config.architectures = ["LlamaForCausalLM"]
    with torch.random.fork_rng(devices=[]):  # the caller's random state is not ours to move
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config)
    def write(tmp: Path) -> None:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").write_text(
            "# tiny -- DEMO MODEL, RANDOM WEIGHTS\n\nBuilt offline by PEFT Workbench "
            "(workbench/tiny.py). It has not been pre-trained and knows nothing.\n",
            encoding="utf-8",
        )
        (tmp / "workbench.json").write_text(json.dumps({"name": TINY_NAME, "version": TINY_VERSION}))

    publish_folder(target, write, ".tiny-")


def ensure_tiny() -> Path:
    """Build the tiny model once (about two seconds) and return its folder."""
    target = tiny_dir()
    if (target / "workbench.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _build(target)
    except OSError:
        # Another process finished building first: its complete copy is as good as ours.
        if not (target / "workbench.json").is_file():
            raise
    return target
