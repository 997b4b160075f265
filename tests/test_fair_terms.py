"""Strategies on fair terms: each in its own range from its own default, tuning that can only
add, a baseline tuned completely whatever the trials, and fits that get room to converge."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
import torch

from bench.config import compose_config, strategies, study_hash
from bench.errors import BenchError
from bench.search_space import default_trial, suggest
from tests.conftest import REPO, run_cli, small_study_overrides
from tests.test_transformer import bert_study, tiny_bert  # noqa: F401 - the fixture

MINILM = ["experiment=movie_to_amazon_minilm"]


def spaces(cfg) -> dict[str, dict]:
    """Each selected strategy's effective search space, as a NeuralMethod builds it."""
    from bench.search_space import entries

    shared = entries(dict(cfg.hpo.space))
    return {s.name: {**shared, **dict(s.space)} for s in strategies(cfg)}


def lr_range(space: dict) -> tuple[float, float]:
    return float(space["lr"]["low"]), float(space["lr"]["high"])


def test_each_transformer_strategy_has_its_own_range_and_default():
    cfg = compose_config(MINILM)
    space = spaces(cfg)
    full, probe, lora, bitfit = (lr_range(space[k]) for k in ("full", "frozen", "lora", "bitfit"))
    assert full == (1e-5, 2e-4)
    assert probe[0] > full[0] and probe[1] > 10 * full[1]   # a probe takes far larger steps
    assert lora[0] > full[0] and lora[1] > full[1] and lora != probe
    assert bitfit[1] > lora[1]
    assert lr_range(space["lp_ft"]) == probe                 # its probe stage's range
    by_name = {s.name: s for s in strategies(cfg)}
    # the MiniLM study gives the adapters a probe's steps (docs/protocol.md, item 6), and every
    # pretrained strategy the model's growth rule; scratch keeps the study's pinned 0
    grow = {"train.extend_epochs": 30}
    rounds = {"train.lengths": None}  # pinned to the rule it ran under (fits in rounds)
    assert by_name["lora"].defaults == {"train.lr": 5e-4, "train.min_steps": 300, **grow,
                                        **rounds}
    assert by_name["bitfit"].defaults == {"train.lr": 1e-3, "train.min_steps": 300, **grow,
                                          **rounds}
    assert by_name["full"].defaults == grow                  # the model's train.lr, 5e-5
    assert by_name["scratch"].defaults == {} and int(cfg.train.extend_epochs) == 0
    assert float(cfg.train.lr) == 5e-5
    # every default sits inside its own range: the first trial is the untuned setting
    from bench.study.methods import with_params

    for s in strategies(cfg):
        first = default_trial(space[s.name], with_params(cfg, s.defaults))
        assert first["lr"] == {**{"lr": float(cfg.train.lr)}, **{
            k.split(".", 1)[1]: v for k, v in s.defaults.items()}}["lr"]


def test_a_tuned_lora_rank_keeps_the_adapters_scale(tiny_bert):
    """alpha is tied to the rank (2x): whatever rank a trial picks, alpha/rank, the adapter's
    effective step size, stays what the default has (16/8)."""
    from bench.models.transformer import Encoder, add_lora

    space = spaces(compose_config(MINILM))["lora"]
    scales = set()
    for rank in (4, 8, 16):
        params = suggest(optuna.trial.FixedTrial({"lr": 5e-4, "rank": rank}), space)
        alpha = params["strategy.lora.lora.alpha"]
        assert params["strategy.lora.lora.rank"] == rank and alpha == 2 * rank
        model = Encoder(str(tiny_bert), 2)
        add_lora(model, rank, alpha, ["query", "value"])
        scales |= {round(float(m.scaling["default"]), 9) for m in model.modules()
                   if hasattr(m, "scaling") and isinstance(m.scaling, dict)}
    assert scales == {16 / 8}
    # without the tie, a rank change would change the scale: the test sees the difference
    untied = {k: {kk: vv for kk, vv in v.items() if kk != "tie"} for k, v in space.items()}
    assert "strategy.lora.lora.alpha" not in suggest(
        optuna.trial.FixedTrial({"lr": 5e-4, "rank": 4}), untied)


def test_textcnn_studies_keep_their_identity():
    """The probe's own range and default equal the TextCNN's study-wide ones: its committed
    studies (pinned to the old tuning start and no extension) hash as recorded."""
    for name in ("movie_to_amazon_strategies", "amazon_multisource", "movie_to_amazon_variance"):
        recorded = json.loads((REPO / "results" / name / "study.json").read_text())["study_hash"]
        assert study_hash(compose_config([f"experiment={name}"])) == recorded


def test_an_experiments_strategy_settings_do_not_choose_the_strategy():
    """The MiniLM experiment sets discriminative's lr_decay; choosing other strategies on the
    command line leaves discriminative out (it used to join as a half definition, and then
    block the full study from resuming)."""
    from bench.config import strategy_definitions

    cfg = compose_config([*MINILM, "strategy=[frozen]"])
    assert [s.name for s in strategies(cfg)] == ["frozen"]
    assert set(strategy_definitions(cfg)) == {"frozen", "tfidf_logreg"}
    chosen = compose_config([*MINILM, "strategy=[frozen,discriminative]"])
    assert strategy_definitions(chosen)["discriminative"]["lr_decay"] == 1.2
    with pytest.raises(BenchError, match="strategy.fulll names no strategy"):
        strategies(compose_config([*MINILM, "+strategy.fulll.train.lr=1.0e-4"]))


BAD = [
    ("strategy.lora.lora.rank=0", "lora.rank=0"),
    ("strategy.lora.lora.alpha=-1", "lora.alpha=-1"),
    ("+strategy.lora.space.dropout={path:model.nope,low:0.0,high:0.5}", "not a config key"),
    ("strategy.lora.train.lr=1.0e-6", "outside lr's range"),
    ("+strategy.bitfit.train.momentum=0.9", "train.momentum is not a training default"),
    ("+trainer.precision=banana", "trainer.precision=banana; use one of 32-true"),
    *([("+trainer.precision=bf16-mixed", "needs bf16 hardware")]
      if not torch.cpu._is_avx512_bf16_supported() and not torch.cuda.is_available() else []),
]


@pytest.mark.parametrize("override, expected", BAD)
def test_bad_strategy_settings_are_refused_before_anything_runs(override, expected):
    from bench.config import check

    with pytest.raises(BenchError, match=expected.replace(".", r"\.").replace("+", r"\+")):
        check(compose_config([*MINILM, "strategy=[lora,bitfit]", override]))


def test_a_bad_strategy_setting_is_one_line_exit_2_and_writes_nothing(tmp_path):
    proc = run_cli("sweep", *MINILM, "strategy=[lora,bitfit]", f"paths.results={tmp_path}",
                   "strategy.lora.train.lr=1.0e-6")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: strategy 'lora'"), lines
    assert not any(tmp_path.iterdir())


def test_tuning_starts_at_the_default_and_the_report_shows_what_it_bought(small_data, tmp_path):
    args = [*small_study_overrides(small_data, tmp_path, tmp_path / "cache", hpo="tpe"),
            "strategy=[frozen]", "data.sizes=[50]", "seeds=[0,1,2]", "hpo.n_trials=3",
            "hpo.pruner.name=none", "protocol.folds=2", "hpo.default_fit=true",
            "strategy.frozen.train.lr=0.002"]
    proc = run_cli("sweep", *args)
    assert proc.returncode == 0, proc.stderr
    study = tmp_path / "small"
    storage = f"sqlite:///{study / 'optuna.db'}"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    assert len(names) == 3  # one tuning per seed
    for name in names:
        first = optuna.load_study(study_name=name, storage=storage).trials[0]
        assert first.params == {"lr": 0.002} and first.user_attrs["default"]
    tuned = [json.loads(line) for line in (study / "records.jsonl").read_text().splitlines()]
    defaults = [json.loads(line) for line in (study / "defaults.jsonl").read_text().splitlines()]
    assert len(defaults) == 3 and all(d["params"] == {"train.lr": 0.002} for d in defaults)
    for d in defaults:  # the best trial is never worse than the default on the selection score
        t = next(r for r in tuned if r["strategy"] == d["strategy"] and r["seed"] == d["seed"])
        assert t["hpo"]["best_value"] >= t["hpo"]["default"]["value"]
        assert d["default_is_best"] == (t["hpo"]["best_trial"] == 0)
        if d["default_is_best"]:
            assert d["metrics"] == t["metrics"]
    # a run stopped between a tuned fit and its default's: the next run adds the default
    # from what the tuned record kept, without tuning again
    lines = (study / "defaults.jsonl").read_text().splitlines(keepends=True)
    (study / "defaults.jsonl").write_text("".join(lines[1:]))
    trials = sum(len(optuna.load_study(study_name=n, storage=storage).trials) for n in names)
    again = run_cli("sweep", *args)
    assert again.returncode == 0, again.stderr
    removed = json.loads(lines[0])
    now = [json.loads(line) for line in (study / "defaults.jsonl").read_text().splitlines()]
    back = [d for d in now if d["seed"] == removed["seed"]]
    assert len(now) == 3 and len(back) == 1
    assert back[0]["metrics"] == removed["metrics"]  # the same fit again
    assert sum(len(optuna.load_study(study_name=n, storage=storage).trials)
               for n in names) == trials
    neural = [t for t in tuned if t["strategy"] == "frozen"]
    for memory in (t["memory"] for t in neural):  # each fit's training peak, from its start
        assert memory["kind"] == "rss" and memory["peak_mib"] >= memory["start_mib"] > 0
    cost = (study / "report" / "cost.md").read_text()
    assert "| peak MiB " in cost
    spent = sum((r["hpo"] or {}).get("seconds") or r["selection"]["seconds"] or 0
                for r in tuned) + sum(r["seconds"] for r in tuned)  # tunings, selections, fits
    assert f"Compute in these records: {spent / 60:.1f} min (n=50: {spent / 60:.1f} min)" in cost
    table = (study / "report" / "tuning_gain.md").read_text()
    assert "what tuning bought" in table and "| frozen" in table
    gains = __import__("pandas").read_csv(study / "report" / "tuning_gain.csv")
    mean = sum(t["metrics"]["test_acc"] for t in tuned if t["strategy"] == "frozen") / 3 - \
        sum(d["metrics"]["test_acc"] for d in defaults) / 3
    assert gains.loc[0, "gain"] == pytest.approx(mean, abs=1e-6)
    searches = [optuna.load_study(study_name=n, storage=storage).trials for n in names]
    searched = (sum(map(len, searches)),  # the search behind it, as Optuna holds it
                sum(t.state == optuna.trial.TrialState.PRUNED for s in searches for t in s))
    assert searched[0] == 9
    assert f"| {searched[0]} ({searched[1]}) " in table
    assert (gains.loc[0, "trials"], gains.loc[0, "pruned"]) == searched


def test_the_baseline_is_tuned_on_its_whole_grid_and_shared_across_backbones(
        small_data, tmp_path, tiny_bert):
    """TF-IDF's C over the fixed grid, untuned study or not: a TextCNN study and a transformer
    study on the same target, protocol, splits and seeds get the same baseline records."""
    grid = list(compose_config([]).baseline.grid)
    assert len(grid) >= 12 and min(grid) <= 1e-2 and max(grid) >= 1e5
    common = ["baseline=tfidf_logreg", "data.sizes=[40]", "seeds=[0,1]"]
    textcnn = run_cli("sweep", *small_study_overrides(small_data, tmp_path / "a", tmp_path / "c"),
                      "strategy=[scratch]", *common)
    bert = run_cli("sweep", *bert_study(small_data, tmp_path / "b", tmp_path / "c", tiny_bert,
                                        "strategy=[frozen]", "hpo=tpe", "hpo.n_trials=1",
                                        *common))
    assert textcnn.returncode == 0 and bert.returncode == 0, textcnn.stderr + bert.stderr

    def baseline(root: Path) -> dict:
        rows = [json.loads(line) for line in (root / "small" / "records.jsonl").read_text()
                .splitlines()]
        return {(r["size"], r["seed"]): (r["metrics"], r["params"], r["selection"]["grid"],
                                         r["test_predictions"])
                for r in rows if r["strategy"] == "tfidf_logreg"}

    a, b = baseline(tmp_path / "a"), baseline(tmp_path / "b")
    assert len(a) == 2 and a == b
    for metrics, params, scores, _ in a.values():
        assert len(scores) == len(grid)
        assert scores[f"{params['C']:g}"] == max(scores.values())


def test_a_fit_still_improving_at_its_cap_gets_more_rounds():
    """``extend``: past max_epochs a fit goes on while each round lowers the held-out loss;
    without it the same fit stops at max_epochs, flagged at_cap."""
    from torch import nn

    from bench.training.fit import TextClassifier, fit_and_test, loader

    class Tiny(nn.Module):
        blocks = ("head",)

        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)

        def block(self, name):
            return self.head

        def forward(self, x):
            return self.head(x)

    torch.manual_seed(0)
    x = torch.randn(200, 4)
    y = (x[:, 0] > 0).long()
    train, val = loader(x[:150], y[:150], 50, True), loader(x[150:], y[150:], 50, False)
    kw = dict(trainer_cfg={"accelerator": "cpu", "devices": 1}, max_epochs=2, patience=2)

    def run(extend: int):
        torch.manual_seed(0)
        module = TextClassifier(Tiny(), 2, lr=1e-3)  # slow steps: still improving at round 2
        return fit_and_test(module, train, val, None, extend=extend, **kw)

    capped, extended = run(0), run(30)
    assert capped.epochs == 2 and capped.at_cap
    assert extended.epochs > 2 and extended.steps == extended.epochs * 3
    assert extended.at_cap == (extended.epochs == 32)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="the peak resident set is reset through Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("mib", [40, 240])
def test_a_fits_peak_memory_is_what_it_needed_not_the_process_lifetime_peak(mib):
    """A head whose forward pass touches ``mib`` MiB: the fit's record says about that much
    added, though the process held far more just before the fit."""
    from torch import nn

    from bench.training.fit import TextClassifier, fit_and_test, loader

    class Hungry(nn.Module):
        blocks = ("head",)

        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)

        def block(self, name):
            return self.head

        def forward(self, x):
            scratch = torch.ones(mib * 2**18)  # float32: mib MiB, every page written
            return self.head(x) + 0 * scratch[:1].sum()

    torch.manual_seed(0)
    x = torch.randn(100, 4)
    y = (x[:, 0] > 0).long()
    train = loader(x, y, 50, True)
    before = torch.ones(600 * 2**18)  # a 600 MiB high-water mark before the fit
    del before
    fit = fit_and_test(TextClassifier(Hungry(), 2, lr=1e-3), train, None, None,
                       trainer_cfg={"accelerator": "cpu", "devices": 1}, max_epochs=1, patience=1)
    added = fit.memory["peak_mib"] - fit.memory["start_mib"]
    assert fit.memory["kind"] == "rss"
    assert 0.9 * mib <= added <= mib + 150, fit.memory


def test_under_a_decaying_schedule_a_selection_at_its_cap_is_rerun_with_twice_the_rounds(
        tmp_path, small_data, cache):
    """The rule configs recorded before ``train.lengths`` ran under (the committed MiniLM
    studies; `reproduce` reruns their fits with it): a linear-decay fit cannot run on past its
    cap, so the selection is rerun with the schedule over twice the rounds (each round as
    long) while the hard limit allows, and the final fit uses that length; with no room
    (extend_epochs 0) the same fit stays at its cap. A new study is refused such a config."""
    from bench.study.methods import NeuralMethod
    from bench.study.prepare import prepare

    def method(extend: int) -> NeuralMethod:
        cfg = compose_config([*small_study_overrides(small_data, tmp_path, cache),
                              "strategy=[full]", "data.sizes=[100]", "seeds=[0]",
                              "train.schedule.name=linear_warmup", "train.lr=1.0e-2",
                              "train.max_epochs=2", "train.min_epochs=1",
                              f"train.extend_epochs={extend}"])
        (full,) = strategies(cfg)
        return NeuralMethod(prepare(cfg, [full], [100]), cfg, full)

    capped_method, grown_method = method(0), method(6)
    capped, grown = capped_method.select({}, 100, 0), grown_method.select({}, 100, 0)
    assert capped.at_cap and not capped.grown
    rounds = grown.grown["train.max_epochs"]
    assert rounds in (4, 8)  # 2 -> 4 -> 8: doubling up to the hard limit 2 + 6
    assert grown.grown["train.min_steps"] == 8 * rounds // 2  # rounds as long as before
    assert grown.rounds[0] > 2  # the final fit runs past the nominal cap
    a = capped_method.final({}, 100, 0, capped.rounds)
    b = grown_method.final(dict(grown.grown), 100, 0, grown.rounds)
    assert a.steps / capped.rounds[0] == b.steps / grown.rounds[0]  # rounds as long
    refused = run_cli("sweep", *small_study_overrides(small_data, tmp_path, cache),
                      "strategy=[full]", "train.schedule.name=linear_warmup")
    assert refused.returncode == 2 and "train.lengths is not set" in refused.stderr
