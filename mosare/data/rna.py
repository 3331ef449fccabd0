"""The 331 pathway gene lists shipped in ``assets/pathways`` (281 Reactome + 50 MSigDB Hallmarks, as compiled by
SurvPath): :func:`load_pathways`. The RNA page groups the model's gene attention by them.

Expression tables themselves are read by :func:`mosare.io.readers.read_rna_table` (training) and
:meth:`mosare.inference.Predictor.rna_vector` (one case), both with :func:`mosare.io.readers.clean_gene_id`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mosare.errors import InputError

PATHWAY_DIR = Path(__file__).resolve().parents[2] / "assets" / "pathways"
DEFAULT_PATHWAYS = PATHWAY_DIR / "combine_signatures.csv"


def load_pathways(path: str | Path | None = None) -> dict[str, list[str]]:
    """Pathway gene lists ``{pathway: [gene symbols]}`` from a CSV with one column per pathway (member genes
    down the column, padded with empty cells). Default: the shipped 331 pathways
    (``assets/pathways/combine_signatures.csv``: 281 Reactome + 50 MSigDB Hallmarks)."""
    p = Path(path) if path is not None else DEFAULT_PATHWAYS
    if not p.is_file():
        hint = "" if path is not None else " (the shipped pathway lists live in assets/pathways of the MoSARe repository; pass a path)"
        raise InputError(f"{p}: pathway file not found{hint}")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""], sep=None if p.suffix == ".tsv" else ",")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{p}: cannot parse the pathway table ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    out: dict[str, list[str]] = {}
    for col in df.columns:
        genes = [str(g).strip() for g in df[col].dropna()]
        genes = list(dict.fromkeys(g for g in genes if g))
        if genes:
            out[str(col).strip()] = genes
    if not out:
        raise InputError(f"{p}: no pathways with member genes")
    return out
