"""``mosare experiment``: every model × scenario × mask rate × fold, with honest model selection.

Per fold: a validation split is carved from the training fold; the report encoder, local-token prototypes and
RNA statistics are fitted on the training fold; each run trains the whole schedule (``train.selection`` "last", the
default) or keeps the epoch of lowest validation loss ("best"), and fits its decision threshold on validation F1
and its temperature on validation loss; the test fold is scored once, afterwards.

Scenarios that train the same model share one run: ``masked-masked`` and ``masked-unmasked`` differ only in
the test presence mask, so one model trained on the masked training fold (checkpoint ``masked-<rate>``) is
scored on both. Each run writes ``checkpoints/<model>/<train>-<rate>/fold<k>.safetensors`` (+ ``.json``,
``.history.csv`` and a result record for resuming, see :mod:`mosare.train.resume`). At the end: metrics.csv,
subsets.csv (AUC per modality subset of the test cases), predictions.csv (every test case of every run: raw and
temperature-scaled probabilities, conformal prediction set), runs.csv, history.csv and summary.md.

With ``train.refit`` (the default) the selected number of epochs (with "last": the whole schedule) is retrained on
training + validation split from the same initialisation, and that model is scored and saved: selection needs
held-out cases, but throwing a fifth of the training fold away for the final model costs accuracy (scikit-learn's
refit after a search does the same). The threshold, temperature and conformal quantile come from the selection
run's validation predictions. A model with ``refit_features`` (``text``; ``train.refit_features`` overrides) also
has its features refitted on training + validation split for the refit; the others keep the selection run's.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import multiprocessing as mp
import queue as queue_mod
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mosare import MODALITIES
from mosare.config import ANALYZERS, ExperimentConfig, ModelConfig, TrainConfig, to_dict
from mosare.data.cohort import Cohort
from mosare.errors import MosareError
from mosare.io.atomic import atomic_write_text
from mosare.model.base import SubtypingModel
from mosare.model.checkpoint import save_checkpoint
from mosare.model.registry import applicability, build_model
from mosare.text.leak_audit import leak_audit
from mosare.train.calibration import fit_calibration, prediction_rows
from mosare.train.data import FoldFeatures, fit_fold_features
from mosare.train.loop import fit, optimiser_settings, predict_embeddings, predict_probs, refit
from mosare.train.metrics import classification_metrics, subset_aucs
from mosare.train.resume import (
    RESULT_FORMAT,
    checkpoint_stem,
    code_fingerprint,
    cohort_fingerprint,
    drop_result,
    load_result,
    run_fingerprint,
    write_result,
)
from mosare.train.splits import make_scenario, patient_folds, train_val_split
from mosare.train.summary import summarise
from mosare.types import resolve_device

log = logging.getLogger(__name__)
METRIC_COLUMNS = ["model", "scenario", "mask_rate", "fold", "auc", "f1", "acc"]
SUBSET_COLUMNS = ["model", "scenario", "mask_rate", "fold", "subset", "n", "auc"]
TRAINING = {"complete": "complete", "masked-masked": "masked", "masked-unmasked": "masked", "removed-unmasked": "removed"}


def model_config_for(cohort: Cohort, base: ModelConfig) -> ModelConfig:
    """The model config with the cohort's modalities, input sizes and number of classes."""
    return replace(base, modalities=cohort.modalities, n_classes=len(cohort.classes),
                   wsi_dim=cohort.wsi_dim or base.wsi_dim, rna_dim=cohort.rna_dim or base.rna_dim,
                   rpt_dim=cohort.rpt_dim or base.rpt_dim)


def training_grid(cfg: ExperimentConfig) -> list[tuple[str, float, tuple[str, ...]]]:
    """(training setting, mask rate, the requested scenarios it serves): one run per entry per model and fold."""
    grid: dict[tuple[str, float], list[str]] = {}
    for s in cfg.scenarios:
        for r in (cfg.mask_rates if s != "complete" else [0.0]):
            grid.setdefault((TRAINING[s], 0.0 if s == "complete" else r), []).append(s)
    return [(t, r, tuple(ss)) for (t, r), ss in grid.items()]


class Fold:
    """One fold's validation split, and the features fitted for a training setting (computed on first use and kept
    for the next run of the same setting; a fold whose runs are all resumed fits nothing), on what the setting
    lets training see (a masked modality is not fitted on):

    - ``tokens(key, visible)``, for model selection: fitted on the training split only. The validation split must
      stand to the features as the test fold does (a TF-IDF → SVD basis fitted with the validation reports gives
      them components no training case has).
    - ``tokens(key, visible, refit=True)``, for the refit of a model whose features are refitted too
      (``TrainConfig.refit_features``): fitted on training + validation split, as the refit's network is. Nothing
      is selected on the validation split after this; the test fold is never seen.
    """

    def __init__(self, cohort: Cohort, cfg: ExperimentConfig, mcfg: ModelConfig, k: int, train_all: np.ndarray):
        self.train_idx, self.val_idx = train_val_split(train_all, cohort.labels, cfg.train.val_fraction, cfg.seed + k)
        self._cohort, self._n_local, self._seed = cohort, mcfg.n_local, cfg.seed + k
        self._cache: dict[tuple[str, bool], FoldFeatures] = {}

    def tokens(self, key: str, visible: np.ndarray, refit: bool = False) -> FoldFeatures:
        if (key, refit) not in self._cache:
            idx = np.concatenate([self.train_idx, self.val_idx]) if refit else self.train_idx
            self._cache = {c: v for c, v in self._cache.items() if c[0] == key}  # keep one setting
            self._cache[key, refit] = fit_fold_features(self._cohort, idx, self._n_local, self._seed, visible=visible)
        return self._cache[key, refit]


def embedding_map(train: np.ndarray | None, test: np.ndarray | None, n_test: int) -> np.ndarray:
    """[N_test, 2]: the test cases' fused embeddings on the first two principal axes of the training cases'
    (NaN for a model without a fused embedding). For the cohort page's map; one map per run."""
    if train is None or test is None or len(train) < 3:
        return np.full((n_test, 2), np.nan)
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    return (test - mean) @ vt[:2].T


def refits_features(model: SubtypingModel, tcfg: TrainConfig) -> bool:
    """Whether the refit refits the features on training + validation split: the config's choice, else the
    model's own (``SubtypingModel.refit_features``, chosen by bench/refit_features.py on validation splits)."""
    return model.refit_features if tcfg.refit_features is None else tcfg.refit_features


def _subset_name(present: np.ndarray, mods: tuple[str, ...]) -> str:
    return "+".join(m for m in mods if present[MODALITIES.index(m)]) or "none"


def _run_setting(cohort: Cohort, cfg: ExperimentConfig, mcfg: ModelConfig, k: int, fold: Fold, test_idx: np.ndarray,
                 training: str, rate: float, scenarios: tuple[str, ...], out: Path, text_model: str,
                 device: torch.device, reasons: dict[str, str | None], on_run_done=None, progress: bool = False,
                 base_fingerprint: str | None = None) -> dict:
    """Every model for one (fold, training setting, mask rate); each trained model is scored on the test
    presence of every scenario it serves. Returns {"rows", "runs", "subsets", "history", "resumed"}."""
    acc = {"rows": [], "runs": [], "subsets": [], "predictions": [], "history": [], "resumed": 0}
    seed = cfg.seed * 1000 + k * 10 + int(round(rate * 100))
    splits = {s: make_scenario(s, rate, cohort.present, cohort.labels, fold.train_idx, fold.val_idx, test_idx, seed)
              for s in scenarios}
    split = splits[scenarios[0]]  # the same training masks for every scenario of this setting (same seed)
    for name in cfg.models:
        reason = reasons[name] or split.not_applicable
        base = {"model": name, "mask_rate": rate, "fold": k}
        if reason:
            for s in scenarios:
                acc["rows"].append({**base, "scenario": s, "auc": np.nan, "f1": np.nan, "acc": np.nan})
                acc["runs"].append({**base, "scenario": s, "status": f"NA: {reason}"})
            if reasons[name] is None and on_run_done:
                on_run_done(f"fold {k} {training} {rate:g} {name}: NA")
            continue
        stem = checkpoint_stem(out, name, training, rate, k)
        fingerprint = None if base_fingerprint is None else run_fingerprint(base_fingerprint, name, training, rate, k)
        done = None if fingerprint is None else load_result(stem, fingerprint)
        if done is not None:
            for key in ("rows", "runs", "subsets", "predictions"):
                acc[key] += done[key]
            acc["resumed"] += 1
            if on_run_done:
                on_run_done(f"fold {k} {training} {rate:g} {name}: resumed")
            continue
        drop_result(stem)
        tokens = fold.tokens(f"{training}-{rate:g}", split.present)
        torch.manual_seed(cfg.seed + k)
        model = build_model(name, mcfg)
        tcfg = replace(cfg.train, seed=cfg.seed + k)
        res = fit(model, cohort, tokens, split.train_idx, split.val_idx, split.present, tcfg, device,
                  desc=f"{name} {training} {rate:g} f{k}", progress=progress)
        y_val = cohort.labels[split.val_idx]
        val_probs = predict_probs(model, cohort, tokens, split.val_idx, split.present, device)
        calib = fit_calibration(y_val, val_probs, cfg.conformal_alpha)
        seconds = res.seconds
        if tcfg.refit:  # the selected number of epochs, now on training + validation split, from the same init
            torch.manual_seed(cfg.seed + k)
            model = build_model(name, mcfg)
            if refits_features(model, tcfg):  # calibration stays the selection run's (validation split)
                tokens = fold.tokens(f"{training}-{rate:g}", split.present, refit=True)
            seconds += refit(model, cohort, tokens, np.concatenate([split.train_idx, split.val_idx]), split.present,
                             tcfg, device, res.best_epoch + 1, desc=f"{name} refit f{k}", progress=progress)
        rows, runs, subsets, preds = [], [], [], []
        lr, weight_decay = optimiser_settings(model, tcfg)
        train_emb = predict_embeddings(model, cohort, tokens, split.train_idx, split.present, device)
        for s in scenarios:
            test_present = splits[s].test_present
            probs = predict_probs(model, cohort, tokens, test_idx, test_present, device)
            emb = embedding_map(train_emb, predict_embeddings(model, cohort, tokens, test_idx, test_present, device),
                                len(test_idx))
            metrics = classification_metrics(cohort.labels[test_idx], probs, calib["threshold"])
            rows.append({**base, "scenario": s, **metrics})
            names = [_subset_name(p, cohort.modalities) for p in test_present[test_idx]]
            subsets += [{**base, "scenario": s, **r} for r in subset_aucs(cohort.labels[test_idx], probs, names)]
            preds += [{**r, "map_x": xy[0], "map_y": xy[1]} for r, xy in
                      zip(prediction_rows(cohort, test_idx, probs, names, calib, {**base, "scenario": s}), emb)]
            runs.append({**base, "scenario": s, "status": "ok", "lr": lr, "weight_decay": weight_decay,
                         "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                         "val_loss": round(res.best_val_loss, 4), "val_auc": res.best_val_auc, **calib,
                         "refit": tcfg.refit, "refit_features": tcfg.refit and refits_features(model, tcfg),
                         "seconds": round(seconds, 2),
                         "n_train": len(split.train_idx) + (len(split.val_idx) if tcfg.refit else 0),
                         "checkpoint": str(stem.relative_to(out))})
        meta = {"classes": list(cohort.classes), "genes": cohort.genes, "text_model": text_model,
                "scrub_terms": list(cfg.scrub_terms),
                "fold": k, "training": training, "scenarios": list(scenarios), "mask_rate": rate,
                "best_epoch": res.best_epoch, **calib, "test_metrics": rows, "train": to_dict(tcfg)}
        if tokens.text_meta() is not None:
            meta["text_encoder"] = tokens.text_meta()
        if fingerprint is not None:
            meta["run_fingerprint"] = fingerprint
        save_checkpoint(stem, model, name, mcfg, meta=meta, extras=tokens.extras())
        history = pd.DataFrame(res.history)
        atomic_write_text(stem.with_name(stem.name + ".history.csv"), history.to_csv(index=False, float_format="%.5g"))
        if fingerprint is not None:  # after the checkpoint: a record means the run is complete on disk
            write_result(stem, fingerprint, rows, runs, subsets, preds)
        acc["predictions"] += preds
        acc["rows"] += rows
        acc["runs"] += runs
        acc["subsets"] += subsets
        if on_run_done:
            on_run_done(f"fold {k} {training} {rate:g} {name}: AUC " + "/".join(f"{r['auc']:.1f}" for r in rows))
    return acc


# State of a worker process, set once by its initializer (the cohort is sent once, not with every task).
_WORKER: dict = {}


def _worker_init(threads: int, shared: dict) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(shared, fold_cache={})
    if sys.platform.startswith("linux"):  # die with the driver: a killed run must not leave workers writing results
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _setting_in_worker(k: int, training: str, rate: float, scenarios: tuple[str, ...], device: torch.device) -> dict:
    w = _WORKER
    train_all, test_idx = w["folds"][k]
    if k not in w["fold_cache"]:
        w["fold_cache"] = {k: Fold(w["cohort"], w["cfg"], w["mcfg"], k, train_all)}  # keep one fold
    return _run_setting(w["cohort"], w["cfg"], w["mcfg"], k, w["fold_cache"][k], test_idx, training, rate, scenarios,
                        w["out"], w["text_model"], device, w["reasons"], on_run_done=w["queue"].put,
                        base_fingerprint=w["base_fingerprint"])


def worker_devices(device: torch.device, workers: int) -> list[torch.device]:
    """One device per worker: CPU workers share the CPU; CUDA workers take GPUs round-robin."""
    if device.type != "cuda":
        return [device] * workers
    n = torch.cuda.device_count()
    return [torch.device(f"cuda:{i % n}") for i in range(workers)]


def audit_reports(cohort: Cohort, folds: list, out: Path) -> int:
    """Leak audit of each training fold's scrubbed reports (TF-IDF + logistic regression, strongest features per
    class, codes and scrub fragments flagged) into ``out/leak_audit/fold<k>``: on word features, and on the
    character n-grams the report encoder reads when it reads them (``--text-encoder tfidf``); returns the number
    flagged."""
    if not cohort.has_reports:
        return 0
    analyzers = ["word"] + (["char"] if ANALYZERS.get(cohort.text_encoder) == "char" else [])
    flagged = 0
    for k, (train_all, _) in enumerate(folds):
        idx = [i for i in train_all if cohort.present[i, 2]]
        if len(set(cohort.labels[idx])) < 2:
            continue
        for analyzer in analyzers:
            audit = leak_audit([cohort.rpt_texts[i] for i in idx], cohort.labels[idx], cohort.classes, seed=k,
                               analyzer=analyzer)
            audit.write(out / "leak_audit" / f"fold{k}")
            flagged += len(audit.flagged)
    return flagged


def ray_backend():
    """:mod:`mosare.train.ray_backend`, imported on demand (Ray is heavy and optional)."""
    try:
        from mosare.train import ray_backend as module
    except ImportError as err:
        if err.name != "ray":
            raise
        raise MosareError("--backend ray needs the ray package: pip install 'ray==2.60.0'") from None
    return module


def run_experiment(cohort: Cohort, cfg: ExperimentConfig, out_dir: str | Path, *, text_model: str = "",
                   workers: int = 1, progress: bool = True, resume: bool = True, backend: str = "local",
                   ray_address: str | None = None, gpus_per_run: float = 0.0, cpus_per_run: float = 1.0) -> pd.DataFrame:
    """Run the grid, write metrics.csv, subsets.csv, runs.csv, history.csv, summary.md and checkpoints.

    ``workers`` > 1 runs (fold, training setting) tasks in parallel processes, each with its share of the CPU
    threads or its own GPU (round-robin over the visible GPUs). ``backend="ray"`` runs every (model, fold,
    training setting) as a Ray task instead, on the cluster at ``ray_address`` (else a local Ray), each asking
    for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (see :mod:`mosare.train.ray_backend`); same results.
    With ``resume`` (the default) runs finished by an earlier, interrupted call into the same ``out_dir`` with
    the same config and data are reused; the number reused is printed and kept in ``metrics.attrs["resumed"]``.
    """
    start = time.perf_counter()
    if backend not in ("local", "ray"):
        raise MosareError(f"unknown backend {backend!r}; choose local or ray")
    rb = ray_backend() if backend == "ray" else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = rb.run_device(cfg.train.device, gpus_per_run) if rb else resolve_device(cfg.train.device)
    cfg = replace(cfg, text_encoder=cohort.text_encoder)  # the cohort's reports were prepared for this encoder
    mcfg = model_config_for(cohort, cfg.model)
    config_text = json.dumps(to_dict(replace(cfg, model=mcfg)), indent=1)
    atomic_write_text(out / "config.json", config_text)
    base_fingerprint = None
    if resume:
        base_fingerprint = hashlib.sha256(json.dumps(
            [RESULT_FORMAT, config_text, cohort_fingerprint(cohort), text_model, code_fingerprint()]).encode()).hexdigest()
    folds = patient_folds(cohort.labels, cfg.folds, cfg.seed)
    n_flagged = audit_reports(cohort, folds, out)
    if n_flagged:
        print(f"leak audit: {n_flagged} flagged report feature(s) (codes or scrub fragments) among the strongest "
              f"per class; see {out / 'leak_audit'}", file=sys.stderr)
    reasons = {m: applicability(m, cohort.modalities) for m in cfg.models}
    grid = training_grid(cfg)
    n_runs = len(folds) * len(grid) * sum(r is None for r in reasons.values())
    bar = tqdm(total=n_runs, desc="experiment", unit="run", disable=not progress)

    def done(msg: str) -> None:
        bar.set_postfix_str(msg, refresh=False)
        bar.update(1)

    tasks = [(k, training, rate, scen) for k in range(len(folds)) for training, rate, scen in grid]
    results: list[dict] = []
    workers = max(1, min(workers, len(tasks)))
    if rb is not None:
        results = rb.run_grid(cohort, cfg, mcfg, folds, grid, out, text_model, reasons, base_fingerprint, done,
                              address=ray_address, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run)
    elif workers == 1:
        for k, (train_all, test_idx) in enumerate(folds):
            fold = Fold(cohort, cfg, mcfg, k, train_all)
            for training, rate, scen in grid:
                results.append(_run_setting(cohort, cfg, mcfg, k, fold, test_idx, training, rate, scen, out, text_model,
                                            device, reasons, on_run_done=done, progress=progress,
                                            base_fingerprint=base_fingerprint))
    else:  # (fold, training setting) tasks over worker processes: balanced even when folds don't divide evenly
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
                futures = [pool.submit(_setting_in_worker, k, training, rate, scen, devices[i % workers])
                           for i, (k, training, rate, scen) in enumerate(tasks)]
                while not all(f.done() for f in futures):
                    try:
                        done(queue.get(timeout=0.5))
                    except queue_mod.Empty:
                        pass
                while not queue.empty():
                    done(queue.get())
                results = [f.result() for f in futures]
    bar.close()
    resumed = sum(r["resumed"] for r in results)
    if resumed:
        msg = f"resumed {resumed} of {n_runs} runs finished earlier in {out} (same config and data); trained {n_runs - resumed}"
        log.info(msg)
        print(msg, file=sys.stderr)
    order = {s: i for i, s in enumerate(cfg.scenarios)}
    rank = lambda df: df.sort_values(["fold", "mask_rate"], kind="stable").sort_values(  # noqa: E731
        "scenario", key=lambda s: s.map(order), kind="stable") if len(df) else df
    metrics_df = rank(pd.DataFrame([r for x in results for r in x["rows"]], columns=METRIC_COLUMNS))
    subsets_df = rank(pd.DataFrame([r for x in results for r in x["subsets"]], columns=SUBSET_COLUMNS))
    runs_df = pd.DataFrame([r for x in results for r in x["runs"]])
    atomic_write_text(out / "metrics.csv", metrics_df.to_csv(index=False, float_format="%.2f", na_rep="NA"))
    atomic_write_text(out / "subsets.csv", subsets_df.to_csv(index=False, float_format="%.2f", na_rep="NA"))
    atomic_write_text(out / "runs.csv", runs_df.to_csv(index=False))
    preds_df = rank(pd.DataFrame([r for x in results for r in x["predictions"]]))
    atomic_write_text(out / "predictions.csv", preds_df.to_csv(index=False, float_format="%.5g"))
    write_history(out, runs_df)
    seconds = time.perf_counter() - start
    atomic_write_text(out / "timing.json", json.dumps({"wall_seconds": round(seconds, 1), "runs": n_runs,
                                                       "resumed": resumed, "workers": workers, "backend": backend,
                                                       "device": str(device),
                                                       "threads": torch.get_num_threads()}, indent=1))
    atomic_write_text(out / "summary.md", summarise(metrics_df, {m: r for m, r in reasons.items() if r}, subsets_df))
    metrics_df.attrs["resumed"] = resumed
    return metrics_df


def write_history(out: Path, runs: pd.DataFrame) -> None:
    """history.csv: every run's per-epoch history (loss parts, validation loss/AUC, lr), one row per epoch."""
    if runs.empty or "checkpoint" not in runs:
        return
    frames = []
    for _, r in runs.dropna(subset=["checkpoint"]).drop_duplicates("checkpoint").iterrows():
        path = out / (str(r["checkpoint"]) + ".history.csv")
        if path.is_file():
            h = pd.read_csv(path)
            stem = Path(str(r["checkpoint"]))
            h.insert(0, "fold", int(r["fold"]))
            h.insert(0, "mask_rate", r["mask_rate"])
            h.insert(0, "training", stem.parent.name.rsplit("-", 1)[0])
            h.insert(0, "model", r["model"])
            frames.append(h)
    if frames:
        atomic_write_text(out / "history.csv", pd.concat(frames).to_csv(index=False, float_format="%.5g"))
