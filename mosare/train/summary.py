"""Paper-style Markdown tables (mean ± std over folds) from a metrics table."""

from __future__ import annotations

import pandas as pd

METRICS = (("auc", "AUC"), ("f1", "F1"), ("acc", "Acc"))


def _cell(values: pd.Series) -> str:
    v = values.dropna()
    if v.empty:
        return "NA"
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def subset_table(subsets: pd.DataFrame) -> list[str]:
    """AUC per modality subset of the test cases (mean ± std over folds; n = cases per fold, summed)."""
    if subsets is None or subsets.empty:
        return []
    names = [n for n in dict.fromkeys(subsets["subset"]) if n != "all"]
    if len(names) < 2:  # one subset only (a complete cohort): it equals "all"
        return []
    lines = ["## AUC per modality subset of the test cases", "",
             "| model | scenario | rate | " + " | ".join(f"{n} (n)" for n in names) + " |", "|---|---|---|" + "---|" * len(names)]
    for (m, sc, r), g in subsets.groupby(["model", "scenario", "mask_rate"], sort=False):
        cells = []
        for n in names:
            sub = g[g["subset"] == n]
            cells.append(f"{_cell(sub['auc'])} ({int(sub['n'].sum())})" if len(sub) else "–")
        lines.append(f"| {m} | {sc} | {r * 100:g}% | " + " | ".join(cells) + " |")
    return lines + [""]


def paired_differences(metrics: pd.DataFrame, a: str = "masked-unmasked", b: str = "removed-unmasked") -> pd.DataFrame:
    """Per model and mask rate: AUC(a) − AUC(b) paired by fold → mean, std, min, max, folds where a ≥ b."""
    rows = []
    for (m, r), g in metrics[metrics["scenario"].isin([a, b])].groupby(["model", "mask_rate"], sort=False):
        w = g.pivot_table(index="fold", columns="scenario", values="auc")
        if a not in w or b not in w:
            continue
        d = (w[a] - w[b]).dropna()
        if d.empty:
            continue
        rows.append({"model": m, "mask_rate": r, "folds": len(d), "mean": d.mean(), "std": d.std(ddof=1) if len(d) > 1 else 0.0,
                     "min": d.min(), "max": d.max(), "a_ge_b": int((d >= 0).sum()), "per_fold": " ".join(f"{x:+.1f}" for x in d)})
    return pd.DataFrame(rows)


def summarise(metrics: pd.DataFrame, not_applicable: dict[str, str] | None = None,
              subsets: pd.DataFrame | None = None) -> str:
    not_applicable = not_applicable or {}
    models = list(dict.fromkeys(metrics["model"]))
    lines = ["# Results", "", "Metrics in percent, mean ± std over test folds; temperature, threshold and "
             "conformal sets (and the epoch, with --selection best) fitted on a validation split of each training fold. "
             "NA = not applicable.", ""]
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
            lines += [f"## {m}: all metrics under masking", "", "| mask rate | train | test | AUC | F1 | Acc |",
                      "|---|---|---|---|---|---|"]
            for rate in sorted(sub_m["mask_rate"].unique()):
                for scen in dict.fromkeys(sub_m["scenario"]):
                    sub = sub_m[(sub_m["mask_rate"] == rate) & (sub_m["scenario"] == scen)]
                    if not sub.empty:
                        train, test = scen.split("-")
                        lines.append(f"| {rate * 100:g}% | {train} | {test} | " + " | ".join(_cell(sub[c]) for c, _ in METRICS) + " |")
            lines.append("")
    diffs = paired_differences(metrics)
    if not diffs.empty:
        lines += ["## Masked vs removed training, tested on unmasked data: fold-paired AUC differences", "",
                  "AUC(masked-train) − AUC(removed-train) per test fold (same folds, same masks).", "",
                  "| model | mask rate | mean ± std | min | max | folds masked ≥ removed | per fold |", "|---|---|---|---|---|---|---|"]
        for _, r in diffs.iterrows():
            lines.append(f"| {r['model']} | {r['mask_rate'] * 100:g}% | {r['mean']:+.2f} ± {r['std']:.2f} | {r['min']:+.2f} | "
                         f"{r['max']:+.2f} | {r['a_ge_b']}/{r['folds']} | {r['per_fold']} |")
        lines.append("")
    lines += subset_table(subsets)
    return "\n".join(lines).rstrip() + "\n"
