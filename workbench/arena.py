"""Arena: answers shown blind in random order, the user picks the better one, and every
adapter's tally (wins, losses, ties per opponent) is saved with its session
(``sessions/<id>/arena.json``). The base model takes part as ``base`` (no session)."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from .chat import BASE
from .errors import WorkbenchError
from .sessions import session_path

ARENA_FILE = "arena.json"


@dataclass
class Round:
    prompt: str
    left: str  # who answered as "A"
    right: str  # who answered as "B"


def next_round(prompts: list[str], contenders: list[str], index: int, seed: int) -> Round:
    """The ``index``-th round: a prompt (in order, wrapping) and two contenders in a random
    order that the user cannot see; reproducible from ``seed``."""
    prompts = [p.strip() for p in prompts if p and p.strip()]
    contenders = list(dict.fromkeys(contenders))
    if not prompts:
        raise WorkbenchError("arena: give at least one prompt (one per line)")
    if len(contenders) < 2:
        raise WorkbenchError("arena: pick at least two contenders (the base counts as one)")
    rng = random.Random(f"{seed}:{index}")
    left, right = rng.sample(contenders, 2)
    return Round(prompts[index % len(prompts)], left, right)


def _tally_path(run_id: str) -> Path:
    return session_path(run_id) / ARENA_FILE


def tally(run_id: str) -> dict[str, dict[str, int]]:
    """Opponent -> {"wins", "losses", "ties"} for one adapter."""
    try:
        return json.loads(_tally_path(run_id).read_text())
    except FileNotFoundError:
        return {}


def record(winner: str, loser: str, tie: bool = False) -> None:
    """Save one vote into the sessions of the adapters involved (the base has none)."""
    for me, other, outcome in ((winner, loser, "ties" if tie else "wins"), (loser, winner, "ties" if tie else "losses")):
        if me == BASE:
            continue
        counts = tally(me)
        row = counts.setdefault(other, {"wins": 0, "losses": 0, "ties": 0})
        row[outcome] += 1
        path = _tally_path(me)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(counts, indent=2, sort_keys=True))
        os.replace(tmp, path)


def standings(contenders: list[str]) -> list[list]:
    """[name, wins, losses, ties] for every contender, from the saved tallies."""
    rows = {c: [c, 0, 0, 0] for c in contenders}
    for c in contenders:
        if c == BASE:
            continue
        for opponent, counts in tally(c).items():
            rows[c][1] += counts["wins"]
            rows[c][2] += counts["losses"]
            rows[c][3] += counts["ties"]
            if opponent == BASE and BASE in rows:  # the base has no file: mirror its results
                rows[BASE][1] += counts["losses"]
                rows[BASE][2] += counts["wins"]
                rows[BASE][3] += counts["ties"]
    return list(rows.values())
