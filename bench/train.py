"""Seconds per epoch and peak memory for MoSARe on the real TCGA-BRCA cohort (RNA + reports), CPU and CUDA.

usage: python bench/train.py [--data ../shared/data/tcga-brca] [--epochs 3] [--devices cpu,cuda] [--hidden 256]

Prints one line per device: epoch time (mean of the timed epochs after one warm-up epoch), training cases,
batches per epoch, peak memory (CPU: process max RSS; CUDA: torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mosare.cohort import build_cohort  # noqa: E402
from mosare.config import ModelConfig, TrainConfig  # noqa: E402
from mosare.model.mosare import MoSARe  # noqa: E402
from mosare.train.data import fit_fold_features, make_batch  # noqa: E402
from mosare.train.experiment import model_config_for  # noqa: E402
from mosare.train.splits import patient_folds  # noqa: E402


def run_epoch(model, cohort, feats, idx, cfg: TrainConfig, device, opt, rng) -> float:
    model.train()
    start = time.perf_counter()
    order = rng.permutation(idx)
    for s in range(0, len(order), cfg.batch_size):
        part = order[s: s + cfg.batch_size]
        batch = make_batch(cohort, feats, part, cohort.present[part], cfg.max_patches, rng).to(device)
        out = model(batch)
        loss, _ = model.loss(batch, out, epoch=cfg.align_warmup)  # aligning on: the most expensive epochs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.on_batch_end(batch, out, cfg.align_warmup)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/tcga-brca")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--hidden", type=int, default=256)
    args = ap.parse_args()
    if not (args.data / "rna.csv.gz").exists():
        sys.exit(f"bench/train.py: {args.data} has no rna.csv.gz (point --data at the TCGA-BRCA tables)")
    cohort = build_cohort(args.data / "rna.csv.gz", args.data / "reports.csv.gz", None, label_column="oncotree_code",
                          classes=("IDC", "ILC"), progress=False)
    train_idx = patient_folds(cohort.labels, 5, 0)[0][0]
    feats = fit_fold_features(cohort, train_idx, 16, 0)
    mcfg = model_config_for(cohort, replace(ModelConfig(), hidden=args.hidden))
    tcfg = TrainConfig()
    print(f"cohort: {len(cohort)} patients ({cohort.subset_summary()}); training cases per epoch: {len(train_idx)}; "
          f"batch {tcfg.batch_size}; hidden {args.hidden}; genes {cohort.rna_dim}; threads {torch.get_num_threads()}")
    for name in args.devices.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            print("cuda: not available on this machine")
            continue
        device = torch.device(name)
        torch.manual_seed(0)
        model = MoSARe(mcfg).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        rng = np.random.default_rng(0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run_epoch(model, cohort, feats, train_idx, tcfg, device, opt, rng)  # warm-up
        times = [run_epoch(model, cohort, feats, train_idx, tcfg, device, opt, rng) for _ in range(args.epochs)]
        if device.type == "cuda":
            peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB GPU ({torch.cuda.get_device_name()})"
        else:
            peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB max RSS"
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {np.mean(times):.2f} s/epoch (± {np.std(times):.2f}, {args.epochs} epochs, "
              f"{int(np.ceil(len(train_idx) / tcfg.batch_size))} batches), {n_params / 1e6:.2f} M parameters, peak {peak}")


if __name__ == "__main__":
    main()
