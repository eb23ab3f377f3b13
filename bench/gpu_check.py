"""The one prepared GPU check (issue 16): everything the workbench claims about a GPU, measured in
one command on one H100/H200 in about 8 minutes, written to one folder (JSON + markdown, with
commit, date, device, driver and library versions).

Parts, each in a process of its own with its own time limit (one that fails or runs out of
time is reported as such; the others still run):

0. ``models``: the random-weight model folders the others use, built once on the GPU (an 8B
   model's random init takes minutes on a CPU);
1. ``accuracy``: ``bench/planner_accuracy.py --device cuda`` over its CUDA matrix (31
   configurations: SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B and Llama-3.1-8B at full depth with
   random weights; full / LoRA / QLoRA / DoRA / IA3 / prefix / prompt; bf16 and bf16-mixed;
   sequences 512-4096; checkpointing on and off; AdamW and 8-bit AdamW; 11 held out, chosen
   before any ran on a GPU): planned vs ``max_memory_allocated``, with reserved and NVML beside;
2. ``worker``: the real worker end to end (QLoRA on the Llama-3.1-8B config, 30 steps) with its
   live memory samples and the prediction error it reports;
3. ``throughput``: ``bench/throughput.py --device cuda``: the worker against the plain Trainer +
   peft script on the same configuration, interleaved;
4. ``inference``: the inference worker on the GPU with a base and two adapters: its claim, what
   it holds (allocated, reserved, NVML) and tokens/s per contender.

``--device cpu --quick`` runs every part on ``tiny`` in about two minutes: the dry run the test
suite makes (``tests/test_gpu_check.py``). Offline on a machine with torch, transformers, peft
and accelerate but no package registry: ``bench/README.md`` lists the wheels to carry.

    python bench/gpu_check.py [--device cuda|cpu] [--quick] [--out DIR] [--parts accuracy,worker,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _meta import HERE, REPO, markdown_header, run_metadata  # noqa: E402  (the repo on sys.path, offline)

PARTS = ("models", "accuracy", "worker", "throughput", "inference")
#: seconds each part may take on a GPU (about 8 minutes in all) and in the CPU dry run
LIMITS = {"cuda": {"models": 90, "accuracy": 240, "worker": 100, "throughput": 45, "inference": 45},
          "cpu": {"models": 120, "accuracy": 300, "worker": 240, "throughput": 300, "inference": 180}}
E2E = {"cuda": ("llama-3.1-8b", "qlora", {"dtype": "bfloat16", "batch_size": 2, "seq_len": 512,
                                         "gradient_checkpointing": True}, 30),
       "cpu": ("tiny", "lora", {"dtype": "float32", "batch_size": 2, "seq_len": 64}, 4)}
CHAT = {"cuda": ("llama-3.2-1b", 128), "cpu": ("tiny", 16)}
GIB = 2**30


def driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        value = pynvml.nvmlSystemGetDriverVersion()
        return value.decode() if isinstance(value, bytes) else str(value)
    except Exception:  # no NVML (a CPU machine)
        return None


def _model_folder(key: str, root: Path) -> tuple[str, Path | None]:
    """(model name for a job, folder) of a bench model: ``tiny`` by name; a bundled config at
    full size with random bf16 weights (planner_accuracy's builder), plus tiny's tokenizer (its
    ids are all inside every vocabulary here) so the worker can tokenize."""
    if key == "tiny":
        return "tiny", None
    sys.path.insert(0, str(HERE))
    import planner_accuracy as pa

    pa.build_model(key, pa.CUDA_MODELS, root)
    folder = root / key
    from workbench.tiny import ensure_tiny

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if not (folder / name).exists():
            shutil.copy(ensure_tiny() / name, folder / name)
    return str(folder), folder


def _data(path: Path, rows: int = 400) -> Path:
    sys.path.insert(0, str(HERE))
    from throughput import write_data

    write_data(path, rows)
    return path


def part_models(device: str, out: Path, root: Path, quick: bool) -> dict:
    """Build every model folder the other parts need, before their clocks start."""
    sys.path.insert(0, str(HERE))
    import planner_accuracy as pa

    keys = (["tiny"] if quick else list(dict.fromkeys(c["model"] for c in pa.cuda_matrix()))) \
        + [E2E[device][0], CHAT[device][0]]
    built = {}
    for key in dict.fromkeys(keys):
        started = time.perf_counter()
        _model_folder(key, root)
        built[key] = round(time.perf_counter() - started, 1)
    return {"built_seconds": built}


def part_worker(device: str, out: Path, root: Path, quick: bool = False) -> dict:
    """The real worker, started as the page starts it, on the end-to-end configuration."""
    from workbench.sessions import session_path
    from workbench.training.events import read_events
    from workbench.training.job import Schedule
    from workbench.training.launcher import make_job, prepare, spawn

    key, method, settings, steps = E2E[device]
    model, _ = _model_folder(key, root)
    job = make_job(model, method, str(_data(out / "e2e.jsonl")), settings={"device": device, **settings},
                   schedule=Schedule(max_steps=steps, learning_rate=2e-4))
    started = time.perf_counter()
    sid = prepare(job)
    rc = spawn(sid).wait()
    events = read_events(session_path(sid) / "events.jsonl")[0]
    status = [e for e in events if e["kind"] == "status"][-1]
    samples = [e for e in events if e["kind"] == "memory"]
    steps_seen = [e for e in events if e["kind"] == "step_memory"]
    plan = next((e for e in events if e["kind"] == "plan"), {})
    check = next((e for e in events if e["kind"] in ("probe", "step_check")), {})
    predicted = plan.get("effective_peak_bytes") or plan.get("peak_bytes")
    measured = max((e["peak_bytes"] for e in steps_seen), default=None)
    result = {"model": key, "method": method, "settings": settings, "steps": steps, "exit_code": rc,
              "status": status.get("status"), "error": status.get("error"),
              "seconds": round(time.perf_counter() - started, 1),
              "memory_samples": len(samples), "sampled_peak": max((e.get("allocated_bytes") or e.get("rss_bytes") or 0
                                                                     for e in samples), default=None),
              "step_records": len(steps_seen), "predicted_peak_bytes": predicted, "measured_step_peak_bytes": measured,
              "measured_quantity": steps_seen[0].get("quantity") if steps_seen else None,
              "reserved_bytes": max((e.get("max_reserved_bytes") or 0 for e in steps_seen), default=None),
              "nvml_used_bytes": max((e.get("nvml_used_bytes") or 0 for e in steps_seen), default=None),
              "error_pct": round((predicted - measured) / measured * 100, 2) if predicted and measured else None,
              "worker_check": {k: check.get(k) for k in ("error_pct", "predicted_bytes", "measured_bytes", "verdict")
                               if k in check}}
    return result


def part_inference(device: str, out: Path, root: Path, quick: bool = False) -> dict:
    """The inference worker on ``device``: a base and two LoRA adapters, each answering."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from workbench.chat import BASE, Sampling
    from workbench.inference.client import InferenceClient
    from workbench.loading import weights_dir
    from workbench.specs import load_model_spec

    key, tokens = CHAT[device]
    model, _ = _model_folder(key, root)
    base = AutoModelForCausalLM.from_pretrained(weights_dir(load_model_spec(model)), dtype=torch.float32,
                                                use_safetensors=True, trust_remote_code=False)
    adapters = []
    for i, targets in enumerate((["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"])):
        folder = out / f"adapter-{i + 1}"
        torch.manual_seed(i)
        peft = get_peft_model(base, LoraConfig(r=8, target_modules=targets, init_lora_weights=False))
        peft.save_pretrained(folder)
        base = peft.unload()
        adapters.append(folder)
    del base
    client = InferenceClient(model, device=device)
    try:
        started = time.perf_counter()
        first = client.answer("Say the colour of the sky.", BASE, Sampling(max_new_tokens=4, temperature=0.0))
        load_seconds = time.perf_counter() - started
        for i, folder in enumerate(adapters):
            client.add_adapter(f"a{i + 1}", folder)
        tok = client.tokenizer
        rows = []
        for who in (BASE, "a1", "a2"):
            started = time.perf_counter()
            text = client.answer("Tell me about the sky.", who,
                                 Sampling(max_new_tokens=tokens, temperature=0.7, seed=1))
            seconds = time.perf_counter() - started
            n = len(tok(text, add_special_tokens=False)["input_ids"])
            rows.append({"who": who, "seconds": round(seconds, 3), "tokens": n,
                         "tokens_per_second": round(n / seconds, 1) if seconds else None})
        info = client.info() or {}
    finally:
        client.close()
    return {"model": key, "device": device, "load_and_first_answer_seconds": round(load_seconds, 1),
            "first_answer": first[:40], "contenders": rows, "claimed_bytes": info.get("claimed_bytes"),
            "plan": info.get("plan"), "measured": info.get("measured"), "adapters": info.get("adapters")}


def _env() -> dict:
    """The parts' environment: unbuffered, and this checkout importable by every process they
    start (workers too) without an install, beside any carried wheels on ``PYTHONPATH``."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def _run_part(part: str, args, out: Path) -> dict:
    """One part in its own process (a crash or an out-of-memory stays there), within its limit."""
    limit = LIMITS[args.device][part]
    log = out / f"{part}.log"
    if part == "accuracy":
        argv = [str(HERE / "planner_accuracy.py"), "--device", args.device, "--steps", "2",
                "--out", str(out / "accuracy")] + (["--quick"] if args.quick else [])
    elif part == "throughput":
        argv = [str(HERE / "throughput.py"), "--device", args.device, "--variants", "workbench",
                "--repeat", "1" if args.quick else "2", "--rows", "48" if args.quick else "240",
                "--out", str(out / "throughput")]
    else:
        argv = [str(Path(__file__).resolve()), "--device", args.device, "--out", str(out),
                "--one", part] + (["--quick"] if args.quick else [])
    started = time.perf_counter()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run([sys.executable, *argv], stdout=fh, stderr=subprocess.STDOUT, timeout=limit, cwd=REPO,
                                env=_env()).returncode
            status = "done" if rc == 0 else f"failed (exit code {rc})"
        except subprocess.TimeoutExpired:
            status = f"stopped at its limit of {limit} s"
    result = {"part": part, "status": status, "seconds": round(time.perf_counter() - started, 1), "limit_s": limit}
    found = {"accuracy": out / "accuracy" / "planner_accuracy.json",
             "throughput": out / "throughput" / "throughput.json",
             **{name: out / f"{name}.json" for name in ("models", "worker", "inference")}}[part]
    if found.is_file():
        result["result"] = json.loads(found.read_text())
    if status != "done":
        result["log_tail"] = log.read_text(errors="replace")[-1500:]
    return result


def _gib(n) -> str:
    return f"{n / GIB:.2f} GiB" if isinstance(n, (int, float)) and n else "-"


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = markdown_header(f"GPU check ({report['device']}{', quick' if report['quick'] else ''})", meta)
    lines += [f"- driver: {report.get('driver') or 'none (no NVML)'}", f"- total: {report['seconds']} s", ""]
    for part in report["parts"]:
        lines += [f"## {part['part']}: {part['status']} ({part['seconds']} s of {part['limit_s']} s)", ""]
        r = part.get("result")
        if part["part"] == "accuracy" and r:
            s = r["summary"]
            if s.get("measured"):
                lines += [f"{s['within_5pct']}/{s['measured']} within ±5%, median |error| "
                          f"{s['median_abs_error_pct']:.2f}%, worst {s['worst_error_pct']:+.2f}% ({s['worst_id']}); "
                          f"held out {s['held_out'].get('within_5pct', 0)}/{s['held_out'].get('measured', 0)} within "
                          "±5%.", "", "| configuration | H | planned | measured peak (CUDA: max allocated) | error "
                          "| max reserved | NVML used |",
                          "|---|---|---:|---:|---:|---:|---:|"]
                for c in r["configs"]:
                    if c["status"] != "measured":
                        lines.append(f"| {c['id']} | {'H' if c.get('held_out') else ''} | {c['status'][:80]} | | | | |")
                        continue
                    cm = c.get("cuda_memory") or {}
                    lines.append(f"| {c['id']} | {'H' if c.get('held_out') else ''} | {_gib(c['peak']['predicted'])} | "
                                 f"{_gib(c['peak']['measured'])} | {c['peak']['error_pct']:+.2f}% | "
                                 f"{_gib(cm.get('max_memory_reserved'))} | {_gib(cm.get('nvml_used_bytes'))} |")
            lines.append("")
        elif part["part"] == "worker" and r:
            lines += [f"{r['method']} on {r['model']}, {r['steps']} steps: {r['status']}; {r['memory_samples']} live "
                      f"memory samples, {r['step_records']} step records; predicted {_gib(r['predicted_peak_bytes'])}, "
                      f"measured {_gib(r['measured_step_peak_bytes'])} ({r['measured_quantity']}): error "
                      f"{r['error_pct']}%; reserved {_gib(r['reserved_bytes'])}, NVML "
                      f"{_gib(r['nvml_used_bytes'])}.", ""]
        elif part["part"] == "throughput" and r:
            lines += [r["summary"], ""]
        elif part["part"] == "inference" and r:
            lines += [f"{r['model']} on {r['device']}: claimed {_gib(r['claimed_bytes'])}; holds "
                      + ", ".join(f"{k} {_gib(v)}" for k, v in (r.get("measured") or {}).items()) + "; "
                      + "; ".join(f"{c['who']} {c['tokens_per_second']} tokens/s" for c in r["contenders"]) + ".", ""]
        if part.get("log_tail"):
            lines += ["```", part["log_tail"], "```", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="every part on tiny (the CPU dry run)")
    parser.add_argument("--out", default="", help="the results folder (default bench/results/gpu_check)")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--one", choices=PARTS, help=argparse.SUPPRESS)  # a part's own process
    args = parser.parse_args()
    out = Path(args.out or HERE / "results" / ("gpu_check" if args.device == "cuda" else "gpu_check_cpu"))
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and args.one is None:
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA here; use --device cpu --quick for the dry run", file=sys.stderr)
            return 2
    if args.one:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            os.environ.setdefault("WORKBENCH_SESSIONS", str(Path(tmp) / "sessions"))
            from workbench.paths import cache_dir

            root = cache_dir() / "bench-models"
            root.mkdir(parents=True, exist_ok=True)
            run = {"models": part_models, "worker": part_worker, "inference": part_inference}[args.one]
            result = run(args.device, out, root, args.quick)
        (out / f"{args.one}.json").write_text(json.dumps(result, indent=1, default=str))
        print(json.dumps(result, default=str)[:2000])
        return 0 if result.get("status", "completed") == "completed" else 1
    started = time.perf_counter()
    parts = [p for p in args.parts.split(",") if p in PARTS]
    results = []
    for part in parts:
        results.append(_run_part(part, args, out))
        print(f"{part}: {results[-1]['status']} ({results[-1]['seconds']} s)", file=sys.stderr, flush=True)
    report = {"device": args.device, "quick": args.quick, "driver": driver_version(), "meta": run_metadata(args.device),
              "seconds": round(time.perf_counter() - started, 1), "parts": results}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(r["status"] == "done" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
