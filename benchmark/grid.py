"""The experiment grid: which runs exist, where their files live, and the settings that define each one.

Snakemake (workflow/rules/common.smk) and the CLI both use these functions, so a path or a run's
settings are defined once. A run's settings are everything that can change its numbers; their hash is
the run's config hash and a change to them (and only to them) makes Snakemake retrain that run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmark.config import (
    ConfigError,
    component_class,
    component_params,
    dataset_settings,
    settings_hash,
    train_settings,
)

NO_FUSION = "none"  # the fusion field of runs that use one modality alone


DEFAULT_FOLD = "main"


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    backbone: str
    fusion: str
    balancer: str
    seed: int
    #: one modality for per-modality methods (unimodal baselines), or a '+'-joined subset of the dataset's modalities
    #: (a grid block's ``modalities``); None: all of them
    modality: str | None = None
    fold: str = DEFAULT_FOLD  # which of the dataset's train/val/test assignments (splits/<fold>.csv)

    @property
    def method(self) -> str:
        """Row label and path component: the balancer, or '<balancer>-<modality>' for per-modality runs."""
        return f"{self.balancer}-{self.modality}" if self.modality else self.balancer

    @property
    def run_dir(self) -> Path:
        return Path("results/runs") / self.dataset / self.fold / self.backbone / self.fusion / self.method / f"seed{self.seed}"

    @classmethod
    def from_method(cls, dataset: str, backbone: str, fusion: str, method: str, seed: int, fold: str = DEFAULT_FOLD) -> "RunSpec":
        balancer, _, modality = method.partition("-")
        return cls(dataset, backbone, fusion, balancer, int(seed), modality or None, fold)


def raw_dir(dataset: str) -> Path:
    return Path("data/raw") / dataset


def processed_dir(dataset: str) -> Path:
    return Path("data/processed") / dataset


def gblend_weights_path(dataset: str, backbone: str, fusion: str, seed: int, fold: str = DEFAULT_FOLD, modality: str | None = None) -> Path:
    """The estimate step's weights; runs on a subset of the modalities have their own (``seed<s>-<a>+<b>.json``)."""
    return Path("results/gblend") / dataset / fold / backbone / fusion / (f"seed{seed}-{modality}.json" if modality else f"seed{seed}.json")


def unimodal_checkpoint(spec: RunSpec, modality: str) -> Path:
    """The best-validation weights of the same dataset/fold/backbone/seed's unimodal run for ``modality``."""
    return RunSpec(spec.dataset, spec.backbone, NO_FUSION, "unimodal", spec.seed, modality, spec.fold).run_dir / "model.pt"


ARTIFACTS = ("gblend_weights", "unimodal_checkpoints")


def artifact_paths(spec: RunSpec, needs: tuple[str, ...], modalities: list[str]) -> dict[str, Path]:
    """Files a method declares in ``Balancer.needs``, produced by other DAG steps.

    'gblend_weights': the estimate step's weights for this dataset/backbone/fusion/seed;
    'unimodal_checkpoints': one key 'unimodal_checkpoint/<modality>' per modality (the unimodal runs' model.pt).
    """
    out: dict[str, Path] = {}
    for need in needs:
        if need == "gblend_weights":
            out[need] = gblend_weights_path(spec.dataset, spec.backbone, spec.fusion, spec.seed, spec.fold, spec.modality)
        elif need == "unimodal_checkpoints":
            out.update({f"unimodal_checkpoint/{m}": unimodal_checkpoint(spec, m) for m in modalities})
        else:
            raise ValueError(f"balancer '{spec.balancer}' needs unknown artefact '{need}'; known: {', '.join(ARTIFACTS)}")
    return out


def dataset_modalities(cfg: dict, dataset: str) -> list[str]:
    return list(dataset_instance(cfg, dataset).modalities)


def dataset_instance(cfg: dict, dataset: str):
    """The dataset adapter with its settings (its modalities may come from the config)."""
    return component_class(cfg, "datasets", dataset)(dataset_settings(cfg, dataset))


def manifest_name(cfg: dict, dataset: str) -> str:
    """The manifest preprocessing reads: the downloaded one, or the Algorithm 1 subset when ``balance`` is set."""
    return "manifest.balanced.csv" if dataset_settings(cfg, dataset).get("balance") else "manifest.csv"


def dataset_folds(cfg: dict, dataset: str) -> list[str]:
    return dataset_instance(cfg, dataset).folds()


def modality_subsets(cfg: dict, block: dict, where: str, dataset: str) -> list[str | None]:
    """The ``RunSpec.modality`` values of a block's multimodal runs: None (all modalities) unless the block lists
    subsets in ``modalities``; each subset is written in the dataset's modality order."""
    if not block.get("modalities"):
        return [None]
    available = dataset_modalities(cfg, dataset)
    out: list[str | None] = []
    for i, subset in enumerate(block["modalities"]):
        unknown = [m for m in subset if m not in available]
        if unknown:
            raise ConfigError(f"{where}.modalities[{i}]", f"dataset '{dataset}' has no modality {unknown[0]!r}; it has {', '.join(available)}")
        ordered = [m for m in available if m in subset]
        out.append(None if ordered == available else "+".join(ordered))
    return list(dict.fromkeys(out))


def fusion_backbone_reason(fusion_cls: type, backbone_cls: type) -> str | None:
    """Why a fusion cannot run on a backbone (fusions inside the encoders need a backbone made of blocks)."""
    if getattr(fusion_cls, "needs_blocks", False) and not backbone_cls.has_blocks():
        return f"fusion '{fusion_cls.name}' works between encoder blocks, and backbone '{backbone_cls.name}' has no block structure"
    return None


def grid_runs(cfg: dict) -> tuple[list[RunSpec], list[tuple[RunSpec, str]]]:
    """All runs of the grid (the union over its blocks), and the combinations that are not scheduled with the
    reason why."""
    runs: dict[RunSpec, None] = {}
    skipped: dict[RunSpec, str] = {}
    blocks = cfg["grid"] if isinstance(cfg["grid"], list) else [cfg["grid"]]
    for b, g in enumerate(blocks):
        for dataset in g["datasets"]:
            modalities = dataset_modalities(cfg, dataset)
            multi_label = getattr(component_class(cfg, "datasets", dataset), "multi_label", False)
            subsets = modality_subsets(cfg, g, f"grid[{b}]" if len(blocks) > 1 else "grid", dataset)
            for fold in dataset_folds(cfg, dataset):
                for backbone in g["backbones"]:
                    backbone_cls = component_class(cfg, "backbones", backbone)
                    for balancer in g["balancers"]:
                        cls = component_class(cfg, "balancers", balancer)
                        for seed in g["seeds"]:
                            if cls.per_modality:
                                runs.update((RunSpec(dataset, backbone, NO_FUSION, balancer, seed, m, fold), None) for m in modalities)
                                continue
                            for fusion, subset in ((f, s) for f in g["fusions"] for s in subsets):
                                spec = RunSpec(dataset, backbone, fusion, balancer, seed, subset, fold)
                                fusion_cls = component_class(cfg, "fusions", fusion)
                                n = len(subset.split("+")) if subset else len(modalities)
                                reason = fusion_backbone_reason(fusion_cls, backbone_cls) or cls.not_applicable(fusion_cls, n, multi_label)
                                if reason:
                                    skipped[spec] = reason
                                else:
                                    runs[spec] = None
    return list(runs), list(skipped.items())


def run_settings(cfg: dict, spec: RunSpec) -> dict:
    """Everything that determines the run's numbers (recorded in its metrics file, hashed as its id)."""
    balancer_cls = component_class(cfg, "balancers", spec.balancer)
    all_modalities = dataset_modalities(cfg, spec.dataset)
    modalities = spec.modality.split("+") if spec.modality else all_modalities
    unknown = [m for m in modalities if m not in all_modalities]
    if unknown:
        raise ValueError(f"dataset '{spec.dataset}' has no modality '{unknown[0]}'; it has {', '.join(all_modalities)}")
    fusion = "concat" if spec.fusion == NO_FUSION else spec.fusion  # one modality: a linear classifier
    return {
        "dataset": dataset_settings(cfg, spec.dataset),
        "modalities": modalities,
        "backbone": {"name": spec.backbone, "params": component_params(cfg, "backbones", spec.backbone),
                     "class": _qualname(component_class(cfg, "backbones", spec.backbone))},
        "fusion": {"name": spec.fusion, "params": component_params(cfg, "fusions", fusion),
                   "class": _qualname(component_class(cfg, "fusions", fusion))},
        "balancer": {"name": spec.balancer, "params": component_params(cfg, "balancers", spec.balancer),
                     "class": _qualname(balancer_cls)},
        "train": train_settings(cfg, spec.backbone),
        "evaluation": cfg["evaluation"],
        "seed": spec.seed,
        "fold": spec.fold,
    }


def run_hash(cfg: dict, spec: RunSpec) -> str:
    """The DAG's rerun trigger of a run: its settings, and with tuning the tuning's definition (budget, seeds,
    space); the tuned values themselves arrive through best.json, an input file of the run."""
    from benchmark.tuning import enabled, tuning_identity

    settings = run_settings(cfg, spec)
    if enabled(cfg):
        settings["tuning"] = tuning_identity(cfg, spec)
    return settings_hash(settings)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"
