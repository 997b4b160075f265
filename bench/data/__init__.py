"""Data: where datasets come from (sources), how they arrive (fetch), text -> tensors, splits."""
