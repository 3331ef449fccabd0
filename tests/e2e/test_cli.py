"""CLI error paths: one line naming the problem, exit code 2, no traceback; and a small end-to-end run.

The commands run in-process (``main([...])`` with stdout/stderr captured): what a real ``python -m mosare`` process
prints, library warnings included, is checked once in tests/e2e/test_bad_inputs.py.
"""

from __future__ import annotations

import contextlib
import io
import subprocess

import pandas as pd
import pytest

from mosare.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``mosare ARGS`` in this process: its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse errors
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(["mosare", *args], code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]


@pytest.fixture
def tables(tmp_path):
    rna = pd.DataFrame({"patient_id": [f"P{i}" for i in range(12)], "subtype": ["A", "B"] * 6,
                        "G1": range(12), "G2": [0.5] * 12})
    rna.to_csv(tmp_path / "rna.csv", index=False)
    return tmp_path


def test_missing_required_argument():
    assert_one_line_error(run_cli("experiment", "--out", "x"), "--classes")


def test_missing_input_file(tmp_path):
    proc = run_cli("experiment", "--rna", str(tmp_path / "nope.csv"), "--classes", "A,B", "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "nope.csv: file not found")


def test_wrong_table_missing_label_column(tables):
    proc = run_cli("experiment", "--rna", str(tables / "rna.csv"), "--classes", "A,B", "--out", str(tables / "o"))
    assert_one_line_error(proc, "missing column(s) oncotree_code")


def test_classes_not_in_table(tables):
    proc = run_cli("experiment", "--rna", str(tables / "rna.csv"), "--label-column", "subtype", "--classes", "X,Y",
                   "--out", str(tables / "o"))
    assert_one_line_error(proc, "no patient has a subtype in X, Y")


def test_not_a_table(tmp_path):
    (tmp_path / "bin.csv.gz").write_bytes(b"\x00\x01garbage")
    proc = run_cli("experiment", "--rna", str(tmp_path / "bin.csv.gz"), "--classes", "A,B", "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "cannot parse as a table")


def test_unknown_model_scenario_and_bad_rate(tables):
    base = ["experiment", "--rna", str(tables / "rna.csv"), "--label-column", "subtype", "--classes", "A,B", "--out", str(tables / "o")]
    assert main([*base, "--models", "mosare,resnet"]) == 2
    assert main([*base, "--scenarios", "sometimes"]) == 2
    assert main([*base, "--mask-rates", "1.5"]) == 2
    assert_one_line_error(run_cli(*base, "--folds", "zero"), "positive integer")


def test_predict_refuses_pickle_and_missing_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    evil.write_bytes(b"\x80\x04")  # never unpickled: refused by extension before any read
    (tmp_path / "r.txt").write_text("some report")
    assert_one_line_error(run_cli("predict", "--checkpoint", str(evil), "--report", str(tmp_path / "r.txt")), "pickle")
    assert not marker.exists()
    assert_one_line_error(run_cli("predict", "--checkpoint", str(tmp_path / "none.safetensors"), "--report",
                                  str(tmp_path / "r.txt")), "not found")
    assert_one_line_error(run_cli("predict", "--checkpoint", str(evil)), "at least one of")


def test_experiment_and_predict_end_to_end(tables):
    out = tables / "run"
    code = main(["experiment", "--rna", str(tables / "rna.csv"), "--label-column", "subtype", "--classes", "A,B",
                 "--out", str(out), "--folds", "2", "--epochs", "2", "--models", "mosare,snn",
                 "--scenarios", "complete", "--device", "cpu"])
    assert code == 0
    assert (out / "metrics.csv").exists() and (out / "summary.md").exists()
    ckpt = next((out / "checkpoints" / "mosare").rglob("*.safetensors"))
    pd.DataFrame({"G1": [3.0], "G2": [0.5]}).to_csv(tables / "case.csv", index=False)
    proc = run_cli("predict", "--checkpoint", str(ckpt), "--rna", str(tables / "case.csv"), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "prediction" in proc.stdout and "A\t" in proc.stdout
    pd.DataFrame({"XX": [3.0]}).to_csv(tables / "bad.csv", index=False)
    assert_one_line_error(run_cli("predict", "--checkpoint", str(ckpt), "--rna", str(tables / "bad.csv")), "genes found")
