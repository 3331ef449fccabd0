"""``mosare experiment``: every model × scenario × mask rate × fold, with honest model selection.

Per fold: a validation split is carved from the training fold; local-token prototypes are fitted on the
training fold; each run selects its epoch on validation AUC; the test fold is scored once, afterwards.
"""

from __future__ import annotations

import json
import logging
import time
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


def run_experiment(cohort: Cohort, cfg: ExperimentConfig, out_dir: str | Path, *, text_model: str = "",
                   progress: bool = True) -> pd.DataFrame:
    """Run the grid, write metrics.csv, runs.csv, summary.md and checkpoints under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    mcfg = model_config_for(cohort, cfg.model)
    atomic_write_text(out / "config.json", json.dumps(to_dict(replace(cfg, model=mcfg)), indent=1))
    folds = patient_folds(cohort.labels, cfg.folds, cfg.seed)
    grid = scenario_grid(cfg)
    reasons = {m: applicability(m, cohort.modalities) for m in cfg.models}
    rows, runs = [], []
    n_runs = len(folds) * len(grid) * sum(r is None for r in reasons.values())
    bar = tqdm(total=n_runs, desc="experiment", unit="run", disable=not progress)
    for k, (train_all, test_idx) in enumerate(folds):
        train_idx, val_idx = train_val_split(train_all, cohort.labels, cfg.train.val_fraction, cfg.seed + k)
        tokens = fit_fold_features(cohort, train_all, mcfg.n_local, cfg.seed + k)
        for scenario, rate in grid:
            split = make_scenario(scenario, rate, cohort.present, cohort.labels, train_idx, val_idx, test_idx,
                                  seed=cfg.seed * 1000 + k * 10 + int(round(rate * 100)))
            for name in cfg.models:
                reason = reasons[name] or split.not_applicable
                row = {"model": name, "scenario": scenario, "mask_rate": rate, "fold": k}
                if reason:
                    rows.append({**row, "auc": np.nan, "f1": np.nan, "acc": np.nan})
                    runs.append({**row, "status": f"NA: {reason}"})
                    if reasons[name] is None:
                        bar.update(1)
                    continue
                torch.manual_seed(cfg.seed + k)
                model = build_model(name, mcfg)
                bar.set_postfix_str(f"fold {k} {scenario} {rate:g} {name}")
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
                bar.update(1)
    bar.close()
    metrics_df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    atomic_write_text(out / "metrics.csv", metrics_df.to_csv(index=False, float_format="%.2f", na_rep="NA"))
    atomic_write_text(out / "runs.csv", pd.DataFrame(runs).to_csv(index=False))
    from mosare.train.summary import summarise

    atomic_write_text(out / "summary.md", summarise(metrics_df, {m: r for m, r in reasons.items() if r}))
    return metrics_df
