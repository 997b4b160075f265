"""A fit becomes a record: what ran, what it scored, how it was chosen, where (the format and
its readers are :mod:`bench.folder`)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from omegaconf import DictConfig

from bench import config as config_mod
from bench import hardware
from bench.folder import encode_labels


# What a replicate's record holds: what ran (cell identity, strategy, replicate axes, labels
# used), what it scored, how it was chosen (selection, tuning summary), its predictions, where.
def fit_flags(info: dict[str, Any], fit: Any) -> list[str]:
    """Warnings a reader of the table must see: a fit cut short, or one that learnt nothing."""
    flags = []
    if info.get("at_cap") or fit.at_cap:
        flags.append("at_cap")  # best score at the last round allowed: still improving
    best, majority = info.get("best_value"), info.get("majority")
    if best is not None and majority is not None and best < majority:
        flags.append("below_majority")  # held-out accuracy under always guessing the majority
    return flags


def make_record(cfg: DictConfig, method: Any, size: int | str, n: int, seed: int, fit: Any,
                params: dict[str, Any], hpo_info: dict[str, Any], run_id: str,
                labels: dict[str, int], tuning: int = 0) -> dict[str, Any]:
    return {
        "study": cfg.study, "study_hash": config_mod.study_hash(cfg),  # config: study.json
        "cell_hash": config_mod.cell_hash(cfg, method.name),
        "run_id": run_id,  # this run's entry in manifest.json
        "strategy": method.name, "size": size, "n_train": n, "seed": seed,
        "source_seed": method.source_seed, "tuning": tuning,
        "protocol": cfg.protocol.name, "labels": labels,
        "metrics": {k: round(v, 6) for k, v in fit.metrics.items()},
        "epochs": fit.epochs, "best_epoch": fit.best_epoch, "seconds": round(fit.seconds, 3),
        **({"steps": fit.steps, "trainable": fit.trainable, "memory": fit.memory}
           if fit.steps is not None else {}),
        "rounds": hpo_info.get("rounds"), "flags": fit_flags(hpo_info, fit),
        # a fit counted in steps: ``rounds`` holds its chosen lengths (steps per phase) and
        # ``schedule`` where each phase's LR went (steps, warm-up steps, last LR / peak)
        **({"length_unit": "steps", "schedule": fit.schedule}
           if getattr(fit, "schedule", None) else {}),
        "selection": {**{k: hpo_info.get(k) for k in ("best_value", "majority", "fold_scores",
                                                       "at_cap", "seconds")},
                      **({"profile": hpo_info["profile"]} if "profile" in hpo_info else {}),
                      **({"grid": hpo_info["grid"]} if "grid" in hpo_info else {})},
        "diverged": fit.diverged,
        "params": params, "hpo": hpo_info if hpo_info.get("n_trials") else None,
        **method.describe(),
        "test_predictions": encode_labels(fit.test_predictions),
        "device": hardware.device(str(cfg.trainer.accelerator)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
