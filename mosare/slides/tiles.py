"""The tile loader: a Dataset whose DataLoader workers each open their own OpenSlide handle and decode raw uint8
tiles of a tissue grid; :func:`make_loader` builds it for a device."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openslide
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mosare.errors import MosareError
from mosare.io.slides import Slide, open_slide

SLIDE_ERRORS = (MosareError, openslide.OpenSlideError, OSError, Image.DecompressionBombError)
"""Failures that belong to one slide (unreadable file, decode error, no tissue): reported, not a traceback."""


class TileDataset(Dataset):
    """The tiles of one slide's grid, decoded in the calling process (a DataLoader worker).

    Item ``i``: ``(tile, error)`` with tile ``[3, read_size, read_size]`` uint8 RGB read at ``read_level``
    from level-0 top-left ``coords[i]`` (a channels-last view), and error ``""`` or a one-line message
    (then the tile is zeros). Errors travel as data because DataLoader re-raises worker exceptions with
    a multi-line traceback. Each process opens its own :class:`Slide` lazily; a handle is never pickled.
    """

    def __init__(self, slide_path: str | Path, coords: np.ndarray, read_level: int, read_size: int) -> None:
        self.slide_path = Path(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64)
        self.read_level = int(read_level)
        self.read_size = int(read_size)
        self._slide: Slide | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.coords)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_slide"], state["_pid"] = None, -1
        return state

    def _handle(self) -> Slide:
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path)  # a forked copy of a parent handle is never reused
            self._pid = os.getpid()
        return self._slide

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        x, y = (int(v) for v in self.coords[i])
        try:
            rgb = self._handle().read_region(x, y, self.read_level, (self.read_size, self.read_size))
        except SLIDE_ERRORS as err:
            return torch.zeros(3, self.read_size, self.read_size, dtype=torch.uint8), str(err) or type(err).__name__
        if not rgb.flags.writeable:  # torch warns on read-only arrays; the copy is tiny next to the decode
            rgb = rgb.copy()
        return torch.from_numpy(rgb).permute(2, 0, 1), ""

    def close(self) -> None:
        if self._slide is not None and self._pid == os.getpid():
            self._slide.close()
        self._slide, self._pid = None, -1


def collate_tiles(items: Sequence[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    """Stack tiles into ``[B, 3, s, s]`` uint8 (channels-last memory, no transposing copy) and list the errors."""
    tiles = [t.permute(1, 2, 0) for t, _ in items]  # back to the [s, s, 3] storage order
    out = torch.empty((len(tiles), *tiles[0].shape), dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        out.share_memory_()  # written once in shared memory instead of copied there when sent to the parent
    dst = out.numpy()
    for i, tile in enumerate(tiles):  # numpy copies: torch's would wake its thread pool for each small tile
        dst[i] = tile.numpy()
    return out.permute(0, 3, 1, 2), [e for _, e in items if e]


def make_loader(dataset: TileDataset, *, batch_size: int, workers: int, device: torch.device,
                prefetch_factor: int = 4) -> DataLoader:
    """An in-order DataLoader over ``dataset``: ``workers`` decoding processes, pinned memory on CUDA."""
    extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_tiles, pin_memory=device.type == "cuda", **extra)

