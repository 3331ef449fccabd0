"""The slide viewer: attention heatmap over the tiles, galleries, a full-resolution region, exports.

Runs as a fragment: moving a control redraws only the viewer and never re-runs inference.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from mosare.explain import heatmap
from mosare.explain.attribution import DIVERGING_CMAP, CaseAttribution, signed01
from mosare.inference import Prediction
from mosare.app.workbench import SlideView, read_tile_region, read_tiles

SCORES = {
    "ABMIL patch attention": "how much each tile weighs in the slide's attention pooling",
    "Cross-modal attention (local clusters → tiles)": "attention the slide's local clusters receive from the other "
                                                        "modalities, spread to tiles by their cluster membership",
}


def available_scores(pred: Prediction) -> dict[str, np.ndarray]:
    out = {}
    if "wsi_patch" in pred.attention and pred.present[0]:
        out["ABMIL patch attention"] = pred.attention["wsi_patch"]
    if pred.patch_cluster_scores is not None:
        out["Cross-modal attention (local clusters → tiles)"] = pred.patch_cluster_scores
    return out


@st.fragment
def slide_viewer(view: SlideView, pred: Prediction, truth_bbox: list[int] | None = None) -> None:
    scores = available_scores(pred)
    if not scores:
        st.info("No slide attention: the slide was not given to the model (switched off or missing).")
        return
    c1, c2, c3, c4, c5 = st.columns([2.2, 1.4, 1, 1, 0.8])
    score_name = c1.selectbox("Score", list(scores), key="hm_score", help="\n\n".join(f"**{k}**: {v}" for k, v in SCORES.items()))
    norm = c2.radio("Normalisation", list(heatmap.NORMALISATIONS), key="hm_norm", horizontal=True,
                    format_func=lambda m: {"percentile": "percentile", "raw": "raw (min–max)"}[m])
    opacity = c3.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="hm_opacity")
    cmap = c4.selectbox("Colormap", heatmap.COLORMAPS, key="hm_cmap")
    overlay = c5.toggle("Overlay", value=True, key="hm_overlay")
    raw = np.asarray(scores[score_name], float)
    values = heatmap.normalise(raw, norm)
    rgb = heatmap.heatmap_overlay(view.thumbnail, view.coords, view.tile_size, view.downsample, values, cmap,
                                  opacity, overlay)
    # a PNG data URL: ~10x smaller than sending the pixels as a JSON array, and the browser decodes it natively
    fig = go.Figure(go.Image(source="data:image/png;base64," + base64.b64encode(heatmap.to_png(rgb, fast=True)).decode(),
                             hoverinfo="skip"))
    if truth_bbox:
        x0, y0, x1, y1 = (v / view.downsample for v in truth_bbox)
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line=dict(color="#d62728", width=2, dash="dash"))
    fig.update_layout(margin=dict(l=0, r=0, t=0, b=0), height=560, dragmode="pan")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    with st.container(key="heatmap"):
        st.plotly_chart(fig, config={"scrollZoom": True, "displaylogo": False}, key="hm_figure")
    short = {"percentile": "percentile rank", "raw": "raw, min–max scaled"}[norm]
    st.image(heatmap.colorbar_png(cmap, f"{score_name.split(' (')[0]} ({short})"), width=420)
    if truth_bbox:
        st.caption("Dashed red box: where the synthetic case's class morphology was planted (ground truth).")
    st.caption(f"{len(raw)} tiles · tile {view.tile_size:.0f} level-0 px · colours: {heatmap.NORMALISATIONS[norm]} · "
               f"raw scores {np.nanmin(raw):.4g}–{np.nanmax(raw):.4g} · scroll to zoom, drag to pan.")

    k = st.slider("Tiles per gallery", 2, 16, 6, key="hm_k")
    top, bottom = heatmap.top_bottom(raw, k)
    for title, idx in (("Highest-scoring tiles", top), ("Lowest-scoring tiles", bottom)):
        st.markdown(f"**{title}** (20×)")
        tiles = read_tiles(view, idx) if view.slide_path is not None else []
        cols = st.columns(min(8, max(1, len(idx))))
        for j, i in enumerate(idx):
            x, y = (int(v) for v in view.coords[i])
            caption = f"#{i} · {raw[i]:.4f} · ({x}, {y})"
            with cols[j % len(cols)]:
                if tiles:
                    st.image(tiles[j], caption=caption)
                else:
                    st.caption(caption)

    if view.slide_path is not None:
        with st.expander("Region at full resolution"):
            pick = st.selectbox("Tile", [int(i) for i in top], key="hm_region_tile",
                                format_func=lambda i: f"#{i} at {tuple(int(v) for v in view.coords[i])}")
            st.image(read_tile_region(view, pick), caption="the tile with one tile of context, level 0")

    named = {k_: np.asarray(v, float) for k_, v in scores.items()}
    d1, d2, d3 = st.columns(3)  # files are built only when a button is clicked
    d1.download_button("Heatmap PNG", lambda: heatmap.to_png(rgb), "mosare-heatmap.png", "image/png", key="dl_png")
    d2.download_button("Tile scores CSV", lambda: heatmap.tile_table(view.coords, view.tile_size, named).to_csv(index=False),
                       "mosare-tile-scores.csv", "text/csv", key="dl_csv")
    d3.download_button("QuPath GeoJSON", lambda: json.dumps(heatmap.tiles_geojson(view.coords, view.tile_size, named)),
                       "mosare-tiles.geojson", "application/geo+json", key="dl_geo")


def tile_attribution(view: SlideView, result: CaseAttribution, gallery: int = 4) -> None:
    """The scored tiles twice, side by side: coloured by their signed occlusion attribution (diverging) and by
    their ABMIL attention (percentile among them), then the tiles that pushed most toward / away."""
    m = result.modalities["wsi"]
    n = len(view.coords)
    signed, att = np.full(n, np.nan), np.full(n, np.nan)
    signed[m.index], att[m.index] = m.attribution, heatmap.normalise(m.attention, "percentile")
    left, right = st.columns(2)
    removed = ("Δ log-odds when removed", "away", "toward")
    for col, values, cmap, bar in ((left, signed01(signed), DIVERGING_CMAP, removed),
                                   (right, att, heatmap.DEFAULT_COLORMAP, ("ABMIL attention (percentile)", "low", "high"))):
        with col:
            rgb = heatmap.heatmap_overlay(view.thumbnail, view.coords, view.tile_size, view.downsample, values, cmap,
                                          0.75, True)
            st.image(rgb, caption=f"the {len(m.index)} highest-attention tiles")
            st.image(heatmap.colorbar_png(cmap, bar[0], low=bar[1], high=bar[2]), width=320)
    order = np.argsort(-m.attribution, kind="stable")
    toward = [j for j in order if m.attribution[j] > 0][:gallery]
    away = [j for j in order[::-1] if m.attribution[j] < 0][:gallery]
    for title, pick in ((f"Tiles that pushed most toward {result.label}", toward),
                        (f"Tiles that pushed most away from {result.label}", away)):
        if not pick:
            continue
        st.markdown(f"**{title}**")
        idx = m.index[pick]
        tiles = read_tiles(view, idx) if view.slide_path is not None else []
        cols = st.columns(gallery)
        for j, (i, rank) in enumerate(zip(idx, pick)):
            caption = f"#{i} · Δ {m.attribution[rank]:+.4f} · attention rank {rank + 1}"
            with cols[j]:
                if tiles:
                    st.image(tiles[j], caption=caption)
                else:
                    st.caption(caption)
