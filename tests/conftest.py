"""Shared fixtures: small generated datasets, an isolated cache, and the real CLI."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gensim.test.utils import datapath

REPO = Path(__file__).resolve().parent.parent
LEE = Path(datapath("lee_background.cor"))
POSITIVE = ["good", "great", "excellent", "wonderful", "best", "enjoyable", "superb", "lovely"]
NEGATIVE = ["bad", "poor", "terrible", "awful", "worst", "boring", "dreadful", "weak"]


def lee_sentences() -> list[list[str]]:
    """Real news sentences (gensim's Lee corpus) as filler text around the class signal."""
    text = LEE.read_bytes().decode("utf-8", errors="replace").lower()
    sentences = [re.findall(r"[a-z]+", s) for s in re.split(r"[.!?]\s", text)]
    return [s for s in sentences if len(s) >= 6]


def write_sentiment_csv(path: Path, n: int, seed: int, cue_words: int = 2,
                        noise: float = 0.1, **columns) -> Path:
    """A two-class CSV: a real news sentence with ``cue_words`` sentiment words mixed in.

    ``noise`` is the share of rows whose label is flipped, so accuracy is bounded below 1.
    Extra keyword arguments add constant columns (e.g. ``split=...`` callables per row).
    """
    rng = random.Random(seed)
    sentences = lee_sentences()
    rows = []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(sentences)[:15])
        for _ in range(cue_words):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        if rng.random() < noise:
            label = 1 - label
        row = {"text": " ".join(words), "label": "pos" if label else "neg"}
        row.update({k: (v(i) if callable(v) else v) for k, v in columns.items()})
        rows.append(row)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def small_data(tmp_path: Path) -> dict[str, Path]:
    return {"source": write_sentiment_csv(tmp_path / "source.csv", 600, seed=1),
            "target": write_sentiment_csv(tmp_path / "target.csv", 400, seed=2, cue_words=1)}


def file_source(path: Path, title: str, max_len: int = 64) -> str:
    """One ``data.sources`` entry (Hydra override syntax) for a generated CSV."""
    return (f"{{name:file,path:{path},text_column:text,label_column:label,split_column:null,"
            f"delimiter:null,title:{title},max_len:{max_len},test_size:100,val_size:100}}")


def small_study_overrides(data: dict[str, Path], results: Path, cache: Path, hpo: str = "none",
                          baseline: str = "none") -> list[str]:
    """A whole study in seconds: generated CSVs, word2vec on the Lee corpus, a tiny TextCNN."""
    return [f"hpo={hpo}", f"baseline={baseline}",
        "study=small", f"paths.results={results}", f"paths.cache={cache}", "trainer=cpu",
        "progress=false", "plots=false",  # figures: tests/test_report.py, test_page.py
        "dataset@data.source=file", f"data.source.path={data['source']}",
        "data.source.test_size=100", "data.source.val_size=100",
        "dataset@data.target=file", f"data.target.path={data['target']}",
        "data.target.test_size=100", "data.target.val_size=100",
        "embeddings=word2vec", f"embeddings.corpus={LEE}", "embeddings.dim=16",
        "embeddings.epochs=3", "model.embedding_dim=16", "model.maps=8",
        "source.max_epochs=3", "train.min_epochs=2", "train.max_epochs=4", "train.patience=2",
        "train.min_steps=8", "train.extend_epochs=2",
        "data.sizes=[20,100]", "seeds=[0,1]",
    ]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed console command, as a user runs it."""
    exe = Path(sys.executable).with_name("transfer-bench")
    full_env = {**os.environ, **(env or {})}
    full_env.pop("TRANSFER_BENCH_DEBUG", None)
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd or REPO,
                          env=full_env, timeout=timeout)


def run_main(*args: str) -> subprocess.CompletedProcess:
    """The CLI's own entry point in this process, for commands that train nothing (a refusal, `ls`,
    `validate`).

    The same ``main`` the console command calls, the same exit status and stderr, without a new
    interpreter importing torch (seconds a call). A run that trains belongs in
    :func:`run_cli`, where process-wide settings it makes (threads, determinism) stay its own.
    """
    from bench.cli import main

    out, err, argv, code = io.StringIO(), io.StringIO(), sys.argv[:], 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(["transfer-bench", *args], code, out.getvalue(),
                                       err.getvalue())


@pytest.fixture(scope="session")
def cache_home() -> Path:
    """The real user cache, so fetched registry packages stay warm between test runs."""
    from bench.cache import cache_root

    return cache_root()


@pytest.fixture(scope="session")
def tuned_study(tmp_path_factory) -> Path:
    """One small tuned study (3 strategies + baseline, 3 sizes, 3 seeds, 2 trials per replicate,
    2-fold CV), shared by the tests that only read a study: reports and reproduction."""
    root = tmp_path_factory.mktemp("tuned")
    data = {"source": write_sentiment_csv(root / "source.csv", 600, seed=1),
            "target": write_sentiment_csv(root / "target.csv", 400, seed=2, cue_words=1)}
    args = [*small_study_overrides(data, root / "results", root / "cache", hpo="tpe",
                                   baseline="tfidf_logreg"),
            "strategy=[scratch,frozen,full]", "data.sizes=[20,50,100]", "seeds=[0,1,2]",
            "hpo.n_trials=2", "hpo.pruner.n_startup_trials=1", "hpo.pruner.n_warmup_steps=1",
            "protocol.folds=2"]  # every replicate is tuned: keep the fixture to a few minutes
    proc = run_cli("sweep", *args)
    assert proc.returncode == 0, proc.stderr
    return root / "results" / "small"


def cell_study(storage: str, strategy: str, size: int | str, seed: int):
    """The Optuna study of one (strategy, size, seed) replicate; its name carries the cell's
    identity hash (``<study>/<cell_hash>/<strategy>/n=<size>/seed=<seed>``)."""
    import optuna

    suffix = f"/{strategy}/n={size}/seed={seed}"
    (name,) = [s.study_name for s in optuna.study.get_all_study_summaries(storage)
               if s.study_name.endswith(suffix)]
    return optuna.load_study(study_name=name, storage=storage)


def pytest_collection_modifyitems(config, items):
    """``slow``: every test that fetches or trains on real data, i.e. asks for the real data
    cache (directly or through another fixture) or reruns committed studies; ``pytest -m "not
    slow"`` is the quick loop on generated data."""
    for item in items:
        if "cache_home" in getattr(item, "fixturenames", ()) or item.get_closest_marker("studies"):
            item.add_marker(pytest.mark.slow)
