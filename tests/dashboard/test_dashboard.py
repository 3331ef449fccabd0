"""The dashboard driven in-process with Streamlit's AppTest: every page, the demo flow, uploads, bad uploads."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, require_data

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(REPO_ROOT / "streamlit_app.py")
TIMEOUT = 180


@pytest.fixture(scope="module", autouse=True)
def _cache(demo_cache):
    """The session's cache folder (demo cases materialised once) for every app in this module."""
    from streamlit import config

    config.set_option("client.showErrorDetails", "full")  # the server redacts errors; tests want them
    mp = pytest.MonkeyPatch()
    cache = demo_cache
    mp.setenv("MOSARE_CACHE", str(cache))
    mp.setenv("MOSARE_MODEL_DIRS", str(cache / "no-models"))
    yield cache
    mp.undo()


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


SYNTHETIC = "Demo: MoSARe on the synthetic cohort (with slides)"


def _synthetic(at: AppTest) -> AppTest:
    """Switch the sidebar to the synthetic three-modality demo model (the app opens on the real BRCA one)."""
    at.sidebar.selectbox(key="model_label").set_value(SYNTHETIC).run()
    assert not at.exception, at.exception
    return at


def _load_demo(at: AppTest, index: int = 0) -> AppTest:
    if at.sidebar.selectbox(key="model_label").value != SYNTHETIC:
        _synthetic(at)
    box = at.selectbox(key="demo_choice")
    box.set_value(box.options[index]).run()
    at.button(key="load_demo").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def _run(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def _page(at: AppTest, name: str) -> AppTest:
    at.switch_page(f"dashboard/pages/{name}.py").run()
    assert not at.exception, at.exception
    return at


def _report_highlighted(at: AppTest) -> None:
    html = "".join(h.proto.body for h in _page(at, "report").get("html"))
    assert "mosare-sentence" in html and "mosare-top" in html


def _probabilities(at: AppTest) -> np.ndarray:
    bars = [e for e in at.get("progress") if "P(" in e.proto.text]
    return np.array([float(e.proto.text.split("=")[-1]) for e in bars])


def _use_box(at: AppTest, label: str):
    return next(c for c in at.checkbox if c.label == label)


def test_app_opens_on_a_held_out_real_brca_patient():
    """The default demo: MoSARe trained on TCGA-BRCA RNA + reports; a held-out patient with both modalities."""
    import json

    from mosare.app import demo_brca

    at = _app()
    assert at.sidebar.selectbox(key="model_label").value.startswith("Demo: MoSARe on TCGA-BRCA")
    box = at.selectbox(key="brca_choice")
    pick = next(o for o in box.options if "RNA-seq + Report" in o)
    box.set_value(pick).run()
    at.button(key="load_brca").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    _run(at)
    assert at.metric[0].value in ("IDC", "ILC")
    assert abs(_probabilities(at).sum() - 1) < 2e-3
    sets = [m.value for m in (*at.success, *at.warning) if "Prediction set" in m.value]
    assert len(sets) == 1 and ("IDC" in sets[0] or "ILC" in sets[0]), sets
    contributions = at.table[0].value  # each modality's contribution, in the attributions' unit
    assert list(contributions.index) == ["RNA-seq", "Report"], contributions
    assert contributions.columns[0] == f"Δ log-odds({at.metric[0].value})", contributions.columns
    assert any("held out from training" in c.value for c in at.caption)
    genes = set(json.loads(demo_brca.MODEL_PATH.with_suffix(".json").read_text())["genes"])
    assert {"CDH1", "TP53"} <= genes  # real gene symbols

    _page(at, "rna")
    shown = " ".join(str(c.proto.spec) for c in at.get("plotly_chart")) + " ".join(str(d.value) for d in at.dataframe)
    assert any(g in shown for g in genes), "no real gene symbol on the RNA page"

    _report_highlighted(at)
    assert any("Slide missing" in i.value for i in _page(at, "slide").info)
    about = [m.value for m in _page(at, "about").markdown]
    assert any("TCGA-BRCA" in m for m in about) and any("character 3–5-gram TF-IDF" in m for m in about)


def test_demo_case_run_and_every_page():
    at = _load_demo(_app())
    _run(at)
    assert at.metric[0].label == "Prediction" and at.metric[0].value in ("A", "B")
    probs = _probabilities(at)
    assert probs.shape == (2,) and abs(probs.sum() - 1) < 2e-3
    assert any("Reconstructed instead of observed" in m.value for m in at.markdown)

    at.switch_page("dashboard/pages/slide.py").run()
    assert not at.exception, at.exception
    assert at.get("plotly_chart"), "heatmap figure missing"
    assert len(at.image) >= 3  # colour bar + tile galleries
    at.radio(key="hm_norm").set_value("raw").run()  # a viewer control reruns the fragment only
    at.selectbox(key="hm_score").set_value(at.selectbox(key="hm_score").options[-1]).run()
    assert not at.exception, at.exception

    _report_highlighted(at)
    assert _page(at, "rna").get("plotly_chart")

    at.switch_page("dashboard/pages/scenarios.py").run()
    assert not at.exception, at.exception
    assert at.get("plotly_chart") and len(at.dataframe) >= 2
    at.multiselect(key="sc_pick").set_value(at.multiselect(key="sc_pick").options).run()  # all shipped experiments
    assert not at.exception, at.exception
    n_exp = len(at.multiselect(key="sc_pick").options)
    assert n_exp == 5
    # per experiment: metric-vs-rate figure + grid + comparison; a training-history figure where history.csv exists
    histories = [s for s in at.selectbox if s.key and s.key.startswith("sc_hist_")]
    assert len(histories) == 3  # the three TCGA-BRCA result folders
    assert len(at.get("plotly_chart")) == n_exp + len(histories) and len(at.dataframe) >= 2 * n_exp

    at.switch_page("dashboard/pages/about.py").run()
    assert not at.exception, at.exception
    assert any("Research use only" in w.value for w in at.warning)
    assert any("not pathology-pretrained" in m.value or "handcrafted" in m.value for m in at.markdown)


def test_switching_a_modality_off_changes_what_the_model_gets():
    at = _run(_load_demo(_app()))
    before = _probabilities(at)
    assert any("none" in m.value for m in at.markdown if "Reconstructed" in m.value)
    _use_box(at, "RNA-seq").uncheck()
    _use_box(at, "Slide").uncheck()
    _run(at)
    after = _probabilities(at)
    assert not np.allclose(before, after)
    recon = next(m.value for m in at.markdown if "Reconstructed" in m.value)
    assert "RNA-seq" in recon and "Slide" in recon
    at.switch_page("dashboard/pages/slide.py").run()
    assert any("not given to the model" in i.value for i in at.info)  # slide switched off: no heatmap


def test_all_modalities_off_is_an_error_not_a_crash():
    at = _run(_load_demo(_app()))
    for label in ("Slide", "RNA-seq", "Report"):
        _use_box(at, label).uncheck()
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception
    assert any("no modality left" in e.value for e in at.error)


def test_upload_real_svs_end_to_end():
    svs = require_data("slides/cmu-1-small-region.svs")
    at = _synthetic(_app())
    at.file_uploader[0].upload(svs.name, svs.read_bytes(), "application/octet-stream")
    at.text_area[0].input("Invasive carcinoma with cohesive glandular structures. Margins are negative.")
    next(b for b in at.button if b.label == "Load case").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    _run(at)
    assert at.metric[0].value in ("A", "B")
    at.switch_page("dashboard/pages/slide.py").run()
    assert not at.exception, at.exception
    assert at.get("plotly_chart")


def test_broken_upload_shows_an_error_and_the_app_stays_usable():
    broken = require_data("slides/broken.svs")
    at = _synthetic(_app())
    at.file_uploader[0].upload("broken.svs", broken.read_bytes())
    next(b for b in at.button if b.label == "Load case").click().run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "broken.svs" in at.error[0].value  # names the file the user gave
    assert "\n" not in at.error[0].value and "Traceback" not in at.error[0].value
    _run(_load_demo(at))  # the same session still works
    assert at.metric[0].value in ("A", "B")


def test_experiment_checkpoint_from_the_sidebar_with_uploaded_features_and_rna(tmp_path, monkeypatch):
    """Any `mosare experiment` checkpoint under MOSARE_MODEL_DIRS is offered; a case can be uploaded as a
    feature .h5 plus a one-row RNA table."""
    import json
    import shutil

    import pandas as pd

    from mosare.app.demo import MODEL_PATH, ensure_demo_cases

    run = tmp_path / "runs" / "my-experiment" / "checkpoints" / "mosare" / "complete-0"
    run.mkdir(parents=True)
    shutil.copyfile(MODEL_PATH, run / "fold0.safetensors")
    doc = json.loads(MODEL_PATH.with_suffix(".json").read_text())
    doc.pop("demo")
    (run / "fold0.json").write_text(json.dumps(doc))
    monkeypatch.setenv("MOSARE_MODEL_DIRS", str(tmp_path / "runs"))
    case = next(c for c in ensure_demo_cases() if c.features_path and c.rna_path)

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    model_box = at.sidebar.selectbox(key="model_label")
    label = next(o for o in model_box.options if "my-experiment" in o)
    assert label.startswith("mosare · complete")
    model_box.set_value(label).run()
    assert not at.exception, at.exception
    assert any("belong to the demo model" in i.value for i in at.info)
    at.file_uploader[0].upload(f"{case.patient_id}.h5", case.features_path.read_bytes())
    at.file_uploader[1].upload("rna.csv", pd.read_csv(case.rna_path).to_csv(index=False).encode())
    next(b for b in at.button if b.label == "Load case").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    _run(at)
    assert at.metric[0].value == case.label
    recon = next(m.value for m in at.markdown if "Reconstructed" in m.value)
    assert "Report" in recon  # no report given: the model reconstructs it


def test_slide_from_the_server_folder(monkeypatch):
    """Slides too big to upload are picked from MOSARE_SLIDE_ROOT (read-only, confined to that folder)."""
    svs = require_data("slides/cmu-1-small-region.svs")
    monkeypatch.setenv("MOSARE_SLIDE_ROOT", str(svs.parent))
    at = _synthetic(_app())
    box = next(s for s in at.selectbox if "server folder" in s.label)
    assert all(not o.startswith(("/", "..")) for o in box.options)  # relative names only
    box.set_value("cmu-1-small-region.svs")
    next(b for b in at.button if b.label == "Load case").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    _run(at)
    at.switch_page("dashboard/pages/slide.py").run()
    assert at.get("plotly_chart") and not at.exception


def test_sign_in_gate_when_auth_is_configured():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "id", "client_secret": "secret",
                          "server_metadata_url": "https://accounts.example.org/.well-known/openid-configuration"}
    at.run()
    assert not at.exception, at.exception
    assert [b.label for b in at.button] == ["Sign in"]
    assert not any(t.value == "Case" for t in at.title)  # no page content before sign-in
