"""Reading the cohort tables: RNA, reports and (optionally) slides, each keyed by ``patient_id``.

RNA table  : one row per patient, ``patient_id``, the label column, every other column a gene.
Reports    : ``patient_id``, the label column, ``text``.
Slides     : ``patient_id`` plus ``features_path`` (HDF5/.pt patch features) or ``slide_path``;
             relative paths are resolved against the table's folder. Several rows per patient are allowed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mosare.errors import InputError


def read_table(path: str | Path) -> pd.DataFrame:
    """CSV/TSV (optionally gzipped) with the separator sniffed; one-line InputError on failure."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, sep=None, engine="python", encoding_errors="replace") if _small(path) else \
            pd.read_csv(path, sep="\t" if ".tsv" in path.suffixes or ".txt" in path.suffixes else ",")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as err:
        raise InputError(f"{path}: cannot parse as a table ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if df.empty:
        raise InputError(f"{path}: the table has no rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _small(path: Path) -> bool:
    # the python engine sniffs separators but is slow; use it for small plain files only
    return path.suffix not in (".gz", ".bz2", ".zip", ".xz") and path.stat().st_size < 5_000_000


def _check_keys(df: pd.DataFrame, path: Path | str, required: list[str]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns[:8]))}...)")


def read_rna_table(path: str | Path, label_column: str) -> tuple[pd.DataFrame, pd.Series]:
    """-> (expression [patients × genes] float32 indexed by patient_id, labels Series).

    Duplicate patients keep their first row; duplicate gene columns are averaged; NaN → 0 (the cohort mean
    of z-scored data); non-numeric gene columns are an error.
    """
    df = read_table(path)
    _check_keys(df, path, ["patient_id", label_column])
    df["patient_id"] = df["patient_id"].astype(str).str.strip()
    df = df.drop_duplicates("patient_id").set_index("patient_id")
    labels = df.pop(label_column)
    genes = df.apply(pd.to_numeric, errors="coerce")
    bad = [c for c in genes.columns if genes[c].isna().all() and df[c].notna().any()]
    if bad:
        raise InputError(f"{path}: non-numeric gene column(s) {', '.join(map(str, bad[:5]))}")
    if genes.shape[1] == 0:
        raise InputError(f"{path}: no gene columns besides patient_id and {label_column}")
    genes.columns = [str(c).removesuffix("_rnaseq") for c in genes.columns]
    if genes.columns.duplicated().any():
        genes = genes.T.groupby(level=0, sort=False).mean().T
    values = genes.to_numpy(dtype=np.float64)
    if np.isinf(values).any():
        raise InputError(f"{path}: infinite values in the expression table")
    genes = genes.fillna(0.0).astype(np.float32)
    return genes, labels


def read_reports_table(path: str | Path, label_column: str) -> tuple[pd.Series, pd.Series]:
    """-> (text Series indexed by patient_id, labels Series). Empty texts are dropped."""
    df = read_table(path)
    _check_keys(df, path, ["patient_id", "text"])
    df["patient_id"] = df["patient_id"].astype(str).str.strip()
    df = df.drop_duplicates("patient_id").set_index("patient_id")
    df = df[df["text"].notna() & (df["text"].astype(str).str.strip() != "")]
    labels = df[label_column] if label_column in df.columns else pd.Series(np.nan, index=df.index)
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
