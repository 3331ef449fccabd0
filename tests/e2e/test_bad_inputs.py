"""Bad inputs, each refused with its own one-line message through the CLI (`mosare predict`, `mosare extract`,
`mosare experiment`) and through the dashboard (Streamlit AppTest), which keeps serving afterwards.

The inputs are generated here, or taken from ../shared/data/slides (broken.svs, unopenable.tiff, unreadable.svs
and a truncated copy of cmu-1-small-region.svs). Accepted-but-awkward tables (BOM, Latin-1, UTF-16, TSV named
.csv, gzip, duplicate genes, negative values, ...) must give the same prediction as the plain table.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import logging
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import pandas as pd
import pytest

from mosare.cli import main
from mosare.app.demo import MODEL_PATH
from mosare.errors import InputError
from tests.conftest import REPO_ROOT, require_data

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

GENES = [f"GENE{i:04d}" for i in range(1, 201)]  # the demo model's genes
SECRET = "Zebra quartz sentinel 4471 was noted beside the anterior margin."  # must never leak from a report
MARKER = Path(tempfile.gettempdir()) / f"mosare-bad-inputs-pwned-{os.getpid()}"  # created only if a pickle ran
APP = str(REPO_ROOT / "streamlit_app.py")


# ------------------------------------------------------------------------------------------ file builders


class _Evil:
    """Unpickling this runs code (creates MARKER): every loader must refuse it without unpickling."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def _evil_pickle() -> bytes:
    return pickle.dumps(_Evil(), protocol=2)


def _values(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=len(GENES)).round(4)  # z-scores: about half negative


def _wide(columns: list[str], values: list, sep: str = ",", newline: str = "\n") -> str:
    return sep.join(columns) + newline + sep.join(str(v) for v in values) + newline


@functools.cache
def good_rna() -> str:
    return _wide(GENES, list(_values()))


def _rna_with(**changes: object) -> bytes:
    values = dict(zip(GENES, _values()))
    values.update(changes)
    return _wide(list(values), list(values.values())).encode()


def _xlsx() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/workbook.xml", "<workbook/>")
        zf.writestr("xl/worksheets/sheet1.xml", "<worksheet/>")
    return buf.getvalue()


def _h5(write: Callable[[h5py.File], None]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.h5"
        with h5py.File(path, "w") as f:
            write(f)
        return path.read_bytes()


def _features(n: int = 50, dim: int = 64, nan_at: tuple[int, ...] = (), seed: int = 0) -> bytes:
    feats = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    for k, i in enumerate(nan_at):
        feats[i, k] = np.nan
    coords = np.stack([np.arange(n) % 10, np.arange(n) // 10], 1).astype(np.int64) * 256

    def write(f: h5py.File) -> None:
        f.create_dataset("features", data=feats)
        f.create_dataset("coords", data=coords)
        f.attrs["patch_size"] = 256
        f.attrs["encoder"] = "handcrafted"

    return _h5(write)


def _huge_tiff() -> bytes:
    import tifffile

    buf = io.BytesIO()  # a 42 kB tiled TIFF that declares 250,000 x 16 px (zeros compress away)
    tifffile.imwrite(buf, np.zeros((16, 250_000, 3), np.uint8), tile=(16, 256), compression="zlib", photometric="rgb")
    return buf.getvalue()


def _white_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1024, 1024), (255, 255, 255)).save(buf, format="PNG")
    return buf.getvalue()


def _shared(name: str) -> bytes:
    return require_data(f"slides/{name}").read_bytes()


# ------------------------------------------------------------------------------------------ the cases


@dataclass(frozen=True)
class Bad:
    id: str
    kind: str  # rna | report | features | slide
    make: Callable[[], tuple[str, bytes]]  # -> (file name as the user has it, content)
    message: str  # the specific message fragment, the same through the CLI and the app
    app_message: str | None = None  # where the app legitimately says something else

    def __repr__(self) -> str:
        return self.id


def _rows(n: int) -> bytes:
    return ("gene,value\n" + "".join(f"G{i},0.1\n" for i in range(n))).encode()


RNA_BAD = [
    Bad("rna-empty", "rna", lambda: ("empty.csv", b""), "the file is empty (0 bytes)"),
    Bad("rna-blank-lines", "rna", lambda: ("blank.csv", b"\n  \n\r\n"), "the file is empty"),
    Bad("rna-header-only", "rna", lambda: ("header_only.csv", (",".join(GENES) + "\n").encode()),
        "the table has a header but no data rows"),
    Bad("rna-binary", "rna", lambda: ("garbage.csv", np.random.default_rng(7).bytes(4096)),
        "cannot parse as a table (binary data, not CSV/TSV text)"),
    Bad("rna-excel-renamed", "rna", lambda: ("case.csv", _xlsx()),
        "cannot parse as a table (an Excel/Office document: save it as CSV)"),
    Bad("rna-image-renamed", "rna", lambda: ("case.tsv", _white_png()), "cannot parse as a table (a PNG image"),
    Bad("rna-gzip-bomb", "rna", lambda: ("case.csv.gz", gzip.compress(b"GENE0001\n" + b"0\n" * (33 << 20), 1)),
        "too large once decompressed (more than 64 MiB; limit 64 MiB)"),
    Bad("rna-truncated-gzip", "rna", lambda: ("case.csv.gz", gzip.compress(good_rna().encode())[:600]),
        "cannot read (Compressed file ended before the end-of-stream marker was reached)"),
    Bad("rna-too-many-rows", "rna", lambda: ("long.csv", _rows(200_001)), "too many rows (more than 200,000; limit 200,000)"),
    Bad("rna-too-many-columns", "rna", lambda: ("wide.csv", _wide([f"G{i}" for i in range(100_001)], [0] * 100_001).encode()),
        "too many columns (100,001; limit 100,000)"),
    Bad("rna-ragged-rows", "rna", lambda: ("ragged.csv", (good_rna().rstrip("\n") + ",1,2\n").encode()),
        "cannot parse as a table (rows have 2 more fields than the header's 200; wrong separator?)"),
    Bad("rna-infinite", "rna", lambda: ("inf.csv", _rna_with(GENE0007="inf", GENE0099="-inf")),
        "2 infinite value(s) (first: gene GENE0007); expression values must be finite"),
    Bad("rna-non-numeric", "rna", lambda: ("text.csv", _rna_with(GENE0003="high")), "non-numeric value 'high' for gene GENE0003"),
    Bad("rna-decimal-comma", "rna",
        lambda: ("excel_fr.csv", _wide(GENES, [str(v).replace(".", ",") for v in _values()], sep=";").encode()),
        "for gene GENE0001 (a decimal comma? write numbers with a dot)"),
    Bad("rna-ensembl-ids", "rna", lambda: ("ensembl.csv", _wide([f"ENSG{i:011d}.3" for i in range(200)], list(_values())).encode()),
        "only 0 % of the model's 200 genes found (need 50 %): 0 of 200 have a value; the model's genes look like "
        "GENE0001, GENE0002, the file's like ENSG00000000000, ENSG00000000001"),
    Bad("rna-low-coverage", "rna", lambda: ("few.csv", _wide(GENES[:24], list(_values()[:24])).encode()),
        "only 12 % of the model's 200 genes found (need 50 %): 24 of 200 have a value"),
    Bad("rna-mostly-nan", "rna", lambda: ("holes.csv", _wide(GENES, list(_values()[:50]) + ["NaN"] * 75 + [""] * 75).encode()),
        "only 25 % of the model's 200 genes found (need 50 %): 50 of 200 have a value, 150 more are empty or NaN"),
    Bad("rna-cohort-not-case", "rna", lambda: ("cohort.csv", (good_rna() + good_rna().split("\n", 1)[1] * 4).encode()),
        "expected one case (one row, or gene/value rows), found 5 rows"),
]

REPORT_BAD = [
    Bad("report-too-long", "report", lambda: ("long_report.txt", ((SECRET + " ") * 4000).encode()),
        "the report is too long: 260,000 characters (limit 200,000)"),
    Bad("report-binary", "report", lambda: ("scan.txt", _white_png() + SECRET.encode()),
        "the report is not plain text"),
    Bad("report-control-characters", "report",
        lambda: ("odd.txt", (SECRET + "".join(chr(c) for c in range(1, 9)) * 20).encode()),
        "the report is not plain text (160 control or undecodable characters"),
    Bad("report-blank", "report", lambda: ("blank.txt", b"  \n\t \n"), "the report is empty",
        app_message="nothing to predict from"),  # the app treats a blank report as no report
    Bad("report-only-subtype-words", "report", lambda: ("labels.txt", b"A\nB\n"),
        "the report is empty after removing subtype words"),
]

FEATURES_BAD = [
    Bad("features-no-dataset", "features", lambda: ("coords_only.h5", _h5(lambda f: f.create_dataset("coords", data=np.zeros((5, 2))))),
        "no 'features' dataset (found: coords)"),
    Bad("features-nan", "features", lambda: ("nan.h5", _features(nan_at=(2, 7, 7))),
        "features contain NaN or inf values (3 NaN, 0 inf; first in patch 2 of 50)"),
    Bad("features-wrong-dimension", "features", lambda: ("uni.h5", _features(dim=32)), "32-d patch features, model expects 64"),
    Bad("features-random-bytes", "features", lambda: ("corrupt.h5", np.random.default_rng(3).bytes(8192)), "not an HDF5 file"),
    Bad("features-truncated", "features", lambda: ("cut.h5", _features(n=2000)[:270_000]),
        "cannot read HDF5 features: Unable to synchronously open file (truncated file"),
    Bad("features-no-patches", "features", lambda: ("none.h5", _h5(lambda f: f.create_dataset("features", shape=(0, 64), dtype="f4"))),
        "features hold no patches (N = 0)"),
    Bad("features-huge-declared", "features",
        lambda: ("huge.h5", _h5(lambda f: f.create_dataset("features", shape=(2_000_000, 64), dtype="f4", chunks=(1024, 64)))),
        "too many patches (2,000,000; limit 1,000,000)"),
    Bad("features-pickle-pt", "features", lambda: ("evil.pt", _evil_pickle()),
        "cannot load as a tensor file (torch.load, weights_only): it holds pickled objects other than tensors"),
]

SLIDE_BAD = [
    Bad("slide-broken-svs", "slide", lambda: ("broken.svs", _shared("broken.svs")),
        "broken.svs: cannot open slide (Unsupported or missing image file)"),
    Bad("slide-unopenable-tiff", "slide", lambda: ("unopenable.tiff", _shared("unopenable.tiff")),
        "unopenable.tiff: cannot open slide (Unsupported TIFF compression: 52479)"),
    Bad("slide-unreadable-svs", "slide", lambda: ("unreadable.svs", _shared("unreadable.svs")),
        "unreadable.svs: cannot read region at (0, 0) level 0 (Bogus marker length)"),
    Bad("slide-truncated-svs", "slide", lambda: ("cmu-cut.svs", (b := _shared("cmu-1-small-region.svs"))[: len(b) // 10]),
        "cmu-cut.svs: cannot open slide (a TIFF header but no readable image directory: truncated or corrupt file)"),
    Bad("slide-zero-bytes", "slide", lambda: ("empty.svs", b""), "empty.svs: cannot open slide (empty file, 0 bytes)"),
    Bad("slide-text-renamed", "slide", lambda: ("notes.svs", b"this is not a slide\n" * 20),
        "notes.svs: cannot open slide (Unsupported or missing image file)"),
    Bad("slide-huge-dimensions", "slide", lambda: ("huge.tiff", _huge_tiff()),
        "huge.tiff: slide too large (250000 x 16 px; limit 200000 per side)"),
    Bad("slide-no-tissue", "slide", lambda: ("blank.png", _white_png()),
        "blank.png: no tissue found (no 256-px tile has >= 25% tissue)"),
]

# accepted tables: the same values written awkwardly must give exactly the plain table's prediction
_plain = good_rna


def _dup() -> bytes:  # GENE0005 three times: the mean of (v, v - 1, v + 1) is v
    v = float(_values()[4])
    return (good_rna().replace("\n", ",GENE0005,GENE0005\n", 1).rstrip("\n") + f",{v - 1},{v + 1}\n").encode()


RNA_SAME = {
    "utf8-bom": lambda: ("bom.csv", b"\xef\xbb\xbf" + _plain().encode()),
    "latin1": lambda: ("latin1.csv", _wide(["remarque", *GENES], ["prélèvement", *_values()]).encode("latin-1")),
    "utf16": lambda: ("utf16.csv", _plain().encode("utf-16")),
    "utf16-le-no-bom": lambda: ("utf16le.csv", _plain().encode("utf-16-le")),
    "tsv-named-csv": lambda: ("tabs.csv", _wide(GENES, list(_values()), sep="\t").encode()),
    "csv-named-tsv": lambda: ("commas.tsv", _plain().encode()),
    "semicolons": lambda: ("semi.csv", _wide(GENES, list(_values()), sep=";").encode()),
    "crlf": lambda: ("crlf.csv", _wide(GENES, list(_values()), newline="\r\n").encode()),
    "old-mac-cr": lambda: ("cr.csv", _wide(GENES, list(_values()), newline="\r").encode()),
    "gzip": lambda: ("case.csv.gz", gzip.compress(_plain().encode())),
    "gzip-named-csv": lambda: ("case.csv", gzip.compress(_plain().encode())),
    "gene-value-rows": lambda: ("long.csv", "".join(f"{g},{v}\n" for g, v in zip(GENES, _values())).encode()),
    "gene-value-rows-header": lambda: ("long.tsv", ("gene\tvalue\n" + "".join(f"{g}\t{v}\n" for g, v in zip(GENES, _values()))).encode()),
    "id-label-suffix-case": lambda: ("tcga.csv", _wide(["patient_id", "oncotree_code", *[f"{g.lower()}_rnaseq" for g in GENES]],
                                                      ["P1", "IDC", *_values()]).encode()),
    "duplicate-genes-averaged": lambda: ("dups.csv", _dup()),
}
# accepted, but the values differ from the plain table's
RNA_OTHER = {
    "all-negative": lambda: ("negative.csv", _wide(GENES, list(-np.abs(_values()) - 0.5)).encode()),
    "raw-counts": lambda: ("counts.csv", _wide(GENES, list(np.random.default_rng(1).integers(0, 50_000, 200))).encode()),
    "some-nan": lambda: ("some_nan.csv", _wide(GENES, list(_values()[:190]) + [""] * 10).encode()),
}

def _write(tmp: Path, made: tuple[str, bytes]) -> Path:
    path = tmp / made[0]
    path.write_bytes(made[1])
    return path


# ------------------------------------------------------------------------------------------ checkpoints


def _demo_doc() -> dict:
    doc = json.loads(MODEL_PATH.with_suffix(".json").read_text(encoding="utf-8"))
    doc.pop("demo", None)
    return doc


def _nan_weights() -> bytes:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(MODEL_PATH))
    key = next(k for k, v in sorted(tensors.items()) if v.is_floating_point() and not k.startswith("extra."))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        save_file(tensors, f"{tmp}/w.safetensors")
        return Path(f"{tmp}/w.safetensors").read_bytes()


@dataclass(frozen=True)
class BadCheckpoint:
    id: str
    weights: Callable[[], bytes | None]
    meta: Callable[[], dict | str | None]
    message: str
    in_app: bool = True  # the sidebar lists only .safetensors with a readable .json beside
    suffix: str = ".safetensors"

    def __repr__(self) -> str:
        return self.id

    def write(self, root: Path) -> Path:
        """<root>/<id>/checkpoints/mosare/complete-0/fold0<suffix> (+ fold0.json): the run folder is <id>."""
        folder = root / self.id / "checkpoints" / "mosare" / "complete-0"
        folder.mkdir(parents=True, exist_ok=True)
        weights, meta = self.weights(), self.meta()
        path = folder / f"fold0{self.suffix}"
        if weights is not None:
            path.write_bytes(weights)
        if meta is not None:
            (folder / "fold0.json").write_text(meta if isinstance(meta, str) else json.dumps(meta), encoding="utf-8")
        return path


CHECKPOINT_BAD = [
    BadCheckpoint("ckpt-pickle-pt", _evil_pickle, lambda: None, "pickle-based checkpoints are refused (they can run code)",
                  in_app=False, suffix=".pt"),
    BadCheckpoint("ckpt-pickle-as-safetensors", _evil_pickle, _demo_doc,
                  "not a readable safetensors file (Error while deserializing header"),
    BadCheckpoint("ckpt-no-json", MODEL_PATH.read_bytes, lambda: None,
                  "checkpoint config (.json next to the weights) not found", in_app=False),
    BadCheckpoint("ckpt-json-not-json", MODEL_PATH.read_bytes, lambda: '{"format": "mosare-checkpoint/1",',
                  "not valid JSON (Expecting property name", in_app=False),
    BadCheckpoint("ckpt-not-a-mosare-config", MODEL_PATH.read_bytes, lambda: {"format": "keras-2"},
                  "not a MoSARe checkpoint config (format 'keras-2')"),
    BadCheckpoint("ckpt-other-architecture", MODEL_PATH.read_bytes, lambda: {**_demo_doc(), "model": "snn"},
                  "weights do not match a snn with this config (missing"),
    BadCheckpoint("ckpt-other-config", MODEL_PATH.read_bytes,
                  lambda: {**_demo_doc(), "config": {**_demo_doc()["config"], "hidden": 32}},
                  "weights do not match a mosare with this config (shape mismatch"),
    BadCheckpoint("ckpt-nan-weights", _nan_weights, _demo_doc, "contains NaN or infinite values"),
    BadCheckpoint("ckpt-truncated", lambda: MODEL_PATH.read_bytes()[: MODEL_PATH.stat().st_size // 2], _demo_doc,
                  "not a readable safetensors file (Error while deserializing header"),
]


# ------------------------------------------------------------------------------------------ CLI


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _rc_err(result: tuple[int, str, str]) -> tuple[int, str]:
    return result[0], result[2]


def _one_error_line(rc: int, err: str, other: tuple[str, ...] = ()) -> str:
    """Exit code 2 and one stderr line ``mosare: error: ...`` (besides lines starting with ``other``)."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(other)]
    assert len(lines) == 1 and lines[0].startswith("mosare: error: "), err
    return lines[0]


def _predict(capsys, *args: str) -> tuple[int, str, str]:
    return _cli(capsys, "predict", "--checkpoint", str(MODEL_PATH), "--device", "cpu", *args)


@pytest.fixture(autouse=True)
def _no_pickle_ran():
    MARKER.unlink(missing_ok=True)
    yield
    assert not MARKER.exists(), "a pickle was unpickled"


@pytest.mark.parametrize("bad", RNA_BAD + REPORT_BAD + FEATURES_BAD, ids=repr)
def test_predict_refuses(bad: Bad, tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    path = _write(tmp_path, bad.make())
    flag = {"rna": "--rna", "report": "--report", "features": "--features"}[bad.kind]
    rc, _, err = _predict(capsys, flag, str(path))
    line = _one_error_line(rc, err)
    assert bad.message in line, line
    if bad.kind != "report":
        assert f"{path.name}" in line  # names the file
    assert SECRET not in line and SECRET not in caplog.text


@pytest.mark.parametrize("bad", SLIDE_BAD, ids=repr)
def test_extract_refuses(bad: Bad, tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, bad.make())
    rc, _, err = _cli(capsys, "extract", "--slides", str(path), "--out", str(tmp_path / "out"), "--encoder", "handcrafted",
                      "--workers", "0", "--device", "cpu")
    line = _one_error_line(rc, err, other=("encoder handcrafted:", f"{path.name}: no MPP metadata"))
    assert line == f"mosare: error: {bad.message}", line
    assert not list((tmp_path / "out").glob("*.h5"))


@pytest.mark.parametrize("bad", CHECKPOINT_BAD, ids=repr)
def test_predict_refuses_checkpoint(bad: BadCheckpoint, tmp_path: Path, capsys) -> None:
    ckpt = bad.write(tmp_path)
    rna = _write(tmp_path, ("case.csv", good_rna().encode()))
    rc, _, err = _cli(capsys, "predict", "--checkpoint", str(ckpt), "--rna", str(rna), "--device", "cpu")
    line = _one_error_line(rc, err)
    assert bad.message in line, line


def test_real_process_prints_one_line_without_library_warnings(tmp_path: Path) -> None:
    """In a real process, library warnings (PIL's corrupt-EXIF note, torch's pickle-protocol note) would add
    stderr lines that capsys does not show: run two cases as `python -m mosare`."""
    import subprocess
    import sys

    evil = _write(tmp_path, FEATURES_BAD[-1].make())
    cut = _write(tmp_path, SLIDE_BAD[3].make())
    for args, message in ((["predict", "--checkpoint", str(MODEL_PATH), "--device", "cpu", "--features", str(evil)],
                           FEATURES_BAD[-1].message),
                          (["extract", "--slides", str(cut), "--out", str(tmp_path / "out"), "--workers", "0",
                            "--device", "cpu"], SLIDE_BAD[3].message)):
        proc = subprocess.run([sys.executable, "-m", "mosare", *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONWARNINGS": "default"})
        assert proc.returncode == 2, proc.stderr
        assert message in _one_error_line(proc.returncode, proc.stderr, other=("encoder handcrafted:",))


def _probabilities(out: str) -> dict[str, str]:
    return dict(ln.split("\t") for ln in out.splitlines() if "\t" in ln and not ln.startswith("prediction"))


@pytest.mark.parametrize("name", [*RNA_SAME, *RNA_OTHER])
def test_predict_accepts_awkward_tables(name: str, tmp_path: Path, capsys) -> None:
    plain = _write(tmp_path, ("plain.csv", good_rna().encode()))
    rc, out, err = _predict(capsys, "--rna", str(plain))
    assert rc == 0, err
    expected = _probabilities(out)
    path = _write(tmp_path, (RNA_SAME | RNA_OTHER)[name]())
    rc, out, err = _predict(capsys, "--rna", str(path))
    assert rc == 0, err
    assert "Traceback" not in err and "error" not in err
    got = _probabilities(out)
    assert set(got) == {"A", "B"}
    if name in RNA_SAME:
        assert got == expected


def test_notes_for_duplicates_and_missing_values(tmp_path: Path) -> None:
    from mosare.inference import Predictor

    predictor = Predictor(MODEL_PATH)
    plain = predictor.make_case(rna=_write(tmp_path, ("plain.csv", good_rna().encode())))
    assert plain.gene_coverage == 1.0 and plain.notes == []
    dup = predictor.make_case(rna=_write(tmp_path, RNA_SAME["duplicate-genes-averaged"]()))
    assert dup.notes == ["RNA: 1 gene(s) appear more than once; their values were averaged"]
    np.testing.assert_allclose(dup.rna, plain.rna, atol=1e-6)
    holes = predictor.make_case(rna=_write(tmp_path, RNA_OTHER["some-nan"]()))
    assert holes.gene_coverage == pytest.approx(0.95)
    assert holes.notes == ["RNA: 190 of the model's 200 genes found (95 %); the missing ones get the training mean",
                           "RNA: 10 gene(s) have an empty or NaN value and count as missing"]
    # a missing gene gets the training mean: after standardisation it is exactly 0
    z = predictor._rna(holes.rna)
    assert np.all(np.abs(z[190:]) < 1e-6)


def test_report_text_never_in_messages_or_logs(tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    report = tmp_path / "report.txt"
    report.write_text(f"Invasive carcinoma. {SECRET}", encoding="utf-8")
    bad_rna = _write(tmp_path, RNA_BAD[0].make())
    for extra in (("--rna", str(bad_rna)), ("--features", str(_write(tmp_path, FEATURES_BAD[1].make())))):
        rc, out, err = _cli(capsys, "-v", "predict", "--checkpoint", str(MODEL_PATH), "--device", "cpu",
                            "--report", str(report), *extra)
        line = _one_error_line(rc, err, other=("INFO ", "DEBUG ", "WARNING "))
        assert SECRET not in out + err + caplog.text, line
    good = _write(tmp_path, ("good.csv", good_rna().encode()))  # a successful run, verbose: not logged either
    rc, out, err = _cli(capsys, "-v", "predict", "--checkpoint", str(MODEL_PATH), "--device", "cpu",
                        "--report", str(report), "--rna", str(good))
    assert rc == 0 and "modalities: rna, rpt" in out, err
    assert "Zebra" not in out + err + caplog.text
    with pytest.raises(InputError) as info:
        from mosare.io.tables import check_report_text

        check_report_text(SECRET * 5000)
    assert SECRET not in str(info.value) and "Zebra" not in str(info.value)


# ------------------------------------------------------------------------------------------ cohort tables (experiment)


def test_experiment_refuses_bad_cohort_tables(tmp_path: Path, capsys) -> None:
    base = ["experiment", "--label-column", "code", "--classes", "A,B", "--out", str(tmp_path / "run"), "--device", "cpu"]
    wide = tmp_path / "wide.csv"
    wide.write_text(_wide(["patient_id", "code", *[f"G{i}" for i in range(100_000)]], ["P1", "A", *[0] * 100_000]))
    line = _one_error_line(*_rc_err(_cli(capsys, *base, "--rna", str(wide))))
    assert "wide.csv: too many columns (100,002; limit 100,000)" in line
    dup_key = tmp_path / "dup_key.csv"
    dup_key.write_text("patient_id,code,code,G1\nP1,A,B,0.5\nP2,B,A,0.1\n")
    line = _one_error_line(*_rc_err(_cli(capsys, *base, "--rna", str(dup_key))))
    assert "dup_key.csv: column 'code' appears 2 times" in line
    inf = tmp_path / "inf.csv"
    inf.write_text("patient_id,code,G1,G2\nP1,A,0.5,1\nP2,B,-inf,2\n")
    line = _one_error_line(*_rc_err(_cli(capsys, *base, "--rna", str(inf))))
    assert "inf.csv: 1 infinite value(s) in the expression table (first: patient 'P2', gene 'G1')" in line


def test_cohort_tables_encodings_duplicates_and_report_cap(tmp_path: Path) -> None:
    from mosare.io.readers import read_reports_table, read_rna_table

    text = "patient_id,code,TP53,GATA3,TP53\nP1,A,1,-2,3\nP2,B,,0.5,1\n"
    frames = []
    for name, data in (("u8.csv", text.encode()), ("bom.csv", b"\xef\xbb\xbf" + text.encode()),
                       ("u16.csv", text.encode("utf-16")), ("tabs.csv", text.replace(",", "\t").encode()),
                       ("l1.csv.gz", gzip.compress(text.replace("GATA3", "GATA3_é").encode("latin-1")))):
        genes, labels = read_rna_table(_write(tmp_path, (name, data)), "code")
        frames.append(genes.rename(columns={"GATA3_é": "GATA3"}))
        assert list(labels) == ["A", "B"]
        assert genes.attrs["n_duplicate_genes"] == 1 and genes.attrs["n_missing_values"] == 1
    for f in frames[1:]:
        pd.testing.assert_frame_equal(f, frames[0], check_names=False)
    assert frames[0].loc["P1", "TP53"] == 2.0 and frames[0].loc["P2", "TP53"] == 1.0  # (1+3)/2; (NaN, 1) -> 1
    reports = tmp_path / "reports.csv"
    pd.DataFrame({"patient_id": ["P1", "P2"], "code": ["A", "B"], "text": ["fine", SECRET * 4000]}).to_csv(reports, index=False)
    with pytest.raises(InputError) as info:
        read_reports_table(reports, "code")
    assert "the report of patient P2 is too long: 256,000 characters (limit 200,000)" in str(info.value)
    assert "Zebra" not in str(info.value)


# ------------------------------------------------------------------------------------------ the app

TIMEOUT = 180


def _apptest() -> type:
    return pytest.importorskip("streamlit.testing.v1").AppTest


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    """A cache folder and a model folder holding a copy of the demo model (so that the Case page does not
    materialise the demo cases) and every bad checkpoint that the sidebar lists."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("app")
    models = root / "models"
    good = models / "good-model" / "checkpoints" / "mosare" / "complete-0"
    good.mkdir(parents=True)
    shutil.copyfile(MODEL_PATH, good / "fold0.safetensors")
    (good / "fold0.json").write_text(json.dumps(_demo_doc()), encoding="utf-8")
    for bad in CHECKPOINT_BAD:
        if bad.in_app:
            bad.write(models)
    mp.setenv("MOSARE_CACHE", str(root / "cache"))
    mp.setenv("MOSARE_MODEL_DIRS", str(models))
    mp.delenv("MOSARE_SLIDE_ROOT", raising=False)
    yield root
    mp.undo()


def _label(at: AppTest, run: str) -> str:
    return next(o for o in at.sidebar.selectbox(key="model_label").options if o.endswith(f"· {run}"))


def _app_with_model(run: str = "good-model") -> AppTest:
    at = _apptest().from_file(APP, default_timeout=TIMEOUT)
    from dashboard import resources
    from dashboard.settings import Settings

    labels = resources.find_models(Settings.from_env().model_dirs)
    at.session_state["model_label"] = next(label for label in labels if label.endswith(f"· {run}"))
    at.run()  # the copy of the demo model from the start: the Demo tab does not build the demo cases
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def _load(at: AppTest, slide: tuple[str, bytes] | None = None, rna: tuple[str, bytes] | None = None,
          report: tuple[str, bytes] | None = None, paste: str = "") -> AppTest:
    for i, item in enumerate((slide, rna, report)):
        up = at.file_uploader[i].clear()
        if item is not None:
            up.upload(item[0], item[1])
    at.text_area[0].input(paste)
    next(b for b in at.button if b.label == "Load case").click().run()
    assert not at.exception, at.exception
    return at


def _error(at: AppTest) -> str:
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0] and "Traceback" not in errors[0], errors[0]
    return errors[0]


def _app_probabilities(at: AppTest) -> list[str]:
    return [e.proto.text for e in at.get("progress") if "P(" in e.proto.text]


def _run(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def _still_serving(at: AppTest) -> None:
    """The same session loads a good case (patch features + RNA) and predicts."""
    _load(at, slide=("good.h5", _features()), rna=("good.csv", good_rna().encode()))
    assert not at.error, [e.value for e in at.error]
    _run(at)
    assert at.metric[0].label == "Prediction" and at.metric[0].value in ("A", "B")


def _app_check(at: AppTest, bad: Bad) -> None:
    made = bad.make()
    if bad.kind == "slide" or bad.kind == "features":
        _load(at, slide=made)
    elif bad.kind == "rna":
        _load(at, rna=made)
    else:
        _load(at, report=made)
    msg = _error(at)
    assert (bad.app_message or bad.message) in msg, msg
    if bad.kind != "report":
        assert made[0] in msg, msg  # the user's file name, not the stored content hash
    assert SECRET not in msg and "Zebra" not in msg


def test_app_refuses_bad_tables_reports_and_features(app_env) -> None:
    at = _app_with_model()
    for bad in RNA_BAD + REPORT_BAD + FEATURES_BAD:
        _app_check(at, bad)
    _load(at, paste=(SECRET + " ") * 4000)  # pasted, not uploaded
    assert "the report is too long: 260,000 characters" in _error(at)
    _still_serving(at)


def test_app_accepts_awkward_tables_with_the_same_prediction(app_env) -> None:
    at = _app_with_model()
    _load(at, rna=("plain.csv", good_rna().encode()))
    expected = _app_probabilities(_run(at))
    assert len(expected) == 2
    for name in ("utf8-bom", "latin1", "utf16", "tsv-named-csv", "gzip", "gene-value-rows", "duplicate-genes-averaged"):
        _load(at, rna=RNA_SAME[name]())
        assert not at.error, (name, [e.value for e in at.error])
        assert _app_probabilities(_run(at)) == expected, name
    for name in RNA_OTHER:
        _load(at, rna=RNA_OTHER[name]())
        assert not at.error, (name, [e.value for e in at.error])
        _run(at)


def test_app_refuses_bad_slides(app_env) -> None:
    at = _app_with_model()
    for bad in SLIDE_BAD:
        _app_check(at, bad)
    _still_serving(at)


def test_app_refuses_bad_checkpoints(app_env) -> None:
    at = _app_with_model()
    box = at.sidebar.selectbox(key="model_label")
    for bad in CHECKPOINT_BAD:
        if not bad.in_app:
            continue
        box = at.sidebar.selectbox(key="model_label")
        box.set_value(_label(at, bad.id)).run()
        assert not at.exception, at.exception
        msg = _error(at)
        assert msg.startswith("Cannot load the model: ") and bad.message in msg, msg
    at.sidebar.selectbox(key="model_label").set_value(_label(at, "good-model")).run()
    assert not at.exception, at.exception
    _still_serving(at)
