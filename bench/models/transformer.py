"""A pretrained Hugging Face encoder (BERT-like) split into the blocks strategies act on.

Blocks, bottom to top: ``embeddings``, ``layer_0`` .. ``layer_{L-1}`` (the encoder layers) and
``head`` (mean pooling over the real tokens, dropout, a linear layer). The network is always
built from the folder's ``config.json`` with random weights; a strategy that transfers loads
the pretrained (or source-fine-tuned) weights into it, exactly as for the TextCNN, so
``scratch`` is the same architecture trained from a random start. Weights and tokenizer are
read from disk once per process (:func:`load_folder`), never per trial, and nothing is fetched
from a hub: every ``from_pretrained`` is ``local_files_only``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from bench.cache import cached, sha256_file, stable_hash
from bench.data.batching import trim_ids, trim_states
from bench.errors import BenchError

TARGET = "bench.models.transformer.Encoder"
# Where an architecture keeps its embeddings and its list of layers (attribute paths).
LAYOUTS = {"bert": ("embeddings", "encoder.layer"), "roberta": ("embeddings", "encoder.layer"),
           "xlm-roberta": ("embeddings", "encoder.layer"), "electra": ("embeddings", "encoder.layer"),
           "distilbert": ("embeddings", "transformer.layer")}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _quiet() -> None:
    """No load reports or progress bars from transformers: the study prints one display."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, even by accident
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _attr(module: nn.Module, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), module)


@functools.lru_cache(maxsize=4)
def folder_config(folder: str) -> dict[str, Any]:
    """``config.json`` of a model folder, checked to be an encoder this module can split."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise BenchError(f"model folder {path} has no config.json; give a Hugging Face model "
                         "folder (config.json, weights, tokenizer)")
    config = json.loads((path / "config.json").read_text())
    kind = config.get("model_type")
    if kind not in LAYOUTS or config.get("is_decoder") or config.get("is_encoder_decoder"):
        raise BenchError(f"model folder {path} holds a {kind!r} model; transfer-bench splits "
                         f"encoders only: {', '.join(sorted(LAYOUTS))}")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise BenchError(f"model folder {path} has no weights ({' or '.join(WEIGHT_FILES)})")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise BenchError(f"model folder {path} has no tokenizer (tokenizer.json or vocab.txt)")
    return config


def layer_count(folder: str) -> int:
    config = folder_config(folder)
    return int(config.get("num_hidden_layers", config.get("n_layers", 0)))


def block_names(layers: int) -> tuple[str, ...]:
    return ("embeddings", *(f"layer_{i}" for i in range(layers)), "head")


def pad_id(folder: str) -> int:
    """The id the tokenizer pads with (``config.json``'s ``pad_token_id``, BERT's 0 if unset)."""
    value = folder_config(folder).get("pad_token_id")
    return int(value) if value is not None else 0


def max_positions(folder: str) -> int:
    config = folder_config(folder)
    positions = int(config.get("max_position_embeddings", 512))
    # RoBERTa-style position ids start after the padding index.
    return positions - 2 if config.get("model_type") in ("roberta", "xlm-roberta") else positions


class Encoder(nn.Module):
    """An encoder body with a mean-pooled linear head; ``blocks`` as the module docstring says."""

    def __init__(self, folder: str, num_classes: int, dropout: float = 0.1, **_: Any) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        _quiet()
        folder = str(Path(folder).expanduser())
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        extra = {"add_pooling_layer": False} if config.model_type == "bert" else {}
        self.body = AutoModel.from_config(config, **extra)
        self.pad_id = pad_id(folder)
        embeddings, layers = LAYOUTS[config.model_type]
        self._embeddings, self._layers = embeddings, layers
        self.blocks = block_names(len(_attr(self.body, layers)))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(config.hidden_size, num_classes))

    def block(self, name: str) -> nn.Module:
        if name == "head":
            return self.head
        if name == "embeddings":
            return _attr(self.body, self._embeddings)
        return _attr(self.body, self._layers)[int(name.removeprefix("layer_"))]

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean of the last layer's states over the real (non-pad) tokens: ``[B, hidden]``."""
        mask = (ids != self.pad_id).to(torch.long)
        return pool(self.body(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))

    @property
    def splits_at_layers(self) -> bool:
        """Whether its layers can be run one by one as ``layer(hidden, mask)`` (the BERT family;
        DistilBERT's blocks take other arguments): what a frozen-prefix cache needs."""
        return self.body.config.model_type in PREFIX_MODELS

    def layers(self, hidden: torch.Tensor, mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Encoder layers ``start`` .. ``stop - 1`` on ``hidden``, with the attention mask the
        library builds for the whole model (``create_bidirectional_mask``, as its forward does)."""
        from transformers.masking_utils import create_bidirectional_mask

        full = create_bidirectional_mask(config=self.body.config, inputs_embeds=hidden,
                                         attention_mask=mask)
        for layer in _attr(self.body, self._layers)[start:stop]:
            out = layer(hidden, full)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def from_states(self, cached: torch.Tensor, start: int) -> torch.Tensor:
        """Logits from the cached states after layer ``start - 1`` (:func:`prefix_states`:
        the real-token mask in the last channel): the layers from ``start`` up, then the head."""
        mask = cached[..., -1].to(torch.long)
        hidden = self.layers(cached[..., :-1], mask, start, len(self.blocks) - 2)
        return self.head(pool(hidden, mask))


PREFIX_MODELS = ("bert", "roberta", "xlm-roberta", "electra")


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens (``mask`` 1), the head's input."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class PrefixCached(nn.Module):
    """The encoder from layer ``start`` up, fed the cached output of the frozen blocks below it
    (:func:`prefix_states`: states with the attention mask as the last channel). It holds the
    whole encoder, so its blocks, parameters and trainable count are the live model's."""

    def __init__(self, model: Encoder, start: int) -> None:
        super().__init__()
        self.model, self.start = model, start
        self.blocks = model.blocks

    def block(self, name: str) -> nn.Module:
        return self.model.block(name)

    def forward(self, cached: torch.Tensor) -> torch.Tensor:
        return self.model.from_states(cached, self.start)


class DepthCached(nn.Module):
    """Gradual unfreezing with its frozen rounds on cached states. Its input is target rows:
    in each round the blocks still frozen are looked up (``states(k)``: the states after the
    embeddings and the bottom ``k`` layers, computed once per text and process) and only the
    blocks that train run; once the embeddings train, the rows' token ids run live. The depth
    is read off the blocks' ``requires_grad`` at every call, so it follows the unfreezing
    callback round by round; a block that has trained once stays live for the rest of the fit
    (Lightning's fine-tuning callback freezes the blocks again before a test, whose scores
    must come from the trained weights). One instance per fit."""

    def __init__(self, model: Encoder, ids: torch.Tensor,
                 states: Callable[[int], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.blocks = model, model.blocks
        self._ids, self._states = ids, states  # plain attributes: never in a state dict
        self._lowest = len(self.blocks) - 1  # the lowest block that has trained: the head

    def block(self, name: str) -> nn.Module:
        return self.model.block(name)

    def frozen_depth(self) -> int | None:
        """Encoder layers below the lowest block that has trained so far in this fit; None
        once the embeddings have (then nothing below can be cached)."""
        for i, name in enumerate(self.blocks[:self._lowest]):
            if any(p.requires_grad for p in self.model.block(name).parameters()):
                self._lowest = i
                break
        return None if self._lowest == 0 else self._lowest - 1

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        depth, device = self.frozen_depth(), rows.device
        rows = rows.cpu()
        if depth is None:
            return self.model(trim_ids(self._ids[rows], self.model.pad_id).to(device))
        return self.model.from_states(trim_states(self._states(depth)[rows]).to(device), depth)


@torch.no_grad()
def prefix_states(model: Encoder, ids: torch.Tensor, start: int,
                  batch_size: int = 128) -> torch.Tensor:
    """The embeddings and encoder layers ``0 .. start - 1`` of every row of ``ids``, in eval
    mode (frozen blocks run without dropout in a fit too), with the real-token mask appended
    as the last channel: ``[N, max_len, hidden + 1]``. Batches of similar length are cut to
    their longest text; positions past a text's end stay 0 and are masked downstream."""
    was_training = model.training
    model.eval()
    lengths = (ids != model.pad_id).sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    hidden_size = model.head[-1].in_features
    out = torch.zeros(len(ids), ids.shape[1], hidden_size + 1)
    for begin in range(0, len(ids), batch_size):
        rows = order[begin:begin + batch_size]
        width = max(int(lengths[rows].max()), 1)
        batch = ids[rows, :width]
        mask = (batch != model.pad_id).to(torch.long)
        hidden = model.block("embeddings")(input_ids=batch)
        hidden = model.layers(hidden, mask, 0, start)
        out[rows, :width, :hidden_size] = hidden.float()
        out[rows, :width, hidden_size] = mask.float()
    model.train(was_training)
    return out


class Probe(nn.Module):
    """The head alone, on cached features: a frozen body's strategy costs one forward per text."""

    blocks = ("head",)

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def block(self, name: str) -> nn.Module:
        return self.head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


@functools.lru_cache(maxsize=2)
def pretrained_state(folder: str) -> dict[str, torch.Tensor]:
    """The folder's weights under :class:`Encoder`'s names (``body.*``), read once per process."""
    from transformers import AutoModel

    _quiet()
    config = folder_config(folder)
    extra = {"add_pooling_layer": False} if config["model_type"] == "bert" else {}
    body = AutoModel.from_pretrained(str(Path(folder).expanduser()), local_files_only=True,
                                     **extra)
    return {f"body.{k}": v.detach().clone() for k, v in body.state_dict().items()}


def weights_digest(folder: str) -> str:
    """SHA-256 of the weights file: the identity of "the hub weights" in cache keys."""
    path = Path(folder).expanduser()
    return next(sha256_file(path / f) for f in WEIGHT_FILES if (path / f).is_file())


@functools.lru_cache(maxsize=2)
def tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    _quiet()
    return AutoTokenizer.from_pretrained(str(Path(folder).expanduser()), local_files_only=True)


def tokenize(texts: Sequence[str], folder: str, max_len: int) -> torch.Tensor:
    """Subword ids ``[len(texts), L]`` padded with the model's pad id, at most ``max_len``
    tokens each (special tokens included); ``L`` is the longest text."""
    tok = tokenizer(folder)
    encoded = tok(list(texts), truncation=True, max_length=max_len, padding="longest",
                  return_tensors="pt")
    return encoded["input_ids"].to(torch.long)


def cached_tokenize(texts: Sequence[str], folder: str, max_len: int, cache: Path,
                    label: str) -> torch.Tensor:
    vocab = Path(folder).expanduser()
    vocab_file = next(vocab / f for f in ("tokenizer.json", "vocab.txt") if (vocab / f).is_file())
    key = stable_hash([stable_hash(list(texts)), sha256_file(vocab_file), max_len])
    return cached(cache / "tensors" / f"{label}-subword-{key}.pt",
                  lambda: tokenize(texts, folder, max_len), lambda t, p: torch.save(t, p),
                  lambda p: torch.load(p, weights_only=True))


def add_lora(model: Encoder, rank: int, alpha: float, targets: Sequence[str]) -> None:
    """LoRA (Hu et al. 2021) adapters on the named linear layers of every encoder layer, via
    ``peft``; B starts at zero, so the network computes what it did before."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=0.0,
                        target_modules=list(targets), bias="none")
    try:
        inject_adapter_in_model(config, model.body)
    except ValueError as exc:  # no module matches the targets
        raise BenchError(f"LoRA targets {list(targets)} not found in the model ({exc}); set "
                         "model.lora_targets") from None


@torch.no_grad()
def frozen_features(model: Encoder, ids: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """``model.features`` of every row of ``ids`` in eval mode (no dropout), batches of similar
    length cut to their longest text."""
    was_training = model.training
    model.eval()
    lengths = (ids != model.pad_id).sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    out = torch.empty(len(ids), model.head[-1].in_features)
    for start in range(0, len(ids), batch_size):
        rows = order[start:start + batch_size]
        width = max(int(lengths[rows].max()), 1)
        out[rows] = model.features(ids[rows, :width]).float()
    model.train(was_training)
    return out
