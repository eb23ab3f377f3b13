"""Side-by-side chat: one base in memory, adapters switched in place, same seed."""

import json
import os

import pytest

from workbench.chat import BASE, ChatEngine, Sampling
from workbench.errors import WorkbenchError
from workbench.training.job import Schedule
from workbench.training.launcher import make_job, prepare


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    import os

    from workbench.sessions import session_path
    from workbench.training.checkpoints import newest_complete
    from workbench.training.worker import main

    root = tmp_path_factory.mktemp("chat")
    os.environ["WORKBENCH_SESSIONS"] = str(root / "sessions")
    data = root / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": "Say the colour of the sky.", "output": "Blue blue blue."})
                              for _ in range(32)))
    found = []
    for method, lr in (("lora", 5e-3), ("lora", 1e-4), ("ia3", 5e-2)):
        sid = prepare(make_job("tiny", method, str(data), schedule=Schedule(max_steps=20, learning_rate=lr)))
        assert main([str(session_path(sid) / "job.json")]) == 0
        found.append((method, newest_complete(session_path(sid))))
    yield found
    os.environ.pop("WORKBENCH_SESSIONS", None)


def test_base_and_adapters_answer_the_same_prompt_differently(adapters):
    engine = ChatEngine("tiny")
    engine.add_adapter("lora", adapters[0][1])
    engine.add_adapter("slow", adapters[1][1])
    sampling = Sampling(max_new_tokens=12, temperature=0.0, seed=1)
    base = engine.answer("Say the colour of the sky.", BASE, sampling)
    lora = engine.answer("Say the colour of the sky.", "lora", sampling)
    slow = engine.answer("Say the colour of the sky.", "slow", sampling)
    assert base != lora and "Blue" in lora and slow != lora
    assert engine.answer("Say the colour of the sky.", BASE, sampling) == base  # adapters switch back off
    pieces = list(engine.stream("Say the colour of the sky.", "lora", sampling))
    assert len(pieces) > 1 and "".join(pieces) == lora  # streamed token by token
    sampled = Sampling(max_new_tokens=12, temperature=1.0, seed=7)
    assert engine.answer("Hello", "lora", sampled) == engine.answer("Hello", "lora", sampled)  # same seed


def test_one_base_copy_in_memory(adapters):
    engine = ChatEngine("tiny")
    engine.add_adapter("a", adapters[0][1])
    before = sum(p.numel() for p in engine._model.parameters())
    engine.add_adapter("b", adapters[0][1])
    after = sum(p.numel() for p in engine._model.parameters())
    adapter = sum(p.numel() for n, p in engine._model.named_parameters() if ".a." in n or n.endswith(".a"))
    assert after - before == adapter  # the second adapter adds only its own weights


def test_perplexity_shows_what_the_adapter_learned(adapters):
    engine = ChatEngine("tiny")
    engine.add_adapter("lora", adapters[0][1])
    text = ["<s><|im_start|>user\nSay the colour of the sky.<|im_end|>\n<|im_start|>assistant\nBlue blue blue.<|im_end|>"]
    assert engine.perplexity(text, "lora") < engine.perplexity(text, BASE)


def test_bad_adapter_requests(adapters, tmp_path):
    engine = ChatEngine("tiny")
    with pytest.raises(WorkbenchError, match="no peft adapter"):
        engine.add_adapter("x", tmp_path)
    with pytest.raises(WorkbenchError, match="no adapter 'nope'"):
        engine.answer("hi", "nope", Sampling())
    with pytest.raises(WorkbenchError, match="reserved"):
        engine.add_adapter(BASE, adapters[0][1])
    engine.add_adapter("lora", adapters[0][1])
    with pytest.raises(WorkbenchError, match="cannot attach a IA3 adapter beside LORA"):
        engine.add_adapter("ia3run", adapters[2][1])
    solo = ChatEngine("tiny")
    solo.add_adapter("ia3run", adapters[2][1])
    assert solo.answer("Say the colour of the sky.", "ia3run", Sampling(max_new_tokens=4, temperature=0.0))


def test_arena_round_with_real_adapters(adapters):
    from workbench.arena import tally
    from workbench.ui.chat_tab import arena_next, arena_vote

    run = adapters[0][1].parent.name
    state, prompt, a, b, message, index = arena_next("tiny", [run], "Say the colour of the sky.", 0, 0.0, 8, 0)
    assert state and {state["left"], state["right"]} == {BASE, run} and index == 1
    assert prompt == "Say the colour of the sky." and prompt not in message  # the prompt is shown as plain text
    assert a and b and a != b and "which answer is better" in message
    arena_vote("A", state)
    winner_is_adapter = state["left"] == run
    assert tally(run)[BASE] == {"wins": int(winner_is_adapter), "losses": int(not winner_is_adapter), "ties": 0}


def test_what_changed_and_what_was_lost(adapters):
    from workbench.ui.chat_tab import what_changed

    run = adapters[0][1].parent.name
    message, rows = what_changed("tiny", [run])
    table = {row[0]: row for row in rows}
    assert "lower is better" in message and set(table) == {BASE, run}
    assert table[run][2] < table[BASE][2]  # it learned its data
    assert table[run][3] > 0 and table[BASE][3] > 0  # and both are scored on general text


def test_runs_tab_exports_and_chat_lists_runs(adapters, monkeypatch):
    import zipfile

    from workbench.training import artifacts
    from workbench.ui.chat_tab import adapter_folder, finished_adapters
    from workbench.ui.runs_tab import act

    run = adapters[0][1].parent.name
    assert run in [value for _, value in finished_adapters("tiny")]
    assert adapter_folder(run).name == "final"

    def not_here(*_):
        raise AssertionError("the merge loaded weights in the web server's process")

    monkeypatch.setattr(artifacts, "export_merged", not_here)  # the merge runs in a child process
    message, archive = act("merged", run)
    assert "merged model ready" in message
    names = zipfile.ZipFile(archive).namelist()
    assert "model.safetensors" in names and "tokenizer.json" in names
    message, archive = act("zip", run)
    assert any(n.endswith("adapter_model.safetensors") for n in zipfile.ZipFile(archive).namelist())
    assert act("zip", None)[0] == "Pick a run first."


def test_prompt_set_upload_and_job_settings(adapters, tmp_path):
    from workbench.ui.chat_tab import read_prompt_file
    from workbench.ui.runs_tab import job_settings

    path = tmp_path / "prompts.txt"
    path.write_text("First prompt?\n\n  Second prompt?  \n")
    assert read_prompt_file(str(path)) == "First prompt?\nSecond prompt?"
    path.write_bytes(b"caf\xe9\n")
    assert "not UTF-8" in read_prompt_file(str(path))
    run = adapters[0][1].parent.name
    job = job_settings(run)
    assert job["method"] == "lora" and job["model"] == "tiny" and "schedule" in job
    assert job["data"]["path"] == "dataset.jsonl (the run's copy of the dataset)"  # no path of the server's disk
    assert os.sep not in json.dumps(job).replace("all-linear", "")
    assert "error" in job_settings("../../etc")


def test_a_failed_or_killed_merge_is_a_message_and_leaves_no_export(adapters, monkeypatch):
    """The merge process's own message comes back (here: a method that cannot merge), and a
    merge killed by a signal (OOM) reads as such; neither leaves an export or a partial folder."""
    import subprocess

    from workbench.sessions import session_path
    from workbench.training import merge
    from workbench.ui.runs_tab import act

    run = adapters[0][1].parent.name
    exports = session_path(run) / "exports"
    before = sorted(p.name for p in exports.iterdir()) if exports.exists() else []
    real_run = subprocess.run

    def child(argv, **kwargs):  # the real child, made to fail the way each case fails
        code = "import json, sys; print(json.dumps({'error': \"method 'x' cannot be merged\"})); sys.exit(1)"
        return real_run([argv[0], "-c", code], **kwargs)

    monkeypatch.setattr(merge.subprocess, "run", child)
    message, archive = act("merged", run)
    assert message == f"**method 'x' cannot be merged**" and archive is None

    def killed(argv, **kwargs):
        return real_run([argv[0], "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], **kwargs)

    monkeypatch.setattr(merge.subprocess, "run", killed)
    message, archive = act("merged", run)
    assert "merge process was killed by signal 9 (out of memory?)" in message and archive is None
    after = sorted(p.name for p in exports.iterdir()) if exports.exists() else []
    assert [n for n in after if n not in before and n.endswith("-merged.zip")] == []
    assert not [n for n in after if n.startswith(".partial-")]
