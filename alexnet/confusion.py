"""The confusion matrix, one way: (K, K) counts, row = the true class, column = the predicted one.

``train.evaluate`` sums it batch by batch, `alexnet report` rebuilds it from its per-image
predictions to check them, `alexnet serve` draws it from the first test images; all three count
with ``confusion_matrix``.
"""

from __future__ import annotations

import torch


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (true, predicted) pairs as a (K, K) int64 tensor on the inputs' device: one bincount
    over ``label * K + pred``, which is a sum, so the matrices of batches add up to the whole's."""
    k = num_classes
    return torch.bincount(labels.long() * k + preds.long(), minlength=k * k).view(k, k)


def most_confused(matrix, n: int) -> list[tuple[int, int, int]]:
    """The ``n`` largest off-diagonal counts as (true, predicted, count), largest first; ties by class order."""
    k = matrix.shape[0]
    cells = [(int(matrix[i, j]), i, j) for i in range(k) for j in range(k) if i != j and matrix[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(i, j, c) for c, i, j in cells[:n]]
