"""Single-case inference: any subset of modalities → class probabilities and the attention bundle."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mosare import MODALITIES
from mosare.errors import InputError
from mosare.io.checkpoint import load_checkpoint
from mosare.io.features import read_features
from mosare.io.tables import read_table
from mosare.preprocess.local_tokens import gmm_local_tokens
from mosare.types import Batch

MIN_GENE_COVERAGE = 0.5


@dataclass
class Case:
    """One patient's inputs. ``present`` [3] bool in MODALITIES order.

    rna [G] aligned to the checkpoint's genes; patches [N, Dw] with coords [N, 2] (level-0 px);
    sentences: the scrubbed report's sentences with embeddings [S, Dt] and the global embedding [Dt].
    """

    present: np.ndarray
    rna: np.ndarray | None = None
    gene_coverage: float = 0.0
    patches: np.ndarray | None = None
    coords: np.ndarray | None = None
    sentences: list[str] = field(default_factory=list)
    sentence_emb: np.ndarray | None = None
    report_emb: np.ndarray | None = None


@dataclass
class Prediction:
    classes: list[str]
    probs: np.ndarray  # [K]
    present: np.ndarray  # [3] what the model was given
    reconstructed: list[str]  # modalities filled by reconstruction
    attention: dict[str, np.ndarray]  # per-case maps (batch dim removed)
    sentence_scores: np.ndarray | None = None  # [S] cluster attention mapped back to sentences
    patch_cluster_scores: np.ndarray | None = None  # [N] cluster attention mapped back to patches

    @property
    def label(self) -> str:
        return self.classes[int(self.probs.argmax())]


class Predictor:
    """A loaded checkpoint plus what is needed to turn raw inputs into a batch."""

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu") -> None:
        self.model, self.meta, self.extras = load_checkpoint(checkpoint, device)
        self.device = torch.device(device)
        self.cfg = self.model.cfg
        self.classes: list[str] = list(self.meta["classes"])
        self.genes: list[str] = list(self.meta.get("genes", []))

    # ---- inputs -------------------------------------------------------------------------------------
    def rna_vector(self, path: str | Path) -> tuple[np.ndarray, float]:
        """One-case expression table (genes as columns, or a two-column gene/value table) aligned to the
        checkpoint's genes; -> (vector [G], matched fraction). Below MIN_GENE_COVERAGE it refuses."""
        df = read_table(path)
        if df.shape[1] == 2 and df.shape[0] > 2 and not pd.api.types.is_numeric_dtype(df.iloc[:, 0]):
            series = pd.Series(pd.to_numeric(df.iloc[:, 1], errors="coerce").to_numpy(), index=df.iloc[:, 0].astype(str))
        else:
            df = df.drop(columns=[c for c in ("patient_id", "oncotree_code", "label") if c in df.columns])
            if len(df) != 1:
                raise InputError(f"{path}: expected one case (one row), found {len(df)} rows")
            series = pd.to_numeric(df.iloc[0], errors="coerce")
        series.index = [str(g).removesuffix("_rnaseq") for g in series.index]
        series = series.groupby(level=0).mean()
        matched = series.reindex(self.genes)
        coverage = float(matched.notna().mean()) if self.genes else 0.0
        if coverage < MIN_GENE_COVERAGE:
            raise InputError(f"{path}: only {coverage:.0%} of the model's {len(self.genes)} genes found "
                             f"(need {MIN_GENE_COVERAGE:.0%}); check gene identifiers")
        values = matched.fillna(0.0).to_numpy(np.float32)
        if not np.isfinite(values).all():
            raise InputError(f"{path}: expression values must be finite")
        return values, coverage

    def make_case(self, rna: str | Path | None = None, report_text: str | None = None,
                  features: str | Path | None = None, embedder=None) -> Case:
        present = np.zeros(3, bool)
        case = Case(present=present)
        if rna is not None and "rna" in self.cfg.modalities:
            case.rna, case.gene_coverage = self.rna_vector(rna)
            present[1] = True
        if report_text is not None and "rpt" in self.cfg.modalities:
            from mosare.preprocess.reports import ReportEmbedder, scrub, vocabulary_for

            clean = scrub(report_text, vocabulary_for(self.classes)).text
            if not clean.strip():
                raise InputError("the report is empty after removing subtype words")
            emb = (embedder or ReportEmbedder()).embed([clean], progress=False)[0]
            if emb.global_emb.shape[0] != self.cfg.rpt_dim:
                raise InputError(f"report embedding has {emb.global_emb.shape[0]} dims, model expects {self.cfg.rpt_dim}")
            case.sentences, case.sentence_emb, case.report_emb = emb.sentences, emb.sentence_emb, emb.global_emb
            present[2] = True
        if features is not None and "wsi" in self.cfg.modalities:
            sf = read_features(features)
            if sf.features.shape[1] != self.cfg.wsi_dim:
                raise InputError(f"{features}: {sf.features.shape[1]}-d patch features, model expects {self.cfg.wsi_dim}")
            case.patches, case.coords = sf.features, sf.coords
            present[0] = True
        return case

    # ---- prediction ---------------------------------------------------------------------------------
    def batch(self, case: Case, present: np.ndarray | None = None) -> tuple[Batch, dict[str, np.ndarray]]:
        """A one-case batch; ``present`` switches modalities off (never on). Also returns GMM responsibilities."""
        cfg, C = self.cfg, self.cfg.n_local
        use = case.present & (present if present is not None else True)
        resp: dict[str, np.ndarray] = {}

        def local(items: np.ndarray | None, protos_key: str, dim: int, key: str) -> np.ndarray:
            protos = self.extras.get(protos_key)
            if items is None or protos is None or protos.size == 0:
                return np.zeros((C, dim), np.float32)
            means, r = gmm_local_tokens([items], protos)
            resp[key] = r[0]
            return means[0]

        wsi_dim = cfg.wsi_dim if "wsi" in cfg.modalities else 0
        rpt_dim = cfg.rpt_dim if "rpt" in cfg.modalities else 0
        patches = self._wsi(case.patches) if case.patches is not None else np.zeros((0, wsi_dim), np.float32)
        sents = case.sentence_emb if case.sentence_emb is not None else np.zeros((0, rpt_dim), np.float32)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
        b = Batch(
            present=torch.from_numpy(use)[None],
            labels=torch.full((1,), -1, dtype=torch.long),
            wsi_bag=t(patches[:, :wsi_dim] if wsi_dim else np.zeros((0, 0))),
            wsi_bag_mask=torch.ones(1, len(patches) if wsi_dim else 0, dtype=torch.bool),
            wsi_local=t(local(patches if case.patches is not None else None, "wsi_prototypes", wsi_dim, "wsi")
                        if wsi_dim else np.zeros((C, 0))),
            rna=t(self._rna(case.rna) if case.rna is not None else np.zeros(cfg.rna_dim if "rna" in cfg.modalities else 0)),
            rpt_bag=t(sents if rpt_dim else np.zeros((0, 0))),
            rpt_bag_mask=torch.ones(1, len(sents) if rpt_dim else 0, dtype=torch.bool),
            rpt_global=t(case.report_emb if case.report_emb is not None else np.zeros(rpt_dim)),
            rpt_local=t(local(case.sentence_emb, "rpt_prototypes", rpt_dim, "rpt") if rpt_dim else np.zeros((C, 0))),
        )
        return b.with_present(b.present), resp

    def _wsi(self, x: np.ndarray) -> np.ndarray:
        from mosare.train.data import standardise_wsi

        return standardise_wsi(x, self.extras.get("wsi_mean"), self.extras.get("wsi_std"))

    def _rna(self, x: np.ndarray) -> np.ndarray:
        from mosare.train.data import standardise_rna

        if "rna_mean" not in self.extras:
            return x
        return standardise_rna(x[None], self.extras["rna_mean"], self.extras["rna_std"])[0]

    @torch.no_grad()
    def predict(self, case: Case, present: np.ndarray | None = None) -> Prediction:
        batch, resp = self.batch(case, present)
        out = self.model(batch.to(self.device))
        att = {k: v[0].float().cpu().numpy() for k, v in out.attention.items()}
        used = batch.present[0].numpy()
        pred = Prediction(classes=self.classes, probs=out.probs[0].float().cpu().numpy(), present=used,
                          reconstructed=[m for m in self.cfg.modalities if not used[MODALITIES.index(m)]],
                          attention=att)
        if "local_cma" in att:
            mods = list(self.cfg.modalities)
            if "rpt" in resp and used[2]:
                pred.sentence_scores = resp["rpt"] @ att["local_cma"][mods.index("rpt")]
            if "wsi" in resp and used[0]:
                pred.patch_cluster_scores = resp["wsi"] @ att["local_cma"][mods.index("wsi")]
        return pred


def load_predictor(checkpoint: str | Path, device: str = "auto") -> Predictor:
    from mosare.train.loop import resolve_device

    return Predictor(checkpoint, resolve_device(device))
