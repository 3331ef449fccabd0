"""Finding slide files: a folder scan, a CSV of paths or explicit paths (:func:`collect_slides`), their output
names (:func:`slide_stem`) and the per-rank share of a distributed run (:func:`shard`)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from mosare.errors import InputError, MosareError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm",
                  ".png", ".jpg", ".jpeg")


def slide_stem(path: Path) -> str:
    """Output name of a slide: the file stem (a DICOM folder: the folder name)."""
    return path.name if path.is_dir() else path.stem


def _is_slide_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SLIDE_SUFFIXES and not path.name.startswith(".")


def _scan_folder(root: Path) -> list[Path]:
    """Slide files under ``root`` (recursive, hidden entries skipped). The ``.dcm`` files of one folder are
    one DICOM slide: the folder itself (or, at ``root``, its first ``.dcm`` file)."""
    found: list[Path] = []
    dicom_dirs: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        for fname in sorted(filenames):
            p = here / fname
            if not _is_slide_file(p):
                continue
            if p.suffix.lower() == ".dcm":
                if here not in dicom_dirs:
                    dicom_dirs.add(here)
                    found.append(p if here == root else here)
            else:
                found.append(p)
    return found


def _read_csv(csv_path: Path) -> list[Path]:
    """``slide_path`` column of a CSV; relative paths are taken from the CSV's folder."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "slide_path" not in reader.fieldnames:
                raise InputError(f"{csv_path.name}: needs a 'slide_path' column "
                                 f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})")
            rows = [(r.get("slide_path") or "").strip() for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{csv_path.name}: cannot read the slide table ({err})") from None
    return [(csv_path.parent / Path(r).expanduser()) if not Path(r).expanduser().is_absolute() else Path(r)
            for r in rows if r]


def collect_slides(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """Sorted, de-duplicated slide paths from folders, ``slide_path`` CSVs and slide files.

    Raises :class:`InputError` for a missing source, an empty result or two slides with the same output stem.
    """
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    slides: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            slides += _scan_folder(item)
        elif item.suffix.lower() == ".csv" and item.is_file():
            slides += _read_csv(item)
        elif item.exists():
            slides.append(item)
        else:
            raise InputError(f"{item}: no such slide folder, CSV or file")
    slides = sorted(dict.fromkeys(slides))
    if not slides:
        raise InputError(f"no slides found in {', '.join(map(str, items))} (extensions: {' '.join(SLIDE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for p in slides:
        other = stems.setdefault(slide_stem(p), p)
        if other != p:
            raise InputError(f"two slides would write {slide_stem(p)}.h5: {other} and {p}; rename one")
    return slides


def shard(slides: Sequence[Path], rank: int | None = None,
          world_size: int | None = None) -> tuple[list[Path], int, int]:
    """This rank's slides, ``sorted(slides)[rank::world_size]``; rank / world size default to ``$RANK`` /
    ``$WORLD_SIZE`` (torchrun), else 0 / 1."""
    if rank is None:
        rank = int(os.environ.get("RANK", "0") or 0)
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size < 1 or not 0 <= rank < world_size:
        raise MosareError(f"invalid rank {rank} for world size {world_size}")
    return sorted(slides)[rank::world_size], rank, world_size


