"""RNA: the shipped pathway gene lists, gene-id cleaning, and a checkpoint finding its own genes whatever the id
style (real TCGA-BRCA table where available)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mosare.data.rna import DEFAULT_PATHWAYS, load_pathways
from mosare.errors import InputError
from mosare.io.readers import clean_gene_id, read_rna_table


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



def test_real_brca_table_and_its_pathway_coverage(shared_data: Path) -> None:
    expr, labels = read_rna_table(shared_data / "tcga-brca" / "rna.csv.gz", "oncotree_code")
    assert expr.shape == (956, 1558) and expr.index.str.startswith("TCGA-").all()
    assert not any(c.endswith("_rnaseq") for c in expr.columns) and expr.dtypes.eq(np.float32).all()
    assert set(labels) >= {"IDC", "ILC"}
    pathway_genes = {g for genes in load_pathways().values() for g in genes}
    assert len(pathway_genes & set(expr.columns)) == 769  # of 4999: the RNA page's pathway view covers 15 %


def test_clean_gene_id() -> None:
    assert clean_gene_id("TP53_rnaseq") == "TP53"
    assert clean_gene_id(" ENSG00000141510.16 ") == "ENSG00000141510"
    assert clean_gene_id("ENSG00000141510") == "ENSG00000141510"
    assert clean_gene_id("ENSG00000182378.14_PAR_Y") is None
    assert clean_gene_id("TP53|7157") == "TP53"
    assert clean_gene_id("?|100130426") == "100130426"
    assert clean_gene_id("") is None and clean_gene_id(float("nan")) is None
    assert clean_gene_id("HLA-DRB1") == "HLA-DRB1"


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
