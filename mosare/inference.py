"""Single-case inference: any subset of modalities → class probabilities and the attention bundle."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import logsumexp

from mosare import MODALITIES
from mosare.data.local_tokens import gmm_local_tokens
from mosare.errors import InputError
from mosare.io.features import read_features
from mosare.io.readers import clean_gene_id
from mosare.io.tables import MAX_CASE_TABLE_BYTES, MAX_CASE_TABLE_ROWS, check_report_text, read_table, to_float
from mosare.model.checkpoint import CheckpointMeta, load_checkpoint
from mosare.text.embed import ReportEmbedder
from mosare.text.scrub import has_content, scrub, vocabulary_for
from mosare.text.sentences import split_sentences
from mosare.text.tfidf import TfidfSvdEncoder
from mosare.train.calibration import apply_temperature, prediction_sets, set_label
from mosare.train.data import standardise_rna, standardise_wsi
from mosare.types import Batch, resolve_device

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
    notes: list[str] = field(default_factory=list)  # what reading the inputs had to fix (genes averaged, missing)


@dataclass
class Prediction:
    classes: list[str]
    probs: np.ndarray  # [K]
    present: np.ndarray  # [3] what the model was given
    reconstructed: list[str]  # modalities filled by reconstruction
    attention: dict[str, np.ndarray]  # per-case maps (batch dim removed)
    sentence_scores: np.ndarray | None = None  # [S] cluster attention mapped back to sentences
    patch_cluster_scores: np.ndarray | None = None  # [N] cluster attention mapped back to patches
    calibrated: np.ndarray | None = None  # [K] temperature-scaled probabilities (checkpoints that carry a temperature)
    prediction_set: str | None = None  # conformal set, e.g. "IDC" or "IDC or ILC" (checkpoints with a quantile)
    coverage: float | None = None  # the set's target coverage, 1 − alpha
    log_shown: np.ndarray | None = None  # [K] float64 log of :attr:`shown`, from the logits (exact where P ≈ 1)

    @property
    def label(self) -> str:
        return self.classes[int(self.probs.argmax())]

    @property
    def shown(self) -> np.ndarray:
        """[K] the probabilities a reader sees: temperature-scaled where the checkpoint carries a temperature."""
        return self.calibrated if self.calibrated is not None else self.probs

    def log_odds(self, k: int) -> float:
        """log P(k) − log(1 − P(k)) of the shown probabilities (the attributions' unit, mosare.explain.attribution)."""
        z = self.log_shown if self.log_shown is not None else np.log(np.clip(self.shown.astype(np.float64), 1e-300, 1))
        return float(z[k] - logsumexp(np.delete(z, k)))


class Predictor:
    """A loaded checkpoint plus what is needed to turn raw inputs into a batch."""

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu") -> None:
        self.model, meta, self.extras = load_checkpoint(checkpoint, device)
        self.checkpoint = Path(checkpoint).resolve()  # what a Ray job actor loads in its place (mosare.app.ray_jobs)
        self.device = torch.device(device)
        self.cfg = self.model.cfg
        self.info = CheckpointMeta.from_dict(meta, str(checkpoint))  # the checkpoint's metadata, typed
        self.classes: list[str] = list(self.info.classes)
        self.genes: list[str] = list(self.info.genes)
        text_meta = self.info.text_encoder
        # a report encoder fitted on the training fold (TF-IDF → SVD) travels in the checkpoint; else a sentence model
        self.text_encoder = TfidfSvdEncoder.from_state(self.extras, text_meta) if text_meta else None

    # ---- inputs -------------------------------------------------------------------------------------
    def rna_vector(self, path: str | Path, notes: list[str] | None = None) -> tuple[np.ndarray, float]:
        """One-case expression table aligned to the checkpoint's genes; -> (vector [G], found fraction).

        Layouts: genes as columns (one row; id or label columns are ignored) or gene/value rows (two columns,
        header optional). Read with the one-case caps (``MAX_CASE_TABLE_BYTES``/``_ROWS`` of
        :mod:`mosare.io.tables`), any encoding or separator. Gene ids are cleaned as in cohort tables
        (``_rnaseq``, ``SYMBOL|ENTREZ``, Ensembl versions) and matched exactly, else case-insensitively.
        Duplicate genes are averaged; empty/NaN values count as missing genes; missing genes get the training
        mean. Negative values are fine (z-scores, log ratios). Infinite or non-numeric values of model genes,
        and a table where fewer than ``MIN_GENE_COVERAGE`` of the model's genes have a value, are refused.
        What was averaged or missing is appended to ``notes`` (one line each).
        """

        df = read_table(path, max_bytes=MAX_CASE_TABLE_BYTES, max_rows=MAX_CASE_TABLE_ROWS)
        if df.shape[1] == 2 and len(df) >= 2 and not pd.api.types.is_numeric_dtype(df.iloc[:, 0].dtype):
            # gene/value rows; without a header line the first pair is the header
            names = [df.columns[0], *df.iloc[:, 0].tolist()]
            raw = [df.columns[1], *df.iloc[:, 1].tolist()]
        else:
            if len(df) != 1:
                raise InputError(f"{path}: expected one case (one row, or gene/value rows), found {len(df)} rows")
            names, raw = list(df.columns), df.iloc[0].tolist()
        genes, n_genes = self.genes, len(self.genes)
        if not n_genes:
            raise InputError("the checkpoint lists no genes: it cannot take an RNA table")
        exact = {g: i for i, g in reversed(list(enumerate(genes)))}
        folded = {str(g).upper(): i for i, g in reversed(list(enumerate(genes)))}
        hits: dict[int, list[float]] = {}
        unmatched: list[str] = []
        for name, value in zip(names, raw):
            g = clean_gene_id(name)
            if g is None:
                continue
            i = exact.get(g, folded.get(g.upper()))
            if i is None:
                if len(unmatched) < 3:
                    unmatched.append(g[:40])
                continue
            x = to_float(value)
            if x is None:
                comma = to_float(str(value).replace(",", ".", 1)) is not None
                raise InputError(f"{path}: non-numeric value {str(value)[:40]!r} for gene {genes[i]}"
                                 + (" (a decimal comma? write numbers with a dot)" if comma else ""))
            hits.setdefault(i, []).append(x)
        inf = [(i, x) for i, xs in hits.items() for x in xs if np.isinf(x)]
        if inf:
            raise InputError(f"{path}: {len(inf)} infinite value(s) (first: gene {genes[inf[0][0]]}); expression "
                             "values must be finite (a log of 0 gives -inf)")
        n_dup = sum(1 for xs in hits.values() if len(xs) > 1)
        found = {i: float(np.nanmean(xs)) for i, xs in hits.items() if not np.isnan(xs).all()}
        n_nan = len(hits) - len(found)
        coverage = len(found) / n_genes
        if coverage < MIN_GENE_COVERAGE:
            pct = int(coverage * 100)  # floor: 49.5 % is not shown as the 50 % it fails to reach
            detail = f"{len(found)} of {n_genes} have a value" + (f", {n_nan} more are empty or NaN" if n_nan else "")
            ids = f"; the model's genes look like {', '.join(map(str, genes[:2]))}"
            if not hits and unmatched:
                ids += f", the file's like {', '.join(unmatched[:2])}"
            raise InputError(f"{path}: only {pct} % of the model's {n_genes} genes found "
                             f"(need {MIN_GENE_COVERAGE * 100:.0f} %): {detail}{ids}")
        fill = self.extras.get("rna_mean")
        values = (np.asarray(fill, np.float32).copy() if fill is not None and np.shape(fill) == (n_genes,)
                  else np.zeros(n_genes, np.float32))
        for i, x in found.items():
            values[i] = x
        said = []
        if len(found) < n_genes:
            said.append(f"RNA: {len(found)} of the model's {n_genes} genes found ({int(coverage * 100)} %); "
                        "the missing ones get the training mean")
        if n_dup:
            said.append(f"RNA: {n_dup} gene(s) appear more than once; their values were averaged")
        if n_nan:
            said.append(f"RNA: {n_nan} gene(s) have an empty or NaN value and count as missing")
        for line in said:
            logging.getLogger(__name__).info("%s: %s", path, line)
        if notes is not None:
            notes.extend(said)
        return values, coverage

    def make_case(self, rna: str | Path | None = None, report_text: str | None = None,
                  features: str | Path | None = None, embedder=None) -> Case:
        """Validate and embed the given inputs (every file is checked before the report is embedded). One-line
        InputError for a bad input; a report's text never appears in an error message or a log line. Notes
        (e.g. genes averaged or missing) go to ``case.notes``."""
        present = np.zeros(3, bool)
        case = Case(present=present)
        notes: list[str] = []
        if report_text is not None and "rpt" in self.cfg.modalities:
            check_report_text(report_text)  # cheap checks first, before anything is read or embedded
        if rna is not None and "rna" in self.cfg.modalities:
            case.rna, case.gene_coverage = self.rna_vector(rna, notes)
            present[1] = True
        if features is not None and "wsi" in self.cfg.modalities:
            sf = read_features(features)
            if sf.features.shape[1] != self.cfg.wsi_dim:
                raise InputError(f"{features}: {sf.features.shape[1]}-d patch features, model expects {self.cfg.wsi_dim}")
            case.patches, case.coords = sf.features, sf.coords
            present[0] = True
        if report_text is not None and "rpt" in self.cfg.modalities:
            clean = scrub(report_text, [*vocabulary_for(self.classes), *self.info.scrub_terms]).text
            if not has_content(clean):
                raise InputError("the report is empty after removing subtype words")
            if self.text_encoder is not None:
                case.sentences = split_sentences(clean)
                case.sentence_emb = self.text_encoder.encode_sentences([case.sentences])[0]
                case.report_emb = self.text_encoder.encode_reports([clean])[0]
            else:
                emb = (embedder or ReportEmbedder()).embed([clean], progress=False)[0]
                if emb.global_emb.shape[0] != self.cfg.rpt_dim:
                    raise InputError(f"report embedding has {emb.global_emb.shape[0]} dims, model expects {self.cfg.rpt_dim}")
                case.sentences, case.sentence_emb, case.report_emb = emb.sentences, emb.sentence_emb, emb.global_emb
            present[2] = True
        case.notes = notes
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
        wsi_local = local(patches if case.patches is not None else None, "wsi_prototypes", wsi_dim, "wsi")
        rpt_local = local(case.sentence_emb, "rpt_prototypes", rpt_dim, "rpt")
        rna = self._rna(case.rna) if case.rna is not None else np.zeros(cfg.rna_dim if "rna" in cfg.modalities else 0)
        report = case.report_emb if case.report_emb is not None else np.zeros(rpt_dim)
        batch = Batch.collate(use[None], np.full(1, -1), wsi_bags=[patches[:, :wsi_dim]], wsi_local=wsi_local[None],
                              rna=rna[None], rpt_bags=[sents[:, :rpt_dim]], rpt_global=report[None],
                              rpt_local=rpt_local[None], wsi_dim=wsi_dim, rpt_dim=rpt_dim)
        return batch, resp

    def _wsi(self, x: np.ndarray) -> np.ndarray:
        return standardise_wsi(x, self.extras.get("wsi_mean"), self.extras.get("wsi_std"))

    def _rna(self, x: np.ndarray) -> np.ndarray:
        if "rna_mean" not in self.extras:
            return x
        return standardise_rna(x[None], self.extras["rna_mean"], self.extras["rna_std"])[0]

    def _calibrate(self, pred: Prediction) -> None:
        """Temperature-scaled probabilities and the conformal prediction set, when the checkpoint carries them
        (fitted on the run's validation split by ``mosare experiment``)."""
        t, q = self.info.temperature, self.info.conformal_q
        if t is None:
            return
        pred.calibrated = apply_temperature(pred.probs[None], float(t))[0]
        if q is not None:
            pred.prediction_set = set_label(prediction_sets(pred.calibrated[None], float(q))[0], self.classes)
            pred.coverage = 1.0 - float(self.info.conformal_alpha)

    @torch.no_grad()
    def predict(self, case: Case, present: np.ndarray | None = None) -> Prediction:
        return self.predict_many(case, [case.present if present is None else present])[0]

    @torch.no_grad()
    def predict_many(self, case: Case, presents: list[np.ndarray]) -> list[Prediction]:
        """One case under several modality selections, in ONE forward pass (a batch of the same case with
        different presence masks; the model has no cross-sample layers in eval mode, so each row equals a
        separate call). Local tokens are computed once."""
        full, resp = self.batch(case)
        n = len(presents)
        use = np.stack([case.present & np.asarray(p, bool) for p in presents])
        rows = Batch(**{f.name: getattr(full, f.name).expand(n, *getattr(full, f.name).shape[1:])
                        for f in fields(Batch)})
        batch = rows.with_present(torch.from_numpy(use))
        out = self.model(batch.to(self.device))
        probs = out.probs.float().cpu().numpy()
        t = self.info.temperature  # log of the shown probabilities [n, K], from the logits (digits kept where P ≈ 1)
        log_shown = torch.log_softmax(out.logits.double() / (1.0 if t is None else float(t)), dim=-1).cpu().numpy()
        maps = {k: v.float().cpu().numpy() for k, v in out.attention.items()}
        mods = list(self.cfg.modalities)
        preds = []
        for i in range(n):
            att = {k: v[i] for k, v in maps.items()}
            used = use[i]
            pred = Prediction(classes=self.classes, probs=probs[i], present=used,
                              reconstructed=[m for m in mods if not used[MODALITIES.index(m)]], attention=att,
                              log_shown=log_shown[i])
            self._calibrate(pred)
            if "local_cma" in att:
                if "rpt" in resp and used[2]:
                    pred.sentence_scores = resp["rpt"] @ att["local_cma"][mods.index("rpt")]
                if "wsi" in resp and used[0]:
                    pred.patch_cluster_scores = resp["wsi"] @ att["local_cma"][mods.index("wsi")]
            preds.append(pred)
        return preds


def load_predictor(checkpoint: str | Path, device: str = "auto") -> Predictor:
    return Predictor(checkpoint, resolve_device(device))
