"""The cohort tables, keyed by ``patient_id``: RNA (:func:`read_rna_table`, gene names cleaned by
:func:`clean_gene_id`), reports (:func:`read_reports_table`) and slides (:func:`read_slides_table`); each file is
first checked by :func:`mosare.io.tables.read_table`."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mosare.errors import InputError
from mosare.io.tables import check_report_text, read_table

log = logging.getLogger(__name__)


def _check_keys(df: pd.DataFrame, path: Path | str, required: list[str]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns[:8]))}...)")
    repeated = [c for c in required if int((df.columns == c).sum()) > 1]
    if repeated:
        raise InputError(f"{path}: column {repeated[0]!r} appears {int((df.columns == repeated[0]).sum())} times")


def _numeric_block(block: pd.DataFrame) -> tuple[np.ndarray, list[int]]:
    """float64 [rows, columns] of ``block`` (text converted, non-numbers -> NaN) and the positions of the
    columns that hold values but not a single number."""
    out = np.full(block.shape, np.nan)
    bad: list[int] = []
    for j, dtype in enumerate(block.dtypes):
        col = block.iloc[:, j]
        if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
            out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
            continue
        conv = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(conv).all() and col.notna().any():
            bad.append(j)
        out[:, j] = conv
    return out, bad


ENSEMBL = re.compile(r"^(ENS[A-Z]*[GT]\d{6,})(?:\.\d+)?(_PAR_Y)?$", re.IGNORECASE)
GENE_SUFFIXES = ("_rnaseq", "_rna", "_expression", "_mrna")


def clean_gene_id(gene: object) -> str | None:
    """Normalise one gene identifier; ``None`` for an empty id or a duplicate pseudo-autosomal copy.

    ``TP53_rnaseq`` → ``TP53``; ``TP53|7157`` → ``TP53``; ``ENSG00000141510.16`` → ``ENSG00000141510``;
    ``ENSG00000182378.14_PAR_Y`` → ``None`` (GENCODE's chrY copy of a chrX gene).
    """
    if gene is None or (isinstance(gene, float) and np.isnan(gene)):
        return None
    g = str(gene).strip()
    for suffix in GENE_SUFFIXES:
        if g.lower().endswith(suffix) and len(g) > len(suffix):
            g = g[: -len(suffix)]
            break
    if "|" in g:
        symbol, _, rest = g.partition("|")
        g = symbol if symbol and symbol != "?" else rest
    m = ENSEMBL.match(g)
    if m:
        return None if m.group(2) else m.group(1).upper()
    return g or None


def read_rna_table(path: str | Path, label_column: str) -> tuple[pd.DataFrame, pd.Series]:
    """-> (expression [patients × genes] float32 indexed by patient_id, labels Series).

    Duplicate patients keep their first row; duplicate gene columns are averaged, ignoring NaN
    (``attrs["n_duplicate_genes"]``); NaN → 0 (the cohort mean of z-scored data; ``attrs["n_missing_values"]``
    counts the empty or NaN cells as read); non-numeric gene columns and
    infinite values are an error. Negative values are fine (z-scores, log ratios).
    """
    df = read_table(path)
    _check_keys(df, path, ["patient_id", label_column])
    df["patient_id"] = df["patient_id"].astype(str).str.strip()
    df = df.drop_duplicates("patient_id").set_index("patient_id")
    labels = df.pop(label_column)
    if df.shape[1] == 0:
        raise InputError(f"{path}: no gene columns besides patient_id and {label_column}")
    values, bad = _numeric_block(df)
    if bad:
        raise InputError(f"{path}: non-numeric gene column(s) {', '.join(str(df.columns[j]) for j in bad[:5])}")
    # the same gene-id cleaner as prediction (``TP53|7157``, ``ENSG….16``, ``_rnaseq`` → one id), so a checkpoint
    # trained on such a table finds its own genes in a one-case table of the same kind
    names = [clean_gene_id(c) for c in df.columns]
    keep = [n is not None for n in names]
    if not all(keep):  # GENCODE's chrY copies of chrX genes
        df, values, names = df.loc[:, keep], values[:, keep], [n for n in names if n is not None]
    inf = np.isinf(values)
    if inf.any():
        r, c = (int(v[0]) for v in np.nonzero(inf))
        raise InputError(f"{path}: {int(inf.sum())} infinite value(s) in the expression table (first: patient "
                         f"{df.index[r]!r}, gene {names[c]!r}); fix the upstream log transform")
    n_nan = int(np.isnan(values).sum())
    genes = pd.DataFrame(values, index=df.index, columns=pd.Index(names, dtype=object))
    n_dup = int(genes.columns.duplicated().sum())
    if n_dup:
        genes = genes.T.groupby(level=0, sort=False).mean().T  # NaN-skipping mean
        log.info("%s: %d duplicate gene column(s) averaged", path, n_dup)
    genes = genes.fillna(0.0).astype(np.float32)
    genes.attrs.update(source=str(path), n_duplicate_genes=n_dup, n_missing_values=n_nan)
    return genes, labels


def read_reports_table(path: str | Path, label_column: str) -> tuple[pd.Series, pd.Series]:
    """-> (text Series indexed by patient_id, labels Series). Empty texts are dropped."""
    df = read_table(path)
    _check_keys(df, path, ["patient_id", "text"])
    df["patient_id"] = df["patient_id"].astype(str).str.strip()
    df = df.drop_duplicates("patient_id").set_index("patient_id")
    df = df[df["text"].notna() & (df["text"].astype(str).str.strip() != "")]
    for pid, text in df["text"].astype(str).items():
        check_report_text(text, f"{path}: the report of patient {pid}")
    labels = df[label_column] if label_column in df.columns else pd.Series(np.nan, index=df.index)
    if isinstance(labels, pd.DataFrame):
        labels = labels.iloc[:, 0]
    return df["text"].astype(str), labels


def read_slides_table(path: str | Path, features_dir: str | Path | None = None) -> dict[str, list[Path]]:
    """-> {patient_id: [feature file paths]}.

    A row's features come from its ``features_path``; failing that, with ``features_dir`` (the ``--out`` of
    ``mosare extract``), from ``<features_dir>/<slide file stem>.h5`` for its ``slide_path``.
    """
    df = read_table(path)
    _check_keys(df, path, ["patient_id"])
    if "features_path" not in df.columns and ("slide_path" not in df.columns or features_dir is None):
        raise InputError(f"{path}: needs a features_path column, or slide_path with --features-dir "
                         "(the output folder of `mosare extract`)")
    base = Path(path).parent
    out: dict[str, list[Path]] = {}
    for _, row in df.iterrows():
        pid = str(row["patient_id"]).strip()
        fp = row.get("features_path")
        if pd.isna(fp) or not str(fp).strip():
            sp = row.get("slide_path")
            if features_dir is None or pd.isna(sp) or not str(sp).strip():
                continue
            slide = Path(str(sp))
            slide = slide if slide.is_absolute() else base / slide
            p = Path(features_dir) / f"{slide.name if slide.is_dir() else slide.stem}.h5"
            if not p.is_file():
                raise InputError(f"{p}: no features for slide {slide.name}; run `mosare extract --slides {path} "
                                 f"--out {features_dir}` first")
        else:
            p = Path(str(fp))
            p = p if p.is_absolute() else base / p
        out.setdefault(pid, []).append(p)
    return out
