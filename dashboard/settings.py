"""Server-side settings, read from the environment once per run (no globals mutated)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mosare.config import cache_dir

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    cache_dir: Path
    slide_root: Path | None  # read-only folder of slides users may pick from (MOSARE_SLIDE_ROOT)
    model_dirs: tuple[Path, ...]  # searched for experiment checkpoints (MOSARE_MODEL_DIRS, ':'-separated)
    experiment_dirs: tuple[Path, ...]  # experiment output folders offered on the Scenarios page
    default_model: str = ""  # MOSARE_DEFAULT_MODEL: the sidebar's first choice (a word of its label, e.g. "synthetic")

    @classmethod
    def from_env(cls) -> Settings:
        root = os.environ.get("MOSARE_SLIDE_ROOT")
        models = [Path(p).expanduser() for p in os.environ.get("MOSARE_MODEL_DIRS", "runs").split(":") if p]
        exps = [REPO / "assets" / "demo" / "experiment", REPO / "assets" / "demo" / "ablations",
                *(REPO / "assets" / "results" / n for n in ("tcga-brca", "tcga-brca-table2", "tcga-brca-ablations"))]
        exps += [Path(p).expanduser() for p in os.environ.get("MOSARE_EXPERIMENT_DIRS", "").split(":") if p]
        return cls(cache_dir=cache_dir(), slide_root=Path(root).expanduser().resolve() if root else None,
                   model_dirs=tuple(p if p.is_absolute() else REPO / p for p in models), experiment_dirs=tuple(exps),
                   default_model=os.environ.get("MOSARE_DEFAULT_MODEL", "").strip())
