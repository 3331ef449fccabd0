"""Paper-style Markdown tables (mean ± std over folds) from a metrics table."""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = (("auc", "AUC"), ("f1", "F1"), ("acc", "Acc"))


def _cell(values: pd.Series) -> str:
    v = values.dropna()
    if v.empty:
        return "NA"
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def aggregate(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, scenario, mask_rate): mean and std of each metric and the number of folds."""
    g = metrics.groupby(["model", "scenario", "mask_rate"], sort=False)
    out = g[[m for m, _ in METRICS]].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["folds"] = g["auc"].apply(lambda s: int(s.notna().sum()))
    return out.reset_index()


def summarise(metrics: pd.DataFrame, not_applicable: dict[str, str] | None = None) -> str:
    not_applicable = not_applicable or {}
    models = list(dict.fromkeys(metrics["model"]))
    lines = ["# Results", "", "Metrics in percent, mean ± std over test folds; model selection on a validation "
             "split of each training fold. NA = not applicable.", ""]
    complete = metrics[metrics["scenario"] == "complete"]
    if not complete.empty:
        lines += ["## Complete data (no artificial masking; Table 1 style)", "", "| model | AUC | F1 | Acc |", "|---|---|---|---|"]
        for m in models:
            sub = complete[complete["model"] == m]
            if m in not_applicable:
                lines.append(f"| {m} | NA ({not_applicable[m]}) | NA | NA |")
            else:
                lines.append(f"| {m} | " + " | ".join(_cell(sub[c]) for c, _ in METRICS) + " |")
        lines.append("")
    masked = metrics[metrics["scenario"] != "complete"]
    if not masked.empty:
        usable = [m for m in models if m not in not_applicable]
        lines += ["## Missing modalities (Table 2 style): AUC", "",
                  "| mask rate | train | test | " + " | ".join(usable) + " |", "|---|---|---|" + "---|" * len(usable)]
        for rate in sorted(masked["mask_rate"].unique()):
            for scen in dict.fromkeys(masked["scenario"]):
                sub = masked[(masked["mask_rate"] == rate) & (masked["scenario"] == scen)]
                if sub.empty:
                    continue
                train, test = scen.split("-")
                cells = [_cell(sub[sub["model"] == m]["auc"]) for m in usable]
                lines.append(f"| {rate * 100:g}% | {train} | {test} | " + " | ".join(cells) + " |")
        lines.append("")
        # the full metric grid for MoSARe (or the first usable model); the AUC table above covers the rest
        for m in (["mosare"] if "mosare" in usable else usable[:1]):
            sub_m = masked[masked["model"] == m]
            lines += [f"## {m}: all metrics under masking", "", "| mask rate | train | test | AUC | F1 | Acc |", "|---|---|---|---|---|---|"]
            for rate in sorted(sub_m["mask_rate"].unique()):
                for scen in dict.fromkeys(sub_m["scenario"]):
                    sub = sub_m[(sub_m["mask_rate"] == rate) & (sub_m["scenario"] == scen)]
                    if not sub.empty:
                        train, test = scen.split("-")
                        lines.append(f"| {rate * 100:g}% | {train} | {test} | " + " | ".join(_cell(sub[c]) for c, _ in METRICS) + " |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def summary_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """A tidy mean ± std table for display (used by the dashboard)."""
    agg = aggregate(metrics)
    for m, _ in METRICS:
        agg[m] = [("NA" if np.isnan(a) else f"{a:.2f} ± {0 if np.isnan(s) else s:.2f}") for a, s in zip(agg[f"{m}_mean"], agg[f"{m}_std"])]
    return agg[["model", "scenario", "mask_rate", "auc", "f1", "acc", "folds"]]
