"""Per-epoch training history of an experiment (``history.csv``): loss parts, validation loss/AUC, learning rate.

One row per (model, training setting, mask rate, fold, epoch), written by ``mosare experiment``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mosare.errors import InputError

PANELS = (("train_loss", "training loss (total)"), ("train_cls", "classification loss"),
          ("train_rec", "reconstruction loss"), ("train_symcl", "SymCL"), ("train_mcl", "MCL"),
          ("val_loss", "validation loss (selection)"), ("val_auc", "validation AUC (%)"), ("lr", "learning rate"))


def load_history(folder: str | Path) -> pd.DataFrame | None:
    """``<folder>/history.csv`` as a frame, or None when the experiment has none (older outputs)."""
    path = Path(folder).expanduser() / "history.csv"
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot parse the training history ({str(err).splitlines()[0]})") from None
    missing = {"model", "training", "mask_rate", "fold", "epoch"} - set(df.columns)
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return df


def history_runs(history: pd.DataFrame) -> list[tuple[str, str, float]]:
    """The (model, training, mask rate) settings present, in file order."""
    keys = history[["model", "training", "mask_rate"]].drop_duplicates()
    return [(str(m), str(t), float(r)) for m, t, r in keys.itertuples(index=False)]


def history_figure(history: pd.DataFrame, model: str, training: str, mask_rate: float) -> go.Figure:
    """One panel per logged quantity, one line per fold; the selected epoch (lowest validation loss) is marked."""
    part = history[(history.model == model) & (history.training == training) & (history.mask_rate == mask_rate)]
    panels = [(c, t) for c, t in PANELS if c in part and part[c].notna().any()]
    cols = 4
    rows = max(1, -(-len(panels) // cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[t for _, t in panels], horizontal_spacing=0.06,
                        vertical_spacing=0.14)
    palette = plotly.colors.qualitative.Plotly
    for fold, g in part.groupby("fold"):
        g = g.sort_values("epoch")
        best = g.loc[g.val_loss.idxmin(), "epoch"] if "val_loss" in g and g.val_loss.notna().any() else None
        colour = palette[int(fold) % len(palette)]
        for i, (col, title) in enumerate(panels):
            fig.add_trace(go.Scatter(x=g.epoch, y=g[col], mode="lines", name=f"fold {fold}", legendgroup=str(fold),
                                     showlegend=i == 0, line={"color": colour, "width": 1.5},
                                     hovertemplate=f"fold {fold}<br>epoch %{{x}}<br>{title} %{{y:.4g}}<extra></extra>"),
                          row=i // cols + 1, col=i % cols + 1)
            if best is not None:
                y = g.loc[g.epoch == best, col]
                fig.add_trace(go.Scatter(x=[best], y=y, mode="markers", marker={"color": colour, "size": 8, "symbol": "star"},
                                         showlegend=False, legendgroup=str(fold),
                                         hovertemplate=f"fold {fold}: selected epoch %{{x}}<extra></extra>"),
                              row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=280 * rows, margin={"t": 40, "b": 40}, legend_title_text="★ selected epoch")
    return fig
