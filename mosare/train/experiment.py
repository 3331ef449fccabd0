"""``mosare experiment``: every model × scenario × mask rate × fold, with honest model selection.

Per fold: a validation split is carved from the training fold; local-token prototypes are fitted on the
training fold; each run selects its epoch on validation AUC; the test fold is scored once, afterwards.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
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
from mosare.io.checkpoint import save_checkpoint
from mosare.model.registry import applicability, build_model
from mosare.train.data import fit_fold_features
from mosare.train.loop import fit, predict_probs, resolve_device
from mosare.train.metrics import classification_metrics
from mosare.train.splits import make_scenario, patient_folds, train_val_split

log = logging.getLogger(__name__)
METRIC_COLUMNS = ["model", "scenario", "mask_rate", "fold", "auc", "f1", "acc"]


def model_config_for(cohort: Cohort, base: ModelConfig) -> ModelConfig:
    """The model config with the cohort's modalities, input sizes and number of classes."""
    return replace(base, modalities=cohort.modalities, n_classes=len(cohort.classes),
                   wsi_dim=cohort.wsi_dim or base.wsi_dim, rna_dim=cohort.rna_dim or base.rna_dim,
                   rpt_dim=cohort.rpt_dim if cohort.rpt_global.size else base.rpt_dim)


def scenario_grid(cfg: ExperimentConfig) -> list[tuple[str, float]]:
    return [(s, 0.0) if s == "complete" else (s, r) for s in cfg.scenarios for r in (cfg.mask_rates if s != "complete" else [0.0])]


def _prepare_fold(cohort: Cohort, cfg: ExperimentConfig, mcfg: ModelConfig, k: int, train_all: np.ndarray):
    """Validation split of the training fold and the features fitted on the training fold."""
    train_idx, val_idx = train_val_split(train_all, cohort.labels, cfg.train.val_fraction, cfg.seed + k)
    return train_idx, val_idx, fit_fold_features(cohort, train_all, mcfg.n_local, cfg.seed + k)


def _run_setting(cohort: Cohort, cfg: ExperimentConfig, mcfg: ModelConfig, k: int, fold: tuple, test_idx: np.ndarray,
                 scenario: str, rate: float, out: Path, text_model: str, device: torch.device,
                 reasons: dict[str, str | None], on_run_done=None, progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Every model for one (fold, scenario, mask rate). Returns (metric rows, run records)."""
    train_idx, val_idx, tokens = fold
    rows, runs = [], []
    split = make_scenario(scenario, rate, cohort.present, cohort.labels, train_idx, val_idx, test_idx,
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
        torch.manual_seed(cfg.seed + k)
        model = build_model(name, mcfg)
        tcfg = replace(cfg.train, seed=cfg.seed + k)
        res = fit(model, cohort, tokens, split.train_idx, split.val_idx, split.present, tcfg, device,
                  desc=f"{name} {scenario} {rate:g} f{k}", progress=progress)
        probs = predict_probs(model, cohort, tokens, test_idx, split.test_present, device)
        metrics = classification_metrics(cohort.labels[test_idx], probs)
        rows.append({**row, **metrics})
        runs.append({**row, "status": "ok", "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                     "val_auc": res.best_val_auc, "n_train": len(split.train_idx), "seconds": round(res.seconds, 2)})
        save_checkpoint(
            out / "checkpoints" / name / f"{scenario}-{rate:g}" / f"fold{k}", model, name, mcfg,
            meta={"classes": list(cohort.classes), "genes": cohort.genes, "text_model": text_model,
                  "fold": k, "scenario": scenario, "mask_rate": rate, "best_epoch": res.best_epoch,
                  "test_metrics": metrics, "train": to_dict(tcfg)},
            extras=tokens.extras(),
        )
        if on_run_done:
            on_run_done(f"fold {k} {scenario} {rate:g} {name}: AUC {metrics['auc']:.1f}")
    return rows, runs


# State of a worker process, set once by its initializer (the cohort is sent once, not with every task).
_WORKER: dict = {}


def _worker_init(threads: int, shared: dict) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(shared, fold_cache={})


def _setting_in_worker(k: int, scenario: str, rate: float, device: torch.device) -> tuple[list[dict], list[dict]]:
    w = _WORKER
    train_all, test_idx = w["folds"][k]
    if k not in w["fold_cache"]:
        w["fold_cache"] = {k: _prepare_fold(w["cohort"], w["cfg"], w["mcfg"], k, train_all)}  # keep one fold
    return _run_setting(w["cohort"], w["cfg"], w["mcfg"], k, w["fold_cache"][k], test_idx, scenario, rate, w["out"],
                        w["text_model"], device, w["reasons"], on_run_done=w["queue"].put)


def worker_devices(device: torch.device, workers: int) -> list[torch.device]:
    """One device per worker: CPU workers share the CPU; CUDA workers take GPUs round-robin."""
    if device.type != "cuda":
        return [device] * workers
    n = torch.cuda.device_count()
    return [torch.device(f"cuda:{i % n}") for i in range(workers)]


def run_experiment(cohort: Cohort, cfg: ExperimentConfig, out_dir: str | Path, *, text_model: str = "",
                   workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """Run the grid, write metrics.csv, runs.csv, summary.md and checkpoints under ``out_dir``.

    ``workers`` > 1 runs (fold, scenario) tasks in parallel processes, each with its share of the CPU threads
    or its own GPU (round-robin over the visible GPUs).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    mcfg = model_config_for(cohort, cfg.model)
    atomic_write_text(out / "config.json", json.dumps(to_dict(replace(cfg, model=mcfg)), indent=1))
    folds = patient_folds(cohort.labels, cfg.folds, cfg.seed)
    reasons = {m: applicability(m, cohort.modalities) for m in cfg.models}
    n_runs = len(folds) * len(scenario_grid(cfg)) * sum(r is None for r in reasons.values())
    bar = tqdm(total=n_runs, desc="experiment", unit="run", disable=not progress)

    def done(msg: str) -> None:
        bar.set_postfix_str(msg, refresh=False)
        bar.update(1)

    grid = scenario_grid(cfg)
    tasks = [(k, scenario, rate) for k in range(len(folds)) for scenario, rate in grid]
    results: list[tuple[list[dict], list[dict]]] = []
    workers = max(1, min(workers, len(tasks)))
    if workers == 1:
        for k, (train_all, test_idx) in enumerate(folds):
            fold = _prepare_fold(cohort, cfg, mcfg, k, train_all)
            for scenario, rate in grid:
                results.append(_run_setting(cohort, cfg, mcfg, k, fold, test_idx, scenario, rate, out, text_model,
                                            device, reasons, on_run_done=done, progress=progress))
    else:  # (fold, scenario) tasks over worker processes: balanced even when folds don't divide evenly
        ctx = mp.get_context("spawn")
        devices = worker_devices(device, workers)
        threads = max(1, torch.get_num_threads() // workers) if device.type == "cpu" else 1
        with ctx.Manager() as manager:
            queue = manager.Queue()
            shared = {"cohort": cohort, "cfg": cfg, "mcfg": mcfg, "folds": folds, "out": out,
                      "text_model": text_model, "reasons": reasons, "queue": queue}
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
    rows = [r for fold_rows, _ in results for r in fold_rows]
    runs = [r for _, fold_runs in results for r in fold_runs]
    metrics_df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    atomic_write_text(out / "metrics.csv", metrics_df.to_csv(index=False, float_format="%.2f", na_rep="NA"))
    atomic_write_text(out / "runs.csv", pd.DataFrame(runs).to_csv(index=False))
    from mosare.train.summary import summarise

    atomic_write_text(out / "summary.md", summarise(metrics_df, {m: r for m, r in reasons.items() if r}))
    return metrics_df
