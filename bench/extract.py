"""Tiles per second of patch-feature extraction, split into its stages, on one slide.

usage: python bench/extract.py [--slide ../shared/data/slides/cmu-1-small-region.svs] [--encoder handcrafted]
                               [--batch-size 64] [--workers 2] [--device auto] [--repeat 10]
                               [--random-weights] [--encoder-weights PATH] [--compile]

The slide's tissue tiles (``tile_slide``) are looped ``--repeat`` times for a stable figure. Printed:

- raw: OpenSlide ``read_region`` alone, single process, sequential loop, same tiles / level / size (the better
  of a run before and one after (a), so load from other processes does not flatter the ratio);
- (a) reading: the extraction DataLoader (``--workers`` decoding processes, RGB conversion, collation), no
  encoder; steady state after the first batch, and its ratio to the raw rate;
- (b) encoding: synthetic uint8 batches already on the device -> resize, normalise, encoder forward;
- (c) end to end: DataLoader + device transfer + encoding, as ``mosare extract`` runs it.

``--encoder uni --random-weights`` times UNI's architecture without its gated weights.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import openslide  # noqa: E402
import torch  # noqa: E402

from mosare.io.slides import open_slide  # noqa: E402
from mosare.preprocess.extract import (  # noqa: E402
    LoadedEncoder,
    TileDataset,
    cpu_threads,
    encode_tiles,
    load_encoder,
    make_loader,
    resolve_device,
)
from mosare.preprocess.tissue import TileGrid, tile_slide  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_rate(path: Path, coords: np.ndarray, level: int, size: int) -> float:
    """Tiles/s of bare ``openslide.OpenSlide.read_region`` over ``coords`` (one process, sequential)."""
    slide = openslide.OpenSlide(path)
    try:
        for x, y in np.unique(coords, axis=0):  # warm the OS page cache, as the loader's timing is
            slide.read_region((int(x), int(y)), level, (size, size))
        start = time.perf_counter()
        for x, y in coords:
            slide.read_region((int(x), int(y)), level, (size, size))
        return len(coords) / (time.perf_counter() - start)
    finally:
        slide.close()


def loader_rate(path: Path, coords: np.ndarray, grid: TileGrid, batch_size: int, workers: int,
                device: torch.device) -> tuple[float, float]:
    """(steady-state tiles/s after the first batch, tiles/s including worker start-up) of the DataLoader."""
    dataset = TileDataset(path, coords, grid.read_level, grid.read_size)
    start = time.perf_counter()
    first_at, first_n, n = None, 0, 0
    for tiles, errors in make_loader(dataset, batch_size=batch_size, workers=workers, device=device):
        if errors:
            sys.exit(f"bench/extract.py: {errors[0]}")
        n += tiles.shape[0]
        if first_at is None:
            first_at, first_n = time.perf_counter(), n
    end = time.perf_counter()
    steady = (n - first_n) / (end - first_at) if n > first_n else float("nan")
    return steady, n / (end - start)


def encode_rate(encoder: LoadedEncoder, read_size: int, batch_size: int, n_tiles: int) -> float:
    """Tiles/s of :meth:`LoadedEncoder.encode` on random uint8 batches already on the device."""
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (batch_size, 3, read_size, read_size), dtype=torch.uint8, generator=gen)
    batch = batch.to(encoder.device)
    for _ in range(2):  # warm-up: cudnn / mkldnn kernel choice, torch.compile
        encoder.encode(batch)
    _sync(encoder.device)
    steps = max(3, math.ceil(n_tiles / batch_size))
    start = time.perf_counter()
    for _ in range(steps):
        encoder.encode(batch)
    _sync(encoder.device)
    return steps * batch_size / (time.perf_counter() - start)


def end_to_end_rate(path: Path, coords: np.ndarray, grid: TileGrid, encoder: LoadedEncoder, batch_size: int,
                    workers: int) -> float:
    """Tiles/s of DataLoader + transfer + encoding (worker start-up included, as in a real run)."""
    dataset = TileDataset(path, coords, grid.read_level, grid.read_size)
    loader = make_loader(dataset, batch_size=batch_size, workers=workers, device=encoder.device)
    start = time.perf_counter()
    with cpu_threads(encoder.device, workers):  # as run_extract does
        feats = encode_tiles(loader, encoder, name="end to end", progress=False)
    return len(feats) / (time.perf_counter() - start)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average {load:.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slide", type=Path, default=REPO.parent / "shared/data/slides/cmu-1-small-region.svs")
    ap.add_argument("--encoder", default="handcrafted")
    ap.add_argument("--encoder-weights", type=Path, default=None)
    ap.add_argument("--random-weights", action="store_true", help="architecture only (e.g. uni without weights)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=10, help="loop the tile list this many times")
    ap.add_argument("--mpp", type=float, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    args = ap.parse_args()
    if not args.slide.exists():
        sys.exit(f"bench/extract.py: slide not found: {args.slide}")
    device = resolve_device(args.device)

    with open_slide(args.slide) as slide:
        start = time.perf_counter()
        grid = tile_slide(slide, mpp_override=args.mpp)
        grid_s = time.perf_counter() - start
    if len(grid) == 0:
        sys.exit(f"bench/extract.py: {args.slide.name}: no tissue tiles")
    coords = np.tile(grid.coords, (args.repeat, 1))
    n = len(coords)
    encoder = load_encoder(args.encoder, device, args.encoder_weights, compile=args.compile,
                           random_weights=args.random_weights)
    weights = "random weights" if args.random_weights else encoder.spec.provenance
    print(f"slide {args.slide.name}: {len(grid)} tissue tiles x {args.repeat} = {n}; read level {grid.read_level}, "
          f"{grid.read_size} px -> {encoder.spec.input_size} px; tissue grid {grid_s:.2f} s")
    print(f"encoder {encoder.spec.name} ({encoder.spec.dim}-d, {weights}{', compiled' if args.compile else ''}); "
          f"batch size {args.batch_size}; workers {args.workers}; device {device_name(device)}")

    raw_before = raw_rate(args.slide, coords, grid.read_level, grid.read_size)
    steady, with_start = loader_rate(args.slide, coords, grid, args.batch_size, args.workers, device)
    raw = max(raw_before, raw_rate(args.slide, coords, grid.read_level, grid.read_size))  # the stricter baseline
    enc = encode_rate(encoder, grid.read_size, args.batch_size, n)
    e2e = end_to_end_rate(args.slide, coords, grid, encoder, args.batch_size, args.workers)
    print(f"raw OpenSlide read_region (1 process):  {raw:9.1f} tiles/s")
    print(f"(a) reading (DataLoader, no encoder):   {steady:9.1f} tiles/s steady, {with_start:.1f} incl. start-up; "
          f"ratio to raw {steady / raw:.2f}")
    print(f"(b) encoding (batches on the device):   {enc:9.1f} tiles/s")
    print(f"(c) end to end:                         {e2e:9.1f} tiles/s")


if __name__ == "__main__":
    main()
