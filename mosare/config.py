"""Configuration dataclasses, loadable from and savable to YAML or JSON.

Model defaults follow the paper (§3–4): λ = (1, 2, 1, 1), C = 16 local tokens, 16 RNA heads, 5 experts with
top-2 gating, batch 32. Training departs from it where a sweep on validation splits said so (see TrainConfig).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mosare import MODALITIES
from mosare.errors import MosareError
from mosare.io.atomic import atomic_write_text

T = TypeVar("T")

# --text-encoder choices: the fold-fitted TF-IDF encoders of mosare.text.tfidf (name -> analyzer), then the
# sentence model
ANALYZERS = {"tfidf": "char", "tfidf-word": "word"}
TEXT_ENCODERS = (*ANALYZERS, "minilm")


def cache_dir() -> Path:
    """Root of every cache (demo cases, report embeddings): ``$MOSARE_CACHE`` or ``~/.cache/mosare``."""
    return Path(os.environ.get("MOSARE_CACHE") or Path.home() / ".cache" / "mosare").expanduser()


@dataclass
class ModelConfig:
    """Architecture of MoSARe (and the sizes the baselines share)."""

    modalities: tuple[str, ...] = MODALITIES  # the modalities the model has branches for
    n_classes: int = 2
    wsi_dim: int = 1024  # patch-feature dimension (UNI: 1024)
    rna_dim: int = 4999  # number of genes
    rpt_dim: int = 384  # sentence-embedding dimension (all-MiniLM-L6-v2: 384)
    hidden: int = 256  # D in the paper (1024 there; 256 in the authors' code)
    n_local: int = 16  # C, local tokens per modality
    rna_heads: int = 16  # N_h, ABMIL heads over gene tokens (eq. 2)
    gene_token_dim: int = 8  # width of each lifted gene token before the per-head projection W_j (G tokens: keep small)
    n_experts: int = 5
    expert_top_k: int = 2
    local_keep: int = 4  # k of the activation gate (eq. 10): local tokens kept per modality
    dropout: float = 0.2
    cma_heads: int = 4
    # where `mosare` departs from the paper (`mosare-paper` forces the paper's choices; see the registry)
    # (chosen on BRCA validation splits; the paper's values, which `mosare-paper` uses, in brackets)
    fusion: str = "concat"  # X_out = LayerNorm of the concatenated 2M final tokens ["sum": of their sum]
    linear_path: bool = True  # add a per-modality linear (logistic) path on the input vectors to the logits [False]
    rna_sample_norm: bool = False  # LayerNorm each expression vector over its genes (already z-scored per gene) [True]
    input_dropout: float = 0.2  # dropout on the expression and report vectors while training [0]
    modality_dropout: float = 0.0  # while training, hide each present modality of a case with this probability [0]
    linear_l2: float = 0.03  # L2 penalty on the linear path's weights, added to the loss (its ridge)
    linear_lr_scale: float = 30.0  # the linear path's learning rate as a multiple of the run's lr (bench/sweep.py)
    linear_aux: float = 1.0  # weight of each modality's own cross-entropy on its linear logits (unimodal supervision)
    linear_detach: bool = True  # the fused loss does not train the linear path, only linear_aux does: each modality's
    # linear path is its own logistic regression, and the network learns what they leave (bench/selection.py)
    text_linear_path: bool = False  # `text` too: the same linear path (linear_l2, linear_lr_scale, linear_aux,
    # linear_detach) on the report vector beside its network; off: no setting lowered text's validation loss
    # (bench/sweep.py, assets/results/text-linear)
    # ablation switches (paper Tables 4–5)
    use_cma: bool = True
    use_moe: bool = True
    use_align: bool = True
    use_recon: bool = True
    # losses (eq. 20): λ1 SymCL, λ2 MCL, λ3 reconstruction, λ4 classification
    lambdas: tuple[float, float, float, float] = (1.0, 2.0, 1.0, 1.0)
    symcl_temperature: float = 0.07
    mcl_temperature: float = 0.1
    prototypes_per_class: int = 4
    prototype_momentum: float = 0.99

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        self.lambdas = tuple(float(x) for x in self.lambdas)  # type: ignore[assignment]
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise MosareError(f"model modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}")
        if self.n_classes < 2:
            raise MosareError("n_classes must be at least 2")
        if not 1 <= self.expert_top_k <= self.n_experts:
            raise MosareError("expert_top_k must be between 1 and n_experts")
        if self.hidden % self.cma_heads:
            raise MosareError(f"hidden ({self.hidden}) must be a multiple of cma_heads ({self.cma_heads})")
        if not 1 <= self.local_keep <= self.n_local:
            raise MosareError("local_keep must be between 1 and n_local")
        if self.fusion not in ("sum", "concat"):
            raise MosareError(f"fusion must be 'sum' or 'concat', got {self.fusion!r}")
        if not 0 <= self.dropout < 1:
            raise MosareError("dropout must lie in [0, 1)")
        if not 0 <= self.modality_dropout < 1:
            raise MosareError("modality_dropout must lie in [0, 1)")
        if self.linear_aux < 0:
            raise MosareError("linear_aux must be >= 0")
        if (self.linear_path or self.text_linear_path) and self.linear_detach and not self.linear_aux > 0:
            raise MosareError("linear_detach needs linear_aux > 0 (else nothing trains the linear path)")
        if not self.linear_lr_scale > 0:
            raise MosareError("linear_lr_scale must be > 0")

    def dim(self, modality: str) -> int:
        return {"wsi": self.wsi_dim, "rna": self.rna_dim, "rpt": self.rpt_dim}[modality]


@dataclass
class TrainConfig:
    """Optimisation of one run. Defaults were chosen by ``bench/sweep.py`` on validation splits of the BRCA
    training folds (never a test fold); see the README's "Training" section.

    AdamW with a linear warm-up over ``warmup_epochs`` then cosine decay to zero at ``epochs``. The aligning
    losses (SymCL, MCL) start at ``align_warmup``: a fraction of the run when < 1, an epoch number when >= 1.
    ``selection`` "last" (the default) keeps the weights at the end of the schedule: no per-fold epoch choice, so
    nothing rides on ~30 validation positives, and the refit runs the whole annealed schedule. "best" keeps the
    epoch of lowest temperature-scaled validation cross-entropy, stopping after ``patience`` epochs without one.
    ``bench/selection.py`` compared the two on held-out halves of the validation splits (README "Training").
    """

    epochs: int = 20
    batch_size: int = 32
    lr: float | None = None  # None: each model's own ``default_lr`` (from the sweep); a number: every model
    weight_decay: float | None = None  # None: each model's own ``default_weight_decay`` (0.05; ``text`` 5)
    warmup_epochs: int = 2
    align_warmup: float = 0.25  # fraction of the run (< 1) or epoch (>= 1) at which SymCL and MCL switch on
    patience: int = 10  # epochs without a lower validation loss before stopping (selection "best")
    selection: str = "last"  # "last": the whole schedule (bench/selection.py); "best": lowest validation loss
    val_fraction: float = 0.2
    refit: bool = True  # after selection, retrain on training + validation split for the selected number of epochs
    # (the validation split still fits the temperature, threshold and conformal sets, from the selection run)
    refit_features: bool | None = None  # the refit also refits the features on training + validation split;
    # None: each model's own ``refit_features`` (bench/refit_features.py: on for ``text``, off for ``mosare``)
    max_patches: int = 2048  # patches sampled per slide when training; all at inference
    max_sentences: int = 64  # sentences sampled per report bag when training (baselines' text bags); all at inference
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [(self.epochs >= 1, "epochs must be at least 1"), (self.batch_size >= 2, "batch_size must be at least 2"),
                  (self.lr is None or 0 < self.lr < 1, "lr must lie in (0, 1)"),
                  (self.weight_decay is None or self.weight_decay >= 0, "weight_decay must be >= 0"),
                  (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"), (self.align_warmup >= 0, "align_warmup must be >= 0"),
                  (self.patience >= 1, "patience must be at least 1"), (0 < self.val_fraction < 1, "val_fraction must lie in (0, 1)"),
                  (self.selection in ("best", "last"), f"selection must be 'best' or 'last', got {self.selection!r}"),
                  (self.refit_features in (None, True, False), "refit_features must be true, false or null"),
                  (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), f"unknown device {self.device!r}")]
        for ok, msg in checks:
            if not ok:
                raise MosareError(f"train config: {msg}")

    @property
    def align_epoch(self) -> int:
        """The first epoch with the aligning losses on."""
        return int(round(self.align_warmup * self.epochs)) if self.align_warmup < 1 else int(self.align_warmup)


@dataclass
class ExperimentConfig:
    label_column: str = "oncotree_code"
    classes: tuple[str, ...] = ()
    folds: int = 5
    seed: int = 0
    models: tuple[str, ...] = ("mosare", "snn", "abmil", "gscnn", "bp", "mcat", "porpoise", "text")
    scenarios: tuple[str, ...] = ("complete", "masked-masked", "masked-unmasked", "removed-unmasked")
    mask_rates: tuple[float, ...] = (0.1, 0.3, 0.5)
    complete_only: bool = False
    scrub_terms: tuple[str, ...] = ()
    # "tfidf": character n-gram TF-IDF → SVD fitted on each training fold; "tfidf-word": the same on words;
    # "minilm": the sentence model
    text_encoder: str = "tfidf"
    conformal_alpha: float = 0.1  # prediction sets fitted on the validation split to cover 1 − alpha of cases
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.classes, self.models, self.scenarios = tuple(self.classes), tuple(self.models), tuple(self.scenarios)
        self.mask_rates = tuple(float(r) for r in self.mask_rates)
        if self.text_encoder not in TEXT_ENCODERS:
            raise MosareError(f"text_encoder must be one of {', '.join(TEXT_ENCODERS)}, got {self.text_encoder!r}")
        if self.folds < 2:
            raise MosareError("folds must be at least 2")
        if not 0 < self.conformal_alpha < 1:
            raise MosareError("conformal_alpha must lie in (0, 1)")
        if any(not 0 <= r < 1 for r in self.mask_rates):
            raise MosareError("mask rates must lie in [0, 1)")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-safe dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a (possibly nested) config dataclass from a dict; unknown keys are an error."""
    if not isinstance(data, dict):
        raise MosareError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise MosareError(f"{cls.__name__}: unknown key(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name in ("model", "train") else None  # type: ignore[call-arg]
        if dataclasses.is_dataclass(default):
            value = from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def load_config(path: str | Path, cls: type[T]) -> T:
    """Load a config dataclass from a .yaml/.yml/.json file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise MosareError(f"cannot read config {path}: {err}") from None
    return from_dict(cls, data or {})


def save_config(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    data = to_dict(cfg)
    text = yaml.safe_dump(data, sort_keys=False) if path.suffix in (".yaml", ".yml") else json.dumps(data, indent=2)

    atomic_write_text(path, text)
