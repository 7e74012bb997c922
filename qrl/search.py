"""Search for the policies under which a dynamically quantized network fails.

    python -m qrl.search agent=ppo space=input quant=int4_dynamic budget.evaluations=1000
    python -m qrl.search -m agent=ppo,sac,es,random seed=0,1,2     # agents vs random, over seeds

Reads top to bottom: build victim (`run`) -> search it (`qrl.searching.search_victim`: build
env and agent, learn, choose the best policy by re-scoring the search's top ones on fresh
batches inside the budget, evaluate it on held-out inputs, confirm it on real int8 kernels,
write results). `search/best_batch_gap` is the best single search batch, kept to show how
much a single noisy batch overstates; the numbers reported are the chosen policy's
(`select/*` on fresh search-split batches, `eval/*` held out). The run dir gets
`archive.csv`/`archive.json` (top-k policies), `failures.png` (inputs the quantized student gets
wrong and the teacher right), `search_curve.png`, `log.csv`, `tb/`, `sb3/` and, last,
`metrics.json`.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from qrl.cli import checked_options, hydra_task
from qrl.config import CONF_DIR
from qrl.quant import as_quant_config
from qrl.runs import start_run
from qrl.schema import validate_search
from qrl.searching import check_settings, search_victim
from qrl.sweeps import task_device
from qrl.victim import default_victim, load_victim

__all__ = ["check_settings", "main", "run", "search_victim"]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build the victim named by the config and search it; returns `metrics.json`'s keys."""
    validate_search(cfg)  # space, env, select, bits (qrl.schema), before anything is written
    check_settings(cfg)  # before the run dir is touched, as is the victim
    device = task_device(cfg)  # device=cuda without a GPU: one clear error, nothing written
    # --- build victim -------------------------------------------------------------------------
    quant = as_quant_config(cfg.quant)
    if cfg.victim.run:
        victim = load_victim(cfg.victim.run, quant, device)
    else:
        victim = default_victim(quant, device=device, model=str(cfg.victim.model))
    out, started = start_run(cfg)
    return search_victim(victim, cfg, out, started).to_metrics()


@checked_options
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="search")
def main(cfg: DictConfig) -> float:
    """The search as a Hydra app; returns `eval/gap`, the objective of `+sweep=tune_ppo`."""
    return float(hydra_task(run, cfg)["eval/gap"])


if __name__ == "__main__":
    main()
