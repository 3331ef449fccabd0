"""CheckpointMeta: the checkpoint's JSON half, typed, as the predictor, the model list and the About page read it."""

from __future__ import annotations

import json

import pytest

from mosare.app import demo_brca
from mosare.errors import CheckpointError
from mosare.model.checkpoint import CheckpointMeta


def test_the_shipped_brca_checkpoint_reads_typed():
    doc = json.loads(demo_brca.MODEL_PATH.with_suffix(".json").read_text(encoding="utf-8"))
    info = CheckpointMeta.from_dict(doc)
    assert info.model == "mosare" and info.classes == ["IDC", "ILC"] and info.fold == 0
    assert info.training == "complete" and len(info.genes) == 1558 and info.text_encoder["name"] == "tfidf-svd"
    assert info.temperature is not None and 0 < info.conformal_q <= 1 and info.conformal_alpha == 0.1
    assert info.test_metrics and info.test_metrics[0]["scenario"] == "complete"
    assert "train" in info.extra and "classes" not in info.extra  # what is not typed stays in `extra`


def test_older_and_broken_metadata():
    old = CheckpointMeta.from_dict({"model": "snn", "classes": ["A", "B"], "config": {}, "scenario": "masked-masked",
                                    "test_metrics": {"auc": 90.0}})
    assert old.training == "masked-masked" and old.test_metrics == [{"auc": 90.0}] and old.genes == []
    with pytest.raises(CheckpointError, match="class names"):
        CheckpointMeta.from_dict({"model": "snn", "config": {}, "classes": "AB"})
    with pytest.raises(CheckpointError, match="model name"):
        CheckpointMeta.from_dict({"classes": ["A", "B"], "config": {}})
