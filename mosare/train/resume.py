"""Resuming an experiment: fingerprints of the config and data, and per-run result records.

After each run's checkpoint ``<stem>.safetensors`` (+ ``.json``) a record ``<stem>.result.json`` holding its
metric rows, run records and per-subset rows is written atomically. A later call into the same folder reuses a
run whose record, checkpoint and fingerprint (experiment config, cohort data, text model, the package source,
model / training setting / rate / fold) all match instead of training it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from mosare.data.cohort import Cohort
from mosare.errors import CheckpointError
from mosare.io.atomic import atomic_write_text
from mosare.model.checkpoint import read_checkpoint_meta

log = logging.getLogger(__name__)
RESULT_FORMAT = "mosare-run-result/3"


def _digest(h, value) -> None:
    """Feed ``value`` (arrays, paths, containers, dataclasses, scalars) into hash ``h``, type-tagged."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUSV":
        _digest(h, [value.shape, value.tolist()])
    elif isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        h.update(f"nd{arr.dtype.str}{arr.shape}".encode())
        h.update(memoryview(arr.reshape(-1).view(np.uint8)))
    elif isinstance(value, Path):  # a feature file: by name, size and modification time (not read)
        try:
            st = value.stat()
            h.update(f"path{value}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"path{value}|missing".encode())
    elif isinstance(value, (list, tuple)):
        h.update(f"seq{len(value)}[".encode())
        for v in value:
            _digest(h, v)
        h.update(b"]")
    elif isinstance(value, dict):
        h.update(f"map{len(value)}{{".encode())
        for k in sorted(value, key=str):
            _digest(h, str(k))
            _digest(h, value[k])
        h.update(b"}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _digest(h, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    else:
        h.update(f"{type(value).__name__}:{value!r}\0".encode())


def code_fingerprint() -> str:
    """sha256 of the mosare package's source: a run finished by other code (an older checkout, or a worker
    process left over from a killed run) is never reused as if this code had produced it."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def cohort_fingerprint(cohort: Cohort) -> str:
    """sha256 of the cohort's data: ids, labels, masks, RNA, report embeddings, slide feature files (stat)."""
    h = hashlib.sha256()
    _digest(h, cohort)
    return h.hexdigest()


def run_fingerprint(base: str, name: str, scenario: str, rate: float, k: int) -> str:
    return hashlib.sha256(json.dumps([base, name, scenario, float(rate), int(k)]).encode()).hexdigest()


def checkpoint_stem(out: Path, name: str, scenario: str, rate: float, k: int) -> Path:
    return out / "checkpoints" / name / f"{scenario}-{rate:g}" / f"fold{k}"


def result_path(stem: Path) -> Path:
    return stem.with_name(stem.name + ".result.json")


def json_default(obj):
    return obj.item() if isinstance(obj, np.generic) else str(obj)


def load_result(stem: Path, fingerprint: str) -> dict | None:
    """The record (metric rows, run records, subset rows) of a finished run with this fingerprint, or None if it
    must be (re)done."""
    rec_path = result_path(stem)
    if not rec_path.is_file():
        return None
    try:
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
        meta, _ = read_checkpoint_meta(stem.with_suffix(".safetensors"))
    except (OSError, ValueError, CheckpointError) as err:
        log.info("%s: not reused (%s)", rec_path, err)
        return None
    if (not isinstance(rec, dict) or rec.get("format") != RESULT_FORMAT or rec.get("fingerprint") != fingerprint
            or meta.get("run_fingerprint") != fingerprint or rec.get("save_id") != meta.get("save_id")
            or not all(isinstance(rec.get(k), list) for k in ("rows", "runs", "subsets", "predictions"))):
        return None
    return rec


def drop_result(stem: Path) -> None:
    """Remove a run's record before the run is redone: a record only ever sits next to its own checkpoint."""
    try:
        result_path(stem).unlink()
    except FileNotFoundError:
        pass


def write_result(stem: Path, fingerprint: str, rows: list[dict], runs: list[dict], subsets: list[dict],
                 predictions: list[dict]) -> None:
    """Write a run's record after its checkpoint: a record only ever sits next to its own, complete checkpoint."""
    save_id = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8")).get("save_id")
    record = {"format": RESULT_FORMAT, "fingerprint": fingerprint, "save_id": save_id,
              "rows": rows, "runs": runs, "subsets": subsets, "predictions": predictions}
    atomic_write_text(result_path(stem), json.dumps(record, indent=1, default=json_default))
