"""The ``mosare`` package must never import streamlit (only ``dashboard/`` may)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "mosare"


def _streamlit_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        else:
            continue
        if any(n == "streamlit" or n.startswith("streamlit.") for n in names):
            lines.append(node.lineno)
    return lines


def test_no_static_streamlit_import() -> None:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert files, f"no Python files under {PACKAGE_DIR}"
    offenders = [f"{f.relative_to(PACKAGE_DIR.parent)}:{line}" for f in files for line in _streamlit_imports(f)]
    assert not offenders, "mosare must not import streamlit: " + ", ".join(offenders)


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


def test_no_dynamic_streamlit_import() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _DYNAMIC],
        cwd=PACKAGE_DIR.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok" in proc.stdout
