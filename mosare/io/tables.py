"""Reading the cohort tables: RNA, reports and (optionally) slides, each keyed by ``patient_id``.

RNA table  : one row per patient, ``patient_id``, the label column, every other column a gene.
Reports    : ``patient_id``, the label column, ``text``.
Slides     : ``patient_id`` plus ``features_path`` (HDF5/.pt patch features) or ``slide_path``;
             relative paths are resolved against the table's folder. Several rows per patient are allowed.

Every table first goes through :func:`inspect_table`, which parses nothing: the size, row and column caps
are checked on the file and one streaming pass, the compression (gzip, bz2, xz, zip: by magic bytes, not by
name), the encoding (UTF-8 with or without BOM, UTF-16/32 with a BOM, UTF-16 without one, else Latin-1) and
the separator (tab, comma or semicolon, sniffed from the header, whatever the file is called) are
detected, and binary files (images, HDF5, Excel workbooks, random bytes) are refused. Every problem is a
one-line :class:`~mosare.errors.InputError` naming the file.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import logging
import lzma
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from mosare.errors import InputError

log = logging.getLogger(__name__)

MAX_TABLE_BYTES = 2 * 1024**3
"""Largest accepted table (cohort tables), on disk and once decompressed."""
MAX_TABLE_ROWS = 1_000_000
"""Most data rows in a table, counted before parsing."""
MAX_TABLE_COLUMNS = 100_000
"""Most columns in a table, counted on the header before parsing."""
MAX_CASE_TABLE_BYTES = 64 * 1024**2
"""One-case expression tables (``mosare predict --rna``, dashboard uploads) are small: a tighter byte cap."""
MAX_CASE_TABLE_ROWS = 200_000
"""One-case tables in gene/value layout: one row per gene (about 60,000 Ensembl genes fit)."""
MAX_HEADER_BYTES = 32 * 1024**2
"""Longest accepted first line (100,000 column names of 300 characters fit)."""

MAX_REPORT_CHARS = 200_000
"""Longest accepted pathology report, in characters (long reports have about 10,000)."""

_CHUNK = 1 << 20
_SEPARATORS = ("\t", ",", ";")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f]")  # control characters other than whitespace

# magic bytes of files people upload by mistake -> what they are
_BINARY_MAGIC = (
    (b"%PDF", "a PDF document"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (patch features?)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"II*\x00", "a TIFF image (a slide?)"),
    (b"MM\x00*", "a TIFF image (a slide?)"),
    (b"\xd0\xcf\x11\xe0", "an old-style Excel/Office file: save it as CSV"),
)


@dataclass(frozen=True)
class TableFormat:
    """What :func:`inspect_table` found: how to parse the file, and its size."""

    compression: str | None  # pandas compression name, or None
    encoding: str  # codec name for pandas / open()
    sep: str
    header: list[str]  # column names as written (stripped), duplicates kept
    n_rows: int  # data rows: an upper bound (lines after the header), exact only when near the cap
    n_bytes: int  # decompressed size
    errors: str = "strict"  # "replace" for a file with a UTF-8 BOM but invalid UTF-8 further on


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _why(err: BaseException) -> str:
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return " ".join(text.split())[:200] or type(err).__name__


def _open_binary(path: Path, magic: bytes) -> tuple[str | None, IO[bytes]]:
    """(pandas compression name, binary stream of the decompressed content), by magic bytes, not file name."""
    if magic[:2] == b"\x1f\x8b":
        return "gzip", gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return "bz2", bz2.open(path, "rb")
    if magic[:6] == b"\xfd7zXZ\x00":
        return "xz", lzma.open(path, "rb")
    if magic[:4] == b"PK\x03\x04":
        zf = zipfile.ZipFile(path)
        names = [n for n in zf.namelist() if not n.endswith("/")]
        if any(n.startswith(("xl/", "word/", "ppt/")) for n in names) or "[Content_Types].xml" in names:
            zf.close()
            raise InputError(f"{path}: cannot parse as a table (an Excel/Office document: save it as CSV)")
        if len(names) != 1:
            zf.close()
            raise InputError(f"{path}: a zip archive must hold exactly one table (found {len(names)} files)")
        return "zip", zf.open(names[0])
    return None, open(path, "rb")


def _detect_encoding(head: bytes) -> str | None:
    """Encoding from the first decompressed bytes: BOMs, UTF-16 without BOM; None for binary data; "utf-8" is
    tentative (the caller checks the whole file and falls back to Latin-1)."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if b"\x00" in head:
        sample = head[: 1 << 16]
        even, odd = sample[0::2], sample[1::2]
        if len(sample) >= 4 and odd.count(0) > 0.3 * len(odd) and even.count(0) < 0.02 * len(even):
            return "utf-16-le"
        if len(sample) >= 4 and even.count(0) > 0.3 * len(even) and odd.count(0) < 0.02 * len(odd):
            return "utf-16-be"
        return None
    return "utf-8"


def _looks_binary(text: str) -> bool:
    """Control characters (other than whitespace) in more than 1 % of the first characters."""
    sample = text[: 1 << 16]
    if not sample:
        return False
    return len(_CONTROL.findall(sample)) > 0.01 * len(sample)


def _header_line(text: str, nl: str) -> tuple[str, int, bool] | None:
    """(first non-blank line, number of lines before it, whether a line break ends it), or None."""
    pos = index = 0
    while pos < len(text):
        end = text.find(nl, pos)
        line = text[pos:] if end < 0 else text[pos:end]
        if line.strip():
            return line.rstrip("\r\n"), index, end >= 0
        if end < 0:
            break
        pos, index = end + len(nl), index + 1
    return None


def inspect_table(path: str | Path, *, max_bytes: int | None = None, max_rows: int | None = None,
                  max_columns: int | None = None) -> TableFormat:
    """Check a CSV/TSV table's size, rows and columns against the caps and detect its format, without
    parsing it (one streaming pass over the decompressed bytes). Caps default to the module constants
    ``MAX_TABLE_BYTES``, ``MAX_TABLE_ROWS`` and ``MAX_TABLE_COLUMNS``. Raises a one-line InputError."""
    path = Path(path)
    max_bytes = MAX_TABLE_BYTES if max_bytes is None else int(max_bytes)
    max_rows = MAX_TABLE_ROWS if max_rows is None else int(max_rows)
    max_columns = MAX_TABLE_COLUMNS if max_columns is None else int(max_columns)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes)")
    if size > max_bytes:
        raise InputError(f"{path}: file too large ({_size(size)}; limit {_size(max_bytes)})")
    try:
        magic = _magic(path)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({_why(err)})") from None
    for prefix, what in _BINARY_MAGIC:
        if magic.startswith(prefix):
            raise InputError(f"{path}: cannot parse as a table ({what}, not CSV/TSV text)")

    head = bytearray()  # the first MAX_HEADER_BYTES decompressed bytes
    total = breaks = 0
    encoding: str | None = None
    errors = "strict"
    nl = "\n"  # "\r" for old Mac files without any "\n"
    utf8_check = None  # incremental UTF-8 validator while the file still looks like UTF-8
    wide = None  # incremental decoder for UTF-16/32 (line breaks are counted on text)
    last = ""
    try:
        compression, stream = _open_binary(path, magic)
        with stream:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise InputError(f"{path}: too large once decompressed (more than {_size(max_bytes)}; "
                                     f"limit {_size(max_bytes)})")
                if len(head) < MAX_HEADER_BYTES:
                    head += chunk[: MAX_HEADER_BYTES - len(head)]
                if encoding is None:
                    encoding = _detect_encoding(chunk)
                    if encoding is None:
                        raise InputError(f"{path}: cannot parse as a table (binary data, not CSV/TSV text)")
                    if encoding.startswith(("utf-16", "utf-32")):
                        wide = codecs.getincrementaldecoder(encoding)(errors="replace")
                        first = chunk.decode(encoding, errors="replace")
                    else:
                        utf8_check = codecs.getincrementaldecoder("utf-8")(errors="strict")
                        first = chunk.decode("latin-1")
                    if "\n" not in first and "\r" in first:
                        nl = "\r"
                if wide is not None:
                    text = wide.decode(chunk)
                    breaks += text.count(nl)
                    last = text[-1:] or last
                    continue
                breaks += chunk.count(nl.encode())
                last = chr(chunk[-1])
                if utf8_check is not None:
                    try:
                        utf8_check.decode(chunk)
                    except UnicodeDecodeError:
                        utf8_check = None
                        encoding, errors = ("utf-8-sig", "replace") if encoding == "utf-8-sig" else ("latin-1", "strict")
            if utf8_check is not None:
                try:
                    utf8_check.decode(b"", final=True)
                except UnicodeDecodeError:
                    encoding, errors = ("utf-8-sig", "replace") if encoding == "utf-8-sig" else ("latin-1", "strict")
    except InputError:
        raise
    except (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as err:
        raise InputError(f"{path}: cannot read ({_why(err)})") from None
    if total == 0 or encoding is None:
        raise InputError(f"{path}: the file is empty")
    if encoding == "latin-1" or errors == "replace":
        log.info("%s: not valid UTF-8; read as %s", path, "UTF-8 with replacement characters" if errors == "replace" else "Latin-1")

    text = bytes(head).decode(encoding, errors="replace").lstrip("\ufeff")
    if _looks_binary(text):
        raise InputError(f"{path}: cannot parse as a table (binary data, not CSV/TSV text)")
    found = _header_line(text, nl)
    if found is None:
        if total > len(head):
            raise InputError(f"{path}: cannot parse as a table (no text in the first {_size(MAX_HEADER_BYTES)})")
        raise InputError(f"{path}: the file is empty")
    line, skipped, ended = found
    if not ended and total > len(head):
        raise InputError(f"{path}: cannot parse as a table (first line longer than {_size(MAX_HEADER_BYTES)})")
    counts = {sep: line.count(sep) for sep in _SEPARATORS}
    sep = max(counts, key=lambda s: counts[s])
    if counts[sep] == 0:
        sep = ","
    header = [h.strip() for h in next(csv.reader([line], delimiter=sep), [])]
    if len(header) > max_columns:
        raise InputError(f"{path}: too many columns ({len(header):,}; limit {max_columns:,})")
    n_lines = breaks + (1 if last not in (nl, "") else 0)
    n_rows = max(0, n_lines - skipped - 1)
    if n_rows > max_rows:  # lines over-count rows when quoted fields hold line breaks: count records
        n_rows = _count_rows(path, encoding, sep, stop=max_rows + 1)
        if n_rows > max_rows:
            raise InputError(f"{path}: too many rows (more than {max_rows:,}; limit {max_rows:,})")
    return TableFormat(compression, encoding, sep, header, n_rows, total, errors)


def _count_rows(path: Path, encoding: str, sep: str, stop: int) -> int:
    """Non-blank CSV records after the header, counting at most ``stop``."""
    _, stream = _open_binary(path, _magic(path))
    n = -1
    limit = csv.field_size_limit()
    csv.field_size_limit(1 << 30)
    try:
        with stream, io.TextIOWrapper(stream, encoding=encoding, errors="replace", newline="") as text:
            for record in csv.reader(text, delimiter=sep):
                if record and any(f.strip() for f in record):
                    n += 1
                    if n >= stop:
                        break
    finally:
        csv.field_size_limit(limit)
    return max(0, n)


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(8)


def read_table(path: str | Path, *, max_bytes: int | None = None, max_rows: int | None = None,
               max_columns: int | None = None) -> pd.DataFrame:
    """CSV/TSV (optionally compressed) -> DataFrame, after :func:`inspect_table`'s checks; one-line InputError
    on any failure. Column names are stripped and kept as written: duplicate names stay duplicates (pandas
    would rename them ``X.1``), so that callers can average duplicate genes."""
    path = Path(path)
    fmt = inspect_table(path, max_bytes=max_bytes, max_rows=max_rows, max_columns=max_columns)
    try:
        df = pd.read_csv(path, sep=fmt.sep, compression=fmt.compression, encoding=fmt.encoding,
                         encoding_errors=fmt.errors, low_memory=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: cannot parse as a table ({msg[:200]})") from None
    if isinstance(df.index, pd.MultiIndex):  # pandas took the surplus leading fields of long rows as an index
        raise InputError(f"{path}: cannot parse as a table (rows have {df.index.nlevels} more fields than the "
                         f"header's {df.shape[1]}; wrong separator?)")
    if not isinstance(df.index, pd.RangeIndex):  # one more field than the header: R's row names
        df = df.reset_index()
    if len(fmt.header) == df.shape[1]:
        df.columns = [h or str(c).strip() for h, c in zip(fmt.header, df.columns)]
    else:
        df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise InputError(f"{path}: the table has a header but no data rows")
    return df


_MISSING = {"", "na", "nan", "n/a", "null", "none", "-", "?"}


def to_float(value: object) -> float | None:
    """One table cell as a float: NaN for an empty or NA cell, None when it is not a number."""
    if isinstance(value, bool):
        return None
    if value is None:
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip()
    if text.lower() in _MISSING:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return None


def check_report_text(text: str, what: str = "the report") -> None:
    """Refuse a report that is blank, too long (``MAX_REPORT_CHARS``) or not text (NUL or control characters, many
    undecodable ones). The message never quotes the report."""
    n = len(text)
    if not text.strip():
        raise InputError(f"{what} is empty")
    if n > MAX_REPORT_CHARS:
        raise InputError(f"{what} is too long: {n:,} characters (limit {MAX_REPORT_CHARS:,})")
    sample = text[:100_000]
    if "\x00" in sample:
        raise InputError(f"{what} is not plain text (it holds NUL characters: a binary file, or UTF-16 text read "
                         "as UTF-8); save it as a UTF-8 .txt file")
    controls = len(_CONTROL.findall(sample))
    undecodable = sample.count("\ufffd")
    if controls > 0.01 * len(sample) or undecodable > max(8, 0.05 * len(sample)):
        raise InputError(f"{what} is not plain text ({controls + undecodable} control or undecodable characters "
                         f"in {len(sample):,}); save it as a UTF-8 .txt file")


def decode_text(data: bytes, what: str = "the report") -> str:
    """Bytes of a text file (e.g. an uploaded report) -> str: UTF-8 with or without BOM, UTF-16/32 with a BOM,
    UTF-16 without one, else Latin-1. Binary data raises a one-line InputError that does not quote it."""
    encoding = _detect_encoding(data[:_CHUNK])
    if encoding is None:
        raise InputError(f"{what} is not plain text (binary data); save it as a UTF-8 .txt file")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        text = data.decode("utf-16" if encoding.startswith("utf-16") else "latin-1", errors="replace")
    return text.lstrip("\ufeff")
