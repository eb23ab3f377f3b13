"""Does a busy web UI slow a training run? The same tiny LoRA run started through the web API
with the server idle, and with 20 clients on loopback behaving like open browser tabs: each
polls the run's status once a second (what the Train tab's timer does) and, every fifth
second, asks for a plan and inspects the dataset (a person changing a setting). Runs
alternate (idle, loaded, idle, loaded, ...) against one server. Reports the run's training
tokens/s (median over its steps, first steps skipped) and the loaded/idle ratio; target
>= 0.90. Also counts the clients' requests and errors.

The clients stand in for browsers on other machines, so this process lowers its own CPU
priority (nice 10) after starting the server: the server and the training worker keep
normal priority, and what is measured is the server's cost to training, not the cost of
20 Python HTTP clients on the same two cores. Writes bench/results/concurrency.{json,md}.

    python bench/concurrency.py [--steps 300] [--repeat 2] [--clients 20]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = ROOT / "bench" / "results"
TARGET = 0.90
SKIP_STEPS = 5


def _server(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORKBENCH_SESSIONS": str(folder / "sessions")}
    log = open(folder / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}/"


def _run(url: str, data: Path, folder: Path, steps: int, clients: int) -> dict:
    from gradio_client import Client, handle_file

    from workbench.ui.plan_tab import KNOB_NAMES

    main = Client(url, verbose=False)
    clients_ready = threading.Barrier(clients + 1)
    started = threading.Event()
    run = {}

    def start_run() -> None:
        run["id"] = main.predict("tiny", "lora", "float32", "auto", 4, 128, 1, False, "adamw", "cpu", handle_file(str(data)),
                             "auto", "", 0, False, steps, 1e-3, 1, "single", "none", *[None] * len(KNOB_NAMES),
                             api_name="/start_run")[0]
        started.set()

    done = threading.Event()
    counts = {"requests": 0, "errors": 0}
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        c = Client(url, verbose=False)  # every client is connected before the run starts
        clients_ready.wait()
        started.wait()
        calls = [("/plan", ("tiny", "lora", "bfloat16", "auto", 1 + i % 4, 128, 1, False, "adamw", "cuda",
                            *[None] * len(KNOB_NAMES))),
                 ("/inspect", (handle_file(str(data)), "tiny", "auto", "", None, 0, False)),
                 ("/run_status", (run["id"],))]
        n = 0
        while not done.is_set() and n < 3600:  # bounded: an hour of ticks at most
            tick = time.monotonic()
            for api, args in [calls[2]] + (calls[:2] if n % 5 == i % 5 else []):  # clients spread over the 5 s
                try:
                    c.predict(*args, api_name=api)
                    with lock:
                        counts["requests"] += 1
                except Exception:  # noqa: BLE001 -- counted
                    with lock:
                        counts["errors"] += 1
            n += 1
            done.wait(max(0.0, 1.0 - (time.monotonic() - tick)))

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    clients_ready.wait()
    start_run()
    run_id = run["id"]
    events_path = folder / "sessions" / run_id / "events.jsonl"
    while True:
        events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
        last = [e for e in events if e.get("kind") == "status"][-1]["status"]
        if last in ("completed", "failed", "cancelled", "interrupted"):
            break
        time.sleep(0.5)
    done.set()
    for t in threads:
        t.join(timeout=60)
    rates = [e["tokens_per_second"] for e in events if e.get("kind") == "log" and e.get("step", 0) > SKIP_STEPS
             and e.get("tokens_per_second")]
    return {"run": run_id, "status": last, "clients": clients, "tokens_per_second": statistics.median(rates),
            "steps_measured": len(rates), **counts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="wb-concurrency-"))
    data = folder / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."})
                              for i in range(200)))
    proc, url = _server(folder)
    os.nice(10)  # the clients stand in for remote browsers (see the docstring); the server keeps its priority
    rows = []
    try:
        for r in range(args.repeat):
            for clients in (0, args.clients):
                row = _run(url, data, folder, args.steps, clients)
                row["repeat"] = r
                rows.append(row)
                print(f"repeat {r} clients {clients:2d}: {row['tokens_per_second']:8.1f} tokens/s, "
                      f"{row['requests']} requests, {row['errors']} errors ({row['status']})", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    idle = [r["tokens_per_second"] for r in rows if r["clients"] == 0]
    loaded = [r["tokens_per_second"] for r in rows if r["clients"] > 0]
    ratios = [b / a for a, b in zip(idle, loaded)]
    summary = {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
               "target": TARGET, "met": statistics.median(ratios) >= TARGET,
               "client_requests": sum(r["requests"] for r in rows), "client_errors": sum(r["errors"] for r in rows)}
    from _meta import markdown_header, run_metadata

    meta = {**run_metadata("cpu"), "cores": os.cpu_count(), "steps": args.steps, "repeat": args.repeat,
            "clients": args.clients}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "concurrency.json").write_text(json.dumps({"meta": meta, "runs": rows, "summary": summary}, indent=2))
    lines = markdown_header(f"Training speed while {args.clients} web clients are busy", meta) + [
             f"tiny LoRA, batch 4, {args.steps} steps "
             f"per run; each client polls the run status every second and plans + inspects every 5 s "
             f"(browser tabs on loopback; the client process runs at nice 10, the server and worker at 0).", "",
             "| repeat | clients | tokens/s (median step) | client requests | client errors |", "|---|---|---|---|---|"]
    lines += [f"| {r['repeat']} | {r['clients']} | {r['tokens_per_second']:.1f} | {r['requests']} | {r['errors']} |"
              for r in rows]
    lines += ["", f"Loaded / idle tokens/s: median **{summary['ratio_median']:.3f}** (min {summary['ratio_min']:.3f}, "
              f"max {summary['ratio_max']:.3f}); target >= {TARGET} -- {'met' if summary['met'] else 'NOT met'}."]
    (RESULTS / "concurrency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
