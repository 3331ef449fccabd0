"""Held-out predictions of an experiment: case table, confusion matrix, ROC, calibration, conformal sets, map.

``mosare experiment`` writes ``predictions.csv`` into its output folder: one row per test-fold case per trained
run, with columns ``model, scenario, mask_rate, fold, patient_id, truth, prediction, subset, p_<class>...,
cal_<class>..., prediction_set, map_x, map_y``. ``p_`` are the raw probabilities, ``cal_`` the temperature-scaled
ones, ``prediction_set`` the split-conformal set ("IDC" or "IDC or ILC"), ``subset`` the modalities present at
test time ("rna+rpt") and ``map_x/map_y`` the case's fused embedding on the first two principal axes of that
run's training cases (NaN for models without a fused embedding).

A *selection* is one (model, scenario, mask rate) with the held-out cases of all folds pooled
(:func:`select`); every other function takes such a selection. Units: AUC in percent (as in ``metrics.csv``),
ECE, coverage and shares as fractions in [0, 1].
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.metrics import confusion_matrix, roc_curve

from mosare.errors import InputError, MosareError
from mosare.train.calibration import expected_calibration_error, reliability
from mosare.train.metrics import auc

SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "results" / "tcga-brca"
"""The shipped TCGA-BRCA IDC vs ILC experiment (the Cohort page's default source)."""
REQUIRED_COLUMNS: tuple[str, ...] = ("model", "scenario", "mask_rate", "fold", "patient_id", "truth", "prediction",
                                     "subset", "prediction_set")
MODALITY_LABELS = {"wsi": "Slide", "rna": "RNA-seq", "rpt": "Report"}
COLOUR_BY = {"class": "true class", "correct": "correct or not", "subset": "modalities present"}
_TEXT = ("model", "scenario", "patient_id", "truth", "prediction", "subset", "prediction_set")
_PALETTE = plotly.colors.qualitative.Plotly
_CORRECT = {"correct": "#2ca02c", "wrong": "#d62728"}


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def load_predictions(folder: str | Path) -> pd.DataFrame:
    """Read ``<folder>/predictions.csv`` (a path to the CSV itself also works).

    Raises:
        InputError: the folder or file is missing or unreadable, lacks columns, or has truth/prediction
            values that are not among its ``p_<class>`` columns.
    """
    p = Path(folder).expanduser()
    csv = p if p.is_file() else p / "predictions.csv"
    if not p.exists():
        raise InputError(f"{p}: experiment folder not found")
    if not csv.is_file():
        raise InputError(f"{p}: no predictions.csv in this folder (rerun `mosare experiment` to write held-out predictions)")
    try:
        df = pd.read_csv(csv, dtype={c: str for c in _TEXT}, keep_default_na=False, na_values=["", "NA", "NaN", "nan"])
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{csv}: cannot parse predictions ({_first_line(err)})") from None
    df.columns = [str(c).strip() for c in df.columns]
    classes = [c[2:] for c in df.columns if c.startswith("p_") and f"cal_{c[2:]}" in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if len(classes) < 2:
        missing.append("p_<class> and cal_<class> for at least two classes")
    if missing:
        raise InputError(f"{csv}: missing column(s) {', '.join(missing)}")
    numeric = ["mask_rate", "fold", *(f"{k}_{c}" for k in ("p", "cal") for c in classes), "map_x", "map_y"]
    for col in numeric:
        if col not in df.columns:  # older experiments have no map
            df[col] = np.nan
        values = pd.to_numeric(df[col], errors="coerce")
        if (values.isna() & df[col].notna()).any() or (col in ("mask_rate", "fold") and values.isna().any()):
            raise InputError(f"{csv}: non-numeric or empty {col} values")
        df[col] = values.astype(np.float64)
    df["fold"] = df["fold"].astype(np.int64)
    for col in _TEXT:
        df[col] = df[col].fillna("").astype(str)
    unknown = sorted(set(df["truth"]).union(df["prediction"]) - set(classes))
    if unknown:
        raise InputError(f"{csv}: truth/prediction value(s) {', '.join(map(repr, unknown[:5]))} are not among the "
                         f"classes of its p_ columns ({', '.join(classes)})")
    return df


def load_runs(folder: str | Path) -> pd.DataFrame | None:
    """``<folder>/runs.csv`` (temperature, conformal quantile and alpha per run), or None when absent or unreadable."""
    p = Path(folder).expanduser()
    csv = (p.parent if p.is_file() else p) / "runs.csv"
    try:
        return pd.read_csv(csv)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError):
        return None


def classes_of(preds: pd.DataFrame) -> list[str]:
    """The class names, in model order (the order of the ``p_<class>`` columns)."""
    return [c[2:] for c in preds.columns if c.startswith("p_") and f"cal_{c[2:]}" in preds.columns]


def choices(preds: pd.DataFrame) -> list[tuple[str, str, float]]:
    """The (model, scenario, mask_rate) selections present, in order of first appearance."""
    return list(dict.fromkeys(zip(preds["model"], preds["scenario"], preds["mask_rate"].astype(float))))


def select(preds: pd.DataFrame, model: str, scenario: str, mask_rate: float) -> pd.DataFrame:
    """The held-out cases of every fold of one run setting (index reset: row i is table row i)."""
    m = (preds["model"] == model) & (preds["scenario"] == scenario) & np.isclose(preds["mask_rate"], float(mask_rate))
    if not m.any():
        raise MosareError(f"no predictions for model {model}, scenario {scenario}, mask rate {mask_rate:g}")
    return preds[m].reset_index(drop=True)


def _labels(sel: pd.DataFrame) -> np.ndarray:
    return sel["truth"].map({c: i for i, c in enumerate(classes_of(sel))}).to_numpy(np.int64)


def _probs(sel: pd.DataFrame, kind: str = "p") -> np.ndarray:
    return sel[[f"{kind}_{c}" for c in classes_of(sel)]].to_numpy(np.float64)


def _sets(sel: pd.DataFrame) -> list[list[str]]:
    return [s.split(" or ") if s else [] for s in sel["prediction_set"]]


def modalities_label(subset: str) -> str:
    """"rna+rpt" → "RNA-seq + Report" (unknown names are kept as given)."""
    return " + ".join(MODALITY_LABELS.get(m, m) for m in subset.split("+")) if subset else "none"


def case_table(sel: pd.DataFrame) -> pd.DataFrame:
    """One row per held-out case: patient, fold, truth, prediction, temperature-scaled probability of the
    predicted class, prediction set, modalities present, whether the prediction is correct."""
    cal = _probs(sel, "cal")
    index = {c: i for i, c in enumerate(classes_of(sel))}
    pred_idx = sel["prediction"].map(index).to_numpy(np.int64)
    return pd.DataFrame({
        "patient": sel["patient_id"], "fold": sel["fold"], "truth": sel["truth"], "prediction": sel["prediction"],
        "probability": cal[np.arange(len(sel)), pred_idx], "prediction set": sel["prediction_set"],
        "modalities": [modalities_label(s) for s in sel["subset"]], "correct": sel["truth"] == sel["prediction"]})


def confusion(sel: pd.DataFrame) -> pd.DataFrame:
    """Counts, rows = true class, columns = predicted class (class order)."""
    classes = classes_of(sel)
    cm = confusion_matrix(sel["truth"], sel["prediction"], labels=classes)
    return pd.DataFrame(cm, index=pd.Index(classes, name="truth"), columns=pd.Index(classes, name="prediction"))


def confusion_figure(sel: pd.DataFrame) -> go.Figure:
    """Heat map of :func:`confusion`; each cell shows its count and its share of the true class."""
    cm = confusion(sel)
    rows = cm.to_numpy()
    share = rows / np.maximum(rows.sum(1, keepdims=True), 1)
    text = [[f"{n}<br>{s:.0%}" for n, s in zip(r, sr)] for r, sr in zip(rows, share)]
    fig = go.Figure(go.Heatmap(z=share, x=list(cm.columns), y=list(cm.index), text=text, texttemplate="%{text}",
                               colorscale="Blues", zmin=0, zmax=1, showscale=False,
                               hovertemplate="truth %{y}, predicted %{x}: %{text}<extra></extra>"))
    fig.update_layout(title=f"Confusion matrix ({len(sel)} held-out cases, all folds)", height=380,
                      xaxis_title="predicted", yaxis={"title": "truth", "autorange": "reversed"},
                      margin={"l": 10, "r": 10, "t": 50, "b": 40})
    return fig


def fold_aucs(sel: pd.DataFrame) -> pd.Series:
    """AUC (%) of each fold's held-out cases (NaN for a fold with one class), indexed by fold."""
    y, p = _labels(sel), _probs(sel)
    folds = sorted(sel["fold"].unique())
    return pd.Series([auc(y[(sel["fold"] == f).to_numpy()], p[(sel["fold"] == f).to_numpy()]) for f in folds],
                     index=pd.Index(folds, name="fold"), name="auc", dtype=np.float64)


def _fold_stats(sel: pd.DataFrame) -> tuple[float, float]:
    a = fold_aucs(sel).dropna()
    return (float(a.mean()) if len(a) else math.nan), (float(a.std(ddof=1)) if len(a) > 1 else math.nan)


def roc_figure(sel: pd.DataFrame) -> go.Figure:
    """ROC of the pooled held-out cases (thick) and of each fold (thin); two classes: the second class is
    positive, more classes: one pooled one-vs-rest curve per class. Title: pooled AUC and per-fold mean ± sd."""
    classes, y, p = classes_of(sel), _labels(sel), _probs(sel)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "grey", "width": 1},
                             name="chance", hoverinfo="skip"))
    positives = [1] if len(classes) == 2 else range(len(classes))
    for k in positives:
        if len(classes) == 2:
            for f in sorted(sel["fold"].unique()):
                m = (sel["fold"] == f).to_numpy()
                if len(np.unique(y[m])) == 2:
                    fpr, tpr, _ = roc_curve(y[m] == k, p[m, k])
                    hover = f"fold {f}<br>FPR %{{x:.2f}}, TPR %{{y:.2f}}<extra></extra>"
                    fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"fold {f}", opacity=0.5,
                                             line={"width": 1}, hovertemplate=hover))
        if 0 < (y == k).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == k, p[:, k])
            name = "pooled" if len(classes) == 2 else f"{classes[k]} vs rest"
            fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=name, line={"width": 3},
                                     hovertemplate=f"{name}<br>FPR %{{x:.2f}}, TPR %{{y:.2f}}<extra></extra>"))
    mean, sd = _fold_stats(sel)
    what = f"positive class {classes[1]}" if len(classes) == 2 else "one-vs-rest, macro"
    fig.update_layout(title=f"ROC ({what}): pooled AUC {auc(y, p):.1f} %; per fold {mean:.1f} ± {sd:.1f} %",
                      xaxis_title="false positive rate", yaxis_title="true positive rate", height=420,
                      xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.02]}, margin={"l": 10, "r": 10, "t": 50, "b": 40})
    return fig


def calibration_errors(sel: pd.DataFrame, bins: int = 10) -> tuple[float, float]:
    """ECE of the predicted-class confidence before (raw ``p_``) and after temperature scaling (``cal_``)."""
    y = _labels(sel)
    return tuple(expected_calibration_error(y, _probs(sel, kind), bins) for kind in ("p", "cal"))


def reliability_figure(sel: pd.DataFrame, bins: int = 10) -> go.Figure:
    """Reliability diagram (accuracy against confidence of the arg-max class per confidence bin, marker area ∝
    cases) before and after temperature scaling, with each ECE in the legend; on the diagonal = calibrated."""
    y = _labels(sel)
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", hoverinfo="skip",
                               line={"dash": "dash", "color": "grey", "width": 1}))
    eces = calibration_errors(sel, bins)
    for (kind, name, colour), ece in zip((("p", "raw", _PALETTE[1]), ("cal", "temperature-scaled", _PALETTE[0])), eces):
        rows = reliability(y, _probs(sel, kind), bins)
        fig.add_trace(go.Scatter(
            x=[r["confidence"] for r in rows], y=[r["accuracy"] for r in rows], mode="lines+markers",
            name=f"{name} (ECE {ece:.3f})", line={"color": colour},
            marker={"size": [6 + 14 * math.sqrt(r["n"] / len(y)) for r in rows]},
            customdata=[[r["low"], r["high"], r["n"]] for r in rows],
            hovertemplate=(f"{name}<br>confidence %{{customdata[0]:.1f}}–%{{customdata[1]:.1f}}: %{{customdata[2]}} cases"
                           "<br>mean confidence %{x:.3f}, accuracy %{y:.3f}<extra></extra>")))
    fig.update_layout(title=f"Reliability: ECE {eces[0]:.3f} raw → {eces[1]:.3f} temperature-scaled",
                      xaxis={"title": "confidence of the most probable class", "range": [0, 1.02]},
                      yaxis={"title": "accuracy", "range": [0, 1.02]}, height=420,
                      margin={"l": 10, "r": 10, "t": 50, "b": 40})
    return fig


def conformal_summary(sel: pd.DataFrame) -> dict[str, float]:
    """``coverage`` (share of cases whose prediction set holds the truth), ``mean_set_size`` and ``unsure``
    (share of sets with more than one class)."""
    sets = _sets(sel)
    sizes = np.array([len(s) for s in sets], dtype=np.float64)
    hit = np.array([t in s for t, s in zip(sel["truth"], sets)], dtype=np.float64)
    n = len(sets)
    return {"coverage": float(hit.mean()) if n else math.nan, "mean_set_size": float(sizes.mean()) if n else math.nan,
            "unsure": float((sizes > 1).mean()) if n else math.nan}


def target_coverage(runs: pd.DataFrame | None, model: str, scenario: str, mask_rate: float) -> float | None:
    """1 − ``conformal_alpha`` of the selection's runs in ``runs.csv`` (None when not recorded)."""
    if runs is None or not {"model", "scenario", "mask_rate", "conformal_alpha"} <= set(runs.columns):
        return None
    m = (runs["model"].astype(str) == model) & (runs["scenario"].astype(str) == scenario)
    m &= np.isclose(pd.to_numeric(runs["mask_rate"], errors="coerce"), float(mask_rate))
    alpha = pd.to_numeric(runs.loc[m, "conformal_alpha"], errors="coerce").dropna()
    return float(1 - alpha.mean()) if len(alpha) else None


def summary(sel: pd.DataFrame, runs: pd.DataFrame | None = None) -> dict[str, float | int | None]:
    """The selection's numbers: ``n``, ``n_folds``, ``accuracy``, ``auc_pooled`` / ``auc_fold_mean`` /
    ``auc_fold_sd`` (%), ``ece_raw`` / ``ece_calibrated``, ``coverage``, ``target_coverage`` (from
    ``runs``; None when absent), ``mean_set_size``, ``unsure``."""
    y, p = _labels(sel), _probs(sel)
    mean, sd = _fold_stats(sel)
    raw, cal = calibration_errors(sel)
    first = sel.iloc[0] if len(sel) else None
    target = None if first is None else target_coverage(runs, first["model"], first["scenario"], first["mask_rate"])
    return {"n": len(sel), "n_folds": int(sel["fold"].nunique()),
            "accuracy": float((sel["truth"] == sel["prediction"]).mean()) if len(sel) else math.nan,
            "auc_pooled": auc(y, p) if len(sel) else math.nan, "auc_fold_mean": mean, "auc_fold_sd": sd,
            "ece_raw": raw, "ece_calibrated": cal, **conformal_summary(sel), "target_coverage": target}


def has_map(sel: pd.DataFrame) -> bool:
    """Whether the selection's model has a fused embedding (map coordinates) for any case."""
    return bool((sel["map_x"].notna() & sel["map_y"].notna()).any())


def map_figure(sel: pd.DataFrame, colour_by: str = "class") -> go.Figure:
    """The fused embedding of the held-out cases on the first two principal axes of each run's training cases,
    one panel per fold (each fold has its own axes, so folds are not pooled), coloured by ``colour_by``:
    ``"class"`` (truth), ``"correct"`` or ``"subset"`` (modalities present). Hover: patient, truth, prediction,
    temperature-scaled probability of the prediction, prediction set."""
    if colour_by not in COLOUR_BY:
        raise ValueError(f"unknown colour_by {colour_by!r}; valid: {', '.join(COLOUR_BY)}")
    table = case_table(sel)
    group = {"class": table["truth"], "correct": table["correct"].map({True: "correct", False: "wrong"}),
             "subset": table["modalities"]}[colour_by]
    keep = (sel["map_x"].notna() & sel["map_y"].notna()).to_numpy()
    folds = sorted(sel.loc[keep, "fold"].unique()) or [0]
    ncols = min(len(folds), 3)
    fig = make_subplots(rows=math.ceil(len(folds) / ncols), cols=ncols, subplot_titles=[f"fold {f}" for f in folds],
                        horizontal_spacing=0.05, vertical_spacing=0.12)
    order = classes_of(sel) if colour_by == "class" else list(_CORRECT) if colour_by == "correct" else sorted(set(group))
    colours = _CORRECT if colour_by == "correct" else {g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(order)}
    hover = [f"{pid}<br>truth {t}, predicted {pr} ({prob:.2f})<br>set: {s}<br>{mods}" for pid, t, pr, prob, s, mods in
             zip(*(table[c] for c in ("patient", "truth", "prediction", "probability", "prediction set", "modalities")))]
    for i, f in enumerate(folds):
        for g in order:
            m = keep & (sel["fold"] == f).to_numpy() & (group == g).to_numpy()
            if m.any():
                fig.add_trace(go.Scatter(x=sel.loc[m, "map_x"], y=sel.loc[m, "map_y"], mode="markers", name=str(g),
                                         legendgroup=str(g), showlegend=not any(t.name == str(g) for t in fig.data),
                                         marker={"color": colours[g], "size": 7, "opacity": 0.8},
                                         text=[hover[j] for j in np.flatnonzero(m)],
                                         hovertemplate="%{text}<extra></extra>"),
                              row=i // ncols + 1, col=i % ncols + 1)
    fig.update_xaxes(showticklabels=False, title_text="PC 1")
    fig.update_yaxes(showticklabels=False, title_text="PC 2")
    fig.update_layout(title=f"Fused embedding of the held-out cases, coloured by {COLOUR_BY[colour_by]}",
                      legend_title_text=COLOUR_BY[colour_by], height=340 * math.ceil(len(folds) / ncols) + 60,
                      margin={"l": 10, "r": 10, "t": 70, "b": 30})
    return fig


def find_experiments(dirs: tuple[Path, ...] | list[Path], limit: int = 200) -> list[Path]:
    """Experiment folders (holding ``predictions.csv``) under ``dirs``; checkpoint and hidden folders are skipped."""
    found: list[Path] = []
    for d in dirs:
        if not Path(d).is_dir():
            continue
        for root, subdirs, files in os.walk(d):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith(".") and s not in ("checkpoints", "leak_audit"))
            if "predictions.csv" in files:
                found.append(Path(root))
                if len(found) >= limit:
                    return found
    return found
