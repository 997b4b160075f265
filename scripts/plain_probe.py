"""Check the suite's linear probe (``frozen``) against the textbook one (docs/studies.md, MiniLM).

The textbook way to probe a sentence encoder: embed each text once (mean pooling over the
real tokens, L2-normalised, as all-MiniLM-L6-v2's model card does), then scikit-learn's
``LogisticRegressionCV`` with C chosen by stratified 3-fold CV inside the n labels, fit by
L-BFGS to convergence. The suite's ``frozen`` trains a dropout + linear head with AdamW for a
CV-chosen number of rounds. If the textbook probe wins on the same subsets, the suite's probe
is under-trained; this script measures that, paired on the same seeds and test texts.

It reads the suite's own subsets, token ids and test split (nothing else from the suite's
training), and the committed ``frozen`` records for the comparison. Each (size, seed) appends
one JSON line (with the test predictions) to OUT.jsonl; OUT.md is the table of all of them.

    python scripts/plain_probe.py --sizes 50 200 1000 --seeds 0 1 2 3 4 \\
        --out results/movie_to_amazon_minilm/probe_check
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from transformers import AutoModel

from bench.analysis.stats import crossed_estimate
from bench.config import compose_config, strategies
from bench.data.splits import training_subset
from bench.study.prepare import prepare

STUDY = Path("results/movie_to_amazon_minilm")
BASE = ["experiment=movie_to_amazon_minilm", "strategy=[frozen]", "baseline=none", "hpo=none",
        "progress=false"]
CS = np.logspace(-3, 4, 15)  # C over 1e-3 .. 1e4, half a decade apart


@torch.no_grad()
def embed(folder: str, ids: torch.Tensor, pad: int, batch: int = 128) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings, the model card's recipe."""
    body = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    out = []
    for rows in ids.split(batch):
        mask = (rows != pad).long()
        states = body(input_ids=rows, attention_mask=mask).last_hidden_state
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        out.append(torch.nn.functional.normalize(pooled, dim=1))
    return torch.cat(out).numpy()


def probe(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
          seed: int) -> tuple[np.ndarray, float]:
    """The textbook probe's test predictions and its chosen C."""
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    model = LogisticRegressionCV(Cs=CS, cv=folds, scoring="accuracy", max_iter=5000,
                                 random_state=seed)
    with warnings.catch_warnings():  # scikit-learn 1.9's notices of its 1.10/1.11 defaults
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(features[train], labels[train])
    return model.predict(features[test]), float(model.C_[0])


def run(sizes: list[int], seeds: list[int], log: Path) -> None:
    cfg = compose_config(BASE + [f"data.sizes=[{max(sizes)}]"])
    prep = prepare(cfg, strategies(cfg), [max(sizes)])
    target = prep.target
    labels = np.asarray(target.labels)
    pool, test = target.splits.pool, np.asarray(target.splits.test)
    subsets = {(n, s): training_subset(target.data.labels, pool, n, s)
               for n in sizes for s in seeds}
    rows = np.unique(np.concatenate([test, *subsets.values()]))
    start = time.perf_counter()
    embedded = embed(prep.backbone.folder, target.ids[torch.as_tensor(rows)],
                     prep.backbone.pad_id)
    features = np.zeros((len(labels), embedded.shape[1]), dtype=embedded.dtype)
    features[rows] = embedded
    print(f"embedded {len(rows)} texts in {time.perf_counter() - start:.1f} s", flush=True)
    for (n, seed), train in subsets.items():
        start = time.perf_counter()
        predicted, c = probe(features, labels, train, test, seed)
        row = {"size": n, "seed": seed, "C": c,
               "test_acc": round(float((predicted == labels[test]).mean()), 4),
               "seconds": round(time.perf_counter() - start, 2),
               "test_predictions": "".join(map(str, predicted))}
        print(json.dumps({k: v for k, v in row.items() if k != "test_predictions"}), flush=True)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _interval(e) -> str:
    return f"{e.mean:.3f} [{e.low:.3f}, {e.high:.3f}]"


def table(plain: list[dict], study: Path) -> str:
    """Per size: the textbook probe, the suite's ``frozen`` on the seeds both have, and their
    paired difference (seeds x test examples, as gains.md)."""
    truth = np.frombuffer(json.loads((study / "study.json").read_text())["test_labels"].encode(),
                          dtype=np.uint8)
    suite = {(r["size"], r["seed"]): r for r in map(json.loads, (study / "records.jsonl")
                                                    .read_text().splitlines())
             if r["strategy"] == "frozen"}
    mine = {(r["size"], r["seed"]): r for r in plain}

    def correct(r: dict) -> np.ndarray:
        return (np.frombuffer(r["test_predictions"].encode(), dtype=np.uint8) == truth) * 1.0

    lines = ["Textbook linear probe against the suite's `frozen`: all-MiniLM-L6-v2, mean-pooled "
             "L2-normalised embeddings + scikit-learn LogisticRegressionCV (C over 1e-3..1e4, "
             "stratified 3-fold CV inside the n labels); the suite's `frozen` records of this "
             "study on the same subsets, seeds and 1,000 test texts "
             "(`python scripts/plain_probe.py`)", "",
             "| labels | seeds | textbook probe [95% CI] | median C | suite `frozen` [95% CI] "
             "| textbook - suite [95% CI] | p |", "|---|---|---|---|---|---|---|"]
    for n in sorted({k[0] for k in mine}):
        seeds = sorted(s for (size, s) in mine if size == n)
        plain_y = np.stack([correct(mine[n, s]) for s in seeds])
        both = [s for s in seeds if (n, s) in suite]
        cells = [f"{n:,}", str(len(seeds)), _interval(crossed_estimate(plain_y, bounded=True)),
                 f"{np.median([mine[n, s]['C'] for s in seeds]):.3g}"]
        if len(both) >= 2:
            suite_y = np.stack([correct(suite[n, s]) for s in both])
            diff = crossed_estimate(np.stack([correct(mine[n, s]) for s in both]) - suite_y)
            cells += [_interval(crossed_estimate(suite_y, bounded=True)) + f" ({len(both)})",
                      f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]", f"{diff.p:.2f}"]
        else:
            cells += ["not run yet", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4],
                        help="replicate seeds to run (none: only rewrite OUT.md from OUT.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="OUT.jsonl and OUT.md")
    parser.add_argument("--study", type=Path, default=STUDY)
    args = parser.parse_args()
    log = args.out.with_suffix(".jsonl")
    if args.seeds:
        run(args.sizes, args.seeds, log)
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    args.out.with_suffix(".md").write_text(table(rows, args.study))
    print(table(rows, args.study))


if __name__ == "__main__":
    main()
