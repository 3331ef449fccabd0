"""RNA expression preprocessing: reading expression matrices, normalising, and mapping genes to pathways.

- :func:`read_expression` reads CSV/TSV (optionally compressed) expression matrices in either orientation:
  genes as columns (one row per sample, a ``patient_id``/``sample`` column) or genes as rows
  (Xena/cBioPortal style: first column gene ids, one column per sample). Gene ids are cleaned
  (``_rnaseq`` suffix, ``SYMBOL|ENTREZ``, Ensembl versions) and duplicates averaged.
- :func:`zscore` and :func:`log2_fold_change` normalise per gene.
- :func:`load_pathways`, :func:`map_to_pathways` and :func:`pathway_scores` use the 331 pathway gene lists
  shipped in ``assets/pathways`` (281 Reactome + 50 MSigDB Hallmarks, as compiled by SurvPath).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from mosare.errors import InputError
from mosare.io.readers import ENSEMBL as _ENSEMBL
from mosare.io.readers import clean_gene_id
from mosare.io.tables import TableFormat, inspect_table

PATHWAY_DIR = Path(__file__).resolve().parents[2] / "assets" / "pathways"
DEFAULT_PATHWAYS = PATHWAY_DIR / "combine_signatures.csv"

# first-column headers that name gene ids (genes as rows) or sample ids (genes as columns)
_GENE_HEADERS = {
    "gene", "genes", "gene_id", "geneid", "gene_ids", "gene_symbol", "gene_name", "symbol", "hugo_symbol",
    "hugo", "ensembl", "ensembl_id", "ensembl_gene_id", "gene_stable_id", "probe", "probe_id", "identifier",
    "feature", "name", "description",
}  # fmt: skip
_SAMPLE_HEADERS = {
    "patient_id", "patient", "patient_barcode", "sample_id", "sample_barcode", "case_id", "case_submitter_id",
    "submitter_id", "barcode", "aliquot", "specimen_id", "sampleid", "sample", "samples", "case",
}  # fmt: skip
# annotation columns beside the gene id in genes-as-rows matrices (not samples)
_ANNOTATION_COLUMNS = {
    "entrez_gene_id", "entrez_id", "entrez", "gene_type", "gene_biotype", "biotype", "chromosome", "chr",
    "start", "end", "strand", "length", "description", "gene_name", "gene_symbol", "symbol", "hugo_symbol",
    "cytoband",
}  # fmt: skip

_SAMPLE_LIKE = re.compile(r"^(TCGA|TARGET|GTEX|CPTAC|HCM)-", re.IGNORECASE)


# --------------------------------------------------------------------------- reading


def _sniff(path: Path) -> TableFormat:
    """Compression, encoding, separator and header, with the size/row/column caps checked before parsing
    (:func:`mosare.io.tables.inspect_table`); InputError when the file is empty, binary or too big."""
    return inspect_table(path)


@lru_cache(maxsize=1)
def _known_genes() -> frozenset[str]:
    """Upper-case symbols of the shipped pathway genes (a reference for orientation detection)."""
    try:
        return frozenset(g.upper() for genes in load_pathways().values() for g in genes)
    except InputError:
        return frozenset()


def _gene_likeness(names: pd.Index | pd.Series) -> float:
    """Fraction of ``names`` that are known pathway gene symbols or Ensembl ids."""
    names = pd.Series(names).dropna().astype(str)
    if len(names) > 3000:
        names = names.iloc[np.linspace(0, len(names) - 1, 3000).astype(int)]
    if names.empty:
        return 0.0
    known = _known_genes()
    hits = sum(1 for n in names if (c := clean_gene_id(n)) is not None and (c.upper() in known or _ENSEMBL.match(c)))
    return hits / len(names)


def _sample_likeness(names: pd.Index | pd.Series) -> float:
    names = pd.Series(names).dropna().astype(str)
    return float(names.str.match(_SAMPLE_LIKE).mean()) if len(names) else 0.0


def _id_column(df: pd.DataFrame) -> int:
    """Position of the id column: one named like a sample id (``patient_id``, ``sample_id``, …), else the first."""
    for i, col in enumerate(df.columns):
        if str(col).strip().lower() in _SAMPLE_HEADERS - {"sample", "samples", "case"}:
            return i
    return 0


def _orientation(first: pd.Series, others: pd.Index, id_col: str, n_numeric: int) -> str:
    """``"columns"`` (genes as columns) or ``"rows"`` (genes as rows), from the id column and the other headers."""
    row_gene, col_gene = _gene_likeness(first), _gene_likeness(others)
    row_sample, col_sample = _sample_likeness(first), _sample_likeness(others)
    if row_gene - col_gene > 0.2 or col_sample - row_sample > 0.5:
        return "rows"
    if col_gene - row_gene > 0.2 or row_sample - col_sample > 0.5:
        return "columns"
    header = str(id_col).strip().lower()
    if header in _GENE_HEADERS:
        return "rows"
    if header in _SAMPLE_HEADERS - {"sample", "samples"}:
        return "columns"
    # no recognisable identifiers: expression matrices have many more genes than samples
    return "rows" if len(first) > 3 * max(n_numeric, 1) else "columns"


def _numeric(df: pd.DataFrame, path: Path, what: str) -> tuple[pd.DataFrame, list[str]]:
    """Numeric columns of ``df`` (mostly-numeric text columns converted), and the names of the dropped
    (non-numeric) columns. A mostly-numeric column with a stray non-numeric value is an error.
    Works by position, so duplicate column names are fine."""
    keep: list[int] = []
    converted: dict[int, pd.Series] = {}
    dropped: list[str] = []
    for i, dtype in enumerate(df.dtypes):
        if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
            keep.append(i)
            continue
        s = df.iloc[:, i]
        conv = pd.to_numeric(s, errors="coerce") if not pd.api.types.is_bool_dtype(dtype) else s.where(False)
        present = s.notna() & (s.astype(str).str.strip() != "")
        n_ok = int(conv[present].notna().sum())
        if present.any() and n_ok >= 0.5 * int(present.sum()):
            bad = s[present & conv.isna()]
            if len(bad):
                raise InputError(f"{path}: non-numeric value {str(bad.iloc[0])!r} in {what} {df.columns[i]!r}")
            keep.append(i)
            converted[i] = conv.astype(np.float64)
        else:
            dropped.append(str(df.columns[i]))
    out = df.iloc[:, keep]
    if converted:
        out = out.copy()
        for j, i in enumerate(keep):
            if i in converted:
                out.isetitem(j, converted[i])
    return out, dropped


def read_expression(path: str | Path, *, orientation: str = "auto") -> pd.DataFrame:
    """Read an expression matrix -> DataFrame ``[samples × genes]`` (float32, index ``patient_id``).

    Accepts CSV or TSV (separator sniffed from the header, whatever the file is called), plain or
    gzip/bz2/xz/zip-compressed, with genes as columns (an id column such as ``patient_id`` or ``sample``,
    non-numeric columns such as labels are dropped) or genes as rows (first column gene ids, every other
    numeric column a sample; annotation columns such as ``Entrez_Gene_Id`` are dropped). ``orientation``
    (``"auto"``, ``"genes_as_columns"``, ``"genes_as_rows"``) overrides the detection, which compares how
    gene-like (known pathway symbols, Ensembl ids) the header and the first column are, then falls back to
    the id column's name and the table's shape.

    Gene ids are cleaned (:func:`clean_gene_id`) and duplicate genes averaged; duplicate samples keep
    their first row. Missing values stay NaN. Infinite values, an empty or header-only file and a table
    without numeric columns raise :class:`InputError`. ``df.attrs`` records ``source``, ``orientation``,
    ``dropped_columns`` and ``n_duplicate_genes``.
    """
    if orientation not in ("auto", "genes_as_columns", "genes_as_rows"):
        raise ValueError(f"orientation must be auto, genes_as_columns or genes_as_rows, not {orientation!r}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    fmt = _sniff(path)
    sep, header = fmt.sep, fmt.header
    try:
        raw = pd.read_csv(path, sep=sep, compression=fmt.compression, encoding=fmt.encoding,
                          encoding_errors=fmt.errors, low_memory=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: cannot parse as a table ({msg})") from None
    # the header as written: pandas renames duplicate names (TP53, TP53.1), which must be averaged instead
    raw.columns = header if len(header) == raw.shape[1] else [str(c).strip() for c in raw.columns]
    if raw.empty:
        raise InputError(f"{path}: the table has a header but no data rows")
    if raw.shape[1] < 2:
        raise InputError(f"{path}: only one column; expected ids plus expression values (separator {sep!r})")

    id_pos = _id_column(raw)
    id_col = raw.columns[id_pos]
    ids = raw.iloc[:, id_pos]
    body = raw.iloc[:, [i for i in range(raw.shape[1]) if i != id_pos]]
    if orientation == "auto":
        n_numeric = sum(pd.api.types.is_numeric_dtype(t) for t in body.dtypes)
        orient = _orientation(ids, body.columns, id_col, n_numeric)
    else:
        orient = "columns" if orientation == "genes_as_columns" else "rows"

    if orient == "rows":
        annot = [c for c in body.columns if c.lower() in _ANNOTATION_COLUMNS]
        values, dropped = _numeric(body.drop(columns=annot), path, "sample column")
        dropped = annot + dropped
        if values.shape[1] == 0:
            raise InputError(f"{path}: no numeric columns (genes as rows: every column after the gene ids should be a sample)")
        genes = [clean_gene_id(g) for g in ids]
        keep = np.array([g is not None for g in genes])
        values = values.loc[keep]
        values.index = pd.Index([g for g in genes if g is not None])
        values = values.T
        values.index = pd.Index([str(c).strip() for c in values.index])
    else:
        values, dropped = _numeric(body, path, "gene column")
        if values.shape[1] == 0:
            raise InputError(f"{path}: no numeric columns (genes as columns: expected a sample id column plus one column per gene)")
        keep_rows = ids.notna() & (ids.astype(str).str.strip() != "")
        values = values.loc[keep_rows]
        values.index = pd.Index(ids[keep_rows].astype(str).str.strip())
        genes = [clean_gene_id(g) for g in values.columns]
        values = values.loc[:, [g is not None for g in genes]]
        values.columns = pd.Index([g for g in genes if g is not None])
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise InputError(f"{path}: no samples or no genes left after removing empty ids")

    values = values[~values.index.duplicated(keep="first")]
    n_dup = int(values.columns.duplicated().sum())
    if n_dup:
        values = values.T.groupby(level=0, sort=False).mean().T
    arr = values.to_numpy(dtype=np.float64)
    inf = np.isinf(arr)
    if inf.any():
        r, c = (int(v[0]) for v in np.nonzero(inf))
        raise InputError(
            f"{path}: {int(inf.sum())} infinite value(s) in the expression table (first: sample "
            f"{values.index[r]!r}, gene {values.columns[c]!r}); fix the upstream log transform"
        )
    out = pd.DataFrame(arr.astype(np.float32), index=values.index.rename("patient_id"), columns=pd.Index(values.columns, dtype=object))
    out.attrs.update(
        source=str(path),
        orientation="genes_as_rows" if orient == "rows" else "genes_as_columns",
        dropped_columns=[str(c) for c in dropped],
        n_duplicate_genes=n_dup,
    )
    return out


# --------------------------------------------------------------------------- normalisation


def zscore(df: pd.DataFrame, reference: pd.DataFrame | None = None, *, ddof: int = 0) -> pd.DataFrame:
    """Per-gene z-scores of ``df`` ``[samples × genes]`` with the mean/sd of ``reference`` (default: ``df``).

    Genes absent from ``reference`` become NaN; constant genes become 0; NaN stays NaN. -> float32.
    """
    ref = df if reference is None else reference
    stats = ref.reindex(columns=df.columns).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN genes
        mean = np.nanmean(stats, axis=0)
        sd = np.nanstd(stats, axis=0, ddof=ddof)
        x = df.to_numpy(dtype=np.float64)
        z = (x - mean) / np.where(sd > 0, sd, np.nan)
        z = np.where((sd == 0) & ~np.isnan(x), 0.0, z)
    out = pd.DataFrame(z.astype(np.float32), index=df.index, columns=df.columns)
    out.attrs.update(df.attrs)
    return out


def log2_fold_change(df: pd.DataFrame, control: pd.DataFrame, pseudocount: float = 1.0) -> pd.DataFrame:
    """``log2((x + pc) / (mean_control + pc))`` per gene, for non-negative expression (counts, TPM, FPKM).

    ``control`` holds the control samples ``[samples × genes]``; genes absent from it become NaN.
    Negative values (e.g. already z-scored or log-ratio data) raise :class:`InputError`. -> float32.
    """
    if not pseudocount > 0:
        raise ValueError("pseudocount must be positive")
    for name, table in (("expression", df), ("control", control)):
        values = table.to_numpy(dtype=np.float64)
        if values.size and np.nanmin(values, initial=0.0) < 0:
            source = table.attrs.get("source", f"the {name} table")
            raise InputError(
                f"{source}: log2 fold change needs non-negative expression (counts/TPM); found negative values "
                f"(min {np.nanmin(values):.3g}): already z-scored or log-ratio data? use zscore() instead"
            )
    ctrl = control.reindex(columns=df.columns).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN genes
        mu = np.nanmean(ctrl, axis=0)
        lfc = np.log2((df.to_numpy(dtype=np.float64) + pseudocount) / (mu + pseudocount))
    out = pd.DataFrame(lfc.astype(np.float32), index=df.index, columns=df.columns)
    out.attrs.update(df.attrs)
    return out


# --------------------------------------------------------------------------- pathways


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


@dataclass
class PathwayMapping:
    """Expression restricted to pathway genes.

    genes       : matched genes (union over pathways), in pathway order
    coverage    : fraction of the unique pathway genes found in the expression table
    per_pathway : DataFrame ``pathway, n_genes, n_found, coverage``
    matrix      : expression ``[samples × genes]`` (columns named by the pathway symbols)
    members     : ``{pathway: [matched genes]}``
    n_pathway_genes : number of unique pathway genes
    """

    genes: list[str]
    coverage: float
    per_pathway: pd.DataFrame
    matrix: pd.DataFrame
    members: dict[str, list[str]] = field(repr=False)
    n_pathway_genes: int = 0


def map_to_pathways(
    expr: pd.DataFrame,
    pathways: dict[str, list[str]] | str | Path | None = None,
    min_coverage: float = 0.1,
    *,
    source: str | None = None,
) -> PathwayMapping:
    """Match the expression columns (genes) to the pathway genes (exact symbol, else case-insensitive).

    Raises :class:`InputError` when fewer than ``min_coverage`` of the unique pathway genes are found
    (usually the wrong kind of gene identifier). ``source`` names the table in that message (default:
    ``expr.attrs["source"]``, set by :func:`read_expression`).
    """
    if not isinstance(pathways, dict):
        pathways = load_pathways(pathways)
    universe = list(dict.fromkeys(g for genes in pathways.values() for g in genes))
    if not universe:
        raise InputError("the pathway lists are empty")
    columns = [str(c) for c in expr.columns]
    exact = {c: i for i, c in reversed(list(enumerate(columns)))}
    folded = {c.upper(): i for i, c in reversed(list(enumerate(columns)))}
    where: dict[str, int] = {}
    for g in universe:
        i = exact.get(g, folded.get(g.upper()))
        if i is not None:
            where[g] = i
    coverage = len(where) / len(universe)
    if coverage < min_coverage:
        name = source or expr.attrs.get("source", "the expression table")
        raise InputError(
            f"only {coverage:.1%} of the {len(universe):,} pathway genes found in {name} "
            f"(need ≥ {min_coverage * 100:g}%); check gene identifiers (symbols or Ensembl IDs?)"
        )
    genes = [g for g in universe if g in where]
    matrix = expr.iloc[:, [where[g] for g in genes]].copy()
    matrix.columns = pd.Index(genes, dtype=object)
    members = {p: [g for g in gs if g in where] for p, gs in pathways.items()}
    per = pd.DataFrame(
        {
            "pathway": list(pathways),
            "n_genes": [len(gs) for gs in pathways.values()],
            "n_found": [len(members[p]) for p in pathways],
        }
    )
    per["coverage"] = per["n_found"] / per["n_genes"].clip(lower=1)
    return PathwayMapping(genes, coverage, per, matrix, members, len(universe))


def pathway_scores(mapping: PathwayMapping, min_genes: int = 1) -> pd.DataFrame:
    """Per-sample pathway activity ``[samples × pathways]``: the mean of the member genes' values
    (z-score the expression first, e.g. with :func:`zscore`), ignoring NaN. Pathways with fewer than
    ``min_genes`` matched genes are left out."""
    keep = [p for p, gs in mapping.members.items() if len(gs) >= max(1, min_genes)]
    col = {g: j for j, g in enumerate(mapping.matrix.columns)}
    membership = np.zeros((len(col), len(keep)), dtype=np.float64)
    for k, p in enumerate(keep):
        membership[[col[g] for g in mapping.members[p]], k] = 1.0
    x = mapping.matrix.to_numpy(dtype=np.float64)
    present = ~np.isnan(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (np.where(present, x, 0.0) @ membership) / (present.astype(np.float64) @ membership)
    return pd.DataFrame(scores.astype(np.float32), index=mapping.matrix.index, columns=pd.Index(keep, dtype=object))
