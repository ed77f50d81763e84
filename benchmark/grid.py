"""The experiment grid: which runs exist (the union of the config's blocks) and which combinations cannot run.

A run's settings and identity are resolved by ``benchmark.settings``; its paths are in ``benchmark.paths``.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.config import ConfigError, component_class, component_params, dataset_settings

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

    @classmethod
    def from_method(
        cls, dataset: str, backbone: str, fusion: str, method: str, seed: int, fold: str = DEFAULT_FOLD
    ) -> "RunSpec":
        balancer, _, modality = method.partition("-")
        return cls(dataset, backbone, fusion, balancer, int(seed), modality or None, fold)


def dataset_modalities(cfg: dict, dataset: str) -> list[str]:
    return list(dataset_instance(cfg, dataset).modalities)


def dataset_instance(cfg: dict, dataset: str):
    """The dataset adapter with its settings (its modalities may come from the config)."""
    return component_class(cfg, "datasets", dataset)(dataset_settings(cfg, dataset))


def modality_kinds(cfg: dict, dataset: str) -> dict:
    """modality -> InputKind of a dataset's modalities (media sources become their kinds)."""
    from benchmark.data.kinds import get_kind, kind_name

    ds = dataset_instance(cfg, dataset)
    return {m: get_kind(kind_name(v), ds.kind_class(v)) for m, v in ds.modalities.items()}


def modality_encoders(cfg: dict, dataset: str, backbone: str, modalities: list[str] | None = None) -> dict[str, str]:
    """The encoder (a backbone name) of each modality whose layout the run's backbone does not take: its kind's
    ``input_kinds.<kind>.encoder``, else the kind's ``default_encoder``. Modalities the backbone takes are absent."""
    backbone_cls = component_class(cfg, "backbones", backbone)
    out = {}
    for m, kind in modality_kinds(cfg, dataset).items():
        if (modalities is None or m in modalities) and not backbone_cls.accepts(kind.layout):
            out[m] = ((cfg.get("input_kinds") or {}).get(kind.name) or {}).get("encoder") or kind.default_encoder
    return out


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
            raise ConfigError(
                f"{where}.modalities[{i}]",
                f"dataset '{dataset}' has no modality {unknown[0]!r}; it has {', '.join(available)}",
            )
        ordered = [m for m in available if m in subset]
        out.append(None if ordered == available else "+".join(ordered))
    return list(dict.fromkeys(out))


def fusion_backbone_reason(fusion_cls: type, backbone_cls: type) -> str | None:
    """Why a fusion cannot run on a backbone (fusions inside the encoders need a backbone made of blocks)."""
    if getattr(fusion_cls, "needs_blocks", False) and not backbone_cls.has_blocks():
        return (
            f"fusion '{fusion_cls.name}' works between encoder blocks, and backbone '{backbone_cls.name}' "
            "has no block structure"
        )
    return None


def encoder_reason(encoders: dict[str, type], fusion_cls: type, balancer_cls: type, params: dict) -> str | None:
    """Why a fusion or a method cannot run on the modalities' encoders (the first modality that stops it named when
    the encoders differ)."""
    named = len(set(encoders.values())) > 1
    for m, enc in encoders.items():
        reason = fusion_backbone_reason(fusion_cls, enc) or balancer_cls.backbone_unsupported(enc, params)
        if reason:
            return f"{reason} (the encoder of modality '{m}')" if named else reason
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
                    fallback = modality_encoders(cfg, dataset, backbone)
                    if len(fallback) == len(modalities):  # the run would not use the backbone at all
                        reason = (
                            f"backbone '{backbone}' takes none of dataset '{dataset}''s modalities "
                            f"({', '.join(f'{m}: {k.layout}' for m, k in modality_kinds(cfg, dataset).items())})"
                        )
                        for balancer in g["balancers"]:
                            alone = component_class(cfg, "balancers", balancer).per_modality
                            combos = (
                                [(NO_FUSION, m) for m in modalities]
                                if alone
                                else [(f, s) for f in g["fusions"] for s in subsets]
                            )
                            for seed in g["seeds"]:
                                for fusion, subset in combos:
                                    skipped[RunSpec(dataset, backbone, fusion, balancer, seed, subset, fold)] = reason
                        continue
                    encoder_classes = {
                        m: component_class(cfg, "backbones", fallback[m]) if m in fallback else backbone_cls
                        for m in modalities
                    }
                    for balancer in g["balancers"]:
                        cls = component_class(cfg, "balancers", balancer)
                        for seed in g["seeds"]:
                            if cls.per_modality:
                                runs.update(
                                    (RunSpec(dataset, backbone, NO_FUSION, balancer, seed, m, fold), None)
                                    for m in modalities
                                )
                                continue
                            for fusion, subset in ((f, s) for f in g["fusions"] for s in subsets):
                                spec = RunSpec(dataset, backbone, fusion, balancer, seed, subset, fold)
                                fusion_cls = component_class(cfg, "fusions", fusion)
                                used = subset.split("+") if subset else modalities
                                params = component_params(
                                    cfg, "balancers", balancer, dataset=dataset, backbone=backbone
                                )
                                reason = cls.not_applicable(fusion_cls, len(used), multi_label) or encoder_reason(
                                    {m: encoder_classes[m] for m in used}, fusion_cls, cls, params
                                )
                                if reason:
                                    skipped[spec] = reason
                                else:
                                    runs[spec] = None
    return list(runs), list(skipped.items())
