"""A component's hyperparameters are declared once, next to it: the keyword-only arguments of its constructor,
with types (constraints as ``typing.Annotated`` metadata) and defaults. The config is checked against them, so a
built-in method, fusion or backbone needs no schema entry of its own, and a user class gets the same checks.
"""

from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import StringConstraints

#: constrained types the built-in components use
Positive = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
PositiveInt = Annotated[int, Ge(1)]
Epoch = Annotated[int, Ge(0)]
#: an epoch window bound: a 0-based epoch, or a share of the schedule written as a percentage ("50%": epoch
#: round(0.5 · epochs), so the released OGM-GE window [0, 50] of 100 epochs is ["0%", "50%"])
EpochBound = Epoch | Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+)?%$")]
Probability = Annotated[float, Ge(0), Le(1)]
DropProbability = Annotated[float, Ge(0), Lt(1)]  # 1 would drop everything
Momentum = Annotated[float, Ge(0), Lt(1)]
AtLeastOne = Annotated[float, Ge(1)]
ScheduleFraction = Annotated[float, Gt(0), Le(1)]  # a share of the schedule's epochs
HoldoutFraction = Annotated[float, Gt(0), Lt(0.5)]  # a share of the training split held out
#: a local state_dict file, or one per modality (never downloaded)
WeightsFile = str | dict[str, str] | None


class ParamError(ValueError):
    """A value that does not fit a declared parameter; ``key`` is the parameter."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


def declared_params(cls: type) -> dict[str, Any]:
    """Parameter names and defaults a component declares (its constructor's keyword-only arguments)."""
    return {
        p.name: None if p.default is inspect.Parameter.empty else p.default
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def declared_types(cls: type) -> dict[str, Any]:
    """The annotations of the keyword-only arguments (resolved, with their constraints); unannotated ones are absent."""
    try:
        hints = typing.get_type_hints(cls.__init__, include_extras=True)
    except Exception:  # noqa: BLE001 - an annotation a user class cannot resolve: its parameters are checked by name only
        return {}
    return {name: hints[name] for name in declared_params(cls) if name in hints}


def check_params(cls: type, entry: dict) -> None:
    """Raise ParamError for a parameter ``cls`` does not declare, or a value its type or constraints reject (strict:
    no string to number conversion, no bool for a number)."""
    from pydantic import TypeAdapter, ValidationError

    accepted = declared_params(cls)
    types = declared_types(cls)
    for key, value in entry.items():
        if key not in accepted:
            raise ParamError(key, f"unknown parameter; accepted: {', '.join(sorted(accepted)) or 'none'}")
        if key in types:
            try:
                TypeAdapter(types[key]).validate_python(value, strict=True)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ParamError(
                    key,
                    f"{value!r} is not valid ({first['msg']}{' at ' + where if where else ''}); "
                    f"declared as {_describe(types[key])}",
                ) from None


def _describe(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "")
