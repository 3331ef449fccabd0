"""Report text never reaches a log, an error message or a cache file name — through the CLI and the app."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mosare.cli import main
from mosare.app.demo import MODEL_PATH
from tests.conftest import REPO_ROOT

# Distinctive words that appear nowhere else: if they show up in a log or a file name, report text leaked.
SECRET = ("Quillfeather", "Zarnovic", "4471")
REPORT = ("Patient Quillfeather Zarnovic, accession 4471. Tumor cells form cohesive glandular structures with "
          "central necrosis. Margins are negative. Quillfeather specimen received fresh.")


@pytest.fixture()
def debug_log(tmp_path):
    """Everything logged by any logger at DEBUG goes to a file for the duration of the test."""
    path = tmp_path / "all.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield path
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()


def _assert_clean(text: str, where: str) -> None:
    for word in SECRET:
        assert word not in text, f"report text ({word!r}) found in {where}"


def _assert_names_clean(folder: Path) -> int:
    n = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [*dirnames, *filenames]:
            _assert_clean(name, f"cache file name {Path(dirpath, name)}")
            n += 1
    return n


def test_cli_predict_and_its_errors_keep_the_report_out_of_logs(tmp_path, debug_log, capsys, monkeypatch):
    monkeypatch.setenv("MOSARE_CACHE", str(tmp_path / "cache"))
    report = tmp_path / "case.txt"
    report.write_text(REPORT, encoding="utf-8")
    assert main(["-v", "predict", "--checkpoint", str(MODEL_PATH), "--report", str(report)]) == 0
    long = tmp_path / "long.txt"
    long.write_text(REPORT * 3000, encoding="utf-8")  # over the length cap: an error that must not quote it
    assert main(["-v", "predict", "--checkpoint", str(MODEL_PATH), "--report", str(long)]) == 2
    out = capsys.readouterr()
    _assert_clean(out.out + out.err, "CLI output")
    _assert_clean(debug_log.read_text(encoding="utf-8"), "the log")
    from mosare.text.embed import embedding_cache_dir

    cache = embedding_cache_dir()
    if cache.exists():
        _assert_names_clean(cache)


def test_app_keeps_the_report_out_of_logs_and_cache_names(tmp_path, demo_cache, debug_log, monkeypatch):
    from streamlit.testing.v1 import AppTest

    cache = demo_cache
    monkeypatch.setenv("MOSARE_CACHE", str(cache))
    monkeypatch.setenv("MOSARE_MODEL_DIRS", str(tmp_path / "none"))
    at = AppTest.from_file(str(REPO_ROOT / "streamlit_app.py"), default_timeout=180)
    at.run()
    at.sidebar.selectbox(key="model_label").set_value("Demo: MoSARe on the synthetic cohort (with slides)").run()
    at.text_area[0].input(REPORT)
    next(b for b in at.button if b.label == "Load case").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception and at.metric[0].value in ("A", "B")
    at.switch_page("dashboard/pages/report.py").run()
    assert not at.exception
    shown = "".join(h.proto.body for h in at.get("html"))
    assert "Quillfeather" in shown  # the user sees their report ...
    _assert_clean(debug_log.read_text(encoding="utf-8"), "the log")  # ... the logs never do
    assert _assert_names_clean(cache) > 0
