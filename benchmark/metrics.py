"""Classification metrics computed from logits (no extra dependencies, exact on small sets)."""
from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item() if len(y) else float("nan")


def macro_f1(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Unweighted mean F1 over the classes that occur in the labels or the predictions (as scikit-learn)."""
    pred = logits.argmax(1)
    classes = torch.unique(torch.cat([y, pred]))
    scores = []
    for c in classes:
        tp = ((pred == c) & (y == c)).sum().item()
        fp = ((pred == c) & (y != c)).sum().item()
        fn = ((pred != c) & (y == c)).sum().item()
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores) if scores else float("nan")


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return torch.nn.functional.cross_entropy(logits.float(), y).item()


def classification_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"loss": cross_entropy(logits, y), "accuracy": accuracy(logits, y), "macro_f1": macro_f1(logits, y)}
