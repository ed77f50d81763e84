"""One settings resolution: what each step of the DAG computes with, and its identity.

Every consumer — the Snakemake rules, every CLI step, tuning, G-Blend estimation, the leaderboard — resolves a
step through ``Resolver.resolve``, which returns a frozen ``Resolved``: the step's settings (everything that can
change its numbers), its identity, the folder or file its results live in, the data it reads and the steps it needs
first (prerequisites, ``benchmark.prerequisites``).

A step *is* its resolved settings. Its identity hashes the kind of step, ``NUMERICS_VERSION``, the settings
(dataset with its preprocessing and split, fold, modalities, backbone, fusion, method with their parameters and
classes, training and evaluation settings, seed, with tuning on its budget, seeds and space) and the identities of
its prerequisites (the unimodal runs ``pretrain`` starts from, the G-Blend estimate, the tuning that picks its
hyperparameters). The identity is part of the path (``benchmark.paths``), so two settings never share a folder
and a changed setting makes a new run instead of overwriting one. Tuned values are named by the tuning they come
from: its identity is part of the run's, and what it chose is recorded in the run's settings.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from benchmark import paths
from benchmark.config import code_record, component_class, component_params, dataset_settings, train_settings
from benchmark.grid import NO_FUSION, RunSpec, dataset_modalities, modality_encoders
from benchmark.prerequisites import needs_of
from benchmark.search import apply_params, trial_params, tuning_identity

#: bumped by every change that alters existing runs' numbers (a test re-trains a golden grid to catch a forgotten bump)
NUMERICS_VERSION = 2  # 2: absent inputs are the training mean (Shapley, modality dropout, AGM)
ID_LENGTH = 12
KINDS = ("run", "estimate", "tune_trial", "tune_best")
#: the file inside a step's folder that marks it done (an estimate's and a trial's path is the file itself)
OUTPUT_FILES = {"run": "metrics.json", "tune_best": "best.json"}


@dataclass(frozen=True)
class DatasetDirs:
    """Where a dataset's data live, each folder named by what determines its content."""

    raw: Path
    manifest: str  # the manifest preprocessing reads, in ``raw``: the downloaded one or its Algorithm 1 subset
    processed: Path
    splits: Path  # <fold>.csv files
    balance_report: str | None = None
    balance_id: str | None = None  # the Algorithm 1 subset's identity (None: no balance step)

    def split_file(self, fold: str) -> Path:
        return self.splits / f"{fold}.csv"


def dataset_dirs(cfg: dict, dataset: str) -> DatasetDirs:
    settings = dataset_settings(cfg, dataset)
    raw_id = identity_of(
        {k: v for k, v in settings.items() if k not in ("preprocess", "split", "balance", "modalities")}
    )
    cache_id = identity_of({"numerics": NUMERICS_VERSION, **{k: v for k, v in settings.items() if k != "split"}})
    split_id = identity_of({"cache": cache_id, "split": settings.get("split")})
    raw = paths.fill(paths.DATA_RAW, dataset=dataset, raw_id=raw_id)
    processed = paths.fill(paths.DATA_PROCESSED, dataset=dataset, cache_id=cache_id)
    manifest, report, balance_id = "manifest.csv", None, None
    if settings.get("balance"):
        balance_id = identity_of({"raw": raw_id, "balance": settings["balance"]})
        manifest = paths.BALANCED_MANIFEST.format(balance_id=balance_id)
        report = paths.BALANCE_REPORT.format(balance_id=balance_id)
    return DatasetDirs(raw, manifest, processed, processed / "splits" / split_id, report, balance_id)


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def identity_of(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:ID_LENGTH]


@dataclass(frozen=True)
class Step:
    """A step of the DAG: a training ``run``, a G-Blend ``estimate``, a tuning trial or a tuning's selection."""

    kind: str
    spec: RunSpec
    trial: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown step kind '{self.kind}'; kinds: {', '.join(KINDS)}")


@dataclass(frozen=True)
class Prerequisite:
    key: str  # what the step reads it as (RunContext.artifacts)
    file: Path
    step: "Resolved"

    @property
    def tracked(self) -> Path:
        """The file the DAG tracks for it: the producing step's output (a run's metrics.json: its model.pt is not
        an output, so that results committed without weights stay current)."""
        return self.step.output


@dataclass(frozen=True)
class Resolved:
    """A resolved step; frozen (its settings are handed out as fresh copies)."""

    step: Step
    settings_json: str
    identity: str
    path: Path  # the run's folder, the estimate's file, the tuning's folder or the trial's file
    prerequisites: tuple[Prerequisite, ...]
    data: tuple[Path, ...]

    @property
    def settings(self) -> dict:
        return json.loads(self.settings_json)

    @property
    def spec(self) -> RunSpec:
        return self.step.spec

    @property
    def output(self) -> Path:
        """The file whose existence means the step is done (its identity is in its path, so it is current)."""
        inside = OUTPUT_FILES.get(self.step.kind)
        return self.path / inside if inside else self.path

    def artifacts(self) -> dict[str, Path]:
        """The prerequisites' files by the key the method reads them as."""
        return {p.key: p.file for p in self.prerequisites}

    def input_files(self) -> list[str]:
        return [str(p) for p in self.data] + [str(p.tracked) for p in self.prerequisites]

    def record(self) -> dict:
        """What a result file records of its identity."""
        return {
            "kind": self.step.kind,
            "identity": self.identity,
            "numerics_version": NUMERICS_VERSION,
            "prerequisites": {p.key: p.step.identity for p in self.prerequisites},
        }


class Resolver:
    """Resolves steps of one validated config (results cached: a large grid resolves each step once)."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self._cache: dict[Step, Resolved] = {}
        self._base: dict[RunSpec, str] = {}
        self._dirs: dict[str, DatasetDirs] = {}

    @property
    def tuning_on(self) -> bool:
        return bool((self.cfg.get("tuning") or {}).get("enabled"))

    # --- settings ----------------------------------------------------------------------------------------
    def base_settings(self, spec: RunSpec) -> dict:
        """The config's settings of a run (before tuning)."""
        if spec not in self._base:
            self._base[spec] = canonical_json(_run_settings(self.cfg, spec))
        return json.loads(self._base[spec])

    def group_spec(self, spec: RunSpec) -> RunSpec:
        """The run a tuning group's trials train: the group's, with the tuning's training seed."""
        return replace(spec, seed=self.cfg["tuning"]["train_seed"])

    # --- resolution --------------------------------------------------------------------------------------
    def run(self, spec: RunSpec) -> Resolved:
        return self.resolve(Step("run", spec))

    def resolve(self, step: Step) -> Resolved:
        if step not in self._cache:
            if step.kind in ("tune_trial", "tune_best"):
                self._resolve_tuning(step.spec)
            else:
                self._cache[step] = self._resolve_run_like(step)
        return self._cache[step]

    def dataset_dirs(self, dataset: str) -> DatasetDirs:
        if dataset not in self._dirs:
            self._dirs[dataset] = dataset_dirs(self.cfg, dataset)
        return self._dirs[dataset]

    def _data(self, spec: RunSpec) -> tuple[Path, ...]:
        d = self.dataset_dirs(spec.dataset)
        return tuple(d.processed / name for name in paths.PROCESSED_FILES) + (d.split_file(spec.fold),)

    def _prerequisites(self, spec: RunSpec, settings: dict, in_trial: bool = False) -> list[Prerequisite]:
        needs = component_class(self.cfg, "balancers", spec.balancer).needs
        out = []
        for need in needs_of(needs, spec, settings["modalities"], in_trial=in_trial):
            made = self.resolve(Step(need.kind, need.spec))
            out.append(Prerequisite(need.key, made.path / need.file if need.file else made.path, made))
        return out

    def _resolve_run_like(self, step: Step) -> Resolved:
        spec = step.spec
        settings = self.base_settings(spec)
        prerequisites = [] if step.kind == "estimate" else self._prerequisites(spec, settings)
        if self.tuning_on:
            settings["tuning"] = tuning_identity(self.cfg, spec)
            best = self.resolve(Step("tune_best", self.group_spec(spec)))
            prerequisites.append(Prerequisite("tuning_best", best.path / "best.json", best))
        identity = identity_of(
            {
                "kind": step.kind,
                "numerics": NUMERICS_VERSION,
                "settings": settings,
                "prerequisites": {p.key: p.step.identity for p in prerequisites},
            }
        )
        fields = dict(
            dataset=spec.dataset,
            fold=spec.fold,
            backbone=spec.backbone,
            fusion=spec.fusion,
            method=spec.method,
            seed=spec.seed,
            id=identity,
        )
        path = paths.fill(paths.RUN_DIR if step.kind == "run" else paths.ESTIMATE_FILE, **fields)
        return Resolved(step, canonical_json(settings), identity, path, tuple(prerequisites), self._data(spec))

    def _resolve_tuning(self, spec: RunSpec) -> None:
        """A tuning group and its trials: trial identities first, then the group's (which names the folder)."""
        spec = self.group_spec(spec)
        group_settings = {**self.base_settings(spec), "tuning": tuning_identity(self.cfg, spec)}
        trials = []
        for k in range(self.cfg["tuning"]["trials"]):
            settings = apply_params(self.base_settings(spec), trial_params(self.cfg, spec, k))
            prerequisites = self._prerequisites(spec, settings, in_trial=True)
            identity = identity_of(
                {
                    "kind": "tune_trial",
                    "numerics": NUMERICS_VERSION,
                    "settings": settings,
                    "trial": k,
                    "prerequisites": {p.key: p.step.identity for p in prerequisites},
                }
            )
            trials.append((k, settings, identity, prerequisites))
        identity = identity_of(
            {
                "kind": "tune_best",
                "numerics": NUMERICS_VERSION,
                "settings": group_settings,
                "trials": [t[2] for t in trials],
            }
        )
        folder = paths.fill(
            paths.TUNING_DIR,
            dataset=spec.dataset,
            fold=spec.fold,
            backbone=spec.backbone,
            fusion=spec.fusion,
            method=spec.method,
            id=identity,
        )
        data = self._data(spec)
        resolved_trials = []
        for k, settings, trial_identity, prerequisites in trials:
            r = Resolved(
                Step("tune_trial", spec, k),
                canonical_json(settings),
                trial_identity,
                folder / f"trial{k}.json",
                tuple(prerequisites),
                data,
            )
            self._cache[r.step] = r
            resolved_trials.append(r)
        best = Resolved(
            Step("tune_best", spec),
            canonical_json(group_settings),
            identity,
            folder,
            tuple(Prerequisite(f"trial{r.step.trial}", r.path, r) for r in resolved_trials),
            data,
        )
        self._cache[best.step] = best

    # --- what a job computes with ------------------------------------------------------------------------
    def training_settings(self, resolved: Resolved) -> dict:
        """The settings a run or estimate trains with: with tuning, the best trial's values applied (read from the
        tuning's best.json, a prerequisite) and recorded under 'tuning'."""
        settings = resolved.settings
        if "tuning" not in settings or resolved.step.kind not in ("run", "estimate"):
            return settings
        path = resolved.artifacts()["tuning_best"]
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: tuning is enabled, so the tune stage must run first "
                "(snakemake does it; by hand: python -m benchmark tune-trial / tune-select)"
            )
        best = json.loads(path.read_text())
        settings = apply_params(settings, best["params"])
        settings["tuning"] = {
            **settings["tuning"],
            "chosen": best["params"],
            "best_trial": best["trial"],
            "val_score": best["val_score"],
            "metric": best["metric"],
        }
        return settings


def experiment_record(cfg: dict, resolver: Resolver | None = None) -> dict:
    """What an experiment's view is made of: the identities of exactly the runs its grid resolves to, the
    combinations that cannot run, and how the leaderboard compares them; its identity names a file next to the
    leaderboard, so that a change of any of them (in a fresh clone too) rebuilds the view."""
    from benchmark.grid import grid_runs

    resolver = resolver or Resolver(cfg)
    runs, skipped = grid_runs(cfg)
    resolved = [resolver.run(s) for s in runs]
    steps: dict[str, None] = {}  # every result the view depends on: its runs and, recursively, their prerequisites
    todo = list(resolved)
    while todo:
        r = todo.pop()
        if str(r.path) not in steps:
            steps[str(r.path)] = None
            todo += [p.step for p in r.prerequisites]
    record = {
        "experiment": cfg["experiment"],
        "numerics_version": NUMERICS_VERSION,
        "leaderboard": cfg.get("leaderboard", {}),
        "runs": [str(r.path) for r in resolved],
        "steps": sorted(steps),
        "not_applicable": [
            f"{s.dataset}/{s.fold}/{s.backbone}/{s.fusion}/{s.method}/seed{s.seed}: {reason}" for s, reason in skipped
        ],
    }
    return {"identity": identity_of(record), **record}


def _run_settings(cfg: dict, spec: RunSpec) -> dict:
    """Everything in the config that determines a run's numbers."""
    balancer_cls = component_class(cfg, "balancers", spec.balancer)
    all_modalities = dataset_modalities(cfg, spec.dataset)
    modalities = spec.modality.split("+") if spec.modality else all_modalities
    unknown = [m for m in modalities if m not in all_modalities]
    if unknown:
        raise ValueError(f"dataset '{spec.dataset}' has no modality '{unknown[0]}'; it has {', '.join(all_modalities)}")
    fusion = "concat" if spec.fusion == NO_FUSION else spec.fusion  # one modality: a linear classifier
    presets: list[dict] = []  # filled by component_params: the presets the method's parameters came from
    backbone = _component(cfg, "backbones", spec.backbone)
    encoders = modality_encoders(cfg, spec.dataset, spec.backbone, modalities)
    if encoders:  # modalities whose layout the backbone does not take get their kind's encoder (only then recorded)
        backbone["encoders"] = {m: {"name": e, **_component(cfg, "backbones", e)} for m, e in encoders.items()}
    return copy.deepcopy(
        {
            "dataset": dataset_settings(cfg, spec.dataset),
            "modalities": modalities,
            "backbone": {"name": spec.backbone, **backbone},
            "fusion": {"name": spec.fusion, **_component(cfg, "fusions", fusion)},
            "balancer": {
                "name": spec.balancer,
                "params": component_params(
                    cfg, "balancers", spec.balancer, dataset=spec.dataset, backbone=spec.backbone, presets=presets
                ),
                "class": _qualname(balancer_cls),
                "presets": presets,
                **code_record(cfg, "balancers", spec.balancer),
            },
            "train": train_settings(cfg, spec.backbone),
            "evaluation": cfg["evaluation"],
            "seed": spec.seed,
            "fold": spec.fold,
        }
    )


def _component(cfg: dict, axis: str, name: str) -> dict:
    """A fusion's or backbone's params and class (and its source digest when its entry sets track_code)."""
    return {
        "params": component_params(cfg, axis, name),
        "class": _qualname(component_class(cfg, axis, name)),
        **code_record(cfg, axis, name),
    }


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"
