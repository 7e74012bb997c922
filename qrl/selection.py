"""Honest selection: choose the search's best policy on fresh batches, not on its luckiest one.

A search scores each proposal on one batch; the maximum over hundreds of noisy batch scores
is biased upward (the winner's curse), and on the digits student it overstated the held-out
gap 2-5x. `select_best` re-scores the top `candidates` distinct policies of the search on
fresh batches (drawn with their own seed, by default from the validation split: neither the
batches nor the images that ranked them), sharing a reserved number of evaluations equally,
and chooses by the re-scored mean reward. Those batches are evaluations: the search driver
reserves them from the budget (`reserved_evaluations`) before the agent runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qrl.agents import SearchLog, Trial
from qrl.envs.failure_task import FailureTask
from qrl.heldout import cluster_bootstrap_ci
from qrl.scoring import Outcome, is_valid, search_reward


@dataclass(frozen=True)
class Rescored:
    """One candidate policy scored on fresh batches.

    Attributes:
        trial: the search trial that proposed it (its `info["gap"]` is the search-batch value).
        reward: mean over the fresh batches of the environment's reward (gap minus the
            validity penalty), the number the choice is made on.
        gap: gap over all the fresh draws (a fraction), from the task's reference.
        ci: its cluster-bootstrap interval (source images resampled).
        acc_teacher: teacher accuracy over the fresh draws.
        valid_rate: fraction of fresh batches whose teacher accuracy met the validity floor.
        batches: fresh batches scored.
    """

    trial: Trial
    reward: float
    gap: float
    ci: tuple[float, float]
    acc_teacher: float
    valid_rate: float
    batches: int


@dataclass(frozen=True)
class Selection:
    """The chosen policy and every re-scored candidate, in search-rank order."""

    chosen: Rescored
    candidates: list[Rescored]

    @property
    def evaluations(self) -> int:
        return sum(c.batches for c in self.candidates)

    @property
    def search_rank(self) -> int:
        """1-based rank of the chosen policy among the candidates by search-batch reward."""
        return next(i for i, c in enumerate(self.candidates, 1) if c is self.chosen)

    def metrics(self) -> dict[str, float]:
        c = self.chosen
        return {
            "select/reward": c.reward,
            "select/gap": c.gap,
            "select/gap_ci_low": c.ci[0],
            "select/gap_ci_high": c.ci[1],
            "select/acc_teacher": c.acc_teacher,
            "select/valid_rate": c.valid_rate,
            "select/search_batch_gap": c.trial.info.get("gap", float("nan")),
            "select/search_rank": self.search_rank,
            "select/evaluation": c.trial.index,
            "select/candidates": len(self.candidates),
            "select/evaluations": self.evaluations,
        }


def reserved_evaluations(budget: int, fraction: float) -> int:
    """Evaluations of `budget` kept for the selection (at least one); the search gets the rest.

    Raises:
        ValueError: a budget under 2 (nothing left to search) or a fraction outside (0, 1).
    """
    if budget < 2 or not 0.0 < fraction < 1.0:
        raise ValueError(
            f"selection needs a budget >= 2 and a fraction in (0, 1), got {budget}, {fraction}"
        )
    return min(budget - 1, max(1, int(fraction * budget)))


def distinct_top(log: SearchLog, k: int) -> list[Trial]:
    """The k best trials by search-batch reward, skipping repeats of the same action.

    Converged agents propose the same action many times; re-scoring it twice would spend the
    budget on a question already answered.
    """
    chosen: list[Trial] = []
    for trial in log.top(log.count):
        if all(not np.allclose(trial.action, c.action, atol=1e-6) for c in chosen):
            chosen.append(trial)
        if len(chosen) == k:
            break
    return chosen


def rescore(
    task: FailureTask,
    trial: Trial,
    *,
    batches: int,
    batch_size: int,
    generator: torch.Generator,
    validity_floor: float,
    penalty: float,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> Rescored:
    """Score one trial's action on `batches` fresh batches, with the environment's reward."""
    parts: list[Outcome] = []
    sources: list[torch.Tensor] = []
    rewards, valid = [], []
    for _ in range(batches):
        x, y, idx = task.draw_indexed(trial.action, batch_size, generator)
        outcome = task.measure(trial.action, x, y).outcome
        # The reward of `qrl/QuantFailure-v0`, batch by batch: the validity floor is per batch.
        gap = outcome.gap(task.reference)
        rewards.append(search_reward(gap, outcome.acc_teacher, validity_floor, penalty))
        valid.append(is_valid(outcome.acc_teacher, validity_floor))
        parts.append(outcome)
        sources.append(idx)
    outcome = Outcome.cat(parts)
    diff = outcome.gap_per_input(task.reference).numpy()
    source = torch.cat(sources).numpy()
    return Rescored(
        trial=trial,
        reward=float(np.mean(rewards)),
        gap=float(diff.mean()),
        ci=cluster_bootstrap_ci(diff, source, level=level, resamples=resamples, seed=seed),
        acc_teacher=outcome.acc_teacher,
        valid_rate=float(np.mean(valid)),
        batches=batches,
    )


def select_best(
    task: FailureTask,
    log: SearchLog,
    *,
    candidates: int,
    evaluations: int,
    batch_size: int,
    seed: int,
    validity_floor: float,
    penalty: float,
    level: float = 0.95,
) -> Selection:
    """Re-score the top `candidates` distinct policies of a search and choose the best.

    Args:
        task: the search's task on the split to re-score on (`select.split`: `val` by default,
            images the search never drew from).
        log: the finished search.
        candidates: how many of the search's best distinct policies to re-score, at most (no
            more than `evaluations`, so that each gets a batch).
        evaluations: fresh batches (of `batch_size` inputs each) shared equally by the
            candidates; what the equal shares leave over is not spent.
        seed: seeds the fresh batches (keep it apart from the search's and the held-out seeds).
        validity_floor, penalty: the environment's reward terms.
        level: the level of each candidate's interval.

    Raises:
        ValueError: an empty search log, or fewer than one candidate or evaluation.
    """
    if candidates < 1 or evaluations < 1:
        raise ValueError(
            f"selection needs candidates >= 1 and evaluations >= 1, got {candidates}, {evaluations}"
        )
    top = distinct_top(log, min(candidates, evaluations))
    if not top:
        raise ValueError("selection needs a search log with at least one trial")
    batches = evaluations // len(top)
    generator = torch.Generator().manual_seed(seed)
    scored = [
        rescore(
            task,
            trial,
            batches=batches,
            batch_size=batch_size,
            generator=generator,
            validity_floor=validity_floor,
            penalty=penalty,
            level=level,
            seed=seed,
        )
        for trial in top
    ]
    # Ties go to the higher search rank (the earlier in `scored`): max keeps the first.
    chosen = max(scored, key=lambda r: r.reward)
    return Selection(chosen, scored)
