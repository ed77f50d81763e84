"""The built-in components of every axis — name, one-line description, paper — read from the package's source.

``python -m benchmark list <axis>`` has to answer at once, and importing the components imports torch (seconds).
So this module parses the package's files with ``ast`` instead: a class decorated with ``@<REGISTRY>.register("x")``
is entry ``x`` of that registry's axis; its description is the first sentence of its docstring, its ``paper`` and
``display_name`` the class attributes (inherited from a base class of the package when the class has none). Nothing
here imports the components, so this module never imports torch; tests compare it with the real registries.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: the grid's axes (as ``benchmark.components.AXES``) and the listable registries beyond them
AXES = ("datasets", "backbones", "fusions", "balancers")
LISTABLE = (*AXES, "input_kinds")
#: the module-level name of each registry -> its axis
REGISTRY_AXIS = {
    "DATASETS": "datasets",
    "BACKBONES": "backbones",
    "FUSIONS": "fusions",
    "BALANCERS": "balancers",
    "INPUT_KINDS": "input_kinds",
}
PACKAGE = Path(__file__).resolve().parent
NO_PAPER = "—"
#: abbreviations whose period never ends a sentence in a docstring ("Peng et al. 2022", "Fig. 1", "e.g. a")
_ABBREVIATIONS = {"al", "e.g", "i.e", "eq", "eqs", "fig", "figs", "alg", "sec", "cf", "vs", "no", "approx", "resp"}


@dataclass(frozen=True)
class Entry:
    axis: str
    name: str
    #: where the class lives, as a config's ``class`` key names it ('benchmark.balancers.ogm:OGMGE')
    class_path: str
    description: str
    paper: str
    display_name: str


def first_sentence(doc: str | None) -> str:
    """The docstring's first sentence on one line (up to its first blank line; periods of abbreviations and of
    numbers such as 'et al. 2022' or 'eq. 3' do not end it)."""
    if not doc:
        return ""
    paragraph = " ".join(_cleandoc(doc).split("\n\n", 1)[0].split())
    for match in re.finditer(r"\.(?=\s+[\"'`(A-Z])", paragraph):
        word = re.search(r"([\w.]*)$", paragraph[: match.start()]).group(1).lower()
        if word not in _ABBREVIATIONS and not re.fullmatch(r"[a-z]", word):  # 'J. Smith' initials too
            return paragraph[: match.start() + 1]
    return paragraph


def _cleandoc(doc: str) -> str:
    # inspect.cleandoc without importing inspect (whose imports cost more than this)
    first, _, rest = doc.expandtabs().partition("\n")
    return (first.strip() + "\n" + textwrap.dedent(rest)).strip()


@dataclass
class _Class:
    module: str
    name: str
    bases: list[str]
    attrs: dict[str, str]
    doc: str | None
    registrations: list[tuple[str, str]]  # (axis, name)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _registration(decorator: ast.expr) -> tuple[str, str] | None:
    """(axis, name) of ``@REGISTRY.register("name")``; None for any other decorator."""
    if not (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)):
        return None
    target = decorator.func.value
    if decorator.func.attr != "register" or not isinstance(target, ast.Name) or target.id not in REGISTRY_AXIS:
        return None
    if len(decorator.args) != 1 or not isinstance(decorator.args[0], ast.Constant):
        return None
    return REGISTRY_AXIS[target.id], decorator.args[0].value


def _string_attrs(body: list[ast.stmt]) -> dict[str, str]:
    attrs = {}
    for stmt in body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = stmt.target, stmt.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("paper", "display_name"):
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                attrs[target.id] = value.value
    return attrs


def _parse(path: Path) -> tuple[list[_Class], dict[str, str]]:
    """The module's top-level classes and what its ``from benchmark... import Name`` lines bind (name -> module)."""
    module = _module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports = {
        alias.asname or alias.name: node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE.name
        for alias in node.names
    }
    classes = [
        _Class(
            module=module,
            name=node.name,
            bases=[
                b.id if isinstance(b, ast.Name) else b.attr
                for b in node.bases
                if isinstance(b, (ast.Name, ast.Attribute))
            ],
            attrs=_string_attrs(node.body),
            doc=ast.get_docstring(node, clean=False),
            registrations=[r for r in map(_registration, node.decorator_list) if r is not None],
        )
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    ]
    return classes, imports


@lru_cache(maxsize=1)
def catalog() -> dict[str, tuple[Entry, ...]]:
    """Every built-in registered component, per axis (``LISTABLE``), sorted by name."""
    classes: dict[tuple[str, str], _Class] = {}
    imports: dict[str, dict[str, str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_bundle" in path.relative_to(PACKAGE).parts:
            continue  # the workflow files an installed package carries (setup.py), not components
        text = path.read_text(encoding="utf-8")
        if "class " not in text:
            continue  # cheap: a module without classes registers nothing and is no base of anything
        found, imports[_module_name(path)] = _parse(path)
        classes.update({(c.module, c.name): c for c in found})

    def attr(cls: _Class, key: str, seen: int = 0) -> str | None:
        if key in cls.attrs or seen > 20:
            return cls.attrs.get(key)
        for base in cls.bases:  # the first base that defines it, as Python's lookup finds it in these hierarchies
            module = cls.module if (cls.module, base) in classes else imports[cls.module].get(base)
            parent = classes.get((module, base))
            if parent is not None and (value := attr(parent, key, seen + 1)) is not None:
                return value
        return None

    out: dict[str, list[Entry]] = {axis: [] for axis in LISTABLE}
    for cls in classes.values():
        for axis, name in cls.registrations:
            out[axis].append(
                Entry(
                    axis=axis,
                    name=name,
                    class_path=f"{cls.module}:{cls.name}",
                    description=first_sentence(cls.doc),
                    paper=attr(cls, "paper") or "",
                    display_name=attr(cls, "display_name") or name,
                )
            )
    return {axis: tuple(sorted(entries, key=lambda e: e.name)) for axis, entries in out.items()}


def entries(axis: str) -> tuple[Entry, ...]:
    """The built-in components of one axis ('datasets', 'backbones', 'fusions', 'balancers', 'input_kinds')."""
    if axis not in LISTABLE:
        raise ValueError(f"unknown axis '{axis}'; axes: {', '.join(LISTABLE)}")
    return catalog()[axis]


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)].rstrip() + "…"


def short_citation(paper: str) -> str:
    """The citation without what follows it: 'Peng et al. 2022 (OGM-GE), eqs. 8-10 and 16' -> 'Peng et al. 2022
    (OGM-GE)'; a text without a parenthesis stays whole."""
    end = paper.find(")")
    return paper[: end + 1] if end >= 0 else paper


def format_table(
    items: tuple[Entry, ...] | list[Entry], width: int = 120, paper_width: int = 40, wrap: bool = False
) -> str:
    """Aligned ``name  description  paper`` lines of at most ``width`` characters. One line per component: the
    citation part of the paper (``short_citation``), each cell cut with '…' to fit; ``wrap``: the whole description
    and paper, wrapped over as many lines as they need."""
    rows = [(e.name, e.description, (e.paper if wrap else short_citation(e.paper)) or NO_PAPER) for e in items]
    name_w = max([len("name"), *(len(r[0]) for r in rows)])
    paper_w = min(paper_width, max([len("paper"), *(len(r[2]) for r in rows)]))
    desc_w = max(width - name_w - paper_w - 4, 20)
    lines = [
        f"{'name':<{name_w}}  {'description':<{desc_w}}  paper",
        f"{'-' * name_w}  {'-' * desc_w}  {'-' * paper_w}",
    ]
    for name, description, paper in rows:
        if not wrap:
            lines.append(f"{name:<{name_w}}  {_fit(description, desc_w):<{desc_w}}  {_fit(paper, paper_w)}".rstrip())
            continue
        desc_lines, paper_lines = textwrap.wrap(description, desc_w) or [""], textwrap.wrap(paper, paper_w)
        for i in range(max(len(desc_lines), len(paper_lines))):
            cells = (name if i == 0 else "", *(c[i] if i < len(c) else "" for c in (desc_lines, paper_lines)))
            lines.append(f"{cells[0]:<{name_w}}  {cells[1]:<{desc_w}}  {cells[2]}".rstrip())
    return "\n".join(lines)
