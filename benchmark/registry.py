"""Name -> class registries, one per axis of the grid (balancers, fusions, backbones, datasets).

Built-in classes register themselves with a decorator (as timm does for models); ``benchmark.components`` imports
the modules that hold them, so this module never imports its clients. A config entry may instead name a user class
as ``module.path:ClassName``; it is imported on demand, so a user extends the harness without editing this package.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that no registry entry and no importable ``module:Class`` matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, axis: str, base: type | None = None) -> None:
        self.axis = axis
        self.base = base
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.axis} '{name}' is registered twice")
            cls.name = name  # type: ignore[attr-defined]
            self._entries[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, class_path: str | None = None) -> type[T]:
        """The class for ``name``; ``class_path`` ('module.path:ClassName') loads a user class instead."""
        if class_path:
            cls = load_class(class_path, what=f"{self.axis} '{name}'")
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(
                    f"{self.axis} '{name}': {class_path} must subclass {self.base.__module__}.{self.base.__qualname__}"
                )
            if not getattr(cls, "name", None) or cls.name not in self._entries or self._entries[cls.name] is not cls:
                cls.name = name  # type: ignore[attr-defined]
            return cls
        if ":" in name:
            return self.get(name.split(":")[-1], class_path=name)
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names())
            raise UnknownNameError(
                f"unknown {self.axis} '{name}'; known {self.axis}s: {known} "
                f"(or add a config entry with class: 'module.path:ClassName')"
            ) from None


def load_class(path: str, what: str = "class") -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what}: '{path}' is not of the form 'module.path:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"{what}: cannot import module '{module_name}' ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"{what}: module '{module_name}' has no attribute '{attr}'") from None
