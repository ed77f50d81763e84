"""Classification metrics computed from logits (no extra dependencies, exact on small sets).

Single-label (labels [N] of class indices): accuracy (top-1), top-5, macro-F1, one-vs-rest mAP (average
precision of each class's softmax score, as scikit-learn's ``average_precision_score``), expected calibration
error. Multi-label (labels [N, C] of 0/1, per-class sigmoid): mAP and mAUC over classes (the G-Blend paper's
mini-AudioSet metrics) and top-k "hit" accuracy (one of the k highest-scored classes is a label). Where a video
contributes several clips (clip ids ``<video>#<k>``), video-level top-1/top-5 (and mAP/mAUC) use each video's
clip-averaged probabilities.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

#: clip ids of clips cut from one video share the part before this separator
CLIP_SEPARATOR = "#"


def is_multi_label(y: torch.Tensor) -> bool:
    """Multi-label targets are multi-hot rows [N, C]; single-label targets are class indices [N]."""
    return y.dim() == 2


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training objective the targets call for: softmax cross-entropy for class indices, per-class sigmoid
    binary cross-entropy (mean over samples and classes) for multi-hot targets."""
    if is_multi_label(y):
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def hits(logits: torch.Tensor, y: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Per sample: is the label among the k highest-scored classes (multi-label: is any label among them)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    if is_multi_label(y):
        return y.gather(1, top).bool().any(1)
    return (top == y[:, None]).any(1)


def accuracy(logits: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
    """Top-k accuracy (default top-1); for multi-label targets the top-k hit rate."""
    return hits(logits, y, k).float().mean().item() if len(y) else float("nan")


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


def multilabel_average_precision(logits: torch.Tensor, y: torch.Tensor) -> float:
    """mAP of multi-label predictions: each class's AP of its sigmoid score, averaged over the classes with a
    positive."""
    scores = torch.sigmoid(logits.double())
    aps = [average_precision(scores[:, c], y[:, c]) for c in range(y.shape[1]) if y[:, c].any()]
    return sum(aps) / len(aps) if aps else float("nan")


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties counting 1/2
    (the Mann-Whitney statistic, equal to scikit-learn's ``roc_auc_score``). NaN without both classes."""
    positive = positive.bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = torch.from_numpy(rankdata(scores.double().numpy()))  # tied scores share their mean rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mean_auc(logits: torch.Tensor, y: torch.Tensor) -> float:
    """mAUC of multi-label predictions: each class's ROC AUC, averaged over classes with positives and negatives."""
    aucs = [roc_auc(logits[:, c], y[:, c]) for c in range(y.shape[1])]
    aucs = [a for a in aucs if a == a]
    return sum(aucs) / len(aucs) if aucs else float("nan")


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
    """The task loss's value (cross-entropy, or binary cross-entropy for multi-label targets)."""
    return task_loss(logits.float(), y).item()


def video_of(clip_id: str) -> str:
    return clip_id.split(CLIP_SEPARATOR, 1)[0]


def video_level(logits: torch.Tensor, y: torch.Tensor, clip_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(log of the mean probability per video, label per video), or None when every video has one clip (video = clip
    level). Probabilities are softmax (single-label) or per-class sigmoid (multi-label); the log keeps the result a
    logit-like score, so every clip-level metric applies to it unchanged (argmax, top-k, ranks)."""
    videos = [video_of(c) for c in clip_ids]
    order = list(dict.fromkeys(videos))
    if len(order) == len(videos):
        return None
    position = {v: i for i, v in enumerate(order)}
    index = torch.tensor([position[v] for v in videos])
    probs = torch.sigmoid(logits.double()) if is_multi_label(y) else torch.softmax(logits.double(), dim=1)
    summed = torch.zeros(len(order), probs.shape[1], dtype=torch.float64).index_add_(0, index, probs)
    counts = torch.bincount(index, minlength=len(order)).double()[:, None]
    labels = torch.zeros((len(order), *y.shape[1:]), dtype=y.dtype).index_copy_(0, index, y)
    mean = summed / counts
    return (torch.logit(mean, eps=1e-12) if is_multi_label(y) else torch.log(mean.clamp_min(1e-300))), labels


#: top-k accuracies are reported for k = 5 only with more than 5 classes (else every sample is a hit)
TOP_K = 5


def classification_metrics(
    logits: torch.Tensor, y: torch.Tensor, ece_bins: int = 15, clip_ids: list[str] | None = None
) -> dict[str, float]:
    """Clip-level metrics, plus video-level ones (prefixed ``video_``) when videos have several clips."""
    if is_multi_label(y):
        out = {
            "loss": cross_entropy(logits, y),
            "accuracy": accuracy(logits, y),
            "mAP": multilabel_average_precision(logits, y),
            "mAUC": mean_auc(logits, y),
        }
    else:
        out = {
            "loss": cross_entropy(logits, y),
            "accuracy": accuracy(logits, y),
            "macro_f1": macro_f1(logits, y),
            "mAP": mean_average_precision(logits, y),
            "ece": expected_calibration_error(logits, y, ece_bins),
        }
    if logits.shape[1] > TOP_K:
        out["top5"] = accuracy(logits, y, TOP_K)
    videos = video_level(logits, y, clip_ids) if clip_ids is not None else None
    if videos is not None:
        v_logits, v_y = videos
        out["video_accuracy"] = accuracy(v_logits, v_y)
        if logits.shape[1] > TOP_K:
            out["video_top5"] = accuracy(v_logits, v_y, TOP_K)
        if is_multi_label(y):
            out["video_mAP"], out["video_mAUC"] = multilabel_average_precision(v_logits, v_y), mean_auc(v_logits, v_y)
    return out
