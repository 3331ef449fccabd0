"""Tiles per second of patch-feature extraction, split into its stages, on one slide.

usage: python bench/extract.py [--slide ../shared/data/slides/cmu-1-small-region.svs] [--encoder handcrafted]
                               [--batch-size 64] [--workers 2] [--device auto] [--repeat 10 | --tiles N]
                               [--random-weights] [--encoder-weights PATH] [--compile]
                               [--synthetic-slide PATH [--synthetic-grid 2] [--synthetic-size 2048]
                                                       [--only-write-slide]]

The slide's tissue tiles (``tile_slide``) are looped ``--repeat`` times (or cycled up to ``--tiles``) for a
stable figure. ``--synthetic-slide PATH`` benchmarks a synthetic H&E slide instead of ``--slide`` (for machines
without the shared data): a mosaic of ``--synthetic-grid`` x ``--synthetic-grid`` slides of ``--synthetic-size``
px rendered by :mod:`mosare.synthetic.slide`, written to PATH when it does not exist yet (writing
its JPEG tiles needs ``imagecodecs``; reading it needs only OpenSlide). Printed:

- raw: OpenSlide ``read_region`` alone, single process, sequential loop, same tiles / level / size (the better
  of a run before and one after (a), so load from other processes does not flatter the ratio);
- (a) reading: the extraction DataLoader (``--workers`` decoding processes, RGB conversion, collation), no
  encoder; steady state after the first batch, and its ratio to the raw rate;
- (b) encoding: synthetic uint8 batches already on the device -> resize, normalise, encoder forward;
- (f) forward alone: the encoder module on batches already resized and normalised on the device (bf16
  autocast on CUDA, as ``LoadedEncoder.encode`` runs it) -- the ceiling for (c);
- (c) end to end: DataLoader + device transfer + encoding, as ``mosare extract`` runs it, and its ratio to (f);
- (d) one slide through ``extract_slide`` (tissue grid, QC thumbnail, DataLoader, encoder, ``.h5`` written):
  the slide's own tissue tiles once, worker start-up included.

``--encoder uni --random-weights`` times UNI's architecture (ViT-L/16) without its gated weights.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import openslide  # noqa: E402
import torch  # noqa: E402

from mosare.io.slides import open_slide  # noqa: E402
from mosare.slides.extract import LoadedEncoder, cpu_threads, encode_tiles, extract_slide, load_encoder
from mosare.types import resolve_device
from mosare.slides.tiles import TileDataset, make_loader
from mosare.slides.tissue import TileGrid, tile_slide  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_synthetic_slide(path: Path, grid: int = 2, seed: int = 0, size: int = 2048) -> None:
    """A ``grid`` x ``grid`` mosaic of synthetic H&E slides (``mosare.synthetic.slide``, ``size`` px
    each, alternating classes A/B) written as the same pyramidal JPEG TIFF at 0.5 um/px as the demo cohort's."""
    from mosare.synthetic import slide as ss

    if size % ss.SLIDE_TILE or not 3 * ss.SLIDE_TILE <= size <= ss.TEXTURE_SIZE:
        sys.exit(f"bench/extract.py: --synthetic-size must be a multiple of {ss.SLIDE_TILE} between "
                 f"{3 * ss.SLIDE_TILE} and {ss.TEXTURE_SIZE}")
    texture = ss.background_texture(np.random.default_rng([seed, 0x51DE]))
    mosaic = np.empty((grid * size, grid * size, 3), np.uint8)
    for r in range(grid):
        for c in range(grid):
            rgb, _, _ = ss.render_slide(np.random.default_rng([seed, 0xBE7C, r, c]), "AB"[(r + c) % 2], texture, size)
            mosaic[r * size:(r + 1) * size, c * size:(c + 1) * size] = rgb
    path.parent.mkdir(parents=True, exist_ok=True)
    ss.write_pyramid_tiff(path, mosaic, description=f"MoSARe synthetic H&E benchmark slide ({grid}x{grid} mosaic)")


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


def _timed_rate(step, device, batch_size: int, n_tiles: int) -> float:
    """Tiles/s of ``step()`` (one batch) after two warm-up calls (kernel choice, torch.compile)."""
    for _ in range(2):
        step()
    _sync(device)
    steps = max(3, math.ceil(n_tiles / batch_size))
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def _random_tiles(batch_size: int, read_size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch_size, 3, read_size, read_size), dtype=torch.uint8, generator=gen)


def encode_rate(encoder: LoadedEncoder, read_size: int, batch_size: int, n_tiles: int) -> float:
    """Tiles/s of :meth:`LoadedEncoder.encode` on random uint8 batches already on the device."""
    batch = _random_tiles(batch_size, read_size).to(encoder.device)
    return _timed_rate(lambda: encoder.encode(batch), encoder.device, batch_size, n_tiles)


def forward_rate(encoder: LoadedEncoder, read_size: int, batch_size: int, n_tiles: int) -> float:
    """Tiles/s of the encoder module alone: input already resized and normalised on the device, same autocast
    as :meth:`LoadedEncoder.encode` (bf16 on CUDA)."""
    x = encoder.preprocess(_random_tiles(batch_size, read_size))
    use_bf16 = encoder.device.type == "cuda" and encoder.spec.autocast
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        return _timed_rate(lambda: encoder.model(x), encoder.device, batch_size, n_tiles)


def extract_slide_rate(path: Path, encoder: LoadedEncoder, batch_size: int, workers: int,
                       mpp: float | None) -> tuple[int, float]:
    """(tiles, seconds) of one :func:`extract_slide` call: grid, QC thumbnail, loader, encoding, ``.h5``."""
    import h5py

    with tempfile.TemporaryDirectory(prefix="mosare-bench-") as tmp:
        start = time.perf_counter()
        with cpu_threads(encoder.device, workers):
            out = extract_slide(path, tmp, encoder, batch_size=batch_size, workers=workers, mpp_override=mpp,
                                qc_dir=tmp, progress=False)
        seconds = time.perf_counter() - start
        with h5py.File(out, "r") as f:
            n = int(f["features"].shape[0])
    return n, seconds


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
    ap.add_argument("--tiles", type=int, default=None,
                    help="cycle the slide's tissue tiles up to this many tiles (instead of --repeat)")
    ap.add_argument("--synthetic-slide", type=Path, default=None,
                    help="benchmark this synthetic slide instead of --slide; written first if missing")
    ap.add_argument("--synthetic-grid", type=int, default=2,
                    help="the synthetic slide is a mosaic of N x N renders (default 2)")
    ap.add_argument("--synthetic-size", type=int, default=2048,
                    help="side of each rendered slide of the mosaic, px (default 2048; 768 for a tiny one)")
    ap.add_argument("--only-write-slide", action="store_true", help="write --synthetic-slide and stop")
    ap.add_argument("--mpp", type=float, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    args = ap.parse_args()
    if args.synthetic_slide is not None:
        if not args.synthetic_slide.exists():
            start = time.perf_counter()
            write_synthetic_slide(args.synthetic_slide, args.synthetic_grid, size=args.synthetic_size)
            print(f"wrote {args.synthetic_slide} ({args.synthetic_grid}x{args.synthetic_grid} synthetic mosaic, "
                  f"{args.synthetic_slide.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")
        args.slide = args.synthetic_slide
        if args.only_write_slide:
            return
    elif args.only_write_slide:
        sys.exit("bench/extract.py: --only-write-slide needs --synthetic-slide PATH")
    if not args.slide.exists():
        sys.exit(f"bench/extract.py: slide not found: {args.slide}")
    device = resolve_device(args.device)

    with open_slide(args.slide) as slide:
        start = time.perf_counter()
        grid = tile_slide(slide, mpp_override=args.mpp)
        grid_s = time.perf_counter() - start
    if len(grid) == 0:
        sys.exit(f"bench/extract.py: {args.slide.name}: no tissue tiles")
    if args.tiles is not None:
        coords = np.resize(grid.coords, (args.tiles, 2))  # cycles the tissue tiles
        times = f"cycled to {args.tiles}"
    else:
        coords = np.tile(grid.coords, (args.repeat, 1))
        times = f"x {args.repeat}"
    n = len(coords)
    encoder = load_encoder(args.encoder, device, args.encoder_weights, compile=args.compile,
                           random_weights=args.random_weights)
    weights = "random weights" if args.random_weights else encoder.spec.provenance
    print(f"slide {args.slide.name}: {len(grid)} tissue tiles {times} = {n}; read level {grid.read_level}, "
          f"{grid.read_size} px -> {encoder.spec.input_size} px; tissue grid {grid_s:.2f} s")
    precision = "bf16 autocast" if device.type == "cuda" and encoder.spec.autocast else "float32"
    print(f"encoder {encoder.spec.name} ({encoder.spec.dim}-d, {weights}{', compiled' if args.compile else ''}, "
          f"{precision}); batch size {args.batch_size}; workers {args.workers}; device {device_name(device)}")

    raw_before = raw_rate(args.slide, coords, grid.read_level, grid.read_size)
    steady, with_start = loader_rate(args.slide, coords, grid, args.batch_size, args.workers, device)
    raw = max(raw_before, raw_rate(args.slide, coords, grid.read_level, grid.read_size))  # the stricter baseline
    enc = encode_rate(encoder, grid.read_size, args.batch_size, n)
    fwd = forward_rate(encoder, grid.read_size, args.batch_size, n)
    e2e = end_to_end_rate(args.slide, coords, grid, encoder, args.batch_size, args.workers)
    one_n, one_s = extract_slide_rate(args.slide, encoder, args.batch_size, args.workers, args.mpp)
    print(f"raw OpenSlide read_region (1 process):  {raw:9.1f} tiles/s")
    print(f"(a) reading (DataLoader, no encoder):   {steady:9.1f} tiles/s steady, {with_start:.1f} incl. start-up; "
          f"ratio to raw {steady / raw:.2f}")
    print(f"(b) encoding (batches on the device):   {enc:9.1f} tiles/s")
    print(f"(f) forward alone (normalised input):   {fwd:9.1f} tiles/s")
    print(f"(c) end to end:                         {e2e:9.1f} tiles/s; ratio to forward alone {e2e / fwd:.2f}")
    print(f"(d) extract_slide, one pass:            {one_n / one_s:9.1f} tiles/s ({one_n} tiles in {one_s:.2f} s, "
          "tissue grid + QC + worker start-up + .h5 included)")


if __name__ == "__main__":
    main()
