"""Reading, layering and validating the experiment config.

One way to read a config, for the DAG (``workflow/rules/common.smk``), every CLI step and ``check``: the base
config (``config.yaml`` in the working directory, else the one that ships with the package), then each overlay file
in order (mappings merge key by key; lists and values replace), then typed overrides (``--set train.epochs=2``, the
value parsed as YAML). Validation happens before any job is built: schema (keys, types, ranges) first, then what
only the registries know (method names, constructor parameters of user classes). Every error names the offending
key path, e.g. ``train.epohcs``.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import jsonschema
import yaml

from benchmark.components import AXES, registry
from benchmark.params import ParamError, check_params, declared_params
from benchmark.paths import RESERVED
from benchmark.registry import UnknownNameError
from benchmark.resources import resource

SCHEMA_PATH = resource("workflow/schemas/config.schema.yaml")
DEFAULT_CONFIG = resource("config.yaml")
__all__ = ["AXES", "ConfigError", "registry", "load_config", "validate_config"]


class ConfigError(ValueError):
    """An invalid config; ``key`` is the dotted path of the offending entry."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"config error at '{key}': {message}" if key else f"config error: {message}")


def base_config_path() -> Path:
    """The config every other layer goes over: ./config.yaml, else the packaged default."""
    local = Path("config.yaml")
    return local if local.exists() else DEFAULT_CONFIG


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError("", f"cannot read config file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError("", f"{path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: a config must be a mapping (a YAML document of key: value entries)")
    return data


def parse_set(expr: str) -> dict:
    """'train.optimizer.lr=0.1' -> {'train': {'optimizer': {'lr': 0.1}}} (the value parsed as YAML)."""
    key, sep, text = expr.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError("", f"--set {expr!r}: expected key.path=value (e.g. train.epochs=2)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(key, f"--set value {text!r} is not valid YAML: {err}") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def typed(value: Any) -> Any:
    """Snakemake's ``--config`` parses values with YAML's base loader (every scalar a string): parse them again."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [typed(v) for v in value]
    return value


def layered(overlays: Sequence[str | Path] = (), sets: Sequence[str] = (), base: str | Path | None = None) -> dict:
    """The raw (unvalidated) config: base, then each overlay file, then each ``--set`` expression."""
    cfg = read_yaml(base or base_config_path())
    for path in overlays:
        cfg = deep_merge(cfg, read_yaml(path))
    for expr in sets:
        cfg = deep_merge(cfg, parse_set(expr))
    return cfg


def load_config(
    overlays: str | Path | Sequence[str | Path] = (), sets: Sequence[str] = (), base: str | Path | None = None
) -> dict:
    """The validated config of the layers (see the module docstring); ``overlays``: one path or several."""
    if isinstance(overlays, (str, Path)):
        overlays = [overlays]
    return validate_config(layered(overlays, sets, base))


def validate_config(cfg: Any) -> dict:
    """Check ``cfg`` and return a copy with schema defaults filled in; raise ConfigError naming the key."""
    if not isinstance(cfg, dict):
        raise ConfigError("", "the config must be a mapping (a YAML document of key: value entries)")
    cfg = copy.deepcopy(cfg)
    _check_section_names(cfg)
    _expand_presets(cfg)
    _check_schema(cfg)
    if isinstance(cfg["grid"], dict):  # one block or a list of blocks: from here on always a list
        cfg["grid"] = [cfg["grid"]]
    _check_grid(cfg)
    for backbone in cfg["train"]["per_backbone"]:
        if backbone not in grid_names(cfg, "backbones") and backbone not in cfg.get("backbones", {}):
            _check_backbone_name(backbone)
        train_settings(cfg, backbone)
    for axis in AXES:
        for name in grid_names(cfg, axis):
            if axis == "datasets":
                dataset_settings(cfg, name)
            else:
                component_params(cfg, axis, name)
    _check_input_kinds(cfg)
    check_overrides(cfg)
    check_space(cfg)
    if cfg["experiment"] in RESERVED:
        raise ConfigError(
            "experiment",
            f"'{cfg['experiment']}' names a folder of results/ that holds no experiment "
            f"({', '.join(RESERVED)}); choose another name",
        )
    return cfg


def _check_input_kinds(cfg: dict) -> None:
    """Every input_kinds entry names a loadable kind (its class, or a built-in name) and a known encoder."""
    from benchmark.data.kinds import INPUT_KINDS

    for kind, entry in (cfg.get("input_kinds") or {}).items():
        try:
            INPUT_KINDS.get(kind, class_path=entry.get("class"))
        except (UnknownNameError, ImportError, TypeError, ValueError) as err:
            raise ConfigError(f"input_kinds.{kind}" + (".class" if entry.get("class") else ""), str(err)) from None
        if entry.get("encoder"):
            try:
                component_class(cfg, "backbones", entry["encoder"])
            except ConfigError as err:
                raise ConfigError(f"input_kinds.{kind}.encoder", err.message) from None
            except UnknownNameError as err:
                raise ConfigError(f"input_kinds.{kind}.encoder", str(err)) from None


def grid_names(cfg: dict, axis: str) -> list:
    """Every name (or seed) the grid uses on one axis, in first-seen order, over all its blocks."""
    blocks = cfg["grid"] if isinstance(cfg["grid"], list) else [cfg["grid"]]
    return list(dict.fromkeys(name for block in blocks for name in block[axis]))


# --- schema ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return SCHEMA_PATH.read_text()


@functools.lru_cache(maxsize=1)
def _parsed_schema() -> dict:
    return yaml.safe_load(_schema_text())


def load_schema() -> dict:
    """The config schema (parsed once per process; callers get their own copy)."""
    return copy.deepcopy(_parsed_schema())


def _with_defaults(validator_class: type) -> type:
    """A validator that also fills in schema defaults (like snakemake.utils.validate does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@functools.lru_cache(maxsize=1)
def _config_validator():
    return _with_defaults(jsonschema.Draft202012Validator)(_parsed_schema())


def _specific(err: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For 'one of these forms' errors, the error inside the form whose type the value has (e.g. a grid block)."""
    while err.validator in ("oneOf", "anyOf") and err.context:
        same_type = [e for e in err.context if not (e.validator == "type" and not e.relative_path)]
        if not same_type:
            break
        err = sorted(same_type, key=lambda e: (-len(e.absolute_path), str(e.message)))[0]
    return err


def _check_schema(cfg: dict) -> None:
    validator = _config_validator()
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    err = _specific(errors[0])
    key = _key(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        bad = extra[0]
        hint = difflib.get_close_matches(bad, allowed, n=1)
        raise ConfigError(
            f"{key}.{bad}" if key else bad,
            f"unknown key '{bad}'"
            + (f" (did you mean '{hint[0]}'?)" if hint else "")
            + f"; allowed keys: {', '.join(allowed)}",
        )
    if err.validator == "minItems" and err.validator_value == 1 and err.instance == []:
        raise ConfigError(key, "is empty, so the grid has nothing to run; list at least one entry")
    if err.validator == "required":
        raise ConfigError(key or "<top level>", err.message)
    raise ConfigError(key, err.message)


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` over ``base``: mappings merge key by key, anything else replaces. A search distribution (a
    mapping with ``choices`` or ``low``) is one value: a range replaces a list of choices instead of mixing with it."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        leaf = isinstance(value, dict) and ("choices" in value or "low" in value)
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict) and not leaf
            else copy.deepcopy(value)
        )
    return out


def train_settings(cfg: dict, backbone: str) -> dict:
    """The training settings of one backbone: ``train`` with its ``per_backbone`` override applied."""
    base = {k: v for k, v in cfg["train"].items() if k != "per_backbone"}
    _check_speed_options(base, "train")
    override = cfg["train"].get("per_backbone", {}).get(backbone)
    if not override:
        return _without_default_speed_options(base)
    if "per_backbone" in override:
        raise ConfigError(f"train.per_backbone.{backbone}.per_backbone", "overrides cannot be nested")
    merged = deep_merge(base, override)
    try:
        _check_schema(
            {
                "grid": copy.deepcopy(cfg["grid"][0] if isinstance(cfg["grid"], list) else cfg["grid"]),
                "train": copy.deepcopy(merged),
            }
        )
    except ConfigError as err:
        raise ConfigError(err.key.replace("train.", f"train.per_backbone.{backbone}.", 1), err.message) from None
    _check_speed_options(merged, f"train.per_backbone.{backbone}")
    return _without_default_speed_options(merged)


#: speed options and their 'off' values; off, they are left out of a run's settings, so that runs made before the
#: options existed keep their settings hash (switched on, they are recorded and hashed like any setting)
SPEED_OPTIONS_OFF = {"precision": "fp32", "channels_last": False, "compile": False, "cudnn_benchmark": False}


def _check_speed_options(train: dict, key: str) -> None:
    if train.get("cudnn_benchmark") and train.get("deterministic", True):
        raise ConfigError(
            f"{key}.cudnn_benchmark", "needs train.deterministic: false (deterministic mode fixes cuDNN's algorithms)"
        )


def _without_default_speed_options(train: dict) -> dict:
    return {k: v for k, v in train.items() if not (k in SPEED_OPTIONS_OFF and v == SPEED_OPTIONS_OFF[k])}


def _check_backbone_name(name: str) -> None:
    try:
        registry("backbones").get(name)
    except UnknownNameError as err:
        raise ConfigError(f"train.per_backbone.{name}", str(err)) from None


# --- registry-aware checks ----------------------------------------------------------------------------


def _expand_presets(cfg: dict) -> None:
    """datasets.<name>.preprocess.preset: the dataset's named settings, under the entry's own values (before the
    schema fills defaults, so a preset's values are not masked by generic ones)."""
    for name, entry in (cfg.get("datasets") or {}).items():
        pre = entry.get("preprocess") if isinstance(entry, dict) else None
        if not isinstance(pre, dict) or not pre.get("preset"):
            continue
        presets = getattr(component_class(cfg, "datasets", name), "presets", {})
        if pre["preset"] not in presets:
            raise ConfigError(
                f"datasets.{name}.preprocess.preset",
                f"unknown preset '{pre['preset']}' for dataset '{name}'; presets: {', '.join(presets) or 'none'}",
            )
        chosen = presets[pre["preset"]]
        entry["preprocess"] = deep_merge({k: v for k, v in chosen.items() if k in ("audio", "visual")}, pre)


def _check_section_names(cfg: dict) -> None:
    """An entry under balancers/fusions/... must be a registered name or carry its own class."""
    for axis in AXES:
        section = cfg.get(axis)
        if not isinstance(section, dict):
            continue
        for name, entry in section.items():
            if isinstance(entry, dict) and "class" in entry:
                continue
            if name not in registry(axis):
                try:
                    registry(axis).get(name)
                except UnknownNameError as err:
                    raise ConfigError(f"{axis}.{name}", str(err)) from None


def _check_grid(cfg: dict) -> None:
    several = len(cfg["grid"]) > 1
    for b, block in enumerate(cfg["grid"]):
        where = f"grid[{b}]" if several else "grid"
        for axis in AXES:
            for i, name in enumerate(block[axis]):
                entry = cfg.get(axis, {}).get(name)
                if isinstance(entry, dict) and "class" in entry:
                    continue
                try:
                    registry(axis).get(name)
                except UnknownNameError as err:
                    raise ConfigError(f"{where}.{axis}[{i}]", str(err)) from None


def component_class(cfg: dict, axis: str, name: str) -> type:
    entry = cfg.get(axis, {}).get(name) or {}
    class_path = entry.get("class") if isinstance(entry, dict) else None
    try:
        return registry(axis).get(name, class_path=class_path)
    except (ImportError, TypeError, ValueError) as err:
        raise ConfigError(f"{axis}.{name}.class", str(err)) from None


#: keys of a component entry that are not constructor parameters
ENTRY_KEYS = ("class", "preset", "per_dataset", "per_backbone", "track_code")


def code_record(cfg: dict, axis: str, name: str) -> dict:
    """``{"code_sha256": ...}`` of a user class whose entry sets ``track_code`` (its module's source file hashed, so
    editing it changes every identity the component is part of); ``{}`` otherwise, so other identities are kept."""
    entry = (cfg.get(axis) or {}).get(name) or {}
    if not (isinstance(entry, dict) and entry.get("track_code")):
        return {}
    if "class" not in entry:
        raise ConfigError(
            f"{axis}.{name}.track_code",
            "hashes a user class's source (an entry with class: module:Class); built-in code is covered by the "
            "harness's NUMERICS_VERSION",
        )
    return {"code_sha256": source_digest(component_class(cfg, axis, name), f"{axis}.{name}.track_code")}


def source_digest(cls: type, where: str) -> str:
    """SHA-256 (16 hex digits) of the source file that defines ``cls``."""
    import inspect

    try:
        path = Path(inspect.getsourcefile(cls) or "")
        data = path.read_bytes()
    except (TypeError, OSError) as err:
        raise ConfigError(where, f"cannot read the source of {cls.__module__}:{cls.__qualname__} ({err})") from None
    return hashlib.sha256(data).hexdigest()[:16]


def component_params(
    cfg: dict,
    axis: str,
    name: str,
    section: str | None = None,
    *,
    dataset: str | None = None,
    backbone: str | None = None,
    presets: list[dict] | None = None,
) -> dict:
    """Constructor keyword arguments of a component: the class defaults overlaid with the config entry.

    A method's entry may also name a ``preset`` (values the class publishes with their source, e.g. a paper's
    per-dataset setting) and hold ``per_dataset`` / ``per_backbone`` overrides (each again values and/or a
    preset). Layers, later wins: class defaults, entry preset, entry values, ``per_dataset[dataset]``,
    ``per_backbone[backbone]``. The presets applied are appended to ``presets`` (name, source, key path).

    Checked against what the class declares (``benchmark.params``: names, types, constraints), so a misspelt
    parameter or a wrong value of a built-in or a user class is caught before any job, with its key path.
    """
    cls = component_class(cfg, axis, name)
    raw = dict(cfg.get(axis, {}).get(name) or {})
    entry = {k: v for k, v in raw.items() if k not in ENTRY_KEYS}
    where = f"{axis}.{name}" + (f".{section}" if section else "")
    if section is not None:  # a dataset's config section: declared by a '<section>_defaults' mapping
        entry = dict(entry.get(section) or {})
        accepted = dict(getattr(cls, f"{section}_defaults", {}))
        for key in entry:
            if key not in accepted:
                raise ConfigError(
                    f"{where}.{key}",
                    f"unknown parameter for {axis[:-1]} '{name}'; accepted: {', '.join(sorted(accepted)) or 'none'}",
                )
        return {**accepted, **entry}
    applied = presets if presets is not None else []
    layers = [(where, raw)]
    for key, which in (("per_dataset", dataset), ("per_backbone", backbone)):
        overrides = raw.get(key) or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}.{key}", f"must map {key[4:]} names to parameter values")
        if which is not None and which in overrides:
            layers.append((f"{where}.{key}.{which}", overrides[which] or {}))
    params: dict = {}
    for at, layer in layers:
        if not isinstance(layer, dict):
            raise ConfigError(at, "must be a mapping of parameter values")
        if "preset" in layer:
            params.update(_preset(cls, axis, name, layer["preset"], f"{at}.preset", applied))
        values = {k: v for k, v in layer.items() if k not in ENTRY_KEYS}
        if at != where and set(layer) & {"class", "per_dataset", "per_backbone"}:
            raise ConfigError(at, "an override holds parameter values and an optional preset only")
        params.update(values)
        try:
            check_params(cls, values)
        except ParamError as err:
            raise ConfigError(f"{at}.{err.key}", f"{axis[:-1]} '{name}': {err}") from None
    try:
        check_params(cls, params)
    except ParamError as err:  # a preset's own value (a bug in the class's presets)
        raise ConfigError(f"{where}.{err.key}", f"{axis[:-1]} '{name}': {err}") from None
    return {**declared_params(cls), **params}


def _preset(cls: type, axis: str, name: str, preset: str, where: str, applied: list[dict]) -> dict:
    """The values of a class's named preset (``cls.presets[preset]``, which names its ``source``)."""
    known = getattr(cls, "presets", {}) or {}
    if preset not in known:
        raise ConfigError(
            where, f"{axis[:-1]} '{name}' has no preset '{preset}'; known: {', '.join(sorted(known)) or 'none'}"
        )
    values = dict(known[preset])
    applied.append({"preset": preset, "source": values.pop("source"), "at": where})
    return values


def check_overrides(cfg: dict) -> None:
    """Every ``per_dataset`` / ``per_backbone`` override of a component names a dataset or backbone the config
    knows (a misspelt name would silently apply to nothing) and holds valid values."""
    for axis in ("balancers", "fusions", "backbones"):
        for name, raw in (cfg.get(axis) or {}).items():
            if not isinstance(raw, dict) or name not in grid_names(cfg, axis):
                continue
            for key, known in (("per_dataset", "datasets"), ("per_backbone", "backbones")):
                names = set(cfg.get(known) or {}) | set(grid_names(cfg, known)) | set(registry(known).names())
                for which in raw.get(key) or {}:
                    if which not in names:
                        raise ConfigError(
                            f"{axis}.{name}.{key}.{which}",
                            f"no {known[:-1]} '{which}' in the config; known: {', '.join(sorted(names))}",
                        )
                    component_params(cfg, axis, name, **{known[:-1]: which})


# --- tuning's search space ---------------------------------------------------------------------------


def check_space(cfg: dict) -> None:
    """Every searched parameter exists (a key path of ``train``, or a parameter the component declares), and every
    range is valid; errors name the key path under ``tuning.space``."""
    space = (cfg.get("tuning") or {}).get("space") or {}
    base_train = {k: v for k, v in cfg["train"].items() if k != "per_backbone"}
    for key, dist in (space.get("train") or {}).items():
        node = base_train
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"tuning.space.train.{key}", f"'{key}' is not a training setting (e.g. optimizer.lr)")
            node = node[part]
        _check_dist(f"tuning.space.train.{key}", dist)
    for axis in ("balancers", "fusions", "backbones"):
        for name, params in (space.get(axis) or {}).items():
            accepted = component_params(cfg, axis, name)
            for key, dist in (params or {}).items():
                if key not in accepted:
                    raise ConfigError(
                        f"tuning.space.{axis}.{name}.{key}",
                        f"'{name}' has no parameter '{key}'; it has {', '.join(sorted(accepted)) or 'none'}",
                    )
                _check_dist(f"tuning.space.{axis}.{name}.{key}", dist)
    if cfg["tuning"].get("strategy") == "grid":
        _check_grid_search(cfg, space)


def _check_grid_search(cfg: dict, space: dict) -> None:
    """A grid search needs lists of choices only, and as many trials as every group has combinations."""
    sizes = {}
    for key, dist in (space.get("train") or {}).items():
        if "choices" not in dist:
            raise ConfigError(f"tuning.space.train.{key}", "tuning.strategy: grid needs a list of choices here")
    train = math.prod(len(d["choices"]) for d in (space.get("train") or {}).values())
    for axis in ("balancers", "fusions", "backbones"):
        for name, params in (space.get(axis) or {}).items():
            for key, dist in (params or {}).items():
                if "choices" not in dist:
                    raise ConfigError(f"tuning.space.{axis}.{name}.{key}", "tuning.strategy: grid needs choices here")
    from benchmark.grid import modality_encoders  # the grid module imports this one

    def combinations(axis: str, name: str) -> int:
        return math.prod(len(d["choices"]) for d in ((space.get(axis) or {}).get(name) or {}).values())

    for balancer in grid_names(cfg, "balancers"):
        for fusion in grid_names(cfg, "fusions"):
            for backbone in grid_names(cfg, "backbones"):
                for dataset in grid_names(cfg, "datasets"):
                    n = train
                    for axis, name in (("balancers", balancer), ("fusions", fusion), ("backbones", backbone)):
                        n *= combinations(axis, name)
                    for encoder in modality_encoders(cfg, dataset, backbone).values():  # searched per modality
                        n *= combinations("backbones", encoder)
                    sizes[f"{balancer} on {dataset}/{backbone}/{fusion}"] = n
    wrong = {group: n for group, n in sizes.items() if n != cfg["tuning"]["trials"]}
    if wrong:
        group, n = next(iter(wrong.items()))
        raise ConfigError(
            "tuning.trials",
            f"a grid search tries every combination once: {group} has {n}, not {cfg['tuning']['trials']} "
            "(every group must have as many combinations as trials, so each method gets the same budget)",
        )


def _check_dist(key: str, dist: dict) -> None:
    if "choices" in dist:
        return
    if not dist["low"] < dist["high"]:
        raise ConfigError(key, f"low ({dist['low']}) must be below high ({dist['high']})")
    if dist.get("scale") == "log" and dist["low"] <= 0:
        raise ConfigError(key, "a log-scale range needs low > 0")


# --- runs ----------------------------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def settings_hash(settings: dict) -> str:
    """Short content hash of a run's resolved settings: equal hashes mean the same experiment."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:16]


def dataset_settings(cfg: dict, dataset: str) -> dict:
    """Everything that determines a dataset's cached tensors."""
    cls = component_class(cfg, "datasets", dataset)
    entry = cfg.get("datasets", {}).get(dataset) or {}
    sections = set(getattr(cls, "config_sections", ())) | {"preprocess", "class", "track_code", *OPTIONAL_DATASET_KEYS}
    for key in entry:
        if key not in sections:
            raise ConfigError(
                f"datasets.{dataset}.{key}",
                f"unknown section for dataset '{dataset}'; allowed: {', '.join(sorted(sections))}",
            )
    out = {"name": dataset, "class": f"{cls.__module__}:{cls.__qualname__}"}
    for section in getattr(cls, "config_sections", ()):
        out[section] = component_params(cfg, "datasets", dataset, section=section)
    out["preprocess"] = _fill_preprocess(entry.get("preprocess") or {})
    for key in OPTIONAL_DATASET_KEYS:  # only when set, so that datasets without them keep their settings hash
        if entry.get(key):
            out[key] = copy.deepcopy(entry[key])
    kinds = _dataset_kinds(cfg, dataset, entry.get("modalities") or getattr(cls, "modalities", {}))
    if kinds:  # only user kinds, so that other datasets keep their settings hash
        out["kinds"] = kinds
        if _kind_codes(cfg, kinds):
            out["kind_code_sha256"] = _kind_codes(cfg, kinds)
    out.update(code_record(cfg, "datasets", dataset))
    if out.get("balance") and not getattr(cls, "multi_label", False):
        raise ConfigError(
            f"datasets.{dataset}.balance",
            f"Algorithm 1 balances multi-label data; dataset '{dataset}' has one label per clip",
        )
    return out


#: keys every dataset entry may have: its modality sources and the multi-label balancing step (Algorithm 1)
OPTIONAL_DATASET_KEYS = ("modalities", "balance")


def _dataset_kinds(cfg: dict, dataset: str, declared: dict) -> dict:
    """The user input kinds a dataset's modalities use, kind -> {class, code_sha256 with track_code}; every
    declaration must be a media source, a built-in kind or an ``input_kinds`` entry."""
    from benchmark.data.kinds import INPUT_KINDS, SOURCE_KIND

    user = cfg.get("input_kinds") or {}
    out = {}
    for modality, value in declared.items():
        if value in SOURCE_KIND or (value in INPUT_KINDS and "class" not in user.get(value, {})):
            continue
        if value not in user or "class" not in user[value]:
            raise ConfigError(
                f"datasets.{dataset}.modalities.{modality}",
                f"'{value}' is neither a media source ({', '.join(SOURCE_KIND)}) nor an input kind "
                f"({', '.join(INPUT_KINDS.names())}, or an input_kinds entry with class)",
            )
        out[value] = user[value]["class"]
    return out


def _kind_codes(cfg: dict, kinds: dict) -> dict:
    """kind -> source digest of the user kinds whose input_kinds entry sets track_code."""
    from benchmark.data.kinds import INPUT_KINDS

    out = {}
    for kind, class_path in kinds.items():
        if (cfg.get("input_kinds") or {}).get(kind, {}).get("track_code"):
            where = f"input_kinds.{kind}"
            try:
                cls = INPUT_KINDS.get(kind, class_path=class_path)
            except (ImportError, TypeError, ValueError) as err:
                raise ConfigError(f"{where}.class", str(err)) from None
            out[kind] = source_digest(cls, f"{where}.track_code")
    return out


@functools.lru_cache(maxsize=1)
def _preprocess_validator():
    schema = _parsed_schema()
    probe = {
        "type": "object",
        "$defs": schema["$defs"],
        "properties": {"preprocess": {"$ref": "#/$defs/preprocess", "default": {}}},
    }
    return _with_defaults(jsonschema.Draft202012Validator)(probe)


def _fill_preprocess(pre: dict) -> dict:
    """Preprocess settings with schema defaults (validate_config has normally filled them already)."""
    holder = {"preprocess": copy.deepcopy(pre)}
    _preprocess_validator().validate(holder)
    return holder["preprocess"]
