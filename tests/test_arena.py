"""Arena: blind, reproducible rounds and tallies saved with each adapter's session."""

import json

import pytest

from workbench.arena import next_round, record, standings, tally
from workbench.chat import BASE
from workbench.errors import WorkbenchError
from workbench.training.launcher import make_job, prepare


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "hello"}) + "\n")
    return [prepare(make_job("tiny", "lora", str(data))) for _ in range(2)]


def test_rounds_are_blind_but_reproducible(runs):
    contenders = [BASE, *runs]
    rounds = [next_round(["a", "b"], contenders, i, seed=3) for i in range(20)]
    assert [r.prompt for r in rounds[:4]] == ["a", "b", "a", "b"]
    assert all(r.left != r.right and {r.left, r.right} <= set(contenders) for r in rounds)
    assert len({(r.left, r.right) for r in rounds}) > 2  # the order really varies
    assert rounds == [next_round(["a", "b"], contenders, i, seed=3) for i in range(20)]
    with pytest.raises(WorkbenchError, match="two contenders"):
        next_round(["a"], [BASE], 0, 0)
    with pytest.raises(WorkbenchError, match="at least one prompt"):
        next_round(["  "], contenders, 0, 0)


def test_votes_are_saved_with_the_sessions(runs):
    a, b = runs
    record(a, BASE)
    record(a, b)
    record(b, BASE, tie=True)
    assert tally(a) == {BASE: {"wins": 1, "losses": 0, "ties": 0}, b: {"wins": 1, "losses": 0, "ties": 0}}
    assert tally(b)[a] == {"wins": 0, "losses": 1, "ties": 0}
    table = {row[0]: row[1:] for row in standings([BASE, a, b])}
    assert table[a] == [2, 0, 0] and table[b] == [0, 1, 1] and table[BASE] == [0, 1, 1]


def test_arena_views_hide_then_reveal(runs):
    from workbench.ui.chat_tab import arena_next, arena_vote

    state, prompt, a, b, message, index = arena_next("tiny", [], "Hello?", 0, 0.0, 4, 0)
    assert state is None and "two contenders" in message
    message, table, cleared = arena_vote("A", {"left": runs[0], "right": BASE, "contenders": [BASE, runs[0]]})
    assert f"A was **{runs[0]}**" in message and cleared is None
    assert {row[0]: row[1] for row in table} == {BASE: 0, runs[0]: 1}
