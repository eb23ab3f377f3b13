"""Generation safety (issue 15, finding 7): a cancelled chat stream really stops and keeps
the model until it has; concurrent answers keep their own adapter; a caller waits a bounded
time for a busy model; prompts are bounded by a character cap and by the model's context.

Every generate call of the engine is recorded (start, end, new tokens). Long answers
(``max_new_tokens >= LONG``) are forced to their full length (``min_new_tokens``) so that
only a stop can end them early: the random tiny model could otherwise end one by chance."""

import threading
import time

import pytest

from workbench import chat
from workbench.chat import BASE, ChatEngine, Sampling
from workbench.errors import WorkbenchError

PROMPT = "Say the colour of the sky."
LONG = 800  # new tokens of an answer that is meant to be cancelled (the tiny model's context is 1024)
GREEDY = Sampling(max_new_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def lora_folders(tmp_path_factory):
    """Two LoRA adapters of the tiny model with random (non-zero) weights, saved as safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from workbench.tiny import ensure_tiny

    root = tmp_path_factory.mktemp("sec-chat")
    folders = []
    for seed in (1, 2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(ensure_tiny()), LoraConfig(
                r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False))
        model.save_pretrained(root / f"a{seed}", safe_serialization=True)
        folders.append(root / f"a{seed}")
    return folders


def _record_generate(engine: ChatEngine) -> list[dict]:
    """Wrap the engine's ``model.generate``: the list it returns gets one entry per call."""
    calls: list[dict] = []
    model = engine._model
    real = model.generate

    def generate(**kwargs):
        if kwargs["max_new_tokens"] >= LONG:
            kwargs["min_new_tokens"] = kwargs["max_new_tokens"]  # no end of answer: only a stop ends it
        start = time.perf_counter()
        out = real(**kwargs)
        calls.append({"max_new_tokens": kwargs["max_new_tokens"], "start": start, "end": time.perf_counter(),
                      "new_tokens": out.shape[1] - kwargs["input_ids"].shape[1]})
        return out

    model.generate = generate
    return calls


@pytest.fixture
def engine(lora_folders, monkeypatch):
    monkeypatch.delenv("WORKBENCH_MAX_PROMPT_CHARS", raising=False)
    monkeypatch.delenv("WORKBENCH_MODEL_WAIT_S", raising=False)
    engine = ChatEngine("tiny")
    engine.wait_seconds = 30  # a test never hangs for long on a lock
    engine.add_adapter("a1", lora_folders[0])
    engine.add_adapter("a2", lora_folders[1])
    return engine, _record_generate(engine)


def _wait_for(calls: list[dict], count: int, seconds: float = 20) -> None:
    deadline = time.perf_counter() + seconds
    while len(calls) < count and time.perf_counter() < deadline:
        time.sleep(0.02)


def _run_threads(targets, seconds: float = 120) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(fn):
        try:
            fn()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(fn,), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds)
    assert not any(t.is_alive() for t in threads), "a generation did not finish in time"
    return errors


def test_a_cancelled_stream_stops_and_holds_the_model_until_it_has(engine):
    e, calls = engine
    first = e.stream(PROMPT, BASE, Sampling(max_new_tokens=LONG, temperature=0.0))
    assert next(first)
    first.close()  # what gradio does when the browser cancels
    second = e.answer(PROMPT, "a1", Sampling(max_new_tokens=4, temperature=0.0))  # waits for the model
    assert second
    _wait_for(calls, 2)
    assert len(calls) == 2, "the cancelled generation was still running 20 s after the next answer"
    cancelled, after = sorted(calls, key=lambda c: -c["max_new_tokens"])
    assert cancelled["new_tokens"] < 50, f"{cancelled['new_tokens']} of {LONG} tokens generated after the cancel"
    assert after["start"] >= cancelled["end"], "the next answer started while the cancelled one still ran"


def test_an_explicit_stop_ends_the_answer(engine):
    e, calls = engine
    stop = threading.Event()
    pieces = []
    for piece in e.stream(PROMPT, "a2", Sampling(max_new_tokens=LONG, temperature=0.0), stop=stop):
        pieces.append(piece)
        stop.set()
    assert pieces and len(calls) == 1 and calls[0]["new_tokens"] < 50


def test_concurrent_answers_each_keep_their_adapter(engine):
    e, _ = engine
    alone = {who: e.answer(PROMPT, who, GREEDY) for who in (BASE, "a1", "a2")}
    batch_alone = e.answer_batch([[{"role": "user", "content": PROMPT}]], "a2", 16)
    perplexity_alone = e.perplexity([PROMPT * 4], "a1")
    assert len(set(alone.values())) == 3  # the adapters really change the answer

    cancelled = e.stream(PROMPT, BASE, Sampling(max_new_tokens=LONG, temperature=0.0))
    next(cancelled)
    cancelled.close()  # a base answer cancelled mid-way must not leave its adapter choice behind
    assert e.answer(PROMPT, "a1", GREEDY) == alone["a1"]

    got: dict[str, list] = {who: [] for who in (*alone, "batch", "perplexity")}

    def asker(who):
        def ask():
            for _ in range(3):
                stream = e.stream(PROMPT, who, Sampling(max_new_tokens=LONG, temperature=0.0))
                next(stream)
                stream.close()  # cancelled mid-way, then a whole answer
                got[who].append(e.answer(PROMPT, who, GREEDY))
        return ask

    def batch():
        for _ in range(3):
            got["batch"].append(e.answer_batch([[{"role": "user", "content": PROMPT}]], "a2", 16))

    def perplexity():
        for _ in range(3):
            got["perplexity"].append(e.perplexity([PROMPT * 4], "a1"))

    errors = _run_threads([asker(BASE), asker("a1"), asker("a2"), batch, perplexity])
    assert not errors, errors
    for who, answer in alone.items():
        assert got[who] == [answer] * 3, f"{who} answered differently beside other answers"
    assert got["batch"] == [batch_alone] * 3
    assert got["perplexity"] == pytest.approx([perplexity_alone] * 3, rel=1e-5)


def test_a_caller_waits_a_bounded_time_for_a_busy_model(engine):
    e, _ = engine
    e.wait_seconds = 0.5
    holder = e.stream(PROMPT, BASE, Sampling(max_new_tokens=LONG, temperature=0.0))
    next(holder)  # this answer is still being generated: the model is taken
    outcome = []

    def other():
        started = time.perf_counter()
        try:
            e.answer(PROMPT, "a1", GREEDY)
            outcome.append(("answered", time.perf_counter() - started))
        except chat.ModelBusyError as exc:
            outcome.append((str(exc), time.perf_counter() - started))

    waiter = threading.Thread(target=other, daemon=True)
    waiter.start()
    waiter.join(timeout=5)
    holder.close()
    assert outcome, "the second caller was still waiting for the model after 5 s"
    message, waited = outcome[0]
    assert "busy with another answer" in message and "try again" in message and 0.4 <= waited < 3


def test_a_huge_prompt_is_refused_quickly_naming_the_cap(engine):
    e, calls = engine
    started = time.perf_counter()
    with pytest.raises(chat.PromptTooLongError, match="115,000 characters, over the limit of 32,000"):
        e.answer("x" * 115_000, BASE, Sampling(max_new_tokens=1))
    with pytest.raises(chat.PromptTooLongError, match="row 7 is 40,000 characters"):
        e.answer_batch([[{"role": "user", "content": "y" * 40_000}]], "a1", 4, names=["row 7"])
    assert time.perf_counter() - started < 1.0 and not calls


def test_a_prompt_over_the_models_context_is_refused_naming_the_tokens(engine):
    e, calls = engine
    assert e.context_tokens == 1024
    long = "hello world " * 400  # under the character cap, over 1024 tokens
    with pytest.raises(chat.PromptTooLongError, match=r"is [\d,]+ tokens and the answer may take 8 more: "
                                                      r"[\d,]+ tokens, over the 1,024-token context"):
        e.answer(long, BASE, Sampling(max_new_tokens=8))
    with pytest.raises(chat.PromptTooLongError, match=r"the answer may take 1,020 more: .* 1,024-token context"):
        e.answer(PROMPT, "a1", Sampling(max_new_tokens=1020))
    with pytest.raises(chat.PromptTooLongError, match="row 3 is"):
        e.answer_batch([[{"role": "user", "content": PROMPT}], [{"role": "user", "content": long}]], "a2", 8,
                       names=["row 2", "row 3"])
    assert not calls
    with pytest.raises(WorkbenchError, match="max_new_tokens 1..4096"):
        Sampling(max_new_tokens=10**9)
    with pytest.raises(WorkbenchError, match="temperature >= 0"):
        Sampling(temperature=float("nan"))


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("WORKBENCH_MAX_PROMPT_CHARS", "1000")
    monkeypatch.setenv("WORKBENCH_MODEL_WAIT_S", "2.5")
    engine = ChatEngine("tiny")
    assert engine.max_prompt_chars == 1000 and engine.wait_seconds == 2.5
    with pytest.raises(chat.PromptTooLongError, match="over the limit of 1,000 characters"):
        engine.answer("z" * 1001, BASE, Sampling())
    monkeypatch.setenv("WORKBENCH_MODEL_WAIT_S", "soon")
    with pytest.raises(WorkbenchError, match="WORKBENCH_MODEL_WAIT_S='soon'"):
        ChatEngine("tiny")


def test_the_chat_page_cancels_and_shows_limits_as_messages(monkeypatch):
    from workbench.ui.chat_tab import arena_next, chat_answers, engine_with

    monkeypatch.delenv("WORKBENCH_MAX_PROMPT_CHARS", raising=False)
    monkeypatch.setattr("workbench.ui.chat_tab._ENGINES", {})
    e = engine_with("tiny", [])  # the page's inference worker (a process of its own)
    page = chat_answers("tiny", [], PROMPT, 0, 0.0, LONG)
    assert next(page)[0]  # the base's first piece, plain text
    page.close()  # the browser's cancel: the worker stops generating at its next token
    deadline, done = time.perf_counter() + 10, []
    while not done and time.perf_counter() < deadline:
        info = e.info()
        done = [r for r in info["recent"] if r["op"] == "stream"] if info and not info["busy"] else []
        time.sleep(0.05)
    assert done, "the model stayed taken after the cancel"
    assert done[-1]["cancelled"] and done[-1]["pieces"] < 50, done

    *_, last = chat_answers("tiny", [], "x" * 115_000, 0, 0.0, 8)
    assert "Cannot answer" in last[0] and "over the limit of 32,000 characters" in last[0]
    *_, last = chat_answers("tiny", [], PROMPT, float("nan"), 0.0, 8)
    assert "Seed: give a whole number" in last[0]
    *_, last = chat_answers("tiny", [], PROMPT, 0, 0.0, None)
    assert "Max new tokens: give a whole number" in last[0]
    assert "Temperature: give a number" in arena_next("tiny", [], "hi", 0, "hot", 8, 0)[4]
