"""The interface every model (MoSARe and baselines) implements, so one training loop serves all."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mosare.config import ModelConfig
from mosare.types import Batch, ModelOutput


class SubtypingModel(nn.Module):
    """Base class. Subclasses set ``requires`` (modalities the cohort must have for the model to apply)
    and implement ``forward``. ``loss`` defaults to cross-entropy on the logits of labelled cases.

    forward(batch) -> ModelOutput with logits/probs [B, K].
    """

    name: str = "base"
    requires: tuple[str, ...] = ()
    # modalities the model reads when the cohort has them (others are ignored)
    uses: tuple[str, ...] = ()
    # learning rate when TrainConfig.lr is None: chosen per model by bench/sweep.py on validation splits
    default_lr: float = 1e-4
    # AdamW weight decay when TrainConfig.weight_decay is None (same road: per model, from validation splits)
    default_weight_decay: float = 0.05
    # whether the refit on training + validation split refits the features (report encoder, expression statistics,
    # prototypes) on them too, when TrainConfig.refit_features is None: chosen per model by bench/refit_features.py
    refit_features: bool = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, batch: Batch) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch: Batch, out: ModelOutput, epoch: int) -> tuple[Tensor, dict[str, float]]:
        ce = F.cross_entropy(out.logits, batch.labels)
        return ce, {"cls": float(ce.detach())}

    def lr_scale(self, param_name: str) -> float:
        """The learning rate of parameter ``param_name`` as a multiple of the run's lr (default 1)."""
        return 1.0

    def on_batch_end(self, batch: Batch, out: ModelOutput, epoch: int) -> None:
        """Hook for non-gradient state updates (MoSARe's prototype EM). Default: nothing."""


def linear_path(path: nn.Module, x: Tensor, here: Tensor, detach: bool) -> tuple[Tensor, Tensor]:
    """A linear (logistic) path's logits [B, K] on input vectors x [B, D] through ``path`` (Dropout → Linear), zero
    where ``here`` [B, 1] is false, twice: as its own cross-entropy trains them, and as added to the fused logits —
    the same numbers, but with ``detach`` the weights are cut from the fused loss's graph (the inputs are not, so
    gradient attributions still see the path). Shared by MoSARe's per-modality paths and ``text``'s."""
    drop, layer = path
    x = drop(x)
    own = F.linear(x, layer.weight, layer.bias) * here
    fused = F.linear(x, layer.weight.detach(), layer.bias.detach()) * here if detach else own
    return own, fused
