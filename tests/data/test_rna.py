"""RNA preprocessing: reading expression matrices in both orientations, cleaning gene ids, normalising,
and mapping to the shipped pathway gene lists (real TCGA-BRCA table where available)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mosare.errors import InputError
from mosare.data.rna import (
    DEFAULT_PATHWAYS,
    clean_gene_id,
    load_pathways,
    log2_fold_change,
    map_to_pathways,
    pathway_scores,
    read_expression,
    zscore,
)


@pytest.fixture(scope="module")
def brca(shared_data: Path) -> pd.DataFrame:
    return read_expression(shared_data / "tcga-brca" / "rna.csv.gz")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- pathways


def test_shipped_pathways() -> None:
    assert DEFAULT_PATHWAYS.is_file()
    assert (DEFAULT_PATHWAYS.parent / "README.md").is_file()
    pw = load_pathways()
    assert len(pw) == 331
    assert sum(p.startswith("HALLMARK_") for p in pw) == 50
    assert len({g for genes in pw.values() for g in genes}) == 4999
    assert all(genes and all(g == g.strip() and g for g in genes) for genes in pw.values())
    assert len(load_pathways(DEFAULT_PATHWAYS.parent / "xena_signatures.csv")) == 281
    assert len(load_pathways(DEFAULT_PATHWAYS.parent / "hallmarks_signatures.csv")) == 50
    assert "TP53" in pw["HALLMARK_P53_PATHWAY"]


def test_load_pathways_missing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pathway file not found"):
        load_pathways(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- real BRCA table


def test_brca_genes_as_columns(brca: pd.DataFrame) -> None:
    assert brca.shape == (956, 1558)
    assert brca.index.name == "patient_id" and brca.index.str.startswith("TCGA-").all()
    assert brca.attrs["orientation"] == "genes_as_columns"
    assert brca.attrs["dropped_columns"] == ["oncotree_code"]
    assert brca.dtypes.eq(np.float32).all()
    assert not any(c.endswith("_rnaseq") for c in brca.columns)


def test_brca_pathway_coverage(brca: pd.DataFrame) -> None:
    m = map_to_pathways(brca)  # default threshold: 10 %
    assert len(m.genes) == 769 and m.n_pathway_genes == 4999
    assert m.coverage == pytest.approx(769 / 4999)  # ≈ 15.4 %
    assert list(m.matrix.columns) == m.genes and m.matrix.shape == (956, 769)
    np.testing.assert_array_equal(m.matrix["TP53"].to_numpy(), brca["TP53"].to_numpy())
    per = m.per_pathway
    assert list(per.columns) == ["pathway", "n_genes", "n_found", "coverage"] and len(per) == 331
    assert per.n_found.sum() == sum(len(g) for g in m.members.values())
    assert 150 <= (per.n_found > 0).sum() <= 331
    assert ((per.coverage >= 0) & (per.coverage <= 1)).all()

    scores = pathway_scores(m)
    assert scores.shape == (956, int((per.n_found > 0).sum()))
    p = per.loc[per.n_found >= 3, "pathway"].iloc[0]
    np.testing.assert_allclose(scores[p], brca[m.members[p]].mean(axis=1), rtol=1e-5, atol=1e-6)
    assert pathway_scores(m, min_genes=5).shape[1] == int((per.n_found >= 5).sum())

    # a stricter threshold refuses, naming the file and the numbers
    with pytest.raises(InputError) as err:
        map_to_pathways(brca, min_coverage=0.2)
    msg = str(err.value)
    assert "15.4% of the 4,999 pathway genes found in" in msg and "rna.csv.gz" in msg and "need ≥ 20%" in msg
    assert "\n" not in msg


def test_genes_as_rows_matches_columns(brca: pd.DataFrame, tmp_path: Path) -> None:
    part = brca.iloc[:40, :600]  # 600 genes × 40 samples
    wide = part.reset_index()
    wide.to_csv(tmp_path / "wide.csv", index=False)
    long = part.T.rename_axis("gene").reset_index()
    long.insert(1, "Entrez_Gene_Id", np.arange(len(long)))  # cBioPortal-style annotation column
    with gzip.open(tmp_path / "rows.tsv.gz", "wt") as fh:
        long.to_csv(fh, sep="\t", index=False)
    a = read_expression(tmp_path / "wide.csv")
    b = read_expression(tmp_path / "rows.tsv.gz")
    assert a.attrs["orientation"] == "genes_as_columns" and b.attrs["orientation"] == "genes_as_rows"
    assert b.attrs["dropped_columns"] == ["Entrez_Gene_Id"]
    pd.testing.assert_frame_equal(a, b, check_names=False)
    pd.testing.assert_frame_equal(a, part, check_names=False, check_exact=False, rtol=1e-6)
    ma, mb = map_to_pathways(a, min_coverage=0.0), map_to_pathways(b, min_coverage=0.0)
    assert ma.genes == mb.genes and ma.coverage == mb.coverage
    # Xena-style header "sample" over gene rows is recognised too
    long.drop(columns="Entrez_Gene_Id").rename(columns={"gene": "sample"}).to_csv(tmp_path / "xena.tsv", sep="\t", index=False)
    pd.testing.assert_frame_equal(read_expression(tmp_path / "xena.tsv"), a, check_names=False)


# --------------------------------------------------------------------------- gene ids and formats


def test_clean_gene_id() -> None:
    assert clean_gene_id("TP53_rnaseq") == "TP53"
    assert clean_gene_id(" ENSG00000141510.16 ") == "ENSG00000141510"
    assert clean_gene_id("ENSG00000141510") == "ENSG00000141510"
    assert clean_gene_id("ENSG00000182378.14_PAR_Y") is None
    assert clean_gene_id("TP53|7157") == "TP53"
    assert clean_gene_id("?|100130426") == "100130426"
    assert clean_gene_id("") is None and clean_gene_id(float("nan")) is None
    assert clean_gene_id("HLA-DRB1") == "HLA-DRB1"


def test_ensembl_versions_rows(tmp_path: Path) -> None:
    text = (
        "gene_id\tS1\tS2\tS3\n"
        "ENSG00000141510.16\t1\t2\t3\n"
        "ENSG00000012048.23\t4\t5\t6\n"
        "ENSG00000141510.17\t3\t4\t5\n"  # same gene, other version: averaged
        "ENSG00000182378.14_PAR_Y\t0\t0\t0\n"
    )
    df = read_expression(_write(tmp_path / "ens.tsv", text))
    assert df.attrs["orientation"] == "genes_as_rows"
    assert list(df.columns) == ["ENSG00000141510", "ENSG00000012048"] and list(df.index) == ["S1", "S2", "S3"]
    np.testing.assert_allclose(df["ENSG00000141510"], [2, 3, 4])
    assert df.attrs["n_duplicate_genes"] == 1


def test_suffix_duplicates_and_nan(tmp_path: Path) -> None:
    text = (
        "patient_id,label,TP53_rnaseq,BRCA1_rnaseq,TP53,GATA3,GATA3\n"
        "P1,IDC,1.0,2.0,3.0,1,3\n"
        "P2,ILC,,4.0,5.0,NA,2\n"
        "P1,IDC,9,9,9,9,9\n"  # duplicate sample: the first row is kept
    )
    df = read_expression(_write(tmp_path / "x.csv", text))
    assert list(df.columns) == ["TP53", "BRCA1", "GATA3"] and list(df.index) == ["P1", "P2"]
    assert df.attrs["dropped_columns"] == ["label"]
    np.testing.assert_allclose(df.loc["P1"], [2.0, 2.0, 2.0])
    np.testing.assert_allclose(df.loc["P2"], [5.0, 4.0, 2.0])  # NaN ignored in the average
    assert df.attrs["n_duplicate_genes"] == 2


def test_demo_cohort_table(tmp_path: Path) -> None:
    """Made-up gene names (no known symbols): the id column's name decides the orientation."""
    from mosare.synthetic.cohort import write_demo_cohort

    write_demo_cohort(tmp_path, n_cases=20, seed=0, slides=False)
    df = read_expression(tmp_path / "rna.csv.gz")
    assert df.attrs["orientation"] == "genes_as_columns" and df.shape == (18, 200)
    assert df.attrs["dropped_columns"] == ["label"] and df.columns[0] == "GENE0001"
    # the same, transposed, without a telling header: many more rows than columns means genes as rows
    df.T.rename_axis("").to_csv(tmp_path / "t.csv")
    back = read_expression(tmp_path / "t.csv")
    assert back.attrs["orientation"] == "genes_as_rows"
    pd.testing.assert_frame_equal(back, df, check_names=False)
    assert read_expression(tmp_path / "t.csv", orientation="genes_as_columns").shape == (200, 18)


def test_tsv_named_csv_and_nan_kept(tmp_path: Path) -> None:
    text = "sample\tTP53\tGATA3\tESR1\nA\t0.5\t-1.5\t\nB\t1.5\tNaN\t2\n"
    df = read_expression(_write(tmp_path / "really_tab.csv", text))
    assert df.shape == (2, 3) and list(df.index) == ["A", "B"]
    assert np.isnan(df.loc["A", "ESR1"]) and np.isnan(df.loc["B", "GATA3"])
    assert df.loc["A", "GATA3"] == -1.5  # negative values are fine (z-scores)
    # gzip detected by content, not by name
    (tmp_path / "plain_name.csv").write_bytes(gzip.compress(text.encode()))
    pd.testing.assert_frame_equal(read_expression(tmp_path / "plain_name.csv"), df)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        ("patient_id,TP53,GATA3\n", "header but no data rows"),
        ("patient_id,label\nP1,IDC\nP2,ILC\n", "no numeric columns"),
        ("patient_id,TP53,GATA3\nP1,1,inf\nP2,2,3\n", "infinite value"),
        ("patient_id,TP53,GATA3\nP1,1,2\nP2,abc,3\nP3,4,5\n", "non-numeric value 'abc' in gene column 'TP53'"),
    ],
)
def test_refusals(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises(InputError, match=message) as err:
        read_expression(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_expression(tmp_path / "none.csv")


def test_coverage_refusal_made_up_ids(tmp_path: Path) -> None:
    genes = [f"MADEUP{i}" for i in range(300)] + ["TP53", "GATA3", "ESR1"]
    df = pd.DataFrame(np.random.default_rng(0).normal(size=(4, len(genes))), columns=genes)
    df.insert(0, "patient_id", [f"P{i}" for i in range(4)])
    df.to_csv(tmp_path / "madeup.csv", index=False)
    expr = read_expression(tmp_path / "madeup.csv")
    with pytest.raises(InputError) as err:
        map_to_pathways(expr)
    assert str(err.value) == (
        f"only 0.1% of the 4,999 pathway genes found in {tmp_path / 'madeup.csv'} (need ≥ 10%); "
        "check gene identifiers (symbols or Ensembl IDs?)"
    )
    m = map_to_pathways(expr, min_coverage=0.0)
    assert sorted(m.genes) == ["ESR1", "GATA3", "TP53"] and m.coverage == pytest.approx(3 / 4999)
    # case-insensitive symbol match
    lower = expr.rename(columns=str.lower)
    assert sorted(map_to_pathways(lower, min_coverage=0.0).genes) == ["ESR1", "GATA3", "TP53"]


# --------------------------------------------------------------------------- normalisation


def test_zscore() -> None:
    df = pd.DataFrame({"A": [1.0, 2.0, 3.0, np.nan], "B": [5.0, 5.0, 5.0, 5.0], "C": [0.0, 1.0, 0.0, 1.0]})
    z = zscore(df)
    np.testing.assert_allclose(z["A"].iloc[:3], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    assert np.isnan(z["A"].iloc[3])
    assert (z["B"] == 0).all()  # constant gene
    ref = pd.DataFrame({"A": [0.0, 2.0], "C": [0.0, 0.0]})
    zr = zscore(df, reference=ref)
    np.testing.assert_allclose(zr["A"].iloc[:3], [0.0, 1.0, 2.0])
    assert zr["B"].isna().all()  # not in the reference
    assert (zr["C"] == 0).all()


def test_log2_fold_change() -> None:
    df = pd.DataFrame({"A": [0.0, 3.0, 7.0], "B": [1.0, 1.0, np.nan]}, index=["s1", "s2", "s3"])
    control = pd.DataFrame({"A": [1.0, 3.0], "B": [1.0, 1.0]})
    lfc = log2_fold_change(df, control)
    np.testing.assert_allclose(lfc["A"], np.log2(np.array([1.0, 4.0, 8.0]) / 3.0), rtol=1e-6)
    np.testing.assert_allclose(lfc["B"].iloc[:2], [0.0, 0.0])
    assert np.isnan(lfc["B"].iloc[2])
    np.testing.assert_allclose(log2_fold_change(df, control, pseudocount=0.5)["A"].iloc[1], np.log2(3.5 / 2.5), rtol=1e-6)


def test_log2_fold_change_refuses_negative(tmp_path: Path) -> None:
    df = read_expression(_write(tmp_path / "z.csv", "patient_id,TP53,GATA3\nP1,-0.5,1\nP2,0.5,2\n"))
    with pytest.raises(InputError, match="non-negative") as err:
        log2_fold_change(df, df.abs())
    assert str(tmp_path / "z.csv") in str(err.value)
    with pytest.raises(InputError, match="non-negative"):
        log2_fold_change(df.abs(), df)


@pytest.mark.parametrize("style", ["symbol|entrez", "versioned-ensembl"])
def test_checkpoint_finds_its_own_genes_whatever_the_id_style(tmp_path, style, capsys):
    """Training and prediction clean gene ids with one function: a model trained on `TP53|7157` or
    `ENSG….16` columns finds every gene in a one-case table of the same kind (CLI predict and the app's road)."""
    from mosare.cli import main
    from mosare.inference import Predictor

    symbols = ["TP53", "CDH1", "GATA3", "ERBB2", "FOXA1", "KRT5"]
    ensembl = ["ENSG00000141510", "ENSG00000039068", "ENSG00000107485", "ENSG00000141736", "ENSG00000129514",
               "ENSG00000186081"]
    cols = [f"{s}|{1000 + i}" for i, s in enumerate(symbols)] if style == "symbol|entrez" else \
        [f"{e}.{i + 3}" for i, e in enumerate(ensembl)]
    rng = np.random.default_rng(0)
    y = np.arange(16) % 2
    x = rng.normal(size=(16, len(cols))) + y[:, None]
    df = pd.DataFrame(x, columns=cols)
    df.insert(0, "subtype", np.where(y == 1, "B", "A"))
    df.insert(0, "patient_id", [f"P{i}" for i in range(16)])
    df.to_csv(tmp_path / "rna.csv", index=False)
    assert main(["experiment", "--rna", str(tmp_path / "rna.csv"), "--label-column", "subtype", "--classes", "A,B",
                 "--out", str(tmp_path / "run"), "--folds", "2", "--epochs", "1", "--models", "snn",
                 "--scenarios", "complete", "--device", "cpu", "--hidden", "16"]) == 0
    ckpt = next((tmp_path / "run" / "checkpoints").rglob("fold0.safetensors"))
    df.iloc[[0], 2:].to_csv(tmp_path / "case.csv", index=False)  # one case, the same column style
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(ckpt), "--rna", str(tmp_path / "case.csv"), "--device", "cpu"]) == 0
    assert "prediction" in capsys.readouterr().out
    predictor = Predictor(ckpt)
    assert predictor.genes == (symbols if style == "symbol|entrez" else ensembl)
    assert predictor.make_case(rna=tmp_path / "case.csv").gene_coverage == 1.0
