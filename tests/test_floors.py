"""The floors of the house (STYLE.md §1), kept by the suite: every import inside ``qsmbids`` goes down.

The rule, read from every ``import``/``from … import`` in every module of ``qsmbids`` (module level *and* the lazy
ones inside functions, ``TYPE_CHECKING`` blocks included: a lazy import up is still a dependency up):

* Each module belongs to a *unit*: the sub-package it lives in (``qsmbids.utils.bids`` → ``utils``) or, for a module
  directly under ``qsmbids/``, the module itself. Each unit has a rank, :data:`RANKS`; top to bottom::

      cli (+ __main__) → workflows → interfaces, group → reports, utils → config → deep → sim → qsm
      → the bottom leaves (any other module directly under qsmbids/: exit codes, constants, file writing, …)
      → the package root (``qsmbids.__version__``)

* A module may import any module of its own unit (sideways inside one package is allowed, as long as it does not
  make a cycle, see below) and any module of a unit of *strictly lower* rank. Two different units of the same rank
  (``interfaces`` and ``group``, ``reports`` and ``utils``) may not import each other.
* STYLE puts ``utils``, ``reports``, ``group`` and ``config`` on one floor and ``deep``, ``sim`` on the next; this test
  orders them inside their floor, as the code does, so that no two packages of one floor can make a cycle:
  ``group`` (the group level, reached only from ``cli``) is the group-level peer of ``interfaces``: both build on
  ``reports``, ``utils`` and ``config`` and neither imports the other (what the participant level needs from the
  group tables and plots lives in ``reports``); ``config`` (the settings) sits below ``reports`` and ``utils``, which
  read it; ``deep`` (which trains on ``sim`` phantoms) sits above ``sim``.
* A module directly under ``qsmbids/`` that is not listed in :data:`RANKS` is a bottom leaf: it may import only the
  standard library, the package root and other bottom leaves (no numpy, no torch: every floor imports it for free).
* Inside one package the modules may not import each other in a cycle (``deep/models/base.py`` importing the models
  that import it was one): module-to-module edges, without the implicit import of parent packages.
* ``qsm/`` takes tensors and arrays: it never imports the file or workflow libraries (STYLE §1).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qsmbids"

RANKS = {
    "cli": 10,
    "workflows": 9,
    "interfaces": 8, "group": 8,
    "reports": 6, "utils": 6,
    "config": 5,
    "deep": 4,
    "sim": 3,
    "qsm": 2,
}
LEAF_RANK = 1  # any other module directly under qsmbids/
ROOT_RANK = 0  # qsmbids/__init__.py
NOT_IN_QSM = ("nipype", "nibabel", "bids", "niworkflows", "templateflow", "pandas", "matplotlib", "jinja2")


def _modules(package: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package __init__)}`` for every module under ``package``."""
    out = {}
    for f in sorted(package.rglob("*.py")):
        parts = f.relative_to(package.parent).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def _imports(name: str, file: Path, is_pkg: bool) -> list[tuple[str, tuple[str, ...], int]]:
    """``(module, imported names, line)`` of every import in ``file``, relative ones resolved."""
    package = name if is_pkg else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
        if isinstance(node, ast.Import):
            out += [(a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, tuple(a.name for a in node.names), node.lineno))
    return out


def _targets(module: str, names: tuple[str, ...], modules) -> set[str]:
    """The modules of ``qsmbids`` that one import statement reaches (``from a import b`` reaches a.b if a module)."""
    found = {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
    if len(found) < len(names) or not names:
        found.add(module)
    return {m for m in found if m in modules}


def _unit(module: str) -> str:
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else ""
    return "cli" if unit == "__main__" else unit  # ``python -m qsmbids`` is the command line


def _rank(unit: str) -> int:
    if unit == "":
        return ROOT_RANK
    return RANKS.get(unit, LEAF_RANK)


def _is_leaf(unit: str, modules) -> bool:
    return unit != "" and unit not in RANKS and f"qsmbids.{unit}" in modules and not modules[f"qsmbids.{unit}"][1]


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """Every import that breaks the floors, as ``file:line: a → b`` lines."""
    modules = _modules(package)
    bad = []
    for name, (file, is_pkg) in modules.items():
        unit = _unit(name)
        for module, names, line in _imports(name, file, is_pkg):
            where = f"{file.relative_to(package.parent)}:{line}"
            top = module.split(".")[0]
            if top != "qsmbids":
                if _is_leaf(unit, modules) and top not in sys.stdlib_module_names and top != "__future__":
                    bad.append(f"{where}: bottom leaf {name} imports {module} (standard library only)")
                if unit == "qsm" and top in NOT_IN_QSM:
                    bad.append(f"{where}: {name} imports {module} (qsm/ takes tensors, never files or workflows)")
                continue
            for target in _targets(module, names, modules):
                other = _unit(target)
                if other == unit or _rank(other) < _rank(unit):
                    continue
                if _is_leaf(unit, modules) and _is_leaf(other, modules):
                    continue  # the bottom leaves are one floor of small modules (kept acyclic by the cycle test)
                bad.append(f"{where}: {name} → {target} ({unit or 'qsmbids'} may not import "
                           f"{other or 'qsmbids'}: {'same floor' if _rank(other) == _rank(unit) else 'upward'})")
    return bad


def import_cycles(package: Path = PACKAGE) -> list[list[str]]:
    """The import cycles between modules (strongly connected components with more than one module)."""
    modules = _modules(package)
    edges = {name: set() for name in modules}
    for name, (file, is_pkg) in modules.items():
        for module, names, _ in _imports(name, file, is_pkg):
            edges[name] |= _targets(module, names, modules) - {name}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def test_imports_only_go_down():
    bad = upward_imports()
    assert not bad, "imports against the floors (see this test's docstring):\n" + "\n".join(bad)


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in cycles)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = tmp_path / "qsmbids" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return tmp_path / "qsmbids"


@pytest.mark.parametrize(("files", "expect"), [
    ({"utils/bids.py": "from ..cli.exit_codes import EX_OK\n"}, "utils may not import cli: upward"),
    ({"interfaces/roi.py": "def f():\n    from qsmbids.group import tables\n"}, "interfaces may not import group"),
    ({"group/plots.py": "from qsmbids import reports\n", "utils/x.py": "import qsmbids.reports.core\n"},
     "utils may not import reports: same floor"),
    ({"constants.py": "import numpy\n"}, "standard library only"),
    ({"qsm/io.py": "import nibabel as nib\n"}, "qsm/ takes tensors"),
])
def test_upward_imports_are_found(tmp_path, files, expect):
    files = {"__init__.py": "", "cli/__init__.py": "", "cli/exit_codes.py": "", "group/__init__.py": "",
             "group/tables.py": "", "reports/__init__.py": "", "reports/core.py": "", **files}
    bad = upward_imports(_tree(tmp_path, files))
    assert any(expect in line for line in bad), bad


def test_downward_imports_pass(tmp_path):
    files = {"__init__.py": "__version__ = '1'\n", "constants.py": "import math\nfrom . import __version__\n",
             "methods.py": "from .constants import X\n",
             "qsm/__init__.py": "", "qsm/phase.py": "import torch\nfrom ..constants import X\n",
             "cli/__init__.py": "", "cli/run.py": "from ..qsm import phase\nfrom . import exit_codes\n",
             "cli/exit_codes.py": "from qsmbids.constants import X\n"}
    assert upward_imports(_tree(tmp_path, files)) == []


def test_cycles_are_found(tmp_path):
    files = {"__init__.py": "", "deep/__init__.py": "", "deep/models/__init__.py": "",
             "deep/models/base.py": "def build():\n    from .unet import UNet\n",
             "deep/models/unet.py": "from .base import build\n"}
    assert import_cycles(_tree(tmp_path, files)) == [["qsmbids.deep.models.base", "qsmbids.deep.models.unet"]]
