"""Interpretability layer (mosare.explain): heatmaps, report highlighting, RNA attention and the
missing-modality result tables, checked against hand-computed values and the real TCGA-BRCA reports/results."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import statistics
import time
import uuid
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO_ROOT, require_data
from mosare.errors import InputError
from mosare.explain import heatmap, report, rna, scenarios
from mosare.text.scrub import scrub, vocabulary_for
from mosare.text.sentences import split_sentences
from mosare.data.rna import load_pathways

RESULTS = REPO_ROOT / "assets" / "results" / "tcga-brca-table2"  # the full scenario grid (Table 2)


# --------------------------------------------------------------------------------------------- heatmap


def test_normalise_percentile_average_ranks() -> None:
    got = heatmap.normalise(np.array([10.0, 30.0, 20.0, 20.0, 5.0]), "percentile")
    # ranks 2, 5, 3.5, 3.5, 1 → (rank - 1) / 4
    np.testing.assert_allclose(got, [0.25, 1.0, 0.625, 0.625, 0.0])


def test_normalise_nan_single_and_empty() -> None:
    got = heatmap.normalise(np.array([3.0, np.nan, 1.0, 2.0]))
    assert np.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2, 3]], [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(heatmap.normalise(np.array([42.0])), [1.0])
    np.testing.assert_array_equal(heatmap.normalise(np.array([np.nan, 7.0])), [np.nan, 1.0])
    assert heatmap.normalise(np.array([])).shape == (0,)
    assert heatmap.normalise(np.array([]), "raw").shape == (0,)
    assert np.isnan(heatmap.normalise(np.array([np.nan, np.nan]))).all()


def test_normalise_raw() -> None:
    np.testing.assert_allclose(heatmap.normalise(np.array([2.0, 4.0, 6.0, 3.0]), "raw"), [0.0, 0.5, 1.0, 0.25])
    np.testing.assert_array_equal(heatmap.normalise(np.array([7.0, 7.0, 7.0]), "raw"), [0.5, 0.5, 0.5])
    got = heatmap.normalise(np.array([1.0, np.nan, 5.0]), "raw")
    assert np.isnan(got[1]) and got[0] == 0.0 and got[2] == 1.0


def test_normalise_unknown_mode_names_valid_ones() -> None:
    with pytest.raises(ValueError, match="percentile.*raw"):
        heatmap.normalise(np.ones(3), "zscore")
    assert set(heatmap.NORMALISATIONS) == {"percentile", "raw"}


@pytest.mark.parametrize("name", heatmap.COLORMAPS)
def test_colorize_matches_matplotlib(name: str) -> None:
    v = np.linspace(0.0, 1.0, 11)
    got = heatmap.colorize(v, name)
    assert got.dtype == np.uint8 and got.shape == (11, 3)
    np.testing.assert_array_equal(got, matplotlib.colormaps[name](v, bytes=True)[:, :3])
    assert not np.array_equal(got[0], got[-1])
    # out-of-range values are clipped to the end colours
    np.testing.assert_array_equal(heatmap.colorize(np.array([-3.0, 7.0]), name), got[[0, -1]])


def test_colorize_nan_and_unknown_cmap() -> None:
    np.testing.assert_array_equal(heatmap.colorize(np.array([np.nan]))[0], heatmap.NAN_RGB)
    assert heatmap.DEFAULT_COLORMAP == "viridis" and heatmap.DEFAULT_COLORMAP in heatmap.COLORMAPS
    with pytest.raises(ValueError, match="no-such-map"):
        heatmap.colorize(np.zeros(2), "no-such-map")


def _thumb(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_overlay_paints_exactly_the_tile_rectangle() -> None:
    thumb = _thumb()
    # downsample 4, tile 40 level-0 px → 10 thumbnail px; tile 0 at px (20..30, 30..40), tile 1 at px (0..10, 0..10)
    coords = np.array([[80, 120], [0, 0]])
    out = heatmap.heatmap_overlay(thumb, coords, 40, 4.0, np.array([1.0, 0.0]), cmap="magma", opacity=1.0)
    assert out.shape == thumb.shape and out.dtype == np.uint8
    top = matplotlib.colormaps["magma"](1.0, bytes=True)[:3]
    bottom = matplotlib.colormaps["magma"](0.0, bytes=True)[:3]
    assert (out[30:40, 20:30] == top).all()
    assert (out[0:10, 0:10] == bottom).all()
    outside = np.ones(thumb.shape[:2], dtype=bool)
    outside[30:40, 20:30] = False
    outside[0:10, 0:10] = False
    np.testing.assert_array_equal(out[outside], thumb[outside])
    np.testing.assert_array_equal(thumb, _thumb())  # the input is not modified


def test_overlay_blends_at_opacity_and_heatmap_only_on_white() -> None:
    thumb = _thumb()
    coords = np.array([[80, 120]])
    col = heatmap.colorize(np.array([0.3]), "viridis")[0].astype(float)
    out = heatmap.heatmap_overlay(thumb, coords, 40, 4.0, np.array([0.3]), opacity=0.25)
    want = np.rint(thumb[30:40, 20:30].astype(float) * 0.75 + col * 0.25).astype(np.uint8)
    np.testing.assert_array_equal(out[30:40, 20:30], want)

    alone = heatmap.heatmap_overlay(thumb, coords, 40, 4.0, np.array([0.3]), opacity=0.25, overlay=False)
    assert (alone[30:40, 20:30] == col.astype(np.uint8)).all()
    mask = np.ones(thumb.shape[:2], dtype=bool)
    mask[30:40, 20:30] = False
    assert (alone[mask] == 255).all()


def test_overlay_clips_skips_nan_and_draws_highest_on_top() -> None:
    thumb = _thumb()
    # tile 0 hangs over the bottom-right corner; tile 1 is NaN; tiles 2 and 3 overlap (3 is higher)
    coords = np.array([[300, 220], [0, 0], [100, 0], [120, 0]])
    values = np.array([1.0, np.nan, 0.9, 0.1])
    out = heatmap.heatmap_overlay(thumb, coords, 40, 4.0, values, opacity=1.0)
    c = heatmap.colorize(values)
    assert (out[55:60, 75:80] == c[0]).all()  # the visible part of the clipped tile
    np.testing.assert_array_equal(out[0:10, 0:10], thumb[0:10, 0:10])  # NaN: untouched
    assert (out[0:10, 25:35] == c[2]).all()  # the overlap goes to the higher value
    assert (out[0:10, 35:40] == c[3]).all()


def test_overlay_regular_grid_has_no_gaps_at_fractional_scale() -> None:
    # 3 × 3 tiles of 10 level-0 px at downsample 3: 3.33 px per tile, covering the 10 × 10 thumbnail
    xs, ys = np.meshgrid(np.arange(3) * 10, np.arange(3) * 10)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    thumb = np.zeros((10, 10, 3), dtype=np.uint8)
    out = heatmap.heatmap_overlay(thumb, coords, 10, 3.0, np.ones(9), cmap="cividis", opacity=1.0)
    assert (out == matplotlib.colormaps["cividis"](1.0, bytes=True)[:3]).all()


def test_overlay_is_fast_for_20k_tiles() -> None:
    side = 142  # 142² ≈ 20k tiles of 256 px at downsample 18 → 14-px tiles on a ~2k thumbnail
    xs, ys = np.meshgrid(np.arange(side) * 256, np.arange(side) * 256)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    thumb = _thumb(2000, 2000)
    values = heatmap.normalise(np.random.default_rng(1).random(len(coords)))
    start = time.perf_counter()
    out = heatmap.heatmap_overlay(thumb, coords, 256, 18.0, values, opacity=0.5)
    elapsed = time.perf_counter() - start
    assert out.shape == thumb.shape
    assert elapsed < 3.0, f"{len(coords)} tiles took {elapsed:.2f} s"  # ~0.2 s here; generous for busy CI


def test_overlay_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="4 tile coordinates but 3 values"):
        heatmap.heatmap_overlay(_thumb(), np.zeros((4, 2)), 40, 4.0, np.zeros(3))
    with pytest.raises(ValueError, match="uint8"):
        heatmap.heatmap_overlay(_thumb().astype(np.float32), np.zeros((1, 2)), 40, 4.0, np.zeros(1))


def test_to_png_round_trips() -> None:
    thumb = _thumb(7, 5)
    data = heatmap.to_png(thumb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), thumb)


def test_colorbar_png_shows_the_colour_map() -> None:
    data = heatmap.colorbar_png("inferno", "attention (percentile)", width_px=300)
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert img.shape[1] == 300
    for end in (0.0, 1.0):
        rgb = np.array(matplotlib.colormaps["inferno"](end, bytes=True)[:3], dtype=int)
        assert np.abs(img - rgb).max(axis=2).min() <= 6, f"colour bar lacks the colour at {end}"
    assert heatmap.colorbar_png("viridis", "attention (percentile)", width_px=300) != data
    with pytest.raises(ValueError):
        heatmap.colorbar_png("nope", "x")


def test_top_bottom() -> None:
    s = np.array([0.5, np.nan, 0.9, 0.1, 0.9])
    top, bottom = heatmap.top_bottom(s, 2)
    np.testing.assert_array_equal(top, [2, 4])
    np.testing.assert_array_equal(bottom, [3, 0])
    top, bottom = heatmap.top_bottom(s, 10)  # clipped to the 4 non-NaN scores
    np.testing.assert_array_equal(top, [2, 4, 0, 3])
    np.testing.assert_array_equal(bottom, [3, 0, 2, 4])
    top, bottom = heatmap.top_bottom(s, 0)
    assert top.size == 0 and bottom.size == 0


def test_tiles_in_bbox_uses_centres_and_exclusive_end() -> None:
    coords = np.array([[0, 0], [100, 0], [0, 100], [100, 100]])  # centres (50,50) (150,50) (50,150) (150,150)
    np.testing.assert_array_equal(heatmap.tiles_in_bbox(coords, 100, [0, 0, 150, 150]), [True, False, False, False])
    np.testing.assert_array_equal(heatmap.tiles_in_bbox(coords, 100, [50, 50, 151, 151]), [True, True, True, True])
    np.testing.assert_array_equal(heatmap.tiles_in_bbox(coords, 100, (120, 0, 200, 100)), [False, True, False, False])
    np.testing.assert_array_equal(heatmap.tiles_in_bbox(coords, 100, [51, 0, 150, 200]), [False, False, False, False])


def test_tile_table() -> None:
    coords = np.array([[0, 0], [512, 256]])
    df = heatmap.tile_table(coords, 256, {"attention": np.array([0.2, 0.8]), "percentile": np.array([0.0, 1.0])})
    assert list(df.columns) == ["tile", "x", "y", "width", "height", "attention", "percentile"]
    assert df["tile"].tolist() == [0, 1]
    assert df.loc[1, ["x", "y", "width", "height"]].tolist() == [512, 256, 256, 256]
    assert df["attention"].tolist() == [0.2, 0.8]
    with pytest.raises(ValueError, match="3 values for 2 tiles"):
        heatmap.tile_table(coords, 256, {"a": np.zeros(3)})


def test_tiles_geojson_for_qupath() -> None:
    coords = np.array([[0, 0], [512, 256], [1024, 0]], dtype=np.int64)
    scores = {"attention": np.array([0.25, 0.5, np.nan], dtype=np.float32), "rank": np.array([0.0, 1.0, 0.5])}
    gj = heatmap.tiles_geojson(coords, 256, scores)
    back = json.loads(json.dumps(gj, allow_nan=False))
    assert back == gj
    assert back["type"] == "FeatureCollection" and len(back["features"]) == 3
    f = back["features"][1]
    assert f["type"] == "Feature"
    assert f["geometry"]["type"] == "Polygon"
    ring = f["geometry"]["coordinates"][0]
    assert ring == [[512, 256], [768, 256], [768, 512], [512, 512], [512, 256]]
    assert f["properties"] == {
        "objectType": "tile",
        "name": "MoSARe attention",
        "measurements": {"attention": 0.5, "rank": 1.0},
    }
    for feat in back["features"]:
        r = feat["geometry"]["coordinates"][0]
        assert r[0] == r[-1] and len(r) == 5
    assert back["features"][2]["properties"]["measurements"] == {"rank": 0.5}  # NaN left out
    ids = [feat["id"] for feat in back["features"]]
    assert len(set(ids)) == 3 and all(isinstance(i, str) for i in ids)
    for i in ids:
        uuid.UUID(i)
    assert [feat["id"] for feat in heatmap.tiles_geojson(coords, 256, scores)["features"]] == ids
    assert heatmap.tiles_geojson(coords, 256, scores, name="other")["features"][0]["id"] != ids[0]


# --------------------------------------------------------------------------------------------- report


class _Spans(HTMLParser):
    """Collects the attributes and text of each ``span`` in highlight_html's output."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.spans: list[dict] = []
        self._open = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "span":
            self.spans.append({**dict(attrs), "text": ""})
            self._open = True
        else:
            assert tag == "div", f"unexpected tag {tag}"

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._open = False

    def handle_data(self, data: str) -> None:
        if self._open:
            self.spans[-1]["text"] += data


def _spans(markup: str) -> list[dict]:
    p = _Spans()
    p.feed(markup)
    return p.spans


def _alpha(style: str) -> float:
    return float(re.search(r"rgba\(\d+,\d+,\d+,([0-9.]+)\)", style).group(1))


def test_highlight_html_escapes_and_marks_the_top_sentences() -> None:
    sentences = [
        "Benign breast tissue.",
        "<script>alert(1)</script>",
        'Margins & nodes "clear".',
        "Tumour 2 cm.",
        "ER+.",
    ]
    scores = np.array([0.0, 0.2, 1.0, 0.6, 0.4])
    markup = report.highlight_html(sentences, scores)
    assert markup.startswith('<div class="mosare-report">') and markup.endswith("</div>")
    assert "<script>" not in markup and "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    spans = _spans(markup)
    assert [s["text"] for s in spans] == sentences
    alphas = [_alpha(s["style"]) for s in spans]
    assert int(np.argmax(alphas)) == 2
    assert alphas[2] == pytest.approx(0.85) and alphas[0] == pytest.approx(0.05)
    assert all(s["style"].startswith("background-color: rgba(230,97,0,") for s in spans)
    top = [i for i, s in enumerate(spans) if "mosare-top" in s["class"].split()]
    assert top == [2, 3, 4]
    assert spans[2]["data-rank"] == "1" and spans[3]["data-rank"] == "2" and spans[4]["data-rank"] == "3"
    assert spans[2]["data-score"] == "1.000" and spans[2]["title"] == "attention 1.000"


def test_highlight_html_without_scores_and_bad_lengths() -> None:
    markup = report.highlight_html(["A & B.", "C."], None)
    spans = _spans(markup)
    assert [s["text"] for s in spans] == ["A & B.", "C."]
    assert "rgba" not in markup and "mosare-top" not in markup and "&amp;" in markup
    with pytest.raises(ValueError, match="2 sentences but 3 scores"):
        report.highlight_html(["A.", "B."], np.zeros(3))


_DEL = re.compile(r'<del class="mosare-scrubbed">(.*?)</del>', re.DOTALL)


def _unmark(fragment: str) -> str:
    assert "<" not in fragment.replace("<br>", ""), f"unexpected markup in {fragment!r}"
    return html.unescape(fragment.replace("<br>", "\n"))


def test_struck_html_on_real_reports() -> None:
    reports = pd.read_csv(require_data("tcga-brca/reports.csv.gz"), dtype=str, keep_default_na=False)
    assert len(reports) > 500
    terms = vocabulary_for(["IDC", "ILC"])
    n_struck = n_escaped = 0
    for text in reports["text"]:
        res = scrub(text, terms)
        markup = report.struck_html(text, res.removed)
        deleted = [_unmark(m) for m in _DEL.findall(markup)]
        kept = "".join(_unmark(part) for part in _DEL.split(markup)[0::2])
        assert deleted == [text[a:b] for a, b in res.removed]
        want, last = [], 0
        for a, b in res.removed:
            want.append(text[last:a])
            last = b
        want.append(text[last:])
        assert kept == "".join(want)
        n_struck += bool(res.removed)
        n_escaped += "&amp;" in markup or "&lt;" in markup
    assert n_struck > len(reports) // 2  # nearly every BRCA report names its subtype
    assert n_escaped > 0


def test_struck_html_merges_spans_and_breaks_lines() -> None:
    text = "IDC<x>\nlobular & more"
    assert report.struck_html(text, [(0, 3), (2, 6), (14, 7)]) == (
        '<del class="mosare-scrubbed">IDC&lt;x&gt;</del><br>lobular &amp; more'
    )


def test_rank_sentences() -> None:
    sentences = ["a", "b", "c", "d"]
    df = report.rank_sentences(sentences, np.array([0.1, np.nan, 0.7, 0.3]), k=5)
    assert list(df.columns) == ["rank", "score", "sentence"]
    assert df["rank"].tolist() == [1, 2, 3]
    assert df["sentence"].tolist() == ["c", "d", "a"]
    assert df["score"].tolist() == [0.7, 0.3, 0.1]
    assert report.rank_sentences(sentences, np.arange(4.0), k=2)["sentence"].tolist() == ["d", "c"]


def test_highlight_real_report_sentences() -> None:
    reports = pd.read_csv(require_data("tcga-brca/reports.csv.gz"), dtype=str, keep_default_na=False)
    text = next(t for t in reports["text"] if "&" in t or "<" in t)
    sentences = split_sentences(text)
    scores = heatmap.normalise(np.arange(len(sentences), dtype=float))
    spans = _spans(report.highlight_html(sentences, scores))
    assert [s["text"] for s in spans] == sentences
    assert "mosare-top" in spans[-1]["class"]


# --------------------------------------------------------------------------------------------- rna


def test_gene_attention_means_heads() -> None:
    att = np.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])
    s = rna.gene_attention(att, ["A", "B", "C"])
    assert s.name == "attention"
    assert s.index.tolist() == ["C", "A", "B"]  # 0.4, then the 0.3 tie in model order
    np.testing.assert_allclose(s.to_numpy(), [0.4, 0.3, 0.3])
    assert s.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 genes but 2"):
        rna.gene_attention(att, ["A", "B"])


def test_pathway_attention_hand_made() -> None:
    genes = ["A", "B", "C", "D", "E", "F"]
    att = np.array([[0.30, 0.20, 0.10, 0.05, 0.05, 0.30], [0.10, 0.20, 0.30, 0.15, 0.05, 0.20]])
    scores = rna.gene_attention(att, genes)  # A .2, B .2, C .2, D .1, E .05, F .25
    pathways = {"P1": ["A", "B", "C", "X"], "P2": ["D", "E"], "P3": ["D", "E", "F"], "P4": ["Y", "Z", "W"]}
    df = rna.pathway_attention(scores, pathways, min_genes=3)
    assert list(df.columns) == ["pathway", "score", "n_genes"]
    assert df["pathway"].tolist() == ["P1", "P3"]
    np.testing.assert_allclose(df["score"], [0.2 * 6, (0.1 + 0.05 + 0.25) / 3 * 6])
    assert df["n_genes"].tolist() == [3, 3]
    assert rna.pathway_attention(scores, pathways, min_genes=2)["pathway"].tolist() == ["P1", "P3", "P2"]


def test_pathway_attention_uniform_is_one_on_real_pathways() -> None:
    pathways = load_pathways()
    names = list(pathways)[:5]
    genes = list(dict.fromkeys(g for n in names for g in pathways[n]))
    uniform = rna.gene_attention(np.full((4, len(genes)), 1.0 / len(genes)), genes)
    df = rna.pathway_attention(uniform, pathways)
    assert set(names) <= set(df["pathway"])
    np.testing.assert_allclose(df["score"], 1.0)
    first = df.set_index("pathway").loc[names[0], "n_genes"]
    assert first == len(set(pathways[names[0]]))


def test_bar_figure_highest_on_top() -> None:
    fig = rna.bar_figure(["low", "high", "mid"], [0.1, 0.9, 0.5], "Top genes", "attention")
    bar = fig.data[0]
    assert bar.orientation == "h"
    assert list(bar.y) == ["low", "mid", "high"] and list(bar.x) == [0.1, 0.5, 0.9]  # plotly draws bottom-up
    assert list(fig.layout.yaxis.categoryarray)[-1] == "high"
    assert fig.layout.title.text == "Top genes" and fig.layout.xaxis.title.text == "attention"


# --------------------------------------------------------------------------------------------- scenarios


def _raw_folds(model: str, scenario: str, rate: float, metric: str = "auc") -> list[float]:
    with open(RESULTS / "metrics.csv", newline="") as fh:
        return [
            float(r[metric])
            for r in csv.DictReader(fh)
            if r["model"] == model and r["scenario"] == scenario and float(r["mask_rate"]) == rate and r[metric] != "NA"
        ]


@pytest.fixture(scope="module")
def brca_metrics() -> pd.DataFrame:
    return scenarios.load_metrics(RESULTS)


def test_load_metrics_real(brca_metrics: pd.DataFrame) -> None:
    with open(RESULTS / "metrics.csv", newline="") as fh:
        n_rows = sum(1 for _ in csv.DictReader(fh))
    assert len(brca_metrics) == n_rows
    assert (brca_metrics["experiment"] == "tcga-brca-table2").all()
    assert brca_metrics["auc"].notna().all()  # every model applies to RNA + reports
    assert scenarios.load_metrics(RESULTS, name="run A")["experiment"].unique().tolist() == ["run A"]


def test_load_metrics_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="experiment folder not found") as err:
        scenarios.load_metrics(tmp_path / "missing")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="no metrics.csv"):
        scenarios.load_metrics(tmp_path)
    (tmp_path / "metrics.csv").write_text("model,scenario,fold,auc\nmosare,complete,0,80\n")
    with pytest.raises(InputError, match="missing column.*mask_rate"):
        scenarios.load_metrics(tmp_path)


def test_summary_table_real(brca_metrics: pd.DataFrame) -> None:
    s = scenarios.summary_table(brca_metrics, "auc")
    assert list(s.columns) == ["experiment", "model", "scenario", "mask_rate", "mean", "std", "n_folds"]
    assert len(s) == len(brca_metrics.groupby(["model", "scenario", "mask_rate"]))
    row = s[(s["model"] == "mosare") & (s["scenario"] == "complete")].iloc[0]
    folds = _raw_folds("mosare", "complete", 0.0)
    assert row["n_folds"] == len(folds) == 5
    assert row["mean"] == pytest.approx(statistics.mean(folds))
    assert row["std"] == pytest.approx(statistics.stdev(folds))
    f1 = scenarios.summary_table(brca_metrics, "f1")
    got = f1[(f1["model"] == "snn") & (f1["scenario"] == "removed-unmasked") & (f1["mask_rate"] == 0.3)]["mean"].item()
    assert got == pytest.approx(statistics.mean(_raw_folds("snn", "removed-unmasked", 0.3, "f1")))


def test_grid_table_real(brca_metrics: pd.DataFrame) -> None:
    grid = scenarios.grid_table(brca_metrics, "auc")
    assert grid.index.names == ["scenario", "mask_rate"]
    assert grid.index[0] == ("complete", 0.0)
    assert ("masked-unmasked", 0.5) in grid.index and ("removed-unmasked", 0.1) in grid.index
    assert grid.shape == (10, 4)
    assert list(grid.columns) == ["mosare", "mosare-paper", "snn", "text"]
    folds = _raw_folds("mosare", "complete", 0.0)
    assert grid.loc[("complete", 0.0), "mosare"] == f"{statistics.mean(folds):.1f} ± {statistics.stdev(folds):.1f}"
    folds = _raw_folds("text", "masked-masked", 0.3)
    want = f"{statistics.mean(folds):.1f} ± {statistics.stdev(folds):.1f}"
    assert grid.loc[("masked-masked", 0.3), "text"] == want


def test_baseline_table_real(brca_metrics: pd.DataFrame) -> None:
    table = scenarios.baseline_table(brca_metrics)
    assert list(table.columns) == ["AUC", "F1", "Acc"]
    models = brca_metrics["model"].unique().tolist()
    means = {m: statistics.mean(f) for m in models if (f := _raw_folds(m, "complete", 0.0))}
    assert table.index.tolist() == sorted(means, key=means.get, reverse=True)
    acc = _raw_folds("mosare", "complete", 0.0, "acc")
    assert table.loc["mosare", "Acc"] == f"{statistics.mean(acc):.1f} ± {statistics.stdev(acc):.1f}"


def test_metric_vs_rate_figure_real(brca_metrics: pd.DataFrame) -> None:
    fig = scenarios.metric_vs_rate_figure(brca_metrics, "auc")
    applicable = [m for m in brca_metrics["model"].unique() if _raw_folds(m, "complete", 0.0)]
    facets = ["masked-masked", "masked-unmasked", "removed-unmasked"]
    assert len(fig.data) == len(applicable) * len(facets)
    axes = sorted({t.xaxis for t in fig.data})
    assert axes == ["x", "x2", "x3"]
    for ax in axes:
        assert sorted(t.name for t in fig.data if t.xaxis == ax) == sorted(applicable)
    mosare_mm = next(t for t in fig.data if t.name == "mosare" and t.xaxis == "x")
    assert list(mosare_mm.x) == [0.0, 10.0, 30.0, 50.0]
    assert mosare_mm.y[0] == pytest.approx(statistics.mean(_raw_folds("mosare", "complete", 0.0)))
    assert mosare_mm.y[2] == pytest.approx(statistics.mean(_raw_folds("mosare", "masked-masked", 0.3)))
    assert mosare_mm.error_y.array[1] == pytest.approx(statistics.stdev(_raw_folds("mosare", "masked-masked", 0.1)))
    assert "(%)" in fig.layout.xaxis.title.text and "(%)" in fig.layout.yaxis.title.text
    assert sum(t.showlegend for t in fig.data) == len(applicable)  # one legend entry per model
    assert not any("not applicable" in a.text for a in fig.layout.annotations)  # every model applies
    json.loads(fig.to_json(), parse_constant=lambda c: pytest.fail(f"figure JSON contains {c}"))
