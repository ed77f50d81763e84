"""Gradient-Blending (Wang et al. 2020): the weight estimation (Alg. 1) and the offline (Alg. 2) and online (Alg. 3)
training schemes. Offline weights come from the DAG's ``estimate`` step (benchmark.estimate); online weights are
re-estimated inside the training job at every super-epoch.

Alg. 1 as the paper writes it, per head i: G_i = L^V(N) − L^V(N+n), O_i = (L^V(N+n) − L^T'(N+n)) − (L^V(N) − L^T'(N)),
w_i = G_i / O_i², normalised to sum 1. What the harness adds, so that the weights can be trusted and read:

- **enough held-out data**: a floor ``min_holdout`` on |V| in clips (the held-out fraction is raised to reach it;
  an error when the training split cannot give it and keep at least as many clips to train), and, offline, several
  held-out draws (``holdout_draws``: each a different seeded split of the training split; the head networks are
  re-trained on every draw's T, since a clip of one draw's V is in another draw's T; G and O are averaged over the
  draws, then w is formed from the averages);
- **uncertainty**: a bootstrap of the V and T' clips (videos, when a video has several clips) with a fixed seed
  (``bootstrap`` resamples, percentile 95% intervals) gives intervals of G, O and w per head;
- **a guard for O within its noise** (``o_floor: std``, an extension of Alg. 1): O² is floored at the squared
  bootstrap standard deviation of O, so a head whose measured O is indistinguishable from 0 does not get a weight
  that only reflects 1/noise²; a note names every head whose O interval includes 0 or whose |O| is below its std;
- **both measures**: loss and accuracy are measured on the same networks; the weights use ``metric`` and the other
  measure's weights are recorded next to them, and a head with G ≤ 0 gets a note saying what rose and what fell.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Annotated, Callable, ClassVar, Literal

import numpy as np
import torch
from pydantic import StringConstraints
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, Balancer, RunContext, fused_ce, unimodal_ce
from benchmark.metrics import hits, is_multi_label, video_of
from benchmark.models.fusions import ConcatFusion
from benchmark.models.model import ModelOutput, MultimodalModel, fingerprint
from benchmark.params import HoldoutFraction, PositiveInt

FUSED_HEAD = "fused"
METRICS = ("loss", "accuracy")
#: the largest share of the training split a held-out set may take: T keeps at least as many clips as V (T' ⊂ T has
#: |V| clips)
MAX_HOLDOUT_SHARE = 0.5
#: the bootstrap intervals' coverage (percentile intervals)
CI_LEVEL = 0.95
#: a super-epoch's length: epochs, or a share of the schedule ("22%": round(0.22 · epochs), at least 1)
SuperEpochLength = PositiveInt | Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+)?%$")]
OFloor = Literal["std", "none"]
Normalise = Literal["sum", "fused"]


# --- Alg. 1: G, O and the weights ---------------------------------------------------------------------------------
def generalization_overfitting(
    before: dict[str, float], after: dict[str, float], metric: str = "loss"
) -> tuple[float, float]:
    """G and O of one head between checkpoints N and N+n (G-Blend eq. 3, Alg. 1), from its measure on the
    held-out set ("V") and the train subset ("T'"):  G = L^V(N) − L^V(N+n),
    O = (L^V(N+n) − L^T'(N+n)) − (L^V(N) − L^T'(N)).  With accuracy, the error 1 − acc takes the loss's place."""
    sign = 1.0 if metric == "loss" else -1.0  # error = 1 - accuracy: every difference flips sign
    G = sign * (before["V"] - after["V"])
    O = sign * ((after["V"] - after["T'"]) - (before["V"] - before["T'"]))
    return G, O


def _weights(G: np.ndarray, O2: np.ndarray, normalise: str, fused: int | None) -> tuple[np.ndarray, ...]:
    """Vectorised Alg. 1 over the last axis (heads): (w, all heads G <= 0, fused normalisation impossible)."""
    raw = np.maximum(G, 0.0) / O2
    total = raw.sum(-1, keepdims=True)
    good = total > 0
    w = np.where(good, raw / np.where(good, total, 1.0), 1.0 / G.shape[-1])
    fused_zero = np.zeros(good.shape[:-1], dtype=bool)
    if normalise == "fused":
        f = w[..., fused]
        fused_zero = ~(f > 0)
        w = np.where(fused_zero[..., None], w, w / np.where(fused_zero, 1.0, f)[..., None])
    return w, ~good[..., 0], fused_zero


def blend_weights(
    G: dict[str, float],
    O: dict[str, float],
    eps: float = 1e-8,
    o2_floor: dict[str, float] | None = None,
    normalise: str = "sum",
) -> tuple[dict[str, float], list[str]]:
    """Alg. 1: w_i = (1/Z)·G_i / O_i², Z making the weights sum to 1.

    A head whose generalisation G_i is not positive gets weight 0 (it learned nothing that transfers to the
    held-out set, and a negative weight would train it to unlearn); O_i² is floored at ``eps`` and, per head, at
    ``o2_floor`` (the O guard). If no head generalised at all the weights fall back to equal, and the returned
    notes say so. ``normalise: fused`` (an extension) rescales the weights so the fused head's is 1.
    """
    heads = list(G)
    floor = o2_floor or {}
    g = np.array([G[h] for h in heads], dtype=float)
    o2 = np.array([max(O[h] ** 2, floor.get(h, 0.0), eps) for h in heads], dtype=float)
    fused = heads.index(FUSED_HEAD) if normalise == "fused" else None
    w, all_bad, fused_zero = _weights(g, o2, normalise, fused)
    notes = []
    if all_bad:
        notes.append("no head generalised on the held-out set (all G <= 0): equal weights used")
    if fused_zero:
        notes.append(
            "normalise: fused needs a fused weight > 0, but the fused head got 0: the weights sum to 1 instead "
            "(the paper's rule)"
        )
    return {h: float(w[i]) for i, h in enumerate(heads)}, notes


# --- the held-out set --------------------------------------------------------------------------------------------
def carve_holdout(
    labels: torch.Tensor,
    fraction: float,
    seed: int,
    clip_ids: list[str] | None = None,
    min_size: int = 0,
) -> tuple[list[int], list[int], list[int]]:
    """(V, T, T'): a stratified held-out part V of the training split, the rest T, and T' ⊂ T with |T'| = |V|.

    Strata are the labels (the label set of a multi-label sample). With ``clip_ids``, the clips of one video
    (``<video>#<k>``) move together, so V never shares a video with T. With ``min_size``, the fraction is raised
    (the smallest fraction, same seeded order, so V only grows) until V has at least ``min_size`` clips; a
    ValueError says so when that would leave fewer clips in T than in V."""
    rng = np.random.default_rng(seed)
    videos = [video_of(c) for c in clip_ids] if clip_ids is not None else list(range(len(labels)))
    members: dict = {}
    for i, v in enumerate(videos):
        members.setdefault(v, []).append(i)
    rows = labels.tolist()
    key = {v: tuple(rows[idx[0]]) if labels.dim() == 2 else rows[idx[0]] for v, idx in members.items()}
    units = list(members)
    strata = []  # per stratum: its units in seeded order (the rng draws do not depend on the fraction)
    for c in sorted(set(key.values())):
        idx = np.array([u for u, unit in enumerate(units) if key[unit] == c])
        rng.shuffle(idx)
        strata.append(idx.tolist())
    sizes = [[len(members[units[u]]) for u in order] for order in strata]
    cumulative = [np.concatenate([[0], np.cumsum(s)]) for s in sizes]

    def taken(f: float) -> list[int]:
        return [max(1, int(round(f * len(order)))) for order in strata]

    def held_clips(f: float) -> int:
        return int(sum(cum[k] for cum, k in zip(cumulative, taken(f))))

    total = len(labels)
    if min_size and held_clips(fraction) < min_size:
        if held_clips(MAX_HOLDOUT_SHARE) < min_size:
            raise ValueError(_floor_error(min_size, total, len(units)))
        lo, hi = fraction, MAX_HOLDOUT_SHARE  # held_clips is non-decreasing in f: the smallest f reaching min_size
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if held_clips(mid) >= min_size else (mid, hi)
        fraction = hi
        if 2 * held_clips(fraction) > total:
            raise ValueError(_floor_error(min_size, total, len(units)))
    held, rest = [], []
    for order, k in zip(strata, taken(fraction)):
        held += [i for u in order[:k] for i in members[units[u]]]
        rest += [i for u in order[k:] for i in members[units[u]]]
    held, rest = sorted(held), sorted(rest)
    subset = sorted(rng.choice(rest, size=min(len(held), len(rest)), replace=False).tolist())
    return held, rest, subset


def _floor_error(min_size: int, total: int, videos: int) -> str:
    return (
        f"G-Blend: a held-out set of at least {min_size} clips (min_holdout) cannot be carved from the training "
        f"split ({total} clips, {videos} videos) while leaving at least as many clips to train: lower min_holdout, "
        "or estimate on the validation split (holdout: val)"
    )


def train_subset(n: int, size: int, seed: int) -> list[int]:
    """T' for a held-out set outside the training split: ``size`` random positions of the n training clips."""
    return sorted(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False).tolist())


def draw_seed(seed: int, draw: int) -> int:
    """The seed of held-out draw ``draw`` (draw 0: the run's seed, so one draw is the paper's single split)."""
    if draw == 0:
        return seed
    return int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])


def super_epoch_length(value: int | str, num_epochs: int) -> int:
    """A super-epoch length in epochs: an int is one; "p%" is round(p/100 · num_epochs), at least 1."""
    if isinstance(value, str):
        return max(1, int(round(float(value.rstrip("%")) / 100 * num_epochs)))
    return int(value)


# --- measuring and the bootstrap -------------------------------------------------------------------------------
def clip_values(logits: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
    """Per clip: the task loss (its mean over clips is the split's loss) and the top-1 hit (its mean: accuracy)."""
    logits = logits.float()
    if is_multi_label(y):
        loss = F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none").mean(1)
    else:
        loss = F.cross_entropy(logits, y, reduction="none")
    return {"loss": loss.double().numpy(), "accuracy": hits(logits, y).double().numpy()}


def _resampler(groups: list, resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(counts [resamples, units], unit of every clip): units (videos) drawn with replacement."""
    units: dict = {}
    index = np.array([units.setdefault(g, len(units)) for g in groups], dtype=int)
    n = len(units)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float), index


def _resampled_means(x: np.ndarray, index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    n = counts.shape[1]
    sums = np.bincount(index, weights=x, minlength=n)
    sizes = np.bincount(index, minlength=n).astype(float)
    return counts @ sums / (counts @ sizes)


def _interval(x: np.ndarray, level: float = CI_LEVEL) -> list[float]:
    lo, hi = np.percentile(x, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return [float(lo), float(hi)]


def blend_estimate(
    draws: list[dict],
    metric: str = "loss",
    resamples: int = 1000,
    seed: int = 0,
    o_floor: str = "std",
    normalise: str = "sum",
) -> dict:
    """G, O and w per head from per-clip measures, with bootstrap intervals.

    ``draws``: one entry per held-out draw, ``{"groups": {"V": [...], "T'": [...]}, "heads": {head: {"before":
    {"V": values, "T'": values}, "after": {...}}}}`` with one value of ``metric`` per clip (loss, or the 0/1 hit for
    accuracy) and the clip's group (its video: resampled together). G and O are the means over draws of each draw's
    G and O. The bootstrap resamples every draw's V and T' groups ``resamples`` times (independently, with one
    generator seeded ``seed``; the same resample for every head and for both checkpoints), averages G and O over the
    draws per resample and forms w per resample; intervals are the 2.5 and 97.5 percentiles.

    The O guard (``o_floor: std``): O_i² is floored at the square of O_i's bootstrap standard deviation (in the point
    estimate and in every resample), so w = G/O² never rests on an O that is smaller than its own noise.
    """
    heads = list(draws[0]["heads"])
    sign = 1.0 if metric == "loss" else -1.0
    rng = np.random.default_rng(seed)
    G_bs, O_bs = np.zeros((resamples, len(heads))), np.zeros((resamples, len(heads)))
    per_head = {h: {"before": {"V": 0.0, "T'": 0.0}, "after": {"V": 0.0, "T'": 0.0}, "draws": []} for h in heads}
    for draw in draws:
        cV, iV = _resampler(draw["groups"]["V"], resamples, rng)
        cT, iT = _resampler(draw["groups"]["T'"], resamples, rng)
        for j, h in enumerate(heads):
            m = draw["heads"][h]
            full = {when: {p: float(np.mean(m[when][p])) for p in ("V", "T'")} for when in ("before", "after")}
            g, o = generalization_overfitting(full["before"], full["after"], metric)
            per_head[h]["draws"].append({**full, "G": g, "O": o})
            for when in ("before", "after"):
                for p in ("V", "T'"):
                    per_head[h][when][p] += full[when][p] / len(draws)
            bV = {when: _resampled_means(np.asarray(m[when]["V"], float), iV, cV) for when in ("before", "after")}
            bT = {when: _resampled_means(np.asarray(m[when]["T'"], float), iT, cT) for when in ("before", "after")}
            G_bs[:, j] += sign * (bV["before"] - bV["after"]) / len(draws)
            O_bs[:, j] += sign * ((bV["after"] - bT["after"]) - (bV["before"] - bT["before"])) / len(draws)
    G = {h: float(np.mean([d["G"] for d in per_head[h]["draws"]])) for h in heads}
    O = {h: float(np.mean([d["O"] for d in per_head[h]["draws"]])) for h in heads}
    O_std = {h: float(O_bs[:, j].std(ddof=1)) if resamples > 1 else 0.0 for j, h in enumerate(heads)}
    floor = {h: O_std[h] ** 2 for h in heads} if o_floor == "std" else {}
    weights, notes = blend_weights(G, O, o2_floor=floor, normalise=normalise)
    o2_bs = np.maximum(O_bs**2, np.array([max(floor.get(h, 0.0), 1e-8) for h in heads]))
    fused = heads.index(FUSED_HEAD) if normalise == "fused" else None
    w_bs, _, _ = _weights(G_bs, o2_bs, normalise, fused)
    for j, h in enumerate(heads):
        O_ci = _interval(O_bs[:, j])
        within = O_ci[0] <= 0 <= O_ci[1] or abs(O[h]) < O_std[h]
        floored = o_floor == "std" and O[h] ** 2 < floor[h]
        per_head[h].update(
            G=G[h],
            O=O[h],
            G_ci=_interval(G_bs[:, j]),
            O_ci=O_ci,
            O_std=O_std[h],
            w=weights[h],
            w_ci=_interval(w_bs[:, j]),
            O_within_noise=bool(within),
            O_floored=bool(floored),
        )
        if not within:
            continue
        where = f"O = {O[h]:.3g}, 95% CI [{O_ci[0]:.3g}, {O_ci[1]:.3g}], bootstrap std {O_std[h]:.3g}"
        if floored:
            notes.append(
                f"head '{h}': its overfitting O is within its noise ({where}), where w = G/O² is not meaningful: "
                f"O² was floored at the squared bootstrap std, {floor[h]:.3g} (o_floor: std, an extension of Alg. 1)"
            )
        elif o_floor == "std":
            notes.append(
                f"head '{h}': the 95% interval of its overfitting O includes 0 ({where}); |O| exceeds its bootstrap "
                f"std, so O² was used as measured, and its weight is uncertain (95% CI [{per_head[h]['w_ci'][0]:.3g}, "
                f"{per_head[h]['w_ci'][1]:.3g}])"
            )
        else:
            notes.append(
                f"head '{h}': its overfitting O is within its noise ({where}), where w = G/O² is not meaningful "
                "(o_floor: none keeps the paper's rule)"
            )
    return {
        "metric": metric,
        "weights": weights,
        "weights_ci": {h: per_head[h]["w_ci"] for h in heads},
        "heads": per_head,
        "notes": notes,
    }


def head_notes(by_metric: dict[str, dict], metric: str, epochs: int, draws: int) -> list[str]:
    """What happened to every head whose G under ``metric`` is not positive (so its weight is 0): how its held-out
    loss and accuracy moved, and, when the other measure improved, the weight that measure gives it."""
    other = next(m for m in METRICS if m != metric)
    span = f"over the {epochs} estimate epoch{'s' if epochs != 1 else ''}" + (
        f" (mean of {draws} held-out draws)" if draws > 1 else ""
    )
    notes = []
    for h, est in by_metric[metric]["heads"].items():
        if est["G"] > 0:
            continue
        loss, acc = by_metric["loss"]["heads"][h], by_metric["accuracy"]["heads"][h]
        lb, la = loss["before"]["V"], loss["after"]["V"]
        ab, aa = acc["before"]["V"], acc["after"]["V"]
        w_other = by_metric[other]["weights"][h]
        lb_s, la_s = _distinct(lb, la, "g")
        ab_s, aa_s = _distinct(ab * 100, aa * 100, "f")
        loss_moved = "rose" if la > lb else "did not fall"
        acc_moved = "fell" if aa < ab else "did not rise"
        if metric == "loss":
            first = f"held-out loss {loss_moved} from {lb_s} to {la_s}"
        else:
            first = f"held-out accuracy {acc_moved} from {ab_s}% to {aa_s}%"
        text = f"head '{h}': its {first} {span} (G = {est['G']:.3g} <= 0), so Alg. 1 gives it weight 0; "
        if metric == "loss" and aa > ab:
            text += f"its held-out accuracy meanwhile rose from {ab_s}% to {aa_s}%"
        elif metric == "accuracy" and la < lb:
            text += f"its held-out loss meanwhile fell from {lb_s} to {la_s}"
        else:
            if metric == "loss":
                text += f"its held-out accuracy did not rise either ({ab_s}% to {aa_s}%)"
            else:
                text += f"its held-out loss did not fall either ({lb_s} to {la_s})"
            notes.append(text + ": no generalisation measured on V")
            continue
        notes.append(text + f" (metric: {other} would give it weight {w_other:.3g})")
    return notes


def _distinct(a: float, b: float, kind: str) -> tuple[str, str]:
    """Two numbers with as many digits as it takes to tell them apart (from 4 significant / 1 decimal, up to 8)."""
    for digits in range(4 if kind == "g" else 1, 9):
        x, y = f"{a:.{digits}{kind}}", f"{b:.{digits}{kind}}"
        if x != y or a == b:
            return x, y
    return x, y


def init_fingerprint(model: torch.nn.Module) -> str:
    """``fingerprint`` of a model's weights without its absent-input statistics (``absent.*``: the training loop sets
    them from the training data before ``setup``; no head network of the estimate reads them), so the estimate and
    the run it feeds agree on "the same initial model". Equal to ``fingerprint`` for a model without them."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if name.startswith("absent."):
            continue
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def head_network(model: MultimodalModel, head: str) -> MultimodalModel:
    """The uni-modal (or naive multimodal) network of one head, initialised from the model's current parameters."""
    if head == FUSED_HEAD:
        return MultimodalModel(copy.deepcopy(dict(model.encoders)), copy.deepcopy(model.fusion), model.num_classes)
    encoder = copy.deepcopy(model.encoders[head])
    fusion = ConcatFusion({head: encoder.out_dim}, model.num_classes).to(next(model.parameters()).device)
    fusion.head.load_state_dict(model.unimodal_heads[head].state_dict())
    return MultimodalModel({head: encoder}, fusion, model.num_classes)


def gb_estimate(
    model: MultimodalModel,
    data: dict | list[dict],
    prep,
    settings: dict,
    epochs: int,
    device: torch.device,
    seed: int,
    metric: str,
    log: Callable[[str], None],
    *,
    resamples: int = 1000,
    o_floor: str = "std",
    normalise: str = "sum",
) -> dict:
    """GB_Estimate (Alg. 1) from ``model``'s current parameters over ``epochs`` epochs.

    ``data``: one held-out draw, or a list of them; a draw holds the CachedSplit views 'T' (trained on), 'V' (held
    out) and "T'" (train subset for measuring), and optionally its 'seed' (the head networks' training seed; default
    ``seed``). On every draw, every head network is initialised from ``model`` and trained with the ordinary
    training loop (joint cross-entropy on that head) on that draw's T; loss and accuracy are measured per clip on V
    and T' before and after. Returns the weights (by ``metric``) with their bootstrap intervals, per-head measures,
    the other metric's weights and the notes (``blend_estimate``, ``head_notes``).
    """
    from benchmark.balancers.joint import Joint
    from benchmark.train import fit, predict

    draws = [data] if isinstance(data, dict) else list(data)
    head_settings = {**settings, "epochs": epochs}
    bs = settings["eval_batch_size"]
    heads = list(model.modalities) + [FUSED_HEAD]

    def measure(net: MultimodalModel, draw: dict) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for part in ("V", "T'"):
            p = predict(net, draw[part], prep, bs)
            out[part] = clip_values(p.logits, p.labels)
        return out

    measured = []
    for k, draw in enumerate(draws):
        tag = f"[estimate:{{}}{f' draw {k}' if len(draws) > 1 else ''}]"
        values = {}
        for head in heads:
            net = head_network(model, head).to(device)
            before = measure(net, draw)
            ctx = RunContext(
                modalities=list(net.modalities), num_epochs=epochs, device=device, seed=draw.get("seed", seed)
            )
            fit(net, Joint(), ctx, draw["T"], prep, head_settings, log=lambda s, t=tag.format(head): log(f"{t} {s}"))
            after = measure(net, draw)
            values[head] = {"before": before, "after": after}
            mean = lambda x: {p: round(float(np.mean(x[p][metric])), 4) for p in ("V", "T'")}  # noqa: E731
            log(f"{tag.format(head)} {metric} before {mean(before)} after {mean(after)}")
        groups = {p: [video_of(c) for c in draw[p].ids()] for p in ("V", "T'")}
        measured.append((groups, values))
    by_metric = {}
    for m in METRICS:
        per_draw = [
            {
                "groups": groups,
                "heads": {
                    h: {w: {p: values[h][w][p][m] for p in ("V", "T'")} for w in ("before", "after")} for h in heads
                },
            }
            for groups, values in measured
        ]
        by_metric[m] = blend_estimate(per_draw, m, resamples, seed, o_floor, normalise)
    main = by_metric[metric]
    notes = main["notes"] + head_notes(by_metric, metric, epochs, len(draws))
    if main["weights"][FUSED_HEAD] == 0:
        notes.append(
            "the fused head got weight 0 (see its note), so the fused classifier is not trained: its predictions "
            "come from its initial weights on the features the unimodal heads train"
        )
    if normalise == "fused":
        notes.append(
            "extension: the weights are rescaled so that the fused head's is 1 (normalise: fused); the paper's "
            "Alg. 1 normalises them to sum 1"
        )
    other = by_metric[next(m for m in METRICS if m != metric)]
    for h, est in main["heads"].items():
        log(
            f"[estimate:{h}] G={est['G']:.4g} {_ci(est['G_ci'])} O={est['O']:.4g} {_ci(est['O_ci'])} "
            f"w={est['w']:.4g} {_ci(est['w_ci'])}"
        )
    return {
        "weights": main["weights"],
        "weights_ci": main["weights_ci"],
        "heads": main["heads"],
        "other_metric": {
            "metric": other["metric"],
            "weights": other["weights"],
            "weights_ci": other["weights_ci"],
            "G": {h: e["G"] for h, e in other["heads"].items()},
            "O": {h: e["O"] for h, e in other["heads"].items()},
            "before": {h: e["before"] for h, e in other["heads"].items()},
            "after": {h: e["after"] for h, e in other["heads"].items()},
        },
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "level": CI_LEVEL,
            "interval": "percentile",
            "unit": "video (a video's clips are resampled together); V and T' of every draw independently",
        },
        "o_floor": o_floor,
        "normalise": normalise,
        "notes": notes,
    }


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def weights_summary(est: dict) -> str:
    """One line: every head's weight with its 95% interval."""
    ci = est.get("weights_ci", {})
    return ", ".join(f"{h} {w:.3g}" + (f" {_ci(ci[h])}" if h in ci else "") for h, w in est["weights"].items())


class WeightedHeads(Balancer):
    """L = Σ_m w_m·CE(unimodal_m) + w_fused·CE(fused) (G-Blend eq. 7); subclasses decide the weights."""

    unimodal_heads = True
    weights: dict[str, torch.Tensor]

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        fused = fused_ce(out, y)
        uni = unimodal_ce(out, y)
        self.track(loss_fused=fused, loss_uni=uni, w=self.weights)
        return self.weights[FUSED_HEAD] * fused + sum(self.weights[m] * loss for m, loss in uni.items())

    def set_weights(self, weights: dict[str, float]) -> None:
        expected = set(self.model.modalities) | {FUSED_HEAD}
        if set(weights) != expected:
            raise ValueError(f"weights for {sorted(weights)}, but the model has heads {sorted(expected)}")
        self.weights = {h: torch.tensor(float(w), device=self.ctx.device) for h, w in weights.items()}


def _check(metric: str, o_floor: str, normalise: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be 'loss' or 'accuracy', not {metric!r}")
    if o_floor not in ("std", "none"):
        raise ValueError(f"o_floor must be 'std' or 'none', not {o_floor!r}")
    if normalise not in ("sum", "fused"):
        raise ValueError(f"normalise must be 'sum' or 'fused', not {normalise!r}")


@BALANCERS.register("gblend")
class GBlend(WeightedHeads):
    """G-Blend, offline (Wang et al. 2020, eq. 7, Alg. 1-2): L = Σ_m w_m·CE(unimodal_m) + w_fused·CE(fused)
    with the weights the ``estimate`` step computed from the same initial model: on a held-out part of the training
    split (``holdout: train``, the paper; at least ``min_holdout`` clips, ``holdout_draws`` seeded draws) or on the
    validation split (``holdout: val``, an extension), never on the test split; with bootstrap intervals
    (``bootstrap`` resamples) and the O guard (``o_floor``)."""

    display_name: ClassVar[str] = "G-Blend"
    paper = "Wang et al. 2020 (G-Blend), eq. 7 and Alg. 1-2 (offline)"
    needs = ("gblend_weights",)

    def __init__(
        self,
        *,
        holdout_fraction: HoldoutFraction = 0.1,
        min_holdout: PositiveInt = 64,
        holdout_draws: PositiveInt = 3,
        holdout: Literal["train", "val"] = "train",
        estimate_epochs: PositiveInt | None = None,
        metric: Literal["loss", "accuracy"] = "loss",
        bootstrap: PositiveInt = 1000,
        o_floor: OFloor = "std",
        normalise: Normalise = "sum",
    ) -> None:
        super().__init__()
        _check(metric, o_floor, normalise)
        if holdout not in ("train", "val"):
            raise ValueError(f"holdout must be 'train' or 'val', not {holdout!r}")
        # used by the estimate step; recorded here so they are part of the run's settings
        self.holdout_fraction, self.estimate_epochs, self.metric = holdout_fraction, estimate_epochs, metric
        self.min_holdout, self.holdout_draws, self.holdout = min_holdout, holdout_draws, holdout
        self.bootstrap, self.o_floor, self.normalise = bootstrap, o_floor, normalise

    def setup(self, model, ctx) -> None:
        super().setup(model, ctx)
        path = ctx.artifacts["gblend_weights"]
        estimate = json.loads(path.read_text())
        # setup runs before the first step, so the model is still the initial one (φ^0)
        if estimate["init_fingerprint"] not in (init_fingerprint(model), fingerprint(model)):
            raise ValueError(
                f"{path} was estimated from a different initial model (seed or architecture changed); re-run the "
                "estimate step"
            )
        self.set_weights(estimate["weights"])
        self.run_notes = [f"G-Blend estimate: {note}" for note in estimate.get("notes", [])]
        if "weights_ci" in estimate:
            self.run_notes.append(
                f"G-Blend weights by {estimate.get('metric', 'loss')} (95% bootstrap intervals): "
                f"{weights_summary(estimate)}"
            )


@BALANCERS.register("gblend_online")
class GBlendOnline(WeightedHeads):
    """G-Blend, online (Wang et al. 2020, Alg. 3): the weights are re-estimated from the current model at the start
    of every super-epoch — the first lasting ``first_super_epoch``, the later ones ``super_epoch`` (epochs, or a
    share of the schedule: the paper's 10 and 5 epochs of a 45-epoch schedule, Fig. 5, are "22%" and "11%") — by
    GB_Estimate over that super-epoch's length, then used for it. The held-out set V (``holdout_fraction`` of the
    training split, raised to at least ``min_holdout`` clips, stratified, seeded by the run's seed) is left out of
    training altogether, so that every estimate measures on data the model has never seen; for that reason there is
    one V (no held-out draws). G, O and w of every head, with their bootstrap intervals, are in the history
    (``gb_G_<head>``, ``gb_O_<head>``, ``w_<head>``, ``gb_w_lo_<head>``, ``gb_w_hi_<head>``: the estimate in force
    in that epoch)."""

    display_name: ClassVar[str] = "G-Blend (online)"
    paper = "Wang et al. 2020 (G-Blend), eq. 7 and Alg. 1, 3 (online)"

    def __init__(
        self,
        *,
        first_super_epoch: SuperEpochLength = "22%",
        super_epoch: SuperEpochLength = "11%",
        holdout_fraction: HoldoutFraction = 0.1,
        min_holdout: PositiveInt = 64,
        metric: Literal["loss", "accuracy"] = "loss",
        bootstrap: PositiveInt = 1000,
        o_floor: OFloor = "std",
        normalise: Normalise = "sum",
    ) -> None:
        super().__init__()
        for value in (first_super_epoch, super_epoch):
            if isinstance(value, str):
                if not value.endswith("%") or float(value.rstrip("%")) <= 0:
                    raise ValueError(f"a super-epoch is a number of epochs or a share like '10%', not {value!r}")
            elif value < 1:
                raise ValueError("super-epochs must last at least one epoch")
        _check(metric, o_floor, normalise)
        self.first_super_epoch, self.super_epoch = first_super_epoch, super_epoch
        self.holdout_fraction, self.min_holdout, self.metric = holdout_fraction, min_holdout, metric
        self.bootstrap, self.o_floor, self.normalise = bootstrap, o_floor, normalise
        self.estimates: list[dict] = []
        self.split_note = ""

    def super_epoch_starts(self, num_epochs: int) -> list[int]:
        first = super_epoch_length(self.first_super_epoch, num_epochs)
        later = super_epoch_length(self.super_epoch, num_epochs)
        starts, epoch = [], 0
        while epoch < num_epochs:
            starts.append(epoch)
            epoch += first if epoch == 0 else later
        return starts

    def training_split(self, train, seed: int = 0):
        held, rest, subset = carve_holdout(
            train.targets(), self.holdout_fraction, seed, train.ids(), min_size=self.min_holdout
        )
        self.held_out = {"V": train.subset(held), "T'": train.subset(subset)}
        self.split_note = (
            f"online G-Blend holds out V = {len(held)} clips ({len(held) / len(train):.1%} of the training split) "
            f"for its estimates; the model trains on the other {len(rest)}"
        )
        self.run_notes = [self.split_note]
        return train.subset(rest)

    def on_epoch_start(self, epoch: int) -> None:
        starts = self.super_epoch_starts(self.ctx.num_epochs)
        if epoch in starts:
            self._estimate(epoch, starts)
        est = self.estimates[-1]  # the estimate in force in this epoch
        heads = est["heads"]
        self.track(
            gb_G={h: torch.tensor(e["G"]) for h, e in heads.items()},
            gb_O={h: torch.tensor(e["O"]) for h, e in heads.items()},
            gb_w_lo={h: torch.tensor(e["w_ci"][0]) for h, e in heads.items()},
            gb_w_hi={h: torch.tensor(e["w_ci"][1]) for h, e in heads.items()},
        )

    def _estimate(self, epoch: int, starts: list[int]) -> None:
        i = starts.index(epoch)
        length = (starts[i + 1] if i + 1 < len(starts) else self.ctx.num_epochs) - epoch
        data = {"T": self.ctx.train, **self.held_out}
        est = gb_estimate(
            self.model,
            data,
            self.ctx.prep,
            self.ctx.settings,
            length,
            self.ctx.device,
            self.ctx.seed + epoch,
            self.metric,
            self.ctx.log,
            resamples=self.bootstrap,
            o_floor=self.o_floor,
            normalise=self.normalise,
        )
        self.set_weights(est["weights"])
        self.estimates.append({"epoch": epoch, "epochs": length, **est})
        self.run_notes = self.notes_of_estimates()
        self.ctx.log(
            f"[gblend_online] super-epoch from epoch {epoch} ({length} epochs): weights {weights_summary(est)}"
        )

    def notes_of_estimates(self) -> list[str]:
        """The run's notes: one per head and kind of finding, with the epochs of the estimates it held at (every
        estimate's own notes stay in ``estimates``; G, O and w per epoch are in the history)."""
        notes = [self.split_note] if self.split_note else []
        floored, noisy, zero, fallback, first_zero = {}, {}, {}, [], {}
        for e in self.estimates:
            for h, est in e["heads"].items():
                if est["O_floored"]:
                    floored.setdefault(h, []).append(e["epoch"])
                elif est["O_within_noise"]:
                    noisy.setdefault(h, []).append(e["epoch"])
                if est["G"] <= 0:
                    zero.setdefault(h, []).append(e["epoch"])
                    prefix = f"head '{h}': "
                    text = next((n for n in e["notes"] if n.startswith(prefix + "its held-out")), "")
                    first_zero.setdefault(h, (e["epoch"], text[len(prefix) :]))
            if any(n.startswith("no head generalised") for n in e["notes"]):
                fallback.append(e["epoch"])
        at = lambda epochs: f"epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))}"  # noqa: E731
        trace = lambda h: f"per epoch in the history: gb_G_{h}, gb_O_{h}, gb_w_lo_{h}, gb_w_hi_{h}"  # noqa: E731
        for h, epochs in floored.items():
            notes.append(
                f"online G-Blend: head '{h}' had an overfitting O within its noise at the estimates of {at(epochs)}, "
                "where w = G/O² is not meaningful: O² was floored at its squared bootstrap std there (o_floor: std, "
                f"an extension of Alg. 1); {trace(h)}"
            )
        for h, epochs in noisy.items():
            rule = (
                "|O| exceeded its bootstrap std, so O² was used as measured and its weight is uncertain"
                if self.o_floor == "std"
                else "w = G/O² is not meaningful there (o_floor: none keeps the paper's rule)"
            )
            notes.append(
                f"online G-Blend: the 95% interval of head '{h}''s overfitting O included 0 at the estimates of "
                f"{at(epochs)}; {rule}; {trace(h)}"
            )
        for h, epochs in zero.items():
            epoch, text = first_zero[h]
            notes.append(
                f"online G-Blend: head '{h}' got weight 0 at the estimates of {at(epochs)} (G <= 0)"
                + (f"; at epoch {epoch}: {text}" if text else "")
                + (", so the fused classifier is not trained in those super-epochs" if h == FUSED_HEAD else "")
            )
        if fallback:
            notes.append(f"online G-Blend: no head generalised at the estimates of {at(fallback)}: equal weights used")
        if self.normalise == "fused":
            notes.append(
                "extension: the weights are rescaled so that the fused head's is 1 (normalise: fused); the paper's "
                "Alg. 1 normalises them to sum 1"
            )
        return notes
