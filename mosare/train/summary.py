"""Paper-style Markdown tables (mean ± std over folds) from a metrics table."""

from __future__ import annotations

import pandas as pd

METRICS = (("auc", "AUC"), ("f1", "F1"), ("acc", "Acc"))


def _cell(values: pd.Series) -> str:
    v = values.dropna()
    if v.empty:
        return "NA"
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


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
