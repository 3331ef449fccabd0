"""The package's layers, bottom to top, and the rule that no module imports a layer above its own.

    core → io → text, slides → data → model → train → inference → explain → app → cli → (dashboard)

A module may import its own layer and any layer below it; ``mosare`` never imports ``dashboard`` or streamlit.
Every import counts, at module top or inside a function. The check is static (ast) and also run dynamically:
importing every module of the package must not pull in streamlit.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "mosare"

# (layer, module prefixes); the most specific prefix wins
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("mosare", "mosare.errors", "mosare.types", "mosare.config", "mosare.io.atomic")),
    ("io", ("mosare.io",)),
    ("features", ("mosare.text", "mosare.slides")),
    ("data", ("mosare.data", "mosare.synthetic")),
    ("model", ("mosare.model",)),
    ("train", ("mosare.train",)),
    ("inference", ("mosare.inference",)),
    ("explain", ("mosare.explain",)),
    ("app", ("mosare.app",)),
    ("cli", ("mosare.cli", "mosare.__main__")),
    ("dashboard", ("dashboard", "streamlit_app", "streamlit")),
]


def layer_of(module: str) -> int | None:
    """Index of ``module``'s layer (None: not ours, e.g. numpy)."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``source``, at any depth; ``from a import b`` counts as ``a.b``
    (b may be a submodule)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def upward_imports(module: str, source: str) -> list[str]:
    """``"line: module → target (layer → higher layer)"`` for each import of a higher layer."""
    own = layer_of(module)
    bad = []
    for line, target in imported_modules(source):
        rank = layer_of(target)
        if own is not None and rank is not None and rank > own:
            bad.append(f"{line}: {module} → {target} ({LAYERS[own][0]} → {LAYERS[rank][0]})")
    return bad


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_has_a_layer() -> None:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) > 40
    assert all(layer_of(_module_name(f)) is not None for f in files)


def test_no_module_imports_a_higher_layer() -> None:
    offenders = [f"{f.relative_to(REPO)}:{b}" for f in sorted(PACKAGE_DIR.rglob("*.py"))
                 for b in upward_imports(_module_name(f), f.read_text(encoding="utf-8"))]
    assert not offenders, "upward imports:\n" + "\n".join(offenders)


@pytest.mark.parametrize("module, planted", [
    ("mosare.model.mosare", "from mosare.train.loop import fit"),
    ("mosare.io.tables", "def f():\n    import mosare.data.cohort\n"),
    ("mosare.explain.heatmap", "from mosare.app import workbench"),
    ("mosare.app.workbench", "import streamlit as st"),
    ("mosare.text.scrub", "from mosare import cli"),
])
def test_a_planted_upward_import_is_caught(module: str, planted: str) -> None:
    path = REPO / Path(*module.split(".")).with_suffix(".py")
    source = path.read_text(encoding="utf-8")
    assert not upward_imports(module, source)
    assert upward_imports(module, source + "\n" + planted + "\n")


_DYNAMIC = """
import importlib, pkgutil, sys
import mosare
failed = []
for info in pkgutil.walk_packages(mosare.__path__, prefix="mosare."):
    if info.name == "mosare.__main__":
        continue  # running it would start the CLI
    try:
        importlib.import_module(info.name)
    except Exception as err:
        failed.append(f"{info.name}: {type(err).__name__}: {err}")
if failed:
    sys.exit("failed to import:\\n" + "\\n".join(failed))
if "streamlit" in sys.modules:
    sys.exit("streamlit was imported by the mosare package")
print("ok")
"""


def test_importing_the_whole_package_never_pulls_in_streamlit() -> None:
    proc = subprocess.run([sys.executable, "-c", _DYNAMIC], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok" in proc.stdout
