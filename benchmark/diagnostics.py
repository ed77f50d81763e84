"""Imbalance diagnostics of one trained model, computed on its own splits (never used for selection).

* ``linear_probes``: accuracy of a linear classifier trained on each frozen encoder's features (the OGM-GE
  paper's measure of an under-optimised encoder).
* ``masked_shapley``: each modality's Shapley value of the accuracy when the inputs outside a coalition are
  zeroed, over all 2^M coalitions (φ_m sum to acc(all) − acc(none)).
* ``ogr``: the overfitting-to-generalisation ratio between two checkpoints (G-Blend paper, eq. 3).
* ``model_cost``: parameters and forward FLOPs per sample (torch.utils.flop_counter).
* ``correct_string``: per-sample correctness, so the leaderboard can build the MLB paper's agreement table
  against the unimodal models from the metrics files alone.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmark.data.cache import BatchPreparer, CachedSplit, make_loader
from benchmark.metrics import hits, task_loss
from benchmark.models.model import MultimodalModel
from benchmark.models.shapley import coalitions, shapley_shares


def coalition_name(coalition: frozenset[str], modalities: list[str]) -> str:
    return "+".join(m for m in modalities if m in coalition) or "none"


@torch.no_grad()
def encoder_features(
    model: MultimodalModel, data: CachedSplit, prep: BatchPreparer, batch_size: int
) -> dict[str, torch.Tensor]:
    """Frozen per-modality features φ_m of every sample of ``data`` (eval mode), on the CPU."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in make_loader(data, batch_size, shuffle=False):
        inputs, _ = prep(batch)
        for m, f in model.encode(inputs).items():
            parts.setdefault(m, []).append(f.float().flatten(1).cpu())
    return {m: torch.cat(v) for m, v in parts.items()}


def fit_linear_probe(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, steps: int
) -> torch.nn.Linear:
    """Multinomial logistic regression (per-class logistic regressions for multi-hot ``y``) on standardised features
    by L-BFGS from zero weights (a convex problem, so
    the result does not depend on a seed); the standardisation is folded into the returned layer."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = task_loss(z @ w.T + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    layer = torch.nn.Linear(x.shape[1], num_classes, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w / std)
        layer.bias.copy_(b - (w / std) @ mean)
    return layer


def linear_probes(
    model: MultimodalModel,
    train: CachedSplit,
    evaluate: dict[str, CachedSplit],
    prep: BatchPreparer,
    batch_size: int,
    weight_decay: float,
    steps: int,
) -> dict[str, dict[str, float]]:
    """{split: {modality: accuracy}} of a linear probe per frozen encoder, fitted on ``train`` (keys are the
    model's feature streams: one per modality, or 'fused' after mid-fusion)."""
    feats = encoder_features(model, train, prep, batch_size)
    y = train.targets()
    y = y.double() if y.dim() == 2 else y
    probes = {m: fit_linear_probe(f, y, model.num_classes, weight_decay, steps) for m, f in feats.items()}
    out = {}
    for split, data in evaluate.items():
        eval_feats, eval_y = encoder_features(model, data, prep, batch_size), data.targets()
        with torch.no_grad():
            out[split] = {m: hits(probes[m](eval_feats[m].double()), eval_y).double().mean().item() for m in probes}
    return out


@torch.no_grad()
def masked_accuracies(
    model: MultimodalModel, data: CachedSplit, prep: BatchPreparer, batch_size: int
) -> dict[frozenset[str], float]:
    """Accuracy of the model with the inputs of every modality outside a coalition absent (``model.without``: the
    training mean input by default)."""
    model.eval()
    correct = {c: 0 for c in coalitions(model.modalities)}
    for batch in make_loader(data, batch_size, shuffle=False):
        inputs, y = prep(batch)
        for c in correct:
            correct[c] += int(hits(model(model.without(inputs, c)).logits, y).sum())
    return {c: n / max(1, len(data)) for c, n in correct.items()}


def masked_shapley(model: MultimodalModel, data: CachedSplit, prep: BatchPreparer, batch_size: int) -> dict:
    """Shapley value φ_m of each modality for the accuracy with absent inputs, and every coalition's accuracy."""
    acc = masked_accuracies(model, data, prep, batch_size)
    shares = shapley_shares(lambda c: torch.tensor(acc[c], dtype=torch.float64), model.modalities)
    empty = acc[frozenset()] / len(model.modalities)
    return {
        "shapley": {m: float(v) - empty for m, v in shares.items()},
        "masked_accuracy": {coalition_name(c, model.modalities): a for c, a in acc.items()},
    }


def ogr(train_loss: tuple[float, float], val_loss: tuple[float, float]) -> float:
    """OGR between checkpoints N and N+n (G-Blend eq. 3): |(O_{N+n} − O_N) / (L*_N − L*_{N+n})| with O = L* − L^T,
    L^T the loss on a fixed training set and L* the validation loss. NaN when validation loss did not change."""
    (t0, t1), (v0, v1) = train_loss, val_loss
    gain = v0 - v1
    return abs(((v1 - t1) - (v0 - t0)) / gain) if gain != 0 else math.nan


def model_cost(model: MultimodalModel, sample: dict[str, torch.Tensor]) -> dict:
    """Parameter counts (total, trainable, per encoder) and forward FLOPs for one sample in eval mode."""
    one = {m: x[:1] for m, x in sample.items()}
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(one)
    model.train(was_training)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "encoder_params": {m: sum(p.numel() for p in e.parameters()) for m, e in model.encoders.items()},
        "flops_per_sample": int(counter.get_total_flops()),
    }


def correct_string(logits: torch.Tensor, y: torch.Tensor) -> str:
    """'1' where the prediction is right, '0' where wrong, in the split's order."""
    return "".join("1" if c else "0" for c in hits(logits, y).tolist())


def ids_digest(ids: list[str]) -> str:
    """Identifies a split's sample order, so per-sample records of two runs are compared only when they align."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def train_eval_subset(train: CachedSplit, max_samples: int, seed: int) -> CachedSplit:
    """A fixed, seeded subset of the training split (all of it when small) for per-epoch training-loss checkpoints."""
    if len(train) <= max_samples:
        return train
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:max_samples]
    return train.subset(sorted(chosen.tolist()))
