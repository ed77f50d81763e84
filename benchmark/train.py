"""The one training loop. Methods plug in through the Balancer hooks; nothing here knows a method's name.

Model selection uses the validation split only: the best-validation epoch (earliest on ties) by accuracy, or by
mAP for multi-label data (``selection_metric``).
The test split is not used here for anything that affects training or selection. With ``audit`` (the test split),
the loop records its accuracy after every epoch into ``FitResult.audit`` only, so a report can show what test-set
selection (the protocol of peer toolkits and the OGM-GE code) would have claimed; no hook, no selection and no log
line sees it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from benchmark.balancers.base import Balancer, RunContext
from benchmark.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from benchmark.data.cache import BatchPreparer, CachedSplit, EpochRows, make_loader
from benchmark.diagnostics import ogr
from benchmark.logs import bar, progress
from benchmark.metrics import accuracy, classification_metrics, cross_entropy, hits
from benchmark.models.model import MultimodalModel

LOG = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: a GPU when there is one (on a machine with several, one that no other job holds:
    ``benchmark.devices``), else the CPU; an explicit name (``cuda:1``, ``cpu``) as given."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        from benchmark.devices import claim_gpu

        index = claim_gpu(torch.cuda.device_count())
        torch.cuda.set_device(index)  # so that anything asking for plain "cuda" gets this job's device too
        return torch.device("cuda", index)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is '{name}' but CUDA is not available on this machine")
    return device


def _deterministic_algorithms(on: bool) -> None:
    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(on, warn_only=True)
    else:
        # The public call imports torch._inductor (2.6 s per job on this project's 2-core machine)
        # only to set its compile flag; nothing here compiles, so set the eager flag the public call sets.
        torch._C._set_deterministic_algorithms(on, warn_only=True)


def configure_determinism(deterministic: bool, cudnn_benchmark: bool = False) -> None:
    """Same config + seed -> same numbers (exactly on CPU; on CUDA as far as the kernels allow). Off, with
    ``cudnn_benchmark``, cuDNN times its convolution algorithms and keeps the fastest (the throughput profile)."""
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark and not deterministic)
    _deterministic_algorithms(deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Deterministic mode also fills every new tensor with NaN, a debugging aid for code that reads memory it
        # never wrote; nothing here does (the numbers are the same either way), and it costs time in every step.
        torch.utils.deterministic.fill_uninitialized_memory = False


def make_optimizer(model: torch.nn.Module, opt: dict) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if opt["name"] == "sgd":
        return torch.optim.SGD(params, lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"])
    if opt["name"] == "adam":
        return torch.optim.Adam(params, lr=opt["lr"], weight_decay=opt["weight_decay"])
    if opt["name"] == "adamw":
        return torch.optim.AdamW(params, lr=opt["lr"], weight_decay=opt["weight_decay"])
    if opt["name"] == "adagrad":  # G-Blend's Table 3 compares SGD, AdaGrad and Adam
        return torch.optim.Adagrad(params, lr=opt["lr"], weight_decay=opt["weight_decay"])
    raise ValueError(f"unknown optimizer '{opt['name']}' (sgd | adam | adamw | adagrad)")


def selection_metric(multi_label: bool) -> str:
    """The validation metric that picks the checkpoint: accuracy, or mAP for multi-label data (the paper's metric)."""
    return "mAP" if multi_label else "accuracy"


@dataclass
class Predictions:
    """Logits of one model on one split: fused, per modality from the fused head, and unimodal heads."""

    labels: torch.Tensor
    logits: torch.Tensor
    modality: dict[str, torch.Tensor] = field(default_factory=dict)
    unimodal: dict[str, torch.Tensor] = field(default_factory=dict)
    clip_ids: list[str] | None = None

    def metrics(self, ece_bins: int = 15) -> dict[str, float]:
        out = classification_metrics(self.logits, self.labels, ece_bins, self.clip_ids)
        for m, logits in self.modality.items():
            out[f"acc_{m}"] = accuracy(logits, self.labels)
            out[f"loss_{m}"] = cross_entropy(logits, self.labels)
        for m, logits in self.unimodal.items():
            out[f"acc_head_{m}"] = accuracy(logits, self.labels)
            out[f"loss_head_{m}"] = cross_entropy(logits, self.labels)
        return out


@torch.no_grad()
def predict(model: MultimodalModel, data: CachedSplit, prep: BatchPreparer, batch_size: int) -> Predictions:
    model.eval()
    labels, logits, modality, unimodal = [], [], {}, {}
    has_modality = len(model.modalities) > 1
    for batch in make_loader(data, batch_size, shuffle=False):
        inputs, y = prep(batch)
        out = model(inputs)
        labels.append(y.cpu())
        logits.append(out.logits.float().cpu())
        if has_modality:
            for m, v in model.modality_logits(out).items():
                modality.setdefault(m, []).append(v.float().cpu())
        for m, v in (out.unimodal or {}).items():
            unimodal.setdefault(m, []).append(v.float().cpu())
    cat = lambda parts: {m: torch.cat(v) for m, v in parts.items()}  # noqa: E731
    return Predictions(torch.cat(labels), torch.cat(logits), cat(modality), cat(unimodal), data.ids())


@dataclass
class FitResult:
    history: list[dict]
    seconds_per_epoch: list[float]
    best_epoch: int | None = None
    best_state: dict | None = None
    #: losses of the model before the first step (the first checkpoint of the OGR curve)
    initial: dict = field(default_factory=dict)
    #: why training stopped early (a non-finite loss); None when it ran its schedule
    failure: str | None = None
    #: the epoch training resumed after, when it started from a checkpoint
    resumed_after: int | None = None
    #: test accuracy after every epoch (``audit``): reported, never used
    audit: list[float] = field(default_factory=list)


#: the keys of a history row that every run has; the others are the method's own (``Balancer.epoch_summary``)
STANDARD_KEYS = frozenset(("epoch", "lr", "train_loss", "train_acc", "train_eval_loss", "ogr"))


def _number(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def epoch_line(row: dict, epochs: int, seconds: float, criterion: str, best: tuple[float, int] | None) -> str:
    """One readable line per epoch, 1-based: ``epoch 3/16  train loss 0.412 acc 81.2%  val acc 84.7% (best 85.1% @ 2)
    lr 0.3  2.1 s``, then the method's own values (``| k_audio 0.31 k_visual 1``). ``best`` is the best validation
    score so far and its 0-based epoch; ``criterion`` the history key of the validation score."""
    parts = [
        f"epoch {row['epoch'] + 1}/{epochs}",
        f"train loss {row['train_loss']:.3f} acc {100 * row['train_acc']:.1f}%",
    ]
    if criterion in row:
        name = "acc" if criterion == "val_accuracy" else criterion.removeprefix("val_")
        part = f"val {name} {100 * row[criterion]:.1f}%"
        if best is not None:
            part += f" (best {100 * best[0]:.1f}% @ {best[1] + 1})"
        parts.append(part)
    parts += [f"lr {row['lr']:.3g}", f"{seconds:.1f} s"]
    own = [f"{k} {_number(v)}" for k, v in row.items() if k not in STANDARD_KEYS and not k.startswith("val_")]
    return "  ".join(parts) + ("  | " + " ".join(own) if own else "")


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _epoch_loader(balancer: Balancer, epoch: int, train: CachedSplit, loader, settings: dict, ctx: RunContext):
    """The epoch's batches: ``loader`` (every row once, shuffled by its checkpointed generator), or the rows the
    method asks for (``Balancer.epoch_rows``), shuffled by a generator seeded from the run's seed and the epoch, so a
    resumed run draws the same order."""
    rows = balancer.epoch_rows(epoch)
    if rows is None:
        return loader
    return make_loader(
        EpochRows(train, rows),
        settings["batch_size"],
        shuffle=True,
        seed=ctx.seed * 100_003 + epoch + 1,
        pin_memory=ctx.device.type == "cuda",
        workers=ctx.loader_workers,
    )


def fit(
    model: MultimodalModel,
    balancer: Balancer,
    ctx: RunContext,
    train: CachedSplit,
    prep: BatchPreparer,
    settings: dict,
    val: CachedSplit | None = None,
    log: Callable[[str], None] = LOG.info,
    train_eval: CachedSplit | None = None,
    ece_bins: int = 15,
    checkpoint: Path | None = None,
    settings_hash: str = "",
    audit: CachedSplit | None = None,
) -> FitResult:
    """Train ``model`` (already configured by the balancer) for settings['epochs'] epochs on ``train``; with
    ``val``, keep the best-validation-accuracy weights. With ``train_eval`` (a fixed part of the training split)
    and ``val``, every checkpoint's training and validation losses give the OGR between consecutive epochs.

    With ``checkpoint``, the state after every epoch is saved there and a run with the same ``settings_hash``
    resumes from it: the result is the same as without the interruption. A non-finite training loss ends training
    after that epoch with ``failure`` set. ``log`` gets one line per epoch (``epoch_line``; every value of the
    history row goes to a DEBUG line), and a terminal shows bars over the epochs and each epoch's batches."""
    model.to(ctx.device)
    if settings.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    if settings.get("compile"):
        for encoder in model.encoders.values():  # in place: the model keeps its modules, which methods hook into
            encoder.compile(dynamic=False)  # one graph per input shape: dynamic shapes trip inductor here
    bf16 = settings.get("precision") == "bf16"
    ctx.train, ctx.prep, ctx.settings, ctx.log = train, prep, settings, log
    if settings.get("absent_input", "mean") == "mean":
        model.absent.fit(prep(batch)[0] for batch in make_loader(train, settings["eval_batch_size"], shuffle=False))
    balancer.setup(model, ctx)
    optimizer = make_optimizer(model, settings["optimizer"])
    ctx.optimizer = optimizer
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, settings["lr_step"]["step_size"], settings["lr_step"]["gamma"]
    )
    loader = make_loader(
        train,
        settings["batch_size"],
        shuffle=True,
        seed=ctx.seed,
        pin_memory=ctx.device.type == "cuda",
        workers=ctx.loader_workers,
    )
    result = FitResult(history=[], seconds_per_epoch=[])
    best_acc = -1.0  # the best validation score by ``criterion`` so far
    criterion = f"val_{selection_metric(train.multi_label)}"
    bs = settings["eval_batch_size"]
    track_ogr = train_eval is not None and val is not None
    first_epoch = 0
    saved = load_checkpoint(checkpoint, settings_hash, log)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        balancer.load_state_dict(saved["balancer"], ctx.device)
        restore_rng(saved["rng"], loader.generator)
        result = saved["result"]
        best_acc, first_epoch = saved["best_acc"], saved["epoch"] + 1
        result.resumed_after = saved["epoch"]
        log(f"resumed from {checkpoint} after epoch {saved['epoch'] + 1}/{settings['epochs']}")
    elif track_ogr:
        result.initial = {
            "train_eval_loss": predict(model, train_eval, prep, bs).metrics(ece_bins)["loss"],
            "val_loss": predict(model, val, prep, bs).metrics(ece_bins)["loss"],
        }
    previous = result.history[-1] if result.history else result.initial
    epoch_bar = bar(total=settings["epochs"], initial=first_epoch, desc="epochs", unit="epoch")
    for epoch in range(first_epoch, settings["epochs"]):
        start = time.perf_counter()
        ctx.epoch = epoch
        balancer.on_epoch_start(epoch)
        phases = tuple(balancer.phases(epoch))
        model.train()
        loss_sum = torch.zeros((), device=ctx.device)
        correct = torch.zeros((), device=ctx.device)
        seen = 0
        batches = _epoch_loader(balancer, epoch, train, loader, settings, ctx)
        for batch in progress(batches, desc=f"epoch {epoch + 1}/{settings['epochs']}", unit="batch"):
            ctx.positions, ctx.draws = batch.pop("position", None), batch.pop("draw", None)
            inputs, y = prep(batch, train=True)
            for phase in phases:  # one optimizer step per phase (a single one unless the method alternates)
                ctx.phase = phase
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = balancer.forward(model, inputs)
                    loss = balancer.loss(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                balancer.after_backward(out, y)
                optimizer.step()
                loss_sum += loss.detach() * len(y) / len(phases)  # the epoch's loss: the mean over phases
                correct += hits(out.logits.detach(), y).sum() / len(phases)
            seen += len(y)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        row = {"epoch": epoch, "lr": lr, "train_loss": (loss_sum / seen).item(), "train_acc": (correct / seen).item()}
        if not math.isfinite(row["train_loss"]):  # checked once per epoch: no host sync inside the step
            result.failure = (
                f"training loss became {row['train_loss']} in epoch {epoch + 1} (diverged); training stopped"
            )
            result.history.append(row)
            result.seconds_per_epoch.append(time.perf_counter() - start)
            log(f"epoch {epoch + 1}/{settings['epochs']}  {result.failure}")
            break
        if val is not None:
            row.update({f"val_{k}": v for k, v in predict(model, val, prep, bs).metrics(ece_bins).items()})
            if row[criterion] > best_acc:
                best_acc, result.best_epoch, result.best_state = row[criterion], epoch, _cpu_state(model)
        if audit is not None:  # after selection, into its own list: nothing below reads it
            seen_test = predict(model, audit, prep, bs)
            result.audit.append(accuracy(seen_test.logits, seen_test.labels))
        if track_ogr:
            row["train_eval_loss"] = predict(model, train_eval, prep, bs).metrics(ece_bins)["loss"]
            row["ogr"] = ogr(
                (previous["train_eval_loss"], row["train_eval_loss"]), (previous["val_loss"], row["val_loss"])
            )
            previous = row
        balancer.on_epoch_end(epoch, row)
        row.update(balancer.epoch_summary())
        result.seconds_per_epoch.append(time.perf_counter() - start)
        result.history.append(row)
        best = (best_acc, result.best_epoch) if result.best_epoch is not None else None
        log(epoch_line(row, settings["epochs"], result.seconds_per_epoch[-1], criterion, best))
        if LOG.isEnabledFor(logging.DEBUG):  # every value of the row, as metrics.json's history keeps it
            values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            LOG.debug("epoch %d/%d: %s", epoch + 1, settings["epochs"], values.removeprefix(f"epoch={epoch} "))
        epoch_bar.update()
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "settings_hash": settings_hash,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "balancer": balancer.state_dict(),
                    "rng": rng_state(loader.generator),
                    "result": result,
                    "best_acc": best_acc,
                },
            )
        if balancer.finished(epoch):
            log(f"epoch {epoch + 1}/{settings['epochs']}  the method ends training here")
            break
    epoch_bar.close()
    return result
