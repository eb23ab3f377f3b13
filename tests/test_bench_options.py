"""Options the benchmarks exercise: padding-free and length-grouped batching in the worker,
and the one-line planner-accuracy summary read from the committed results."""

import json

import pytest

from workbench.errors import SettingsError
from workbench.training.job import Schedule


def test_batching_defaults_to_padding_and_is_validated():
    assert Schedule().batching == "pad"
    assert Schedule(batching="padding_free").batching == "padding_free"
    with pytest.raises(SettingsError, match="batching"):
        Schedule(batching="packed")


def test_flat_collator_concatenates_and_counts_real_tokens():
    from workbench.training.callbacks import TokenCounter
    from workbench.training.collate import FlatCollator, PadCollator

    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    flat_count, pad_count = TokenCounter(), TokenCounter()
    batch = FlatCollator(flat_count)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert "attention_mask" not in batch
    PadCollator(0, pad_count)(features)
    assert flat_count.tokens == pad_count.tokens == 5


def test_padding_free_batch_gives_the_padded_loss():
    """transformers masks across examples from the position ids: same logits, same loss."""
    import torch

    from workbench.loading import load_for_training
    from workbench.memory import TrainingSettings
    from workbench.methods import get_method
    from workbench.specs import load_model_spec
    from workbench.training.collate import FlatCollator, PadCollator

    torch.manual_seed(0)
    model = load_for_training(load_model_spec("tiny"), get_method("lora"), {"dropout": 0.0},
                              TrainingSettings(device="cpu", dtype="float32"))
    model.eval()
    gen = torch.Generator().manual_seed(1)
    features = []
    for n in (7, 19, 12):
        ids = torch.randint(10, 4000, (n,), generator=gen).tolist()
        features.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    with torch.no_grad():
        padded = model(**PadCollator(0)(features))
        flat = model(**FlatCollator()(features))
    assert flat.loss.item() == pytest.approx(padded.loss.item(), rel=1e-5)
    offset = 0
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        assert torch.allclose(flat.logits[0, offset:offset + n], padded.logits[i, :n], atol=1e-4)
        offset += n


@pytest.fixture
def qa_file(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"instruction": f"Question {i}" + " word" * (i % 9), "output": f"Answer {i}."})
                              for i in range(24)))
    return path


def _train(qa_file, method, batching):
    from workbench.sessions import session_path
    from workbench.training.events import read_events
    from workbench.training.launcher import make_job, prepare
    from workbench.training.worker import main

    job = make_job("tiny", method, str(qa_file), settings={"device": "cpu", "dtype": "float32", "batch_size": 4},
                   schedule=Schedule(max_steps=3, learning_rate=1e-3, batching=batching))
    sid = prepare(job)
    rc = main([str(session_path(sid) / "job.json")])
    events = read_events(session_path(sid) / "events.jsonl")[0]
    return rc, events, [e for e in events if e["kind"] == "status"][-1]


@pytest.mark.parametrize("batching", ["padding_free", "group_by_length"])
def test_worker_trains_with_each_batching(qa_file, batching):
    rc, events, last = _train(qa_file, "lora", batching)
    assert rc == 0, last
    logs = [e for e in events if e["kind"] == "log" and e.get("loss") is not None]
    assert len(logs) == 3 and logs[-1]["tokens_per_second"] > 0
    assert last["status"] == "completed"


def test_padding_free_refuses_virtual_token_methods(qa_file):
    """Refused when the run is defined, before any session or worker exists."""
    with pytest.raises(SettingsError, match="padding_free cannot be used with prefix"):
        _train(qa_file, "prefix", "padding_free")


def test_planner_accuracy_summary_line(tmp_path):
    from workbench.accuracy import planner_accuracy

    path = tmp_path / "planner_accuracy.json"
    assert planner_accuracy("cpu", path) is None  # no results file
    path.write_text(json.dumps({"results": {"cpu": {
        "meta": {"date": "2026-11-25T16:00:00+00:00", "models_label": "tiny/small configs"},
        "summary": {"median_abs_error_pct": 0.42, "within_5pct": 31, "measured": 32, "worst_error_pct": -7.94},
    }}}))
    assert planner_accuracy("cpu", path) == (
        "planner error on CPU (tiny/small configs, 2026-11-25): median 0.4%, 31/32 within ±5%, worst -7.9%")
    assert planner_accuracy("cuda", path) is None  # that device was not measured
    path.write_text("{not json")
    assert planner_accuracy("cpu", path) is None


def test_planner_accuracy_reads_the_committed_results():
    from workbench.accuracy import RESULTS_FILE, planner_accuracy

    line = planner_accuracy("cpu")
    if not RESULTS_FILE.is_file():
        assert line is None
    else:
        assert line.startswith("planner error on CPU (") and "within ±5%" in line
