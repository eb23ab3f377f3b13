"""The inference worker (issue 16): chat, arena, perplexity and evaluation run in a process of
their own that streams, cancels, restarts after a crash, goes idle, and claims its memory on
the device beside training runs -- refused, or making a training run wait, when the two do
not fit together. Its memory plan is checked against the real model, adapter and KV cache."""

import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from workbench.chat import BASE, ChatEngine, Sampling
from workbench.errors import WorkbenchError

PROMPT = "Say the colour of the sky."
GREEDY = Sampling(max_new_tokens=12, temperature=0.0)
LONG = Sampling(max_new_tokens=600, temperature=0.7)  # ~12 s on the tiny model: only a cancel or a kill ends it early


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    old = os.environ.get("WORKBENCH_SESSIONS")
    os.environ["WORKBENCH_SESSIONS"] = str(root / "sessions")
    yield root
    if old is None:
        os.environ.pop("WORKBENCH_SESSIONS", None)
    else:
        os.environ["WORKBENCH_SESSIONS"] = old


@pytest.fixture(scope="module")
def adapter(store):
    """A LoRA adapter of the tiny model, saved as a run saves one (safetensors)."""
    from peft import LoraConfig, get_peft_model

    engine = ChatEngine("tiny")
    engine.tokenizer  # loads the model
    model = get_peft_model(engine._model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    folder = store / "adapter"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def client(store):
    from workbench.inference.client import InferenceClient

    c = InferenceClient("tiny", device="cpu")
    yield c
    c.close()


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def _fake_claim(device: str, nbytes: int, what: str, kind: str, pid: int) -> None:
    """A claim as another process writes it, even one that no longer fits (RAM shrank)."""
    import json

    from workbench.reservations import _path

    _path(device, pid).write_text(json.dumps({"device": device, "pid": pid, "bytes": nbytes, "what": what,
                                              "kind": kind}))


def _tensor_bytes(model) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def test_the_plan_is_the_model_the_adapter_and_the_cache_in_memory(adapter):
    """weights = the loaded base's tensor bytes; adapters = what attaching one adds (fp32);
    KV cache = the DynamicCache generate leaves, to the byte."""
    from workbench.memory.inference import adapter_numel, plan_inference
    from workbench.specs import load_model_spec

    engine = ChatEngine("tiny")
    tok = engine.tokenizer
    spec = load_model_spec("tiny")
    base = _tensor_bytes(engine._model)
    assert plan_inference(spec, "float32", "cpu").part("weights") == base
    engine.add_adapter("a1", adapter)
    elements = adapter_numel(adapter)
    assert elements > 0
    assert plan_inference(spec, "float32", "cpu", elements).part("adapters") == _tensor_bytes(engine._model) - base
    ids = tok("hello there, sky", return_tensors="pt")
    with engine._weights_of(engine._model, BASE):
        out = engine._model.generate(**ids, max_new_tokens=9, do_sample=False, return_dict_in_generate=True)
    cached = sum(layer.keys.nbytes + layer.values.nbytes for layer in out.past_key_values.layers)
    tokens = ids["input_ids"].shape[1] + 9 - 1  # the last new token is never fed back
    assert plan_inference(spec, "float32", "cpu", batch=1, tokens=tokens).part("kv_cache") == cached
    big = plan_inference(spec, "bfloat16", "cuda", elements, batch=4, tokens=2048, scoring=True)
    assert big.part("weights") < base and big.part("overhead") > 0 and "4 x 2,048 tokens" in big.describe()
    with pytest.raises(WorkbenchError, match="not a readable safetensors"):
        adapter_numel(adapter.parent)  # no adapter file there


def test_answers_stream_from_the_worker_the_same_as_in_process(client):
    pieces = list(client.stream(PROMPT, BASE, GREEDY))
    assert len(pieces) > 1  # streamed, piece by piece
    assert "".join(pieces) == ChatEngine("tiny").answer(PROMPT, BASE, GREEDY)
    batch = client.answer_batch([[{"role": "user", "content": PROMPT}], [{"role": "user", "content": "Hi"}]], BASE, 6)
    assert len(batch) == 2 and all(isinstance(a, str) for a in batch)
    seen = []
    assert client.perplexity([PROMPT, "Blue."], BASE, progress=lambda d, t: seen.append((d, t))) > 0
    assert seen == [(1, 2), (2, 2)]
    info = client.info()
    assert info["pid"] != os.getpid() and info["device"] == "cpu" and info["loaded"] and info["context"] == 1024
    assert info["measured"]["tensor_bytes"] == info["plan"]["parts"][0]["bytes"]  # weights: planned = held


def test_errors_cross_the_process_boundary_as_messages(client):
    from workbench.chat import PromptTooLongError

    with pytest.raises(PromptTooLongError, match="over the 1,024-token context"):
        client.answer("sky " * 2000, BASE, Sampling(max_new_tokens=8))
    with pytest.raises(WorkbenchError, match="no adapter 'nobody'"):
        client.answer(PROMPT, "nobody", GREEDY)
    with pytest.raises(WorkbenchError, match="no peft adapter here"):
        client.add_adapter("x", client.log_path.parent)
    assert client.answer(PROMPT, BASE, GREEDY)  # the worker goes on serving


def test_a_cancel_ends_generation_in_the_worker_and_frees_it(client):
    stream = client.stream(PROMPT, BASE, LONG)
    assert next(stream) and next(stream)
    stream.close()  # the browser's cancel
    started = time.perf_counter()
    assert client.answer(PROMPT, BASE, GREEDY)  # served at once, not after 600 tokens
    assert time.perf_counter() - started < 5
    last = [r for r in client.info()["recent"] if r["op"] == "stream" and r["cancelled"]][-1]
    assert last["pieces"] < 100
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    from workbench.chat import OperationCancelled

    with pytest.raises(OperationCancelled):
        client.answer_batch([[{"role": "user", "content": PROMPT}]], BASE, 600, stop=stop)


def test_a_killed_worker_fails_its_request_and_comes_back_with_its_adapters(client, adapter):
    from workbench.inference.client import WorkerGone

    client.add_adapter("sky", adapter)
    assert client.answer(PROMPT, "sky", GREEDY)
    pid = client.info()["pid"]
    stream = client.stream(PROMPT, BASE, LONG)
    next(stream)
    os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
    with pytest.raises(WorkerGone, match="SIGKILL"):
        for _ in stream:
            pass
    # a fresh LoRA adapter (B = 0) answers as the base does: the adapter is attached and used
    assert client.answer(PROMPT, "sky", GREEDY) == ChatEngine("tiny").answer(PROMPT, BASE, GREEDY)
    info = client.info()
    assert info["pid"] != pid and info["adapters"] == ["sky"]  # a fresh worker, the adapter attached again
    assert "SIGKILL" in client.last_exit


def test_an_idle_worker_exits_releases_its_claim_and_starts_again(store):
    from workbench.inference.client import InferenceClient
    from workbench.reservations import claims

    c = InferenceClient("tiny", device="cpu", idle_seconds=1)
    try:
        assert c.answer(PROMPT, BASE, GREEDY)
        pid = c.ready["pid"]
        assert any(x.pid == pid and x.kind == "inference" for x in claims("cpu"))
        deadline = time.time() + 20
        while c.alive and time.time() < deadline:
            time.sleep(0.2)
        assert not c.alive and not any(x.pid == pid for x in claims("cpu"))
        assert c.answer(PROMPT, BASE, GREEDY) and c.ready["pid"] != pid  # back on the next request
    finally:
        c.close()


def test_a_model_that_does_not_fit_beside_a_training_run_is_refused(store):
    from workbench.inference.client import InferenceClient
    from workbench.reservations import NoRoom, release

    run = _sleeper()  # stands in for a training worker that claimed nearly all the RAM
    try:
        _fake_claim("cpu", 10**15, "run 20261202-000000-feedbeef", "training", run.pid)
        c = InferenceClient("tiny", device="cpu")
        with pytest.raises(NoRoom, match=r"the chat model tiny .* does not fit on cpu.*run 20261202-000000-feedbeef"):
            c.answer(PROMPT, BASE, GREEDY)
        assert not c.alive  # nothing loaded, nothing left running
    finally:
        release("cpu", run.pid)
        run.kill()
        run.wait()


def test_a_request_that_does_not_fit_is_refused_and_the_worker_goes_on(client):
    from workbench.reservations import NoRoom, claim, release, room

    from workbench.reservations import _resident

    assert client.answer(PROMPT, BASE, GREEDY)
    info = client.info()
    pid = info["pid"]
    other = _sleeper()
    try:
        left, _ = room("cpu", pid)  # leave the worker its claim and 8 MiB more
        grows = left - info["claimed_bytes"] - 8 * 2**20
        claim("cpu", grows + _resident(other.pid), "run 20261202-000000-0badf00d", "training", pid=other.pid)
        with pytest.raises(NoRoom, match="run 20261202-000000-0badf00d"):  # scoring needs every position's logits
            client.perplexity(["sky " * 900], BASE)
        assert client.answer(PROMPT, BASE, GREEDY) and client.info()["pid"] == pid
    finally:
        release("cpu", other.pid)
        other.kill()
        other.wait()


def test_claims_on_a_gpu_count_every_other_claim_and_its_margins(store, monkeypatch):
    from fake_nvml import GIB, FakeDevice, install

    from workbench.devices import visible_gpus
    from workbench.reservations import NoRoom, claim, claims, device_key, release, room

    install(monkeypatch, [FakeDevice("GPU-aaaa1111", total=80 * GIB, used=30 * GIB)])
    gpu = visible_gpus()[0]
    key = device_key("cuda", gpu)
    run = _sleeper()
    try:
        claim(key, 40 * GIB, "run 20261202-000000-aaaaaaaa", "training", pid=run.pid, gpu=gpu)
        left, why = room(key, gpu=gpu)
        # 80 GiB less two CUDA contexts (the run's, this one's: 0.5 GiB each) over the allocator's 1.1, less the
        # run's 40 GiB claim; what NVML's free 50 GiB holds (49.5 / 1.1 = 45 GiB) is not lower
        assert left == math.floor((80 * GIB - 2 * 512 * 2**20) / 1.1) - 40 * GIB
        assert "run 20261202-000000-aaaaaaaa" in why
        with pytest.raises(NoRoom, match="does not fit on gpu-GPU-aaaa1111"):
            claim(key, 32 * GIB, "the chat model big", "inference", gpu=gpu)
        claim(key, 31 * GIB, "the chat model big", "inference", gpu=gpu)
        assert {c.kind for c in claims(key)} == {"training", "inference"}
    finally:
        release(key)
        release(key, run.pid)
        run.kill()
        run.wait()
    assert claims(key) == []  # a dead process's claim is gone too


def test_a_training_run_waits_while_a_chat_model_is_in_the_way(store, tmp_path):
    from workbench.reservations import claims, room
    from workbench.training.turns import wait_for_turn

    folder = tmp_path / "20261202-000001-cccccccc"
    folder.mkdir()
    chat = _sleeper()
    left, _ = room("cpu")
    _fake_claim("cpu", left + 2**30, "the chat model tiny", "inference", chat.pid)  # more than there is now
    reasons, got = [], {}
    waiter = threading.Thread(target=lambda: got.update(turn=wait_for_turn(
        folder, "cpu", poll=0.05, need_bytes=2**30, on_wait=reasons.append)), daemon=True)
    waiter.start()
    time.sleep(0.5)
    assert "turn" not in got and len(reasons) == 1 and "the chat model tiny" in reasons[0]
    chat.kill()  # the chat model is released (its worker stops)
    chat.wait()
    waiter.join(timeout=10)
    turn = got["turn"]
    assert turn.claims == ["cpu"] and [c.what for c in claims("cpu") if c.kind == "training"] == [f"run {folder.name}"]
    turn.close()
    assert not [c for c in claims("cpu") if c.kind == "training"]
    # a run that would not fit even without the chat models never waits on them (the preflight
    # and the memory cap judge it)
    turn = wait_for_turn(folder, "cpu", poll=0.05, need_bytes=10**15)
    assert turn.claims == [] and turn.locks
    turn.close()
