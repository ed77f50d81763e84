"""The contract between the one training loop and a balancing method.

Per run: ``configure_model(model)`` (before training, e.g. to change how logits are formed or to load
pretrained encoders), ``training_split(train)`` (the part of the training split the loop trains on), then
``setup(model, ctx)``. Per epoch: ``on_epoch_start(epoch)``, the steps, then ``on_epoch_end(epoch, metrics)`` with
that epoch's training and validation metrics. Per step: ``out = forward(model, inputs)`` (default: the
model's own forward), ``loss(out, y)``, backward, ``after_backward(out, y)``, optimizer step.
A method overrides only the hooks it needs and declares, as class attributes, what it needs from the model
and from the DAG. Coefficients go through ``track`` and stay on the device until the epoch summary, so a step
never waits on the host.

Methods that change the schedule rather than the loss use the same loop:

- **alternating updates** (MLA, ReconBoost): ``phases(epoch)`` lists the phases of every batch of the epoch; the
  loop runs forward, loss, backward, ``after_backward`` and an optimizer step once per phase, with ``ctx.phase`` set
  to it (default: one phase, ``None``). Parameters without a gradient in a phase are not stepped (no momentum or
  weight decay either), as with one optimizer per modality.
- **re-sampling** (sample-level valuation): ``epoch_rows(epoch)`` returns the positions in the training split the
  epoch draws (repeats allowed), shuffled by a generator seeded from the run's seed and the epoch; each batch then
  sets ``ctx.positions`` to its samples' positions and ``ctx.draws`` to their indices in the returned rows, so a
  method can tag each draw (both ``None`` when the method returns ``None``: every row once).
- **re-initialisation** (ReLearning): ``on_epoch_start``/``on_epoch_end`` may write into the parameters in place;
  ``forget_optimizer_state`` drops the optimizer's running state (momentum) for parameters whose values were reset.
- **test-time fusion** (MLA, UME, DI-MML): ``configure_model`` replaces ``model.fusion`` with a module that forms
  the logits the way the method evaluates; evaluation, diagnostics and the saved checkpoint all use it.
- **teachers or pretrained encoders** (UMT, pre-training): ``needs = ("unimodal_checkpoints",)`` makes the DAG
  train the unimodal runs first and hands their checkpoints in ``ctx.artifacts``.

The model, the optimizer and the data are rebuilt on resume and the method's plain attributes restored
(``state_dict``), so a method that keeps its state there resumes to the same numbers.

A user method is a subclass named in config (``balancers: {mine: {class: 'pkg.mod:Mine', alpha: 1}}``);
its hyperparameters are the keyword-only arguments of ``__init__``, which must call ``super().__init__()``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator

import torch

from benchmark.metrics import task_loss
from benchmark.models.model import ModelOutput, MultimodalModel
from benchmark.registry import Registry

if TYPE_CHECKING:
    from benchmark.data.cache import BatchPreparer, CachedSplit


@dataclass
class RunContext:
    """What a balancer may read about the run it is part of."""

    modalities: list[str]
    num_epochs: int
    device: torch.device
    seed: int = 0
    artifacts: dict[str, Path] = field(default_factory=dict)  # DAG inputs named in ``needs``
    epoch: int = 0
    train: "CachedSplit | None" = None  # the data the loop trains on (after ``training_split``)
    prep: "BatchPreparer | None" = None  # moves a cached batch to the device
    settings: dict = field(default_factory=dict)  # the run's training settings
    log: Callable[[str], None] = print
    loader_workers: int = 0  # processes gathering training batches ahead of the loop (resources.train; same numbers)
    optimizer: "torch.optim.Optimizer | None" = None  # set by the loop before the first step
    phase: object = None  # the current phase of the step (``Balancer.phases``)
    positions: "torch.Tensor | None" = None  # the batch's positions in the training split (``Balancer.epoch_rows``)
    draws: "torch.Tensor | None" = None  # the batch's indices into the epoch's rows (``Balancer.epoch_rows``)

    def batches(
        self, data: "CachedSplit | None" = None, batch_size: int | None = None
    ) -> Iterator[tuple[dict, torch.Tensor]]:
        """Device batches of ``data`` (default: the training data) in a fixed order, for per-epoch statistics."""
        from benchmark.data.cache import make_loader

        data = self.train if data is None else data
        for batch in make_loader(data, batch_size or self.settings.get("eval_batch_size", 256), shuffle=False):
            yield self.prep(batch)


class Balancer:
    name: ClassVar[str]
    #: the paper and equations implemented (shown in outputs and the README)
    paper: ClassVar[str] = ""
    #: the model gets one linear unimodal head per modality (out.unimodal)
    unimodal_heads: ClassVar[bool] = False
    #: one run per modality with that modality alone and no fusion (unimodal baselines)
    per_modality: ClassVar[bool] = False
    #: DAG artefacts the method consumes, e.g. ('gblend_weights',)
    needs: ClassVar[tuple[str, ...]] = ()
    #: ``on_epoch_end`` reads the epoch's validation metrics (the loop always computes them; benchmarks must too)
    reads_validation: ClassVar[bool] = False
    #: why the method needs one label per clip (e.g. it compares softmax scores of the true class); empty when its
    #: losses work with multi-label targets (per-class sigmoid). Multi-label runs of such a method are n/a.
    single_label_only: ClassVar[str] = ""
    #: the method reads per-modality features, logits or heads, so it cannot run on a fusion that merges the
    #: streams inside the encoders (mid-fusion by concatenation)
    needs_modality_features: ClassVar[bool] = True

    def __init__(self) -> None:
        self._tracked: dict[str, list[torch.Tensor]] = {}
        #: facts about this run a reader of the leaderboard must know (copied into metrics.json 'notes')
        self.run_notes: list[str] = []

    # --- what the DAG asks before scheduling ---------------------------------------------------------
    @classmethod
    def unsupported(cls, fusion_cls: type, num_modalities: int) -> str | None:
        """Why this method cannot run with ``fusion_cls`` on this many modalities (None: it can)."""
        return None

    @classmethod
    def not_applicable(cls, fusion_cls: type, num_modalities: int, multi_label: bool) -> str | None:
        """``unsupported`` plus the checks every method shares (multi-label targets, merged streams)."""
        if multi_label and cls.single_label_only:
            return f"needs single-label data: {cls.single_label_only}"
        if cls.needs_modality_features and not getattr(fusion_cls, "per_modality_features", True):
            return (
                f"reads per-modality features or logits, which fusion '{fusion_cls.name}' does not have "
                "(its streams merge inside the encoders)"
            )
        return cls.unsupported(fusion_cls, num_modalities)

    @classmethod
    def backbone_unsupported(cls, backbone_cls: type, params: dict) -> str | None:
        """Why this method, with these parameters, cannot run on ``backbone_cls`` (None: it can)."""
        return None

    @classmethod
    def notes(cls, fusion_cls: type | None, num_modalities: int) -> list[str]:
        """Where the harness extends the paper for this combination (written into every metrics file)."""
        return []

    # --- hooks ----------------------------------------------------------------------------------------
    def configure_model(self, model: MultimodalModel) -> MultimodalModel:
        """Change the model before training (its result is what is trained, evaluated and saved)."""
        return model

    def training_split(self, train: "CachedSplit", seed: int = 0) -> "CachedSplit":
        """The part of the training split the loop trains on (default: all of it); ``seed`` is the run's."""
        return train

    def setup(self, model: MultimodalModel, ctx: RunContext) -> None:
        self.model = model
        self.ctx = ctx

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        """The training-time forward pass (evaluation always uses the model's own forward)."""
        return model(inputs)

    def loss(self, out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_backward(self, out: ModelOutput, y: torch.Tensor) -> None:
        pass

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def phases(self, epoch: int) -> tuple:
        """The phases of every batch of ``epoch``: one optimizer step each, with ``ctx.phase`` set (default: one)."""
        return (None,)

    def epoch_rows(self, epoch: int) -> "torch.Tensor | None":
        """Positions in the training split that ``epoch`` trains on, repeats allowed (None: every row once)."""
        return None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def finished(self, epoch: int) -> bool:
        """True to end training after ``epoch`` (0-based) although the schedule has more (early stopping)."""
        return False

    # --- checkpointing -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The method's running state for a checkpoint (running means, current weights, prototypes, coefficients,
        notes): every attribute holding plain data — numbers, strings, tensors that are not parameters, and lists,
        tuples and dicts of them. References into the model or the data (parameter groups, modules, split views)
        are not state: ``setup`` and ``training_split`` rebuild them on resume."""
        return {k: _detached(v) for k, v in vars(self).items() if k not in ("model", "ctx") and _is_plain(v)}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Restore what ``state_dict`` saved (after ``setup``), with tensors moved to ``device``."""
        for key, value in state.items():
            setattr(self, key, _to_device(value, device))

    # --- coefficient logging ----------------------------------------------------------------------------
    def track(self, **values: torch.Tensor | dict[str, torch.Tensor]) -> None:
        """Record per-step values (scalars, or one per modality); averaged per epoch in the history."""
        tracked = self.__dict__.setdefault("_tracked", {})
        for key, value in values.items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for m, v in items:
                tracked.setdefault(f"{key}_{m}" if m else key, []).append(v.detach().float().reshape(()))

    def epoch_summary(self) -> dict[str, float]:
        tracked = self.__dict__.get("_tracked", {})
        summary = {k: torch.stack(v).mean().item() for k, v in tracked.items() if v}
        self._tracked = {}
        return summary


def _is_plain(value) -> bool:
    if isinstance(value, (torch.nn.Parameter, torch.nn.Module)):
        return False
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in value.items())
    return False


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return copy.copy(value)


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


BALANCERS: Registry[Balancer] = Registry("balancer", base=Balancer)


def fused_ce(out: ModelOutput, y: torch.Tensor) -> torch.Tensor:
    """The task loss of the fused head: cross-entropy, or per-class binary cross-entropy for multi-label targets."""
    return task_loss(out.logits, y)


def unimodal_ce(out: ModelOutput, y: torch.Tensor) -> dict[str, torch.Tensor]:
    if out.unimodal is None:
        raise RuntimeError("this method needs unimodal heads; its class must set unimodal_heads = True")
    return {m: task_loss(logits, y) for m, logits in out.unimodal.items()}


def true_class_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """softmax(logits)_i[y_i] per sample, detached: the 'score' the balancing papers compare."""
    return torch.softmax(logits.detach().float(), dim=1).gather(1, y[:, None]).squeeze(1)


def window_epoch(bound: int | str, num_epochs: int) -> int:
    """A window bound as a 0-based epoch: an int is one; "p%" is p/100 · num_epochs rounded half up."""
    if isinstance(bound, str):
        return math.floor(float(bound.rstrip("%")) / 100 * num_epochs + 0.5)
    return bound


def in_window(epoch: int, start: int | str, end: int | str, num_epochs: int) -> bool:
    """Whether 0-based ``epoch`` lies in the inclusive window [start, end] (bounds as ``window_epoch`` reads them)."""
    return window_epoch(start, num_epochs) <= epoch <= window_epoch(end, num_epochs)


def scale_grads(params: list[tuple[torch.nn.Parameter, tuple | None]], k: torch.Tensor) -> None:
    """Multiply the gradient of each parameter (or of the given slice of it) by ``k`` in place."""
    for p, index in params:
        if p.grad is None:
            continue
        if index is None:
            p.grad.mul_(k)
        else:
            p.grad[index] *= k


def modality_parameter_groups(
    model: MultimodalModel, with_unimodal_heads: bool = True
) -> dict[str, list[tuple[torch.nn.Parameter, tuple | None]]]:
    """Per modality: every encoder parameter, its unimodal head (if any) and its slice of the fused head."""
    groups = {}
    for m in model.modalities:
        group = [(p, None) for p in model.encoders[m].parameters()]
        if with_unimodal_heads and model.unimodal_heads is not None:
            group += [(p, None) for p in model.unimodal_heads[m].parameters()]
        groups[m] = group + model.fusion.modality_head_params(m)
    return groups


def forget_optimizer_state(optimizer: "torch.optim.Optimizer | None", params: list[torch.nn.Parameter]) -> None:
    """Drop the optimizer's running state (momentum, Adam moments) of ``params``, whose values a method has just reset:
    the next step then starts them afresh, as a newly initialised parameter would."""
    if optimizer is None:
        return
    for p in params:
        optimizer.state.pop(p, None)


def estimator_note(fusion_cls: type | None) -> list[str]:
    """The note for a method that reads per-modality logits from a fusion that only estimates them."""
    if fusion_cls is None or getattr(fusion_cls, "modality_logits_exact", True):
        return []
    return [f"extension: per-modality logits of fusion '{fusion_cls.name}' by {fusion_cls.modality_logits_rule}"]
