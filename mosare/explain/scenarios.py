"""Missing-modality experiment results: tables and figures comparing models across scenarios.

An experiment folder holds ``metrics.csv`` with columns ``model, scenario, mask_rate, fold, auc, f1, acc``
(metrics in percent, ``NA`` where a model does not apply). Scenario ``complete`` (mask rate 0) is the
complete-data baseline; the others are named ``<train>-<test>`` (e.g. ``masked-unmasked``: trained with
masked modalities, tested without masking).

Several experiments can be compared by concatenating their :func:`load_metrics` frames; the tables then
get an ``experiment`` level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mosare.errors import InputError

COMPLETE = "complete"
METRICS: dict[str, str] = {"auc": "AUC", "f1": "F1", "acc": "Acc"}
REQUIRED_COLUMNS: tuple[str, ...] = ("model", "scenario", "mask_rate", "fold", "auc", "f1", "acc")
_KEYS = ["experiment", "model", "scenario", "mask_rate"]


def load_metrics(folder: str | Path, name: str | None = None) -> pd.DataFrame:
    """Read ``<folder>/metrics.csv`` (a path to the CSV itself also works) and add an ``experiment`` column
    (``name``, default the folder name). Metric columns are floats, ``NA`` → NaN.

    Raises:
        InputError: the folder or file is missing, unreadable, or lacks the expected columns.
    """
    p = Path(folder).expanduser()
    if p.is_file():
        csv, p = p, p.parent
    else:
        if not p.is_dir():
            raise InputError(f"{p}: experiment folder not found")
        csv = p / "metrics.csv"
        if not csv.is_file():
            raise InputError(f"{p}: no metrics.csv in this folder (is it an experiment output folder?)")
    try:
        df = pd.read_csv(csv, na_values=["NA", "NaN", "nan", ""], keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{csv}: cannot parse metrics ({first})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{csv}: missing column(s) {', '.join(missing)} (expected {', '.join(REQUIRED_COLUMNS)})")
    for col in ("mask_rate", "fold", *METRICS):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if bad.any():
            value, line = df.loc[bad, col].iloc[0], int(bad.idxmax()) + 2  # + header, 1-based
            raise InputError(f"{csv}: non-numeric {col} value {value!r} (line {line})")
        df[col] = values.astype(np.float64)
    if df["mask_rate"].isna().any() or df["fold"].isna().any():
        raise InputError(f"{csv}: empty mask_rate or fold values")
    df["fold"] = df["fold"].astype(np.int64)
    df["model"] = df["model"].astype(str)
    df["scenario"] = df["scenario"].astype(str)
    df["experiment"] = name if name is not None else p.resolve().name
    return df


def _metric(metric: str) -> str:
    m = metric.strip().lower()
    if m not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    return m


def _with_experiment(metrics: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in metrics.columns]
    if missing:
        raise InputError(f"metrics table lacks column(s) {', '.join(missing)}")
    if "experiment" in metrics.columns:
        return metrics
    return metrics.assign(experiment="")  # a hand-built single-experiment table


def summary_table(metrics: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Mean and std over folds per (experiment, model, scenario, mask_rate).

    Columns ``experiment, model, scenario, mask_rate, mean, std, n_folds``; ``std`` is the sample standard
    deviation (ddof=1, NaN for one fold), ``n_folds`` counts the folds with a value, so not-applicable
    combinations keep a row with NaN mean and ``n_folds`` 0. Rows in order of first appearance, except that
    mask rates ascend within a scenario.
    """
    m = _metric(metric)
    df = _with_experiment(metrics)
    g = df.groupby(_KEYS, sort=False, dropna=False)[m]
    out = pd.concat([g.mean().rename("mean"), g.std(ddof=1).rename("std"), g.count().rename("n_folds")], axis=1)
    out = out.reset_index()
    out["n_folds"] = out["n_folds"].astype(np.int64)
    # Order by first appearance of experiment / model / scenario, then mask rate.
    for key in ("experiment", "model", "scenario"):
        out[f"_{key}"] = out[key].map({v: i for i, v in enumerate(dict.fromkeys(df[key]))})
    out = out.sort_values(["_experiment", "_scenario", "mask_rate", "_model"], kind="stable")
    return out.drop(columns=["_experiment", "_model", "_scenario"]).reset_index(drop=True)


def _cell(mean: float, std: float, decimals: int) -> str:
    if not np.isfinite(mean):
        return "NA"
    if not np.isfinite(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _model_columns(summary: pd.DataFrame) -> list[str] | str:
    """Column key(s) for one column per model, with the experiment on top when there are several."""
    return ["experiment", "model"] if summary["experiment"].nunique() > 1 else "model"


def grid_table(metrics: pd.DataFrame, metric: str = "auc", decimals: int = 1) -> pd.DataFrame:
    """Table-2 layout: index ``(scenario, mask_rate)``, one column per model, cells ``"84.8 ± 2.3"``
    (``"NA"`` where not applicable). The complete-data row comes first. With several experiments the
    columns are ``(experiment, model)``.
    """
    s = summary_table(metrics, metric)
    s["cell"] = [_cell(a, b, decimals) for a, b in zip(s["mean"], s["std"])]
    cols = _model_columns(s)
    rows = list(dict.fromkeys(zip(s["scenario"], s["mask_rate"])))
    rows.sort(key=lambda r: r[0] != COMPLETE)  # stable: complete first, the rest keep their order
    grid = s.set_index(["scenario", "mask_rate", *([cols] if isinstance(cols, str) else cols)])["cell"].unstack(cols)
    col_order = list(dict.fromkeys(zip(s["experiment"], s["model"]) if isinstance(cols, list) else s["model"]))
    grid = grid.reindex(index=pd.MultiIndex.from_tuples(rows, names=["scenario", "mask_rate"]), columns=col_order)
    if isinstance(cols, str):
        grid.columns.name = None
    return grid.fillna("NA")


def baseline_table(metrics: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """Complete-data results: index ``model`` (``(experiment, model)`` with several experiments), columns
    ``AUC, F1, Acc`` as ``"mean ± std"`` strings (``"NA"`` if not applicable), sorted by mean AUC descending
    (not-applicable models last)."""
    df = _with_experiment(metrics)
    df = df[df["scenario"] == COMPLETE]
    several = df["experiment"].nunique() > 1
    index_cols = ["experiment", "model"] if several else ["model"]
    if df.empty:
        return pd.DataFrame(columns=list(METRICS.values()), index=pd.Index([], name="model"))
    table = None
    auc_mean = None
    for key, title in METRICS.items():
        s = summary_table(df, key).set_index(index_cols)
        col = pd.Series([_cell(a, b, decimals) for a, b in zip(s["mean"], s["std"])], index=s.index, name=title)
        table = col.to_frame() if table is None else table.join(col)
        if key == "auc":
            auc_mean = s["mean"]
    order = auc_mean.sort_values(ascending=False, na_position="last", kind="stable").index
    return table.loc[order]


def _scenario_title(scenario: str) -> str:
    parts = scenario.split("-")
    if len(parts) == 2:
        return f"train {parts[0]} → test {parts[1]}"
    return scenario


def metric_vs_rate_figure(metrics: pd.DataFrame, metric: str = "auc") -> go.Figure:
    """Mean metric against mask rate: one facet per non-complete scenario, one line per model (per
    experiment when several), error bars = std over folds. Each line starts at mask rate 0 with the model's
    complete-data result, so every facet shares the same baseline. Models with no results are left out and
    listed under the figure.
    """
    m = _metric(metric)
    s = summary_table(metrics, m)
    several = s["experiment"].nunique() > 1
    s["series"] = s["experiment"] + ": " + s["model"] if several else s["model"]
    applicable = s.groupby("series", sort=False)["n_folds"].sum()
    series = [k for k, n in applicable.items() if n > 0]
    not_applicable = [k for k, n in applicable.items() if n == 0]
    scenarios = [sc for sc in dict.fromkeys(s["scenario"]) if sc != COMPLETE] or [COMPLETE]
    base = s[s["scenario"] == COMPLETE].groupby("series", sort=False)[["mean", "std"]].first()

    palette = plotly.colors.qualitative.Plotly
    colour = {k: palette[i % len(palette)] for i, k in enumerate(series)}
    fig = make_subplots(
        rows=1,
        cols=len(scenarios),
        shared_yaxes=True,
        subplot_titles=[_scenario_title(sc) for sc in scenarios],
        horizontal_spacing=0.04,
    )
    for col, sc in enumerate(scenarios, start=1):
        part = s[s["scenario"] == sc]
        for k in series:
            rows = part[part["series"] == k].sort_values("mask_rate")
            if sc != COMPLETE and k in base.index:
                rows = pd.concat([pd.DataFrame([{"mask_rate": 0.0, **base.loc[k].to_dict()}]), rows])
            if rows.empty:
                continue
            std = [None if not np.isfinite(v) else float(v) for v in rows["std"]]
            fig.add_trace(
                go.Scatter(
                    x=(rows["mask_rate"] * 100).round(6).tolist(),
                    y=[None if not np.isfinite(v) else float(v) for v in rows["mean"]],
                    error_y={"type": "data", "array": std, "visible": True, "thickness": 1},
                    mode="lines+markers",
                    name=k,
                    legendgroup=k,
                    showlegend=col == 1,
                    line={"color": colour[k]},
                    hovertemplate=f"{k}<br>mask rate %{{x:.0f}}%<br>{METRICS[m]} %{{y:.1f}}%<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="mask rate (%)", row=1, col=col)
    fig.update_yaxes(title_text=f"{METRICS[m]} (%)", row=1, col=1)
    fig.update_layout(
        height=420,
        legend_title_text="model",
        margin={"t": 60, "b": 80 if not_applicable else 50},
    )
    if not_applicable:
        fig.add_annotation(
            text="not applicable: " + ", ".join(not_applicable),
            xref="paper",
            yref="paper",
            x=0,
            y=-0.22,
            showarrow=False,
            xanchor="left",
            font={"size": 11},
        )
    return fig
