"""alexnet/confusion.py: the one confusion matrix (rows = true class), against a count made by hand."""

import torch

from alexnet.confusion import confusion_matrix, most_confused


def test_confusion_matrix_counts_every_true_predicted_pair_and_batches_add_up():
    g = torch.Generator().manual_seed(0)
    labels, preds = torch.randint(0, 7, (500,), generator=g), torch.randint(0, 7, (500,), generator=g)
    by_hand = torch.zeros(7, 7, dtype=torch.long)
    for t, p in zip(labels.tolist(), preds.tolist()):
        by_hand[t, p] += 1
    assert torch.equal(confusion_matrix(labels, preds, 7), by_hand)
    batches = sum(confusion_matrix(labels[i : i + 64], preds[i : i + 64], 7) for i in range(0, 500, 64))
    assert torch.equal(batches, by_hand)
    # A class never seen still has its row and column; uint8 labels (as stored) count the same.
    assert confusion_matrix(torch.tensor([0], dtype=torch.uint8), torch.tensor([0]), 3).tolist() == [
        [1, 0, 0],
        [0, 0, 0],
        [0, 0, 0],
    ]


def test_most_confused_pairs_are_the_largest_off_diagonal_counts_ties_in_class_order():
    m = torch.tensor([[50, 3, 7], [3, 40, 0], [1, 7, 30]])
    assert most_confused(m, 3) == [(0, 2, 7), (2, 1, 7), (0, 1, 3)]
    assert most_confused(torch.eye(3, dtype=torch.long), 3) == []  # the diagonal is never a confusion
