"""RNA-branch attention: which genes and pathways the model looked at."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go


def gene_attention(rna_gene: np.ndarray, genes: list[str]) -> pd.Series:
    """Mean attention over heads per gene.

    Args:
        rna_gene: ``[heads, G]`` attention of each head over the model's genes (rows sum to 1); a ``[G]``
            vector is taken as a single head.
        genes: the ``G`` gene names, in model order.

    Returns:
        Series ``[G]`` named ``"attention"``, indexed by gene (index name ``"gene"``), highest first
        (ties keep model order).
    """
    a = np.asarray(rna_gene, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"rna_gene must have shape [heads, G], got {list(a.shape)}")
    if a.shape[1] != len(genes):
        raise ValueError(f"attention over {a.shape[1]} genes but {len(genes)} gene names")
    s = pd.Series(a.mean(axis=0), index=pd.Index([str(g) for g in genes], name="gene"), name="attention")
    return s.sort_values(ascending=False, kind="stable")


def pathway_attention(
    gene_scores: pd.Series, pathways: dict[str, list[str]], min_genes: int = 3
) -> pd.DataFrame:
    """Attention per pathway from per-gene attention (e.g. :func:`gene_attention`).

    ``score`` is the mean attention of the pathway's genes present in ``gene_scores``, times the number of
    model genes ``G = len(gene_scores)``: 1.0 means the pathway got exactly the uniform share ``1/G`` per gene.
    Columns ``pathway, score, n_genes`` (matched genes), highest score first; pathways with fewer than
    ``min_genes`` matched genes are dropped. A gene listed twice in ``gene_scores`` counts with its summed
    attention. Pathway lists come from ``mosare.data.rna.load_pathways()``.
    """
    n_model = len(gene_scores)
    scores = gene_scores.astype(np.float64).groupby(level=0, sort=False).sum()
    lookup = scores.to_dict()
    rows = []
    for name, members in pathways.items():
        found = [lookup[g] for g in dict.fromkeys(members) if g in lookup]
        if len(found) < max(1, int(min_genes)):
            continue
        rows.append((str(name), float(np.mean(found)) * n_model, len(found)))
    df = pd.DataFrame(rows, columns=["pathway", "score", "n_genes"])
    df["n_genes"] = df["n_genes"].astype(np.int64)
    return df.sort_values(["score", "pathway"], ascending=[False, True], kind="stable").reset_index(drop=True)


def bar_figure(labels: list[str], values: list[float], title: str, x_title: str) -> go.Figure:
    """Horizontal bar chart of ``values`` (one bar per label), the highest bar at the top."""
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels but {len(values)} values")
    pairs = sorted(zip((float(v) for v in values), (str(lab) for lab in labels)), key=lambda p: p[0])
    xs = [v for v, _ in pairs]
    ys = [lab for _, lab in pairs]
    # Plotly stacks categories bottom-up in the order given, so ascending order puts the highest on top.
    fig = go.Figure(go.Bar(x=xs, y=ys, orientation="h", hovertemplate="%{y}: %{x:.3g}<extra></extra>"))
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis={"categoryorder": "array", "categoryarray": ys, "automargin": True},
        height=max(260, 24 * len(ys) + 120),
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return fig


def signed_bar_figure(labels: list[str], values: list[float], title: str, x_title: str,
                      toward: str = "#b2182b", away: str = "#2166ac") -> go.Figure:
    """Horizontal bars of signed ``values``: the most positive at the top, positive bars in ``toward``, negative
    in ``away`` (e.g. a gene's attribution toward / away from the predicted class)."""
    fig = bar_figure(labels, values, title, x_title)
    bar = fig.data[0]
    bar.marker.color = [toward if v >= 0 else away for v in bar.x]
    bar.hovertemplate = "%{y}: %{x:+.3g}<extra></extra>"
    fig.add_vline(x=0, line_width=1, line_color="#888")
    return fig
