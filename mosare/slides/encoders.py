"""Patch encoders by name: a registry of :class:`Encoder` specs that build ``torch.nn.Module`` feature extractors.

Every built module takes a float tensor ``[B, 3, S, S]`` (``S = encoder.input_size``) that is already scaled to
[0, 1] and normalised with ``encoder.mean`` / ``encoder.std``, and returns features ``[B, encoder.dim]``.

Entries:

- ``uni``: UNI (ViT-L/16, 1,024-d), the paper's pathology encoder. Its weights are gated on the Hugging Face
  hub and are never downloaded silently: pass a local file (``--encoder-weights`` or ``$MOSARE_UNI_WEIGHTS``).
- ``handcrafted``: colour histograms, stain (optical density) and gradient/texture statistics (64-d), pure
  torch and fast on CPU. Not pathology-pretrained; the demo default.
- ``random-resnet18``: a ResNet-18 with random weights seeded deterministically (512-d). Not
  pathology-pretrained; for tests and for timing a CNN forward pass without any weights.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mosare.errors import InputError, MosareError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1.0, 1.0, 1.0)
RANDOM_SEED = 0
HF_HOST = ("huggingface.co", 443)


@dataclass(frozen=True)
class Encoder:
    """A named patch encoder: geometry, normalisation, provenance, and a factory for the module.

    ``factory()`` builds the architecture (random or fixed weights); ``build`` adds weight loading and device.
    ``weights_env``/``weights_url`` are set for encoders whose weights come from a local file.
    """

    name: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pathology_pretrained: bool
    description: str
    factory: Callable[[], nn.Module] = field(repr=False, compare=False)
    note: str = ""
    """Why it exists when not pathology-pretrained, e.g. ``"random weights; for tests and the demo"``."""
    weights_env: str | None = None
    weights_url: str | None = None
    hub_id: str | None = None
    hub_kwargs: dict = field(default_factory=dict, repr=False, compare=False)
    autocast: bool = True  # bf16 autocast on CUDA; off for encoders whose statistics need float32

    @property
    def provenance(self) -> str:
        """One phrase for logs and tables, e.g. ``"not pathology-pretrained (random weights; ...)"``."""
        label = "pathology-pretrained" if self.pathology_pretrained else "not pathology-pretrained"
        return f"{label} ({self.note})" if self.note else label

    @property
    def needs_weights(self) -> bool:
        return self.weights_env is not None

    def weights_path(self, weights: str | Path | None = None) -> Path | None:
        """The local weights file: ``weights`` if given, else ``$<weights_env>``, else ``None``."""
        if weights is None and self.weights_env:
            weights = os.environ.get(self.weights_env) or None
        return None if weights is None else Path(weights).expanduser()

    def build(self, device: str | torch.device = "cpu", weights: str | Path | None = None, *,
              random_weights: bool = False) -> nn.Module:
        """The encoder module in eval mode on ``device``: ``[B, 3, S, S]`` normalised -> ``[B, dim]``.

        ``weights``: a local ``.safetensors`` / ``.bin`` / ``.pth`` state dict (encoders with ``weights_env``).
        ``random_weights``: build the bare architecture without weights (benchmarks only).
        Raises :class:`MosareError` at once when required weights are missing and the hub is unreachable.
        """
        path = self.weights_path(weights)
        if path is not None and not self.needs_weights:
            raise MosareError(f"encoder {self.name} takes no weights file (got {path})")
        if not self.needs_weights or random_weights:
            model = _seeded(self.factory)
        elif path is not None:
            model = _seeded(self.factory)
            load_state_dict_file(model, path, self.name)
        else:
            model = self._from_hub()
        return model.eval().requires_grad_(False).to(device)

    def _from_hub(self) -> nn.Module:
        """Load from the Hugging Face hub when a token and network exist; otherwise fail at once."""
        reason = _hub_unavailable()
        if reason is None and not _hf_token():
            reason = "no Hugging Face token is set"
        if reason is not None or self.hub_id is None:
            raise MosareError(
                f"encoder {self.name} needs its weights ({reason or 'no hub source'}): download pytorch_model.bin "
                f"from {self.weights_url} (gated; accept the licence) and pass --encoder-weights PATH "
                f"or set {self.weights_env}")
        import timm

        try:
            return timm.create_model(f"hf-hub:{self.hub_id}", pretrained=True, **self.hub_kwargs)
        except Exception as err:  # noqa: BLE001 - any hub failure (auth, licence, network) is one line
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise MosareError(f"encoder {self.name}: loading hf-hub:{self.hub_id} failed ({first}); download "
                              f"the weights from {self.weights_url} and pass --encoder-weights PATH") from None


# ----------------------------------------------------------------------------------------------- weights


def _seeded(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build with a fixed seed without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return factory()


def load_state_dict_file(model: nn.Module, path: Path, name: str) -> None:
    """Load a ``.safetensors`` or a plain tensor state dict (``torch.load(weights_only=True)``) strictly."""
    if not path.is_file():
        raise InputError(f"encoder {name}: weights file not found: {path}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decode failure is a bad input file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"encoder {name}: cannot load weights {path}: {first}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"encoder {name}: {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when not strict
        first = " ".join(str(err).split("\n", 1)[-1].split())[:300]
        raise InputError(f"encoder {name}: {path} does not match the architecture ({first})") from None
    if missing or unexpected:
        raise InputError(f"encoder {name}: {path} does not match the architecture "
                         f"({len(missing)} missing keys, e.g. {missing[:2]}; {len(unexpected)} unexpected, "
                         f"e.g. {unexpected[:2]})")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _hf_token() -> str | None:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - no hub client or no token file: no token
        return None


def _hub_unavailable(timeout: float = 1.0) -> str | None:
    """Why the hub cannot be reached (``None`` when it can). Bounded by ``timeout`` even if DNS hangs."""
    if _env_true("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    result: list[str | None] = ["no network (huggingface.co:443 unreachable)"]

    def probe() -> None:
        try:
            with socket.create_connection(HF_HOST, timeout=timeout):
                result[0] = None
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores the socket timeout
    thread.start()
    thread.join(timeout + 0.5)
    return result[0]


# ----------------------------------------------------------------------------------------------- models


def _uni() -> nn.Module:
    import timm

    return timm.create_model("vit_large_patch16_224", pretrained=False, **_UNI_KWARGS)


def _resnet18() -> nn.Module:
    import timm

    return timm.create_model("resnet18", pretrained=False, num_classes=0)  # global average pool -> 512


class HandcraftedEncoder(nn.Module):
    """Colour, stain and texture statistics of RGB patches in [0, 1]: ``[B, 3, S, S]`` -> ``[B, 64]``.

    Layout: 24 colour-histogram bins (8 per RGB channel), means and standard deviations of 10 pixel maps
    (RGB, optical density RGB, haematoxylin, eosin, brightness, saturation; 20 values), white and dark
    fractions (2) -- all on the 2x average-pooled patch -- then, at full resolution, gradient-magnitude
    mean/std at 3 scales (6), 8 orientation bins, 3 Laplacian energies and 1 strong-edge fraction.
    """

    dim = 64
    bins = 8

    def __init__(self) -> None:
        super().__init__()
        # Ruifrok & Johnston haematoxylin / eosin OD vectors; least-squares unmixing via the pseudo-inverse.
        stains = torch.tensor([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105]])
        stains = stains / stains.norm(dim=1, keepdim=True)
        self.register_buffer("unmix", torch.linalg.pinv(stains).T.contiguous())  # [2, 3]

    def _histogram(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised 8-bin histogram per channel: ``[B, 3, H, W]`` in [0, 1] -> ``[B, 3 * bins]``."""
        b, c = x.shape[:2]
        idx = (x * self.bins).long().clamp_(0, self.bins - 1).flatten(2)  # [B, 3, HW]
        idx += (torch.arange(b * c, device=x.device) * self.bins).view(b, c, 1)  # one bin range per (b, c)
        hist = torch.bincount(idx.flatten(), minlength=b * c * self.bins).view(b, c * self.bins)
        return hist.to(x.dtype) / (x.shape[2] * x.shape[3])

    def _texture(self, grey: torch.Tensor) -> torch.Tensor:
        """Gradient and Laplacian statistics of ``[B, H, W]`` grey: ``[B, 18]``. Sobel and Laplacian filters
        are written as shifted differences (valid region), which is much faster than 1-channel conv2d on CPU."""
        stats, laps = [], []
        g = grey
        for scale in range(3):
            if scale:
                g = F.avg_pool2d(g.unsqueeze(1), 2).squeeze(1)
            rows = g[:, :-2] + 2 * g[:, 1:-1] + g[:, 2:]  # vertical smoothing, [B, h-2, w]
            cols = g[:, :, :-2] + 2 * g[:, :, 1:-1] + g[:, :, 2:]  # horizontal smoothing, [B, h, w-2]
            gx = (rows[:, :, 2:] - rows[:, :, :-2]) / 8
            gy = (cols[:, 2:] - cols[:, :-2]) / 8
            mag = torch.hypot(gx, gy).flatten(1)  # [B, (h-2)(w-2)]
            var, mean = torch.var_mean(mag, dim=1)
            stats += [mean, var.sqrt()]
            centre = g[:, 1:-1, 1:-1]
            lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4 * centre
            laps.append(lap.abs().mean(dim=(1, 2)))
            if scale == 0:
                angle = torch.atan2(gy, gx).flatten(1).remainder_(math.pi)  # undirected orientation
                idx = (angle * (self.bins / math.pi)).long().clamp_(0, self.bins - 1)
                orient = torch.zeros(g.shape[0], self.bins, device=g.device, dtype=g.dtype).scatter_add_(1, idx, mag)
                orient = orient / orient.sum(1, keepdim=True).clamp_min(1e-8)
                strong = (mag > 0.05).float().mean(1, keepdim=True)
        return torch.cat([torch.stack(stats, 1), orient, torch.stack(laps, 1), strong], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(0, 1)
        small = F.avg_pool2d(x, 2) if min(x.shape[-2:]) >= 64 else x  # colour statistics need no full resolution
        od = small.clamp_min(1 / 255).log10_().neg_()
        he = torch.einsum("sc,bchw->bshw", self.unmix, od)
        bright = small.mean(1, keepdim=True)
        sat = small.amax(1, keepdim=True) - small.amin(1, keepdim=True)
        maps = torch.cat([small, od, he, bright, sat], 1).flatten(2)  # [B, 10, hw]
        var, mean = torch.var_mean(maps, dim=2)
        light = (bright > 0.85).float().mean(dim=(1, 2, 3))
        dark = (bright < 0.2).float().mean(dim=(1, 2, 3))
        return torch.cat([self._histogram(small), mean, var.sqrt(), torch.stack([light, dark], 1),
                          self._texture(x.mean(1))], 1)


# ----------------------------------------------------------------------------------------------- registry

_UNI_KWARGS = {"init_values": 1e-5, "dynamic_img_size": True, "num_classes": 0}

ENCODERS: dict[str, Encoder] = {
    e.name: e
    for e in (
        Encoder("uni", 1024, 224, IMAGENET_MEAN, IMAGENET_STD, True,
                "UNI ViT-L/16 (Chen et al. 2024), the paper's encoder; weights from a local file",
                _uni, weights_env="MOSARE_UNI_WEIGHTS", weights_url="https://huggingface.co/MahmoodLab/UNI",
                hub_id="MahmoodLab/uni", hub_kwargs=_UNI_KWARGS),
        Encoder("handcrafted", HandcraftedEncoder.dim, 128, IDENTITY_MEAN, IDENTITY_STD, False,
                "colour histograms, stain and gradient statistics (64-d, fast on CPU)", HandcraftedEncoder,
                note="handcrafted, no weights; for tests and the demo", autocast=False),
        Encoder("random-resnet18", 512, 224, IMAGENET_MEAN, IMAGENET_STD, False,
                "ResNet-18, global average pooled", _resnet18, note="random weights; for tests and the demo"),
    )
}
DEFAULT_ENCODER = "handcrafted"


def list_encoders() -> list[Encoder]:
    """All registered encoders, in registry order."""
    return list(ENCODERS.values())


def get_encoder(name: str) -> Encoder:
    """The encoder called ``name``; :class:`MosareError` listing the known names otherwise."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise MosareError(f"unknown encoder {name!r}; choose from {', '.join(ENCODERS)}") from None
