"""Data size as a search dimension: how few labels does each strategy need for a given accuracy?

Per strategy, one two-objective Optuna study searches the target size (log scale) together with
the tuned parameters: maximise validation accuracy, minimise labelled examples. Its Pareto front
is written to ``pareto.json`` in the study directory. Multi-objective studies cannot prune.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from rich.console import Console

from bench import search_space
from bench.study import tune as tune_mod
from bench.cache import atomic_write_text
from bench.errors import BenchError
from bench.folder import PARETO_FILE
from bench.training.fit import Diverged



def dominated(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether point ``a`` is dominated by ``b`` (b at least as good in both, better in one)."""
    return (b["val_acc"] >= a["val_acc"] and b["n_train"] <= a["n_train"]
            and (b["val_acc"] > a["val_acc"] or b["n_train"] < a["n_train"]))


def front(study: optuna.Study) -> list[dict[str, Any]]:
    points = [{"trial": t.number, "val_acc": t.values[0], "n_train": int(t.values[1]),
               "params": t.user_attrs.get("params", {})} for t in study.best_trials]
    return sorted(points, key=lambda p: p["n_train"])


def run_pareto(methods: list[Any], cfg: DictConfig, prep: Any, storage: Any, out: Path,
               console: Console) -> dict[str, list[dict[str, Any]]]:
    hpo = cfg.hpo
    pool = len(prep.target.splits.pool)
    low = int(hpo.pareto.min_size)
    if not 2 <= low < pool:
        raise BenchError(f"hpo.pareto.min_size={low}; it must be between 2 and the pool size {pool}")
    fronts: dict[str, list[dict[str, Any]]] = {}
    path = out / PARETO_FILE
    if path.exists():
        fronts = json.loads(path.read_text())
    for method in methods:
        name = f"{cfg.study}/{method.name}/pareto"
        study = tune_mod.open_study(name, storage, int(hpo.seed), optuna.pruners.NopPruner(),
                                    {"strategy": method.name, "mode": "pareto",
                                     "target": cfg.data.target.name},
                                    directions=["maximize", "minimize"],
                                    worker_id=int(hpo.worker_id))

        def objective(trial: optuna.Trial, method: Any = method) -> tuple[float, float]:
            n = trial.suggest_int("size", low, pool, log=True)
            params = search_space.suggest(trial, method.space)
            trial.set_user_attr("params", params)
            try:
                chosen = method.select(params, n, int(hpo.seed))
            except Diverged as exc:  # multi-objective trials cannot be pruned: score it as 0
                trial.set_user_attr("diverged", str(exc))
                return 0.0, float(n)
            if chosen.grown:
                trial.set_user_attr("params", {**params, **chosen.grown})
            return chosen.score, float(n)

        console.print(f"pareto search: {method.name}, {hpo.pareto.n_trials} trials")
        tune_mod.run_trials(study, objective, int(hpo.pareto.n_trials), hpo.timeout)
        fronts[method.name] = front(study)
        atomic_write_text(path, json.dumps(fronts, indent=2, sort_keys=True) + "\n")
        best = ", ".join(f"n={p['n_train']}: {p['val_acc']:.3f}" for p in fronts[method.name])
        console.print(f"  front: {best}")
    return fronts
