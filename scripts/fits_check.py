"""The check that decides whether the MiniLM anchor is reachable (issue 41, item 4).

Reads, per strategy, size and seed, three answers on the very same training subset and test
texts: the check study (``results/movie_to_amazon_minilm_fits``: untuned defaults, each fit's
schedule over its own CV-chosen length), the committed MiniLM study
(``results/movie_to_amazon_minilm``: tuned, 4 trials, the schedule over nominal rounds), and
the plain textbook script (``plain_check.jsonl``, written by
``python scripts/plain_finetune.py --sizes 50 200 1000 --seeds 0 1 2 3 4 --out
results/movie_to_amazon_minilm_fits/plain_check``). Writes ``fits_check.md`` beside them:
means over the seeds that have all compared answers, the paired mean difference with a
t interval over seeds (the plain script stores no per-text predictions, so seeds are the
unit), collapses (at most 0.05 above the majority rate), and where each final fit's LR ended.

    python scripts/fits_check.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

RESULTS = Path(__file__).resolve().parent.parent / "results"
NEW, OLD = RESULTS / "movie_to_amazon_minilm_fits", RESULTS / "movie_to_amazon_minilm"
STRATEGIES, SIZES = ("full", "lp_ft", "gradual"), (50, 200, 1000)


def records(study: Path) -> dict[tuple[str, int, int], dict]:
    rows = map(json.loads, (study / "records.jsonl").read_text().splitlines())
    return {(r["strategy"], int(r["size"]), int(r["seed"])): r for r in rows}


def plain() -> dict[tuple[int, int], float]:
    path = NEW / "plain_check.jsonl"
    if not path.exists():
        return {}
    return {(r["size"], r["seed"]): r["test_acc"]
            for r in map(json.loads, path.read_text().splitlines())}


def paired(a: list[float], b: list[float]) -> str:
    """mean(a - b) [95% t interval over seeds]."""
    d = np.asarray(a) - np.asarray(b)
    if len(d) < 2:
        return f"{d.mean():+.3f}" if len(d) else ""
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"


def table() -> str:
    new, old, script = records(NEW), records(OLD), plain()
    majority = {(int(r["size"]), int(r["seed"])): r["metrics"]["test_acc"]
                for (s, _, _), r in new.items() if s == "majority"}
    lines = ["| strategy | n | seeds | new (defaults, schedule over its length) | today's "
             "(tuned, schedule over nominal rounds) | new - today | plain script | "
             "new - plain | collapsed new / today | chosen length (steps) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for strategy in STRATEGIES:
        for size in SIZES:
            seeds = sorted(s for (st, n, s) in new if st == strategy and n == size)
            if not seeds:
                continue
            a = [new[strategy, size, s]["metrics"]["test_acc"] for s in seeds]
            b = [old[strategy, size, s]["metrics"]["test_acc"] for s in seeds]
            p_seeds = [s for s in seeds if (size, s) in script]
            collapsed = [sum(x <= majority[size, s] + 0.05 for x, s in zip(v, seeds))
                         for v in (a, b)]
            lengths = [new[strategy, size, s]["rounds"] for s in seeds]
            plain_cell = diff_cell = ""
            if p_seeds and strategy == "full":
                pa = [new[strategy, size, s]["metrics"]["test_acc"] for s in p_seeds]
                pb = [script[size, s] for s in p_seeds]
                plain_cell = f"{np.mean(pb):.3f} ({len(p_seeds)})"
                diff_cell = paired(pa, pb)
            lines.append(f"| `{strategy}` | {size} | {len(seeds)} | {np.mean(a):.3f} | "
                         f"{np.mean(b):.3f} | {paired(a, b)} | {plain_cell} | {diff_cell} | "
                         f"{collapsed[0]} / {collapsed[1]} | "
                         f"{', '.join('+'.join(map(str, x)) for x in lengths)} |")
    ends = [p for (s, _, _), r in new.items() if s in STRATEGIES for p in r.get("schedule") or []]
    summary = ""
    if ends:
        frac = np.array([p["lr_end_frac"] for p in ends])
        inside = sum(p["steps"] <= p["warmup_steps"] for p in ends)
        summary = (f"\n\nWhere the new final fits' LR ended, over {len(ends)} phases (LP-FT has "
                   f"two): median {np.median(frac):.3f} of the peak, {int((frac >= 0.5).sum())} "
                   f"at >= 0.5 of it, {inside} inside the warm-up.")
    by_size = {n: [v for (m, _), v in script.items() if m == n] for n in SIZES}
    alone = "".join(f"\n| {n} | {len(v)} | {np.mean(v):.3f} | {min(v):.3f} - {max(v):.3f} |"
                    for n, v in by_size.items() if v)
    if alone:
        summary += ("\n\nThe plain script on every seed it has run, whether or not the check "
                    "study has reached it:\n\n| n | seeds | mean | range |\n|---|---|---|---|"
                    + alone)
    return ("Check study against today's MiniLM study and the plain script, the same subsets "
            "and 1,000 test texts per seed (`python scripts/fits_check.py`); test accuracy, "
            "means over the seeds the new study has so far; differences paired per seed with a "
            "95% t interval over seeds. The plain script (AdamW 5e-5, weight decay 0.01, linear "
            "decay to 0 over max(4 epochs, 100 steps), batch 16, no validation) runs for `full` "
            "only; (k): seeds it has.\n\n" + "\n".join(lines) + summary + "\n")


if __name__ == "__main__":
    text = table()
    (NEW / "fits_check.md").write_text(text)
    print(text)
