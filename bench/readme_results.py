"""Regenerate the README's BRCA results tables from assets/results/ (run by bench/brca_results.sh).

usage: python bench/readme_results.py [--readme README.md] [--results assets/results]
Replaces the text between ``<!-- BEGIN generated:brca-results -->`` and ``<!-- END generated:brca-results -->``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mosare.train.calibration import expected_calibration_error

BEGIN, END = "<!-- BEGIN generated:brca-results -->", "<!-- END generated:brca-results -->"
# ../shared/tools/references.py ../shared/data/tcga-brca IDC ILC (same 970 patients, same scrubbing rules)
REFERENCES = [("late fusion: RNA logistic regression + report TF-IDF logistic regression", "90.03"),
              ("RNA logistic regression (report-only patients at the training prior)", "87.45"),
              ("report TF-IDF logistic regression (RNA-only patients at the prior)", "77.27")]


def cell(v: pd.Series) -> str:
    v = v.dropna()
    return "NA" if v.empty else f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}"


def wall(folder: Path) -> str:
    t = json.loads((folder / "timing.json").read_text())
    reused = f", of which {t['resumed']} reused from an earlier call into the same folder" if t.get("resumed") else ""
    return (f"{t['wall_seconds'] / 60:.1f} min wall, {t['runs']} runs{reused}, {t['workers']} worker processes on "
            f"{t['device']} (2 cores)")


def union_table(folder: Path) -> list[str]:
    m = pd.read_csv(folder / "metrics.csv", na_values="NA")
    s = pd.read_csv(folder / "subsets.csv", na_values="NA")
    m, s = m[m.scenario == "complete"], s[s.scenario == "complete"]
    subsets = [x for x in ("rna+rpt", "rna", "rpt") if x in set(s.subset)]
    names = {"rna+rpt": "both", "rna": "RNA only", "rpt": "report only"}
    n = {x: int(s[(s.subset == x) & (s.model == s.model.iloc[0])].n.sum()) for x in subsets}
    lines = ["| model | AUC | F1 | Acc | " + " | ".join(f"AUC {names[x]} (n={n[x]})" for x in subsets) + " |",
             "|---|---|---|---|" + "---|" * len(subsets)]
    for model, g in m.groupby("model", sort=False):
        sub = [cell(s[(s.model == model) & (s.subset == x)].auc) for x in subsets]
        lines.append(f"| `{model}` | **{cell(g.auc)}** | {cell(g.f1)} | {cell(g.acc)} | " + " | ".join(sub) + " |")
    for name, auc in REFERENCES:
        lines.append(f"| reference: {name} | {auc} | | | " + " | " * (len(subsets) - 1) + " |")
    return lines


def calibration(folder: Path) -> list[str]:
    """Per model, pooled over the 5 test folds: ECE of the raw and the temperature-scaled probabilities, and the
    conformal prediction sets' coverage (target 1 − alpha) and share of two-class ("unsure") sets."""
    p = pd.read_csv(folder / "predictions.csv").query("scenario == 'complete'")
    runs = pd.read_csv(folder / "runs.csv")
    classes = [c[2:] for c in p.columns if c.startswith("p_")]
    lines = ["| model | ECE raw | ECE temperature-scaled | mean T | coverage of the prediction sets (target) | unsure sets |",
             "|---|---|---|---|---|---|"]
    for model, g in p.groupby("model", sort=False):
        y = g.truth.map({c: i for i, c in enumerate(classes)}).to_numpy()
        raw, cal = g[[f"p_{c}" for c in classes]].to_numpy(), g[[f"cal_{c}" for c in classes]].to_numpy()
        covered = [t in s.split(" or ") for t, s in zip(g.truth, g.prediction_set)]
        r = runs[(runs.model == model) & (runs.scenario == "complete")]
        lines.append(f"| `{model}` | {100 * expected_calibration_error(y, raw):.2f} | "
                     f"{100 * expected_calibration_error(y, cal):.2f} | {r.temperature.mean():.2f} | "
                     f"{100 * np.mean(covered):.1f} % ({100 * (1 - r.conformal_alpha.mean()):.0f} %) | "
                     f"{100 * g.prediction_set.str.contains(' or ').mean():.1f} % |")
    return lines


def leak_audit(folder: Path, top: int = 8) -> list[str]:
    """The experiment's leak audit (``leak_audit/fold<k>/``): flagged features per fold, for word features and, when
    the report encoder reads them, character n-grams; then fold 0's strongest features per class side by side."""
    folds = sorted((folder / "leak_audit").glob("fold*"), key=lambda d: int(d.name[4:]))
    kinds = [(stem, name) for stem, name in (("leak_audit", "word 1–2-grams"), ("leak_audit-char", "character 3–5-grams"))
             if (folds[0] / f"{stem}.csv").is_file()]
    lines = ["| fold | training reports | " + " | ".join(f"flagged: {name}" for _, name in kinds) + " |",
             "|---|---|" + "---|" * len(kinds)]
    for d in folds:
        n = re.search(r"\((\d+) training reports\)", (d / "leak_audit.md").read_text(encoding="utf-8")).group(1)
        counts = []
        for stem, _ in kinds:
            f = pd.read_csv(d / f"{stem}.csv", keep_default_na=False)
            counts.append(f"{int(f.flagged.sum())} of {len(f)}")
        lines.append(f"| {d.name[4:]} | {n} | " + " | ".join(counts) + " |")
    lines += ["", f"Fold 0's {top} strongest features per class (logistic-regression weight towards the class; a "
              "character n-gram with the words that hold it, as a share of its occurrences):", "",
              "| class | rank | " + " | ".join(name for _, name in kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    tables = [pd.read_csv(folds[0] / f"{stem}.csv", keep_default_na=False) for stem, _ in kinds]
    for cls in tables[0]["class"].unique():
        for rank in range(1, top + 1):
            cells = []
            for f in tables:
                row = f[(f["class"] == cls) & (f["rank"] == rank)].iloc[0]
                held = f" ({row.carriers})" if row.get("carriers", "") else ""
                cells.append(f"`{row.feature}`{held}".replace("|", "\\|"))
            lines.append(f"| {cls} | {rank} | " + " | ".join(cells) + " |")
    return lines


def same_input_references(folder: Path) -> list[str]:
    df = pd.read_csv(folder / "references.csv")
    lines = ["| reference (same folds, same scrubbed reports, per-fold AUC) | trained on the training split | "
             "trained on the whole training fold |", "|---|---|---|"]
    for ref, g in df.groupby("reference", sort=False):
        lines.append(f"| {ref} | {cell(g[g.trained_on == 'training split'].auc)} | "
                     f"{cell(g[g.trained_on == 'whole training fold'].auc)} |")
    return lines


def table2(folder: Path) -> list[str]:
    m = pd.read_csv(folder / "metrics.csv", na_values="NA")
    models = list(dict.fromkeys(m.model))
    lines = ["| mask rate | train | test | " + " | ".join(f"`{x}`" for x in models) + " |", "|---|---|---|" + "---|" * len(models)]
    base = m[m.scenario == "complete"]
    lines.append("| 0 % | complete | complete | " + " | ".join(cell(base[base.model == x].auc) for x in models) + " |")
    for rate in sorted(m[m.scenario != "complete"].mask_rate.unique()):
        for scen in ("masked-masked", "masked-unmasked", "removed-unmasked"):
            g = m[(m.scenario == scen) & (m.mask_rate == rate)]
            if len(g):
                tr, te = scen.split("-")
                lines.append(f"| {rate * 100:g} % | {tr} | {te} | " + " | ".join(cell(g[g.model == x].auc) for x in models) + " |")
    return lines


def paired(folder: Path) -> list[str]:
    text = (folder / "summary.md").read_text()
    start = text.find("## Masked vs removed")
    if start < 0:
        return []
    block = text[start:].split("\n## ")[0].strip().splitlines()[1:]
    while block and not block[0].strip():
        block = block[1:]
    return block


def ablations(table2_dir: Path, abl_dir: Path) -> list[str]:
    m = pd.concat([pd.read_csv(table2_dir / "metrics.csv", na_values="NA").query("model == 'mosare'"),
                   pd.read_csv(abl_dir / "metrics.csv", na_values="NA")])
    cols = [("complete", 0.0, "complete data"), ("masked-masked", 0.5, "50 % masked, masked test"),
            ("masked-unmasked", 0.5, "50 % masked, unmasked test")]
    lines = ["| model | " + " | ".join(c[2] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for model in dict.fromkeys(m.model):
        g = m[m.model == model]
        lines.append(f"| `{model}` | " + " | ".join(cell(g[(g.scenario == s) & (g.mask_rate == r)].auc) for s, r, _ in cols) + " |")
    return lines


def seeds(results: Path) -> list[str]:
    """Complete-data AUC of the union cohort per seed: `mosare`, and `text` where every seed's folder has it."""
    found = {}
    for seed, name in ((0, "tcga-brca"), (1, "tcga-brca-seed1"), (2, "tcga-brca-seed2")):
        f = results / name / "metrics.csv"
        if f.is_file():
            found[seed] = pd.read_csv(f, na_values="NA").query("scenario == 'complete'")
    models = [m for m in ("mosare", "text") if found and all((d.model == m).any() for d in found.values())]
    if not models:
        return []
    lines = ["| seed | " + " | ".join(f"`{m}` AUC (mean ± std over 5 folds)" for m in models) + " |",
             "|---|" + "---|" * len(models)]
    lines += [f"| {s} | " + " | ".join(cell(d[d.model == m].auc) for m in models) + " |" for s, d in found.items()]
    means = {m: pd.Series([d[d.model == m].auc.mean() for d in found.values()]) for m in models}
    return lines + ["| mean ± std of the seed means | " + " | ".join(
        f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}" for v in means.values()) + " |"]


def sweep(folder: Path) -> list[str]:
    df = pd.read_csv(folder / "sweep.csv")
    g = df.groupby(["model", "lr"]).agg(folds=("fold", lambda f: ",".join(map(str, sorted(f)))),
                                       val_loss=("val_loss", "mean"), val_auc=("val_auc", "mean"),
                                       epoch=("best_epoch", "mean")).reset_index()
    lines = ["| model | lr | validation folds | validation loss (temperature-scaled) | validation AUC | selected epoch |",
             "|---|---|---|---|---|---|"]
    for _, r in g.iterrows():
        lines.append(f"| `{r.model}` | {r.lr:g} | {r.folds} | {r.val_loss:.3f} | {r.val_auc:.1f} | {r.epoch:.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readme", type=Path, default=Path("README.md"))
    ap.add_argument("--results", type=Path, default=Path("assets/results"))
    a = ap.parse_args()
    r = a.results
    out = ["", "#### Union cohort (970 patients, natural missingness), complete-data scenario, seed 0", "",
           f"`assets/results/tcga-brca/` ({wall(r / 'tcga-brca')}). AUC per modality subset of the test patients:", ""]
    out += union_table(r / "tcga-brca") + [""]
    if (r / "tcga-brca" / "references.csv").is_file():
        out += ["The shared references above score their own, lighter scrub of the reports and pool the folds into one "
                "AUC. On exactly the experiment's inputs and scoring (`bench/references.py`, "
                "`assets/results/tcga-brca/references.csv`):", ""] + same_input_references(r / "tcga-brca") + [""]
    if (r / "tcga-brca" / "predictions.csv").is_file():
        out += ["#### Calibration and prediction sets (held-out cases of all 5 folds, union cohort)", "",
                "Temperature and conformal quantile fitted on each run's validation split; ECE over 10 confidence bins, "
                "in percent. From `assets/results/tcga-brca/predictions.csv`.", ""] + calibration(r / "tcga-brca") + [""]
    if (r / "tcga-brca" / "leak_audit").is_dir():
        out += ["#### Leak audit of the union run's training folds (`assets/results/tcga-brca/leak_audit/`)", "",
                "Written by `experiment` before any training: a TF-IDF logistic regression on each training fold's "
                "scrubbed reports, its strongest features per class, any ICD-O code, label word or fragment of a "
                "scrubbed phrase flagged.", ""] + leak_audit(r / "tcga-brca") + [""]
    if (r / "tcga-brca-seed1").is_dir():
        out += ["#### Over seeds (union cohort, complete data)", ""] + seeds(r) + [""]
    if (r / "tcga-brca-table2").is_dir():
        out += ["#### Table 2: complete-only cohort (647 patients with RNA and report), AUC", "",
                f"`assets/results/tcga-brca-table2/` ({wall(r / 'tcga-brca-table2')}).", ""] + table2(r / "tcga-brca-table2") + [""]
        out += ["Masked vs removed training, tested on unmasked data — fold-paired AUC differences:", ""]
        out += paired(r / "tcga-brca-table2") + [""]
    if (r / "tcga-brca-ablations").is_dir():
        out += ["#### Ablations (complete-only cohort), AUC", "",
                f"`assets/results/tcga-brca-ablations/` ({wall(r / 'tcga-brca-ablations')}); `mosare` row from Table 2's run.", ""]
        out += ablations(r / "tcga-brca-table2", r / "tcga-brca-ablations") + [""]
    if (r / "lr-sweep" / "sweep.csv").is_file():
        out += ["#### Learning-rate sweep (validation splits only; `bench/sweep.py`, `assets/results/lr-sweep/`)", "",
                "The sweep was stopped when the results run had to start: `mosare` has folds 0–1, the other "
                "models fold 0 (and `mosare-paper` fold 1 at 1e-4). Defaults, by lowest validation loss: `mosare` "
                "1e-4, `snn` 1e-3, `text` 3e-4 (since re-swept on the character encoder: 1e-3, see the report encoder "
                "below); `mosare-paper` shares `mosare`'s 1e-4 (its fold-0 minimum was at "
                "3e-4: a thin basis, said so here). It ran with per-fold early stopping (`--selection best`, the default "
                "then).", ""] + sweep(r / "lr-sweep") + [""]
    lls = r / "lr-sweep" / "linear-lr-scale.md"
    if lls.is_file():
        body = _nested(lls.read_text(encoding="utf-8").split("\n", 2)[2].strip())
        out += ["#### The linear path's step size (validation splits only; `assets/results/lr-sweep/linear-lr-scale.md`)",
                "", body, ""]
    notes = (("selection", "Which epoch to keep (validation splits only; `bench/selection.py`, `assets/results/selection/`)"),
             ("text-encoder", "Report encoder: character n-grams or words (validation splits only; `bench/sweep.py`, "
                              "`assets/results/text-encoder/`)"),
             ("ensemble", "Averaging several networks (validation splits only; `bench/ensemble.py`, "
                          "`assets/results/ensemble/`)"),
             ("refit-features", "Refitting the features for the refit (validation splits only; "
                                "`bench/refit_features.py`, `assets/results/refit-features/`)"),
             ("text-linear", "A linear path for `text` (validation splits only; `bench/sweep.py`, "
                             "`assets/results/text-linear/`)"),
             ("text-weight-decay", "Regularising `text`, over 3 seeds (validation splits only; `bench/sweep.py "
                                   "--seeds 3`, `assets/results/text-weight-decay/`)"),
             ("linear-ceiling", "How far a linear model gets on the same inputs (validation splits only; "
                                "`bench/references.py --split validation`, `assets/results/linear-ceiling/`)"))
    for folder, title in notes:
        note = r / folder / "README.md"
        if note.is_file():  # the note without its own title line
            out += [f"#### {title}", "", _nested(note.read_text(encoding="utf-8").split("\n", 2)[2].strip()), ""]
    text = a.readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{a.readme}: no {BEGIN} … {END} markers")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    a.readme.write_text(head + BEGIN + "\n" + "\n".join(out) + "\n" + END + tail, encoding="utf-8")
    print(f"{a.readme}: BRCA results tables regenerated from {r}")


def _nested(body: str) -> str:
    """A note's own section headings ("## …") one level below the "####" title it is included under."""
    return re.sub(r"^#{1,4} ", "##### ", body, flags=re.MULTILINE)


if __name__ == "__main__":
    main()
