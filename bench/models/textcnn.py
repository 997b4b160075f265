"""Kim (2014) convolutional sentence classifier with three ordered blocks.

``embedding`` (word vectors) -> ``encoder`` (parallel 1-D convolutions, ReLU, max over time) ->
``head`` (dropout + linear). Strategies freeze, transfer or re-initialise blocks by name.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ConvEncoder(nn.Module):
    """One convolution per window size, max-pooled over time and concatenated."""

    def __init__(self, embedding_dim: int, windows: Sequence[int], maps: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, maps, w) for w in windows)
        self.out_features = maps * len(windows)

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, F]
        x = embedded.transpose(1, 2)
        return torch.cat([torch.relu(conv(x)).amax(dim=2) for conv in self.convs], dim=1)


class TextCNN(nn.Module):
    """Kim's CNN. ``blocks`` lists the named blocks from the bottom (input) to the top (output)."""

    blocks: tuple[str, ...] = ("embedding", "encoder", "head")

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 50,
                 windows: Sequence[int] = (3, 4, 5), maps: int = 100, dropout: float = 0.5) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        nn.init.uniform_(self.embedding.weight, -0.25, 0.25)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.encoder = ConvEncoder(embedding_dim, windows, maps)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.out_features,
                                                                 num_classes))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embedding(ids)))

    def block(self, name: str) -> nn.Module:
        return getattr(self, name)
