"""Honest selection: the chosen policy is the best on fresh batches, not the luckiest batch."""

from __future__ import annotations

import numpy as np
import pytest

from qrl.agents import SearchLog
from qrl.envs.failure_task import FailureTask
from qrl.heldout import score_held_out
from qrl.planted import planted_digits_mlp
from qrl.quant import preset
from qrl.selection import distinct_top, reserved_evaluations, select_best
from qrl.victim import Victim


@pytest.fixture(scope="module")
def planted_task() -> FailureTask:
    model, data = planted_digits_mlp(seed=0, epochs=10)
    quant = preset("int4_dynamic", act_granularity="per_tensor")
    victim = Victim.from_models(model, model, data, quant)
    return FailureTask(victim, split="train", reference="student")


def _bright(task: FailureTask) -> np.ndarray:
    action = np.zeros(task.action_space.shape)
    action[0] = 0.9  # brightness +0.45: the planted unit fires on every input
    return action


def test_a_lucky_single_batch_does_not_win_the_selection(planted_task: FailureTask) -> None:
    log = SearchLog(budget=3)
    identity = np.zeros(planted_task.action_space.shape)
    # A search batch that overstated the identity policy (a noisy batch can), then the
    # real failure scored lower on its own search batch.
    log.record(identity, 0.95, {"gap": 0.95})
    log.record(_bright(planted_task), 0.40, {"gap": 0.40})
    assert log.best is not None and log.best.index == 1  # the single-batch choice: wrong
    selection = select_best(
        planted_task,
        log,
        candidates=2,
        evaluations=4,
        batch_size=128,
        seed=3,
        validity_floor=0.9,
        penalty=2.0,
    )
    assert selection.evaluations == 4 and [c.batches for c in selection.candidates] == [2, 2]
    assert selection.chosen.trial.index == 2 and selection.search_rank == 2
    assert selection.candidates[0].gap < 0.05 < 0.5 < selection.chosen.gap
    m = selection.metrics()
    assert m["select/search_batch_gap"] == 0.40 and m["select/evaluations"] == 4
    assert m["select/gap_ci_low"] <= m["select/gap"] <= m["select/gap_ci_high"]


def test_the_re_scored_estimate_holds_on_held_out_inputs(planted_task: FailureTask) -> None:
    log = SearchLog(budget=1)
    log.record(_bright(planted_task), 1.0, {"gap": 1.0})
    chosen = select_best(
        planted_task,
        log,
        candidates=1,
        evaluations=8,
        batch_size=128,
        seed=5,
        validity_floor=0.9,
        penalty=2.0,
    ).chosen
    held_out = score_held_out(
        planted_task.replace(split="test"), chosen.trial.action, samples=2048, seed=7, resamples=300
    )
    assert chosen.ci[0] - 0.05 <= held_out.gap <= chosen.ci[1] + 0.05


def test_repeated_actions_are_re_scored_once() -> None:
    log = SearchLog(budget=4)
    for reward, first in ((0.3, 0.1), (0.3, 0.1), (0.2, 0.5), (0.1, 0.7)):
        log.record(np.array([first, 0.0]), reward, {"gap": reward})
    assert [t.index for t in distinct_top(log, 3)] == [1, 3, 4]


def test_the_reserve_leaves_the_search_its_budget() -> None:
    assert reserved_evaluations(1000, 0.05) == 50
    assert reserved_evaluations(2, 0.05) == 1
    assert reserved_evaluations(10, 0.9) == 9
    with pytest.raises(ValueError, match="budget >= 2"):
        reserved_evaluations(1, 0.05)
