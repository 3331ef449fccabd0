"""``mosare experiment``: every model × scenario × mask rate × fold, with honest model selection.

Per fold: a validation split is carved from the training fold; local-token prototypes are fitted on the
training fold; each run selects its epoch on validation AUC; the test fold is scored once, afterwards.

Resumable: after each run's checkpoint ``checkpoints/<model>/<scenario>-<rate>/fold<k>.safetensors`` (+ ``.json``)
a record ``fold<k>.result.json`` with its metric row and run record is written atomically. Run again into the
same folder (e.g. after the process was killed), a run whose record, checkpoint and fingerprint (the experiment
config, the cohort's data, the text model, model/scenario/rate/fold) all match is reused instead of trained.
metrics.csv, runs.csv and summary.md are written once, at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import sys
import queue as queue_mod
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mosare.cohort import Cohort
from mosare.config import ExperimentConfig, ModelConfig, to_dict
from mosare.io.atomic import atomic_write_text
from mosare.errors import CheckpointError
from mosare.io.checkpoint import read_checkpoint_meta, save_checkpoint
from mosare.model.registry import applicability, build_model
from mosare.train.data import fit_fold_features
from mosare.train.loop import fit, predict_probs, resolve_device
from mosare.train.metrics import classification_metrics
from mosare.train.splits import make_scenario, patient_folds, train_val_split

log = logging.getLogger(__name__)
METRIC_COLUMNS = ["model", "scenario", "mask_rate", "fold", "auc", "f1", "acc"]
RESULT_FORMAT = "mosare-run-result/1"


def model_config_for(cohort: Cohort, base: ModelConfig) -> ModelConfig:
    """The model config with the cohort's modalities, input sizes and number of classes."""
    return replace(base, modalities=cohort.modalities, n_classes=len(cohort.classes),
                   wsi_dim=cohort.wsi_dim or base.wsi_dim, rna_dim=cohort.rna_dim or base.rna_dim,
                   rpt_dim=cohort.rpt_dim if cohort.rpt_global.size else base.rpt_dim)


def scenario_grid(cfg: ExperimentConfig) -> list[tuple[str, float]]:
    return [(s, 0.0) if s == "complete" else (s, r) for s in cfg.scenarios for r in (cfg.mask_rates if s != "complete" else [0.0])]


class _Fold:
    """One fold's validation split (at once) and its fitted features (``tokens``: on first use only, so a
    fold whose runs are all resumed fits nothing)."""

    def __init__(self, cohort: Cohort, cfg: ExperimentConfig, mcfg: ModelConfig, k: int, train_all: np.ndarray):
        self.train_idx, self.val_idx = train_val_split(train_all, cohort.labels, cfg.train.val_fraction, cfg.seed + k)
        self._args = (cohort, train_all, mcfg.n_local, cfg.seed + k)
        self._tokens = None

    @property
    def tokens(self):
        if self._tokens is None:
            self._tokens = fit_fold_features(*self._args)
        return self._tokens


def _prepare_fold(cohort: Cohort, cfg: ExperimentConfig, mcfg: ModelConfig, k: int, train_all: np.ndarray) -> _Fold:
    """Validation split of the training fold and the features fitted on the training fold (lazily)."""
    return _Fold(cohort, cfg, mcfg, k, train_all)


# ----------------------------------------------------------------------------------------------- resuming


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


def _json_default(obj):
    return obj.item() if isinstance(obj, np.generic) else str(obj)


def _load_result(stem: Path, fingerprint: str) -> tuple[dict, dict] | None:
    """(metric row, run record) of a finished run with this fingerprint, or None if it must be (re)done."""
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
            or not isinstance(rec.get("row"), dict) or not isinstance(rec.get("run"), dict)):
        return None
    return rec["row"], rec["run"]


def _drop_result(stem: Path) -> None:
    """Remove a run's record before the run is redone: a record only ever sits next to its own checkpoint."""
    try:
        result_path(stem).unlink()
    except FileNotFoundError:
        pass


def _run_setting(cohort: Cohort, cfg: ExperimentConfig, mcfg: ModelConfig, k: int, fold: _Fold, test_idx: np.ndarray,
                 scenario: str, rate: float, out: Path, text_model: str, device: torch.device,
                 reasons: dict[str, str | None], on_run_done=None, progress: bool = False,
                 base_fingerprint: str | None = None) -> tuple[list[dict], list[dict], int]:
    """Every model for one (fold, scenario, mask rate). Returns (metric rows, run records, runs resumed).

    With ``base_fingerprint``, a run finished before with the same fingerprint is reused, not trained."""
    rows, runs, resumed = [], [], 0
    split = make_scenario(scenario, rate, cohort.present, cohort.labels, fold.train_idx, fold.val_idx, test_idx,
                          seed=cfg.seed * 1000 + k * 10 + int(round(rate * 100)))
    for name in cfg.models:
        reason = reasons[name] or split.not_applicable
        row = {"model": name, "scenario": scenario, "mask_rate": rate, "fold": k}
        if reason:
            rows.append({**row, "auc": np.nan, "f1": np.nan, "acc": np.nan})
            runs.append({**row, "status": f"NA: {reason}"})
            if reasons[name] is None and on_run_done:
                on_run_done(f"fold {k} {scenario} {rate:g} {name}: NA")
            continue
        stem = checkpoint_stem(out, name, scenario, rate, k)
        fingerprint = None if base_fingerprint is None else run_fingerprint(base_fingerprint, name, scenario, rate, k)
        done = None if fingerprint is None else _load_result(stem, fingerprint)
        if done is not None:
            rows.append(done[0])
            runs.append(done[1])
            resumed += 1
            if on_run_done:
                on_run_done(f"fold {k} {scenario} {rate:g} {name}: resumed")
            continue
        _drop_result(stem)
        tokens = fold.tokens
        torch.manual_seed(cfg.seed + k)
        model = build_model(name, mcfg)
        tcfg = replace(cfg.train, seed=cfg.seed + k)
        res = fit(model, cohort, tokens, split.train_idx, split.val_idx, split.present, tcfg, device,
                  desc=f"{name} {scenario} {rate:g} f{k}", progress=progress)
        probs = predict_probs(model, cohort, tokens, test_idx, split.test_present, device)
        metrics = classification_metrics(cohort.labels[test_idx], probs)
        metric_row = {**row, **metrics}
        run = {**row, "status": "ok", "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
               "val_auc": res.best_val_auc, "n_train": len(split.train_idx), "seconds": round(res.seconds, 2)}
        rows.append(metric_row)
        runs.append(run)
        meta = {"classes": list(cohort.classes), "genes": cohort.genes, "text_model": text_model,
                "fold": k, "scenario": scenario, "mask_rate": rate, "best_epoch": res.best_epoch,
                "test_metrics": metrics, "train": to_dict(tcfg)}
        if fingerprint is not None:
            meta["run_fingerprint"] = fingerprint
        save_checkpoint(stem, model, name, mcfg, meta=meta, extras=tokens.extras())
        if fingerprint is not None:  # after the checkpoint: a record means the run is complete on disk
            save_id = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8")).get("save_id")
            record = {"format": RESULT_FORMAT, "fingerprint": fingerprint, "save_id": save_id,
                      "row": metric_row, "run": run}
            atomic_write_text(result_path(stem), json.dumps(record, indent=1, default=_json_default))
        if on_run_done:
            on_run_done(f"fold {k} {scenario} {rate:g} {name}: AUC {metrics['auc']:.1f}")
    return rows, runs, resumed


# State of a worker process, set once by its initializer (the cohort is sent once, not with every task).
_WORKER: dict = {}


def _worker_init(threads: int, shared: dict) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(shared, fold_cache={})


def _setting_in_worker(k: int, scenario: str, rate: float, device: torch.device) -> tuple[list[dict], list[dict], int]:
    w = _WORKER
    train_all, test_idx = w["folds"][k]
    if k not in w["fold_cache"]:
        w["fold_cache"] = {k: _prepare_fold(w["cohort"], w["cfg"], w["mcfg"], k, train_all)}  # keep one fold
    return _run_setting(w["cohort"], w["cfg"], w["mcfg"], k, w["fold_cache"][k], test_idx, scenario, rate, w["out"],
                        w["text_model"], device, w["reasons"], on_run_done=w["queue"].put,
                        base_fingerprint=w["base_fingerprint"])


def worker_devices(device: torch.device, workers: int) -> list[torch.device]:
    """One device per worker: CPU workers share the CPU; CUDA workers take GPUs round-robin."""
    if device.type != "cuda":
        return [device] * workers
    n = torch.cuda.device_count()
    return [torch.device(f"cuda:{i % n}") for i in range(workers)]


def run_experiment(cohort: Cohort, cfg: ExperimentConfig, out_dir: str | Path, *, text_model: str = "",
                   workers: int = 1, progress: bool = True, resume: bool = True) -> pd.DataFrame:
    """Run the grid, write metrics.csv, runs.csv, summary.md and checkpoints under ``out_dir``.

    ``workers`` > 1 runs (fold, scenario) tasks in parallel processes, each with its share of the CPU threads
    or its own GPU (round-robin over the visible GPUs). With ``resume`` (the default) runs finished by an
    earlier, interrupted call into the same ``out_dir`` with the same config and data are reused; the number
    reused is printed and kept in ``metrics.attrs["resumed"]``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    mcfg = model_config_for(cohort, cfg.model)
    config_text = json.dumps(to_dict(replace(cfg, model=mcfg)), indent=1)
    atomic_write_text(out / "config.json", config_text)
    base_fingerprint = None
    if resume:
        base_fingerprint = hashlib.sha256(json.dumps(
            [RESULT_FORMAT, config_text, cohort_fingerprint(cohort), text_model]).encode()).hexdigest()
    folds = patient_folds(cohort.labels, cfg.folds, cfg.seed)
    reasons = {m: applicability(m, cohort.modalities) for m in cfg.models}
    n_runs = len(folds) * len(scenario_grid(cfg)) * sum(r is None for r in reasons.values())
    bar = tqdm(total=n_runs, desc="experiment", unit="run", disable=not progress)

    def done(msg: str) -> None:
        bar.set_postfix_str(msg, refresh=False)
        bar.update(1)

    grid = scenario_grid(cfg)
    tasks = [(k, scenario, rate) for k in range(len(folds)) for scenario, rate in grid]
    results: list[tuple[list[dict], list[dict], int]] = []
    workers = max(1, min(workers, len(tasks)))
    if workers == 1:
        for k, (train_all, test_idx) in enumerate(folds):
            fold = _prepare_fold(cohort, cfg, mcfg, k, train_all)
            for scenario, rate in grid:
                results.append(_run_setting(cohort, cfg, mcfg, k, fold, test_idx, scenario, rate, out, text_model,
                                            device, reasons, on_run_done=done, progress=progress,
                                            base_fingerprint=base_fingerprint))
    else:  # (fold, scenario) tasks over worker processes: balanced even when folds don't divide evenly
        ctx = mp.get_context("spawn")
        devices = worker_devices(device, workers)
        threads = max(1, torch.get_num_threads() // workers) if device.type == "cpu" else 1
        with ctx.Manager() as manager:
            queue = manager.Queue()
            shared = {"cohort": cohort, "cfg": cfg, "mcfg": mcfg, "folds": folds, "out": out,
                      "text_model": text_model, "reasons": reasons, "queue": queue,
                      "base_fingerprint": base_fingerprint}
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(threads, shared)) as pool:
                futures = [pool.submit(_setting_in_worker, k, scenario, rate, devices[i % workers])
                           for i, (k, scenario, rate) in enumerate(tasks)]
                while not all(f.done() for f in futures):
                    try:
                        done(queue.get(timeout=0.5))
                    except queue_mod.Empty:
                        pass
                while not queue.empty():
                    done(queue.get())
                results = [f.result() for f in futures]
    bar.close()
    rows = [r for fold_rows, _, _ in results for r in fold_rows]
    runs = [r for _, fold_runs, _ in results for r in fold_runs]
    resumed = sum(n for _, _, n in results)
    if resumed:
        msg = f"resumed {resumed} of {n_runs} runs finished earlier in {out} (same config and data); trained {n_runs - resumed}"
        log.info(msg)
        print(msg, file=sys.stderr)
    metrics_df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    atomic_write_text(out / "metrics.csv", metrics_df.to_csv(index=False, float_format="%.2f", na_rep="NA"))
    atomic_write_text(out / "runs.csv", pd.DataFrame(runs).to_csv(index=False))
    from mosare.train.summary import summarise

    atomic_write_text(out / "summary.md", summarise(metrics_df, {m: r for m, r in reasons.items() if r}))
    metrics_df.attrs["resumed"] = resumed
    return metrics_df
