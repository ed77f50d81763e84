"""Classification metrics computed from logits (no extra dependencies, exact on small sets).

Single-label: accuracy, macro-F1, one-vs-rest mAP (average precision of each class's softmax score, as
scikit-learn's ``average_precision_score``), expected calibration error, and video-level accuracy where a
video contributes several clips (clip ids ``<video>#<k>``).
"""
from __future__ import annotations

import torch

#: clip ids of clips cut from one video share the part before this separator
CLIP_SEPARATOR = "#"


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


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AP = Σ_n (R_n − R_{n−1}) P_n over the distinct score thresholds, highest first (tied scores form one
    threshold, as scikit-learn). NaN when there is no positive."""
    positive = positive.bool()
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    s, pos = scores[order], positive[order].double()
    tp = torch.cumsum(pos, 0)
    seen = torch.arange(1, len(s) + 1, dtype=torch.float64)
    last_of_threshold = torch.ones(len(s), dtype=torch.bool)
    last_of_threshold[:-1] = s[1:] != s[:-1]
    tp, seen = tp[last_of_threshold], seen[last_of_threshold]
    recall = tp / n_pos
    precision = tp / seen
    previous = torch.cat([torch.zeros(1, dtype=torch.float64), recall[:-1]])
    return float(((recall - previous) * precision).sum())


def mean_average_precision(logits: torch.Tensor, y: torch.Tensor) -> float:
    """One-vs-rest AP of each class's softmax score, averaged over the classes that occur in ``y``."""
    probs = torch.softmax(logits.double(), dim=1)
    aps = [average_precision(probs[:, c], y == c) for c in torch.unique(y).tolist()]
    return sum(aps) / len(aps) if aps else float("nan")


def expected_calibration_error(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over ``bins`` equal-width bins of the top softmax probability
    (Guo et al. 2017); a confidence of exactly 1 falls in the last bin."""
    if not len(y):
        return float("nan")
    conf, pred = torch.softmax(logits.double(), dim=1).max(1)
    correct = (pred == y).double()
    which = torch.clamp((conf * bins).long(), max=bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in torch.unique(which):
        inside = which == b
        ece += inside.double().mean() * (correct[inside].mean() - conf[inside].mean()).abs()
    return float(ece)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return torch.nn.functional.cross_entropy(logits.float(), y).item()


def video_of(clip_id: str) -> str:
    return clip_id.split(CLIP_SEPARATOR, 1)[0]


def video_level(logits: torch.Tensor, y: torch.Tensor, clip_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean softmax per video, label per video), or None when every video has one clip (video = clip level)."""
    videos = [video_of(c) for c in clip_ids]
    order = list(dict.fromkeys(videos))
    if len(order) == len(videos):
        return None
    position = {v: i for i, v in enumerate(order)}
    index = torch.tensor([position[v] for v in videos])
    probs = torch.softmax(logits.double(), dim=1)
    summed = torch.zeros(len(order), probs.shape[1], dtype=torch.float64).index_add_(0, index, probs)
    counts = torch.bincount(index, minlength=len(order)).double()[:, None]
    labels = torch.zeros(len(order), dtype=y.dtype).index_copy_(0, index, y)
    return summed / counts, labels


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, ece_bins: int = 15,
                           clip_ids: list[str] | None = None) -> dict[str, float]:
    out = {"loss": cross_entropy(logits, y), "accuracy": accuracy(logits, y), "macro_f1": macro_f1(logits, y),
           "mAP": mean_average_precision(logits, y), "ece": expected_calibration_error(logits, y, ece_bins)}
    videos = video_level(logits, y, clip_ids) if clip_ids is not None else None
    if videos is not None:
        out["video_accuracy"] = accuracy(*videos)
    return out
