"""Kim (2014) convolutional sentence classifier with three ordered blocks.

``embedding`` (word vectors) -> ``encoder`` (parallel 1-D convolutions, ReLU, max over time) ->
``head`` (dropout + linear). Strategies freeze, transfer or re-initialise blocks by name.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ConvEncoder(nn.Module):
    """One convolution per window size, max-pooled over time and concatenated.

    The max runs over the windows that lie inside the text (a text shorter than a window has
    one, zero-padded), never over padding: otherwise a text's features would change with the
    length of the longest text in its batch.
    """

    def __init__(self, embedding_dim: int, windows: Sequence[int], maps: int) -> None:
        super().__init__()
        self.windows = tuple(int(w) for w in windows)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, maps, w) for w in self.windows)
        self.out_features = maps * len(self.windows)

    def forward(self, embedded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` embedded tokens and ``[B]`` text lengths -> ``[B, F]`` features."""
        x = embedded.transpose(1, 2)
        width = max(self.windows)
        if x.shape[2] < width:  # a batch of short texts: pad to the widest window
            x = nn.functional.pad(x, (0, width - x.shape[2]))
        features = []
        for w, conv in zip(self.windows, self.convs):
            h = torch.relu(conv(x))  # [B, maps, T - w + 1]
            valid = (lengths - w).clamp(min=0)  # last window start inside the text
            outside = torch.arange(h.shape[2], device=h.device)[None, :] > valid[:, None]
            # ReLU outputs are >= 0, so 0 at masked positions never exceeds a real maximum.
            features.append(h.masked_fill(outside[:, None, :], 0.0).amax(dim=2))
        return torch.cat(features, dim=1)


class TextCNN(nn.Module):
    """Kim's CNN. ``blocks`` lists the named blocks from the bottom (input) to the top (output)."""

    blocks: tuple[str, ...] = ("embedding", "encoder", "head")
    pad_id = 0

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 50,
                 windows: Sequence[int] = (3, 4, 5), maps: int = 100, dropout: float = 0.5) -> None:
        super().__init__()
        if not windows or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                              for w in windows):
            raise ValueError(f"model.windows={list(windows)!r}; give window widths >= 1")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        nn.init.uniform_(self.embedding.weight, -0.25, 0.25)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.encoder = ConvEncoder(embedding_dim, windows, maps)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.out_features,
                                                                 num_classes))

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """What the head reads: ``[B, maps x windows]`` max-pooled convolution features."""
        lengths = (ids != 0).sum(dim=1)  # texts are left-aligned, padded with id 0
        return self.encoder(self.embedding(ids), lengths)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))

    def block(self, name: str) -> nn.Module:
        return getattr(self, name)
