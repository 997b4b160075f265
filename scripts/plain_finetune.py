"""Check the suite against a plain textbook fine-tuning script (docs/studies.md, MiniLM).

A benchmark's transformer number is only as good as its training loop. This script trains
all-MiniLM-L6-v2 on the same 1,000-label subset, test split and token ids the suite uses for
a replicate seed, twice:

- plainly: ``AutoModel`` + mean pooling + a linear head, AdamW (lr 5e-5, weight decay 0.01),
  linear decay to 0 over 4 epochs, batch 16, no validation, the last weights tested;
- through the suite's own final fit (``NeuralMethod.final``) at ``full``'s untuned default and
  4 rounds, once with its linear schedule over those 4 rounds and once over the nominal 10
  rounds, as a study's final fit lays it when cross-validation picks 4 of 10.

Each seed appends one JSON line per variant to OUT.jsonl; OUT.md is the table of all of them
(``--seeds`` with no seed only rewrites it).

    python scripts/plain_finetune.py --seeds 0 1 2 --out results/movie_to_amazon_minilm/plain_check
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, get_linear_schedule_with_warmup

from bench.config import compose_config, strategies
from bench.study.methods import NeuralMethod
from bench.study.prepare import prepare

N, EPOCHS, BATCH, LR, DECAY = 1000, 4, 16, 5e-5, 0.01
BASE = ["experiment=movie_to_amazon_minilm", "strategy=[full]", "baseline=none", "hpo=none",
        "progress=false", f"data.sizes=[{N}]"]


def suite_methods() -> tuple[NeuralMethod, NeuralMethod]:
    """``full`` with its schedule over the 4 rounds it runs, and over the nominal 10. The two
    configs differ only in ``train.max_epochs``, which preparation does not read: one
    preparation (data, tokens, weights) serves both."""
    over_4, over_10 = compose_config(BASE + [f"train.max_epochs={EPOCHS}"]), compose_config(BASE)
    (strategy,) = strategies(over_4)
    prep = prepare(over_4, [strategy], [N])
    return NeuralMethod(prep, over_4, strategy), NeuralMethod(prep, over_10, strategy)


def plain_epochs(n: int) -> int:
    """The textbook length: 4 epochs, or as many as make 100 steps at a small n."""
    return max(EPOCHS, -(-100 // -(-n // BATCH)))


def plain_fit(method: NeuralMethod, seed: int, n: int = N) -> float:
    """The textbook loop, nothing from the suite but the data."""
    prep = method.prep
    target, pad = prep.target, prep.backbone.pad_id
    epochs = plain_epochs(n) if n != N else EPOCHS
    train = torch.as_tensor(method.subset(n, seed))
    test = torch.as_tensor(target.splits.test)
    torch.manual_seed(seed)
    body = AutoModel.from_pretrained(prep.backbone.folder, local_files_only=True)
    head = torch.nn.Linear(body.config.hidden_size, target.num_classes)
    optimizer = torch.optim.AdamW([*body.parameters(), *head.parameters()], lr=LR,
                                  weight_decay=DECAY)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, epochs * -(-n // BATCH))

    def logits(ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != pad).long()
        states = body(input_ids=ids, attention_mask=mask).last_hidden_state
        return head((states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))

    order = torch.Generator().manual_seed(seed)
    body.train()
    for _ in range(epochs):
        for batch in torch.randperm(n, generator=order).split(BATCH):
            rows = train[batch]
            loss = torch.nn.functional.cross_entropy(logits(target.ids[rows]), target.labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    body.eval()
    with torch.no_grad():
        predicted = torch.cat([logits(target.ids[rows]).argmax(1) for rows in test.split(64)])
    return float((predicted == target.labels[test]).float().mean())


STUDY = Path(__file__).resolve().parent.parent / "results" / "movie_to_amazon_minilm"
RECORD = "the study's tuned `full` record (length by CV)"


def study_rows(study: Path) -> list[dict]:
    """The study's own `full` final fits at this size, as table rows: what the suite answers
    for the cell, with tuning and the training length cross-validation chose (no rerun)."""
    records = map(json.loads, (study / "records.jsonl").read_text().splitlines())
    return [{"variant": RECORD, "seed": r["seed"], "test_acc": r["metrics"]["test_acc"],
             "seconds": r["seconds"]}
            for r in records if r["strategy"] == "full" and r["size"] == N]


def table(rows: list[dict], study: Path = STUDY) -> str:
    """OUT.md: the logged variants per seed, and the study's `full` record on the same seeds
    (a row that grows with the study)."""
    seeds = sorted({r["seed"] for r in rows})
    rows = rows + [r for r in study_rows(study) if r["seed"] in seeds]
    head = "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | seconds (median) |"
    lines = [f"Plain script against the suite's `full` final fit: all-MiniLM-L6-v2, {N} labels, "
             f"lr {LR:g}, {EPOCHS} epochs/rounds, batch {BATCH}; test accuracy on the study's "
             "1,000 test texts (`python scripts/plain_finetune.py`)", "", head,
             "|" + "---|" * (len(seeds) + 3)]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = {r["seed"]: r for r in rows if r["variant"] == variant}
        if not mine:
            continue
        accs = [mine[s]["test_acc"] for s in seeds if s in mine]
        cells = [f"{mine[s]['test_acc']:.3f}" if s in mine else "" for s in seeds]
        seconds = np.median([r["seconds"] for r in mine.values()])
        lines.append(f"| {variant} | " + " | ".join(cells)
                     + f" | {np.mean(accs):.3f} | {seconds:.0f} |")
    return ("\n".join(lines) + "\n\nSeconds: the logged variants ran beside the study (wall time "
            "of the fit alone); the study's record is its final fit's own seconds.\n")


def plain_sizes(sizes: list[int], seeds: list[int], out: Path) -> None:
    """The plain script alone at each size (``--sizes``): one JSON line per (size, seed) in
    OUT.jsonl, for the check study's paired table (scripts/fits_check.py)."""
    cfg = compose_config(BASE)
    (strategy,) = strategies(cfg)
    method = NeuralMethod(prepare(cfg, [strategy], sizes), cfg, strategy)
    log = out.with_suffix(".jsonl")
    done = set()
    if log.exists():
        done = {(r["size"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())}
    for size in sizes:
        for seed in seeds:
            if (size, seed) in done:
                continue
            start = time.perf_counter()
            accuracy = plain_fit(method, seed, size)
            row = {"variant": "plain script", "size": size, "seed": seed,
                   "epochs": plain_epochs(size), "test_acc": round(accuracy, 4),
                   "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(row), flush=True)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0],
                        help="replicate seeds to run (none: only rewrite OUT.md from OUT.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="OUT.jsonl and OUT.md")
    parser.add_argument("--sizes", type=int, nargs="*", default=None,
                        help="the plain script alone at these sizes (OUT.jsonl only)")
    args = parser.parse_args()
    if args.sizes:
        plain_sizes(args.sizes, args.seeds, args.out)
        return
    log = args.out.with_suffix(".jsonl")
    if args.seeds:
        over_4, over_10 = suite_methods()
    for seed in args.seeds:
        variants = [("plain script, decay over 4 epochs", lambda: plain_fit(over_4, seed)),
                    ("suite, schedule over 4 rounds",
                     lambda: over_4.final({}, N, seed, [EPOCHS]).metrics["test_acc"]),
                    ("suite, schedule over 10 rounds",
                     lambda: over_10.final({}, N, seed, [EPOCHS]).metrics["test_acc"])]
        for name, run in variants:
            start = time.perf_counter()
            accuracy = run()
            row = {"variant": name, "seed": seed, "test_acc": round(accuracy, 4),
                   "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(row), flush=True)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    args.out.with_suffix(".md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
