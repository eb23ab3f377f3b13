"""The baseline for bench/throughput.py: a minimal LoRA fine-tune with ``transformers.Trainer``
and ``peft`` and nothing else (no workbench import, no callbacks, no telemetry).

It reads already-tokenized examples (``input_ids``/``labels`` per line, written by
throughput.py from the workbench's own rendering, so both sides train on the same tokens) and
uses the settings the workbench worker uses for the same job: LoRA r=8, alpha 16, dropout
0.05 on all linear layers; torch AdamW without weight decay; a linear schedule; a log every
step; float32 on the CPU. Prints one JSON line with the Trainer's own ``train_runtime``.

    python bench/baseline_plain.py --model DIR --data tokens.jsonl [--epochs 1] [--batch-size 8]
        [--lr 2e-4] [--seed 42] [--padding-free] [--threads N]
"""

import argparse
import json
import os
import tempfile

import torch
from datasets import load_dataset
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, DataCollatorWithFlattening,
                          Trainer, TrainingArguments, set_seed)

parser = argparse.ArgumentParser(description="minimal Trainer + peft LoRA run")
parser.add_argument("--model", required=True)
parser.add_argument("--data", required=True)
parser.add_argument("--epochs", type=float, default=1.0)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--lr", type=float, default=2e-4)
parser.add_argument("--seed", type=int, default=42)
parser.add_argument("--padding-free", action="store_true")
parser.add_argument("--threads", type=int, default=0, help="torch compute threads (0: torch's default)")
parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
args = parser.parse_args()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if args.threads > 0:  # as the worker does (torch.set_num_threads), so both sides compute on the same threads
    torch.set_num_threads(args.threads)
set_seed(args.seed)
tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=False)
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, use_safetensors=True,
                                             trust_remote_code=False)
model.config.use_cache = False
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                                         task_type="CAUSAL_LM"))
data = load_dataset("json", data_files=args.data, split="train")
collator = (DataCollatorWithFlattening() if args.padding_free
            else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
with tempfile.TemporaryDirectory() as out:
    trainer = Trainer(
        model=model, train_dataset=data, data_collator=collator,
        args=TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch_size,
                               num_train_epochs=args.epochs, learning_rate=args.lr, lr_scheduler_type="linear",
                               optim="adamw_torch", weight_decay=0.0, logging_steps=1, save_strategy="no",
                               report_to=[], use_cpu=args.device == "cpu", seed=args.seed, disable_tqdm=True,
                               remove_unused_columns=False, dataloader_num_workers=0),
    )
    result = trainer.train()
tokens = int(sum(len(ids) for ids in data["input_ids"]) * args.epochs)
runtime = result.metrics["train_runtime"]
print(json.dumps({"train_runtime": runtime, "tokens": tokens, "tokens_per_second": tokens / runtime,
                  "torch_threads": torch.get_num_threads(),
                  "train_loss": result.metrics["train_loss"], "steps": result.global_step}))
