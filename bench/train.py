"""Seconds per epoch and peak memory for MoSARe on the real TCGA-BRCA cohort (RNA + reports), CPU and CUDA.

usage: python bench/train.py [--data ../shared/data/tcga-brca] [--epochs 3] [--devices cpu,cuda] [--hidden 256]
                             [--synthetic [--patients 970] [--genes 1556] [--sentences 50]] [--strict]

Prints one line per device: epoch time (mean of the timed epochs after one warm-up epoch), training samples
per second, training cases, batches per epoch, peak memory (CPU: process max RSS; CUDA:
torch.cuda.max_memory_allocated).

``--synthetic`` needs no data: a random cohort shaped like TCGA-BRCA IDC/ILC (970 patients; RNA and report
647/970, RNA only 248/970, report only 75/970; 1,556 genes; reports as ready 384-d sentence embeddings,
about ``--sentences`` per report, so no sentence model is needed). Its figures are for timing only.
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

from mosare.data.cohort import Cohort, build_cohort  # noqa: E402
from mosare.config import ModelConfig, TrainConfig  # noqa: E402
from mosare.model.mosare import MoSARe  # noqa: E402
from mosare.train.data import fit_fold_features, make_batch  # noqa: E402
from mosare.train.experiment import model_config_for  # noqa: E402
from mosare.train.splits import patient_folds  # noqa: E402


BRCA_SUBSETS = (647, 248, 75)  # patients with RNA + report, RNA only, report only (TCGA-BRCA IDC/ILC)
REPORT_DIM = 384  # all-MiniLM-L6-v2


def synthetic_cohort(n_patients: int = 970, n_genes: int = 1556, sentences: int = 50, seed: int = 0) -> Cohort:
    """A random BRCA-shaped cohort (see the module docstring): IDC/ILC at about 4:1, a weak class signal in a
    few genes and sentences, missingness in BRCA's proportions, L2-normalised sentence and report embeddings."""
    rng = np.random.default_rng(seed)
    total = sum(BRCA_SUBSETS)
    n_both = round(n_patients * BRCA_SUBSETS[0] / total)
    n_rna = round(n_patients * BRCA_SUBSETS[1] / total)
    kind = rng.permutation(np.repeat([0, 1, 2], [n_both, n_rna, n_patients - n_both - n_rna]))
    labels = (rng.random(n_patients) < 0.2).astype(np.int64)
    labels[:2], labels[2:4] = 0, 1  # both classes present however small the cohort
    has_rna, has_rpt = kind != 2, kind != 1
    rna = rng.normal(size=(n_patients, n_genes)).astype(np.float32)
    rna[:, : min(20, n_genes)] += 0.5 * labels[:, None]
    rna[~has_rna] = 0.0
    direction = rng.normal(size=REPORT_DIM).astype(np.float32)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    sent, glob = [], np.zeros((n_patients, REPORT_DIM), np.float32)
    for i in range(n_patients):
        if not has_rpt[i]:
            sent.append(np.zeros((0, REPORT_DIM), np.float32))
            continue
        k = max(3, int(rng.poisson(sentences)))
        e = unit(rng.normal(size=(k, REPORT_DIM)).astype(np.float32) + 0.3 * labels[i] * direction)
        sent.append(e)
        glob[i] = unit(e.mean(0))
    present = np.stack([np.zeros(n_patients, bool), has_rna, has_rpt], axis=1)
    return Cohort(patient_ids=[f"SYN-{i:04d}" for i in range(n_patients)], labels=labels, classes=("IDC", "ILC"),
                  present=present, genes=[f"GENE{j:04d}" for j in range(n_genes)], rna=rna, rpt_sentences=sent,
                  rpt_global=glob)


def flops_per_sample(model, cohort, feats, idx, device) -> float:
    """Forward + backward FLOPs of one training step on a batch, per sample (aligning losses on)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    batch = make_batch(cohort, feats, idx, cohort.present[idx], 2048, np.random.default_rng(0)).to(device)
    with FlopCounterMode(display=False) as counter:
        out = model(batch)
        loss, _ = model.loss(batch, out, epoch=10**6)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(idx)


def matmul_gflops(device, n: int = 1024, repeat: int = 20) -> float:
    """fp32 matmul rate of ``device`` with the current thread count, measured now (best of three)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeat):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * repeat / (time.perf_counter() - t) / 1e9)
    return best


def run_epoch(model, cohort, feats, idx, cfg: TrainConfig, device, opt, rng) -> float:
    model.train()
    start = time.perf_counter()
    order = rng.permutation(idx)
    for s in range(0, len(order), cfg.batch_size):
        part = order[s: s + cfg.batch_size]
        batch = make_batch(cohort, feats, part, cohort.present[part], cfg.max_patches, rng).to(device)
        out = model(batch)
        loss, _ = model.loss(batch, out, epoch=10**6)  # aligning on: the most expensive epochs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.on_batch_end(batch, out, 10**6)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/tcga-brca")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--synthetic", action="store_true",
                    help="a random BRCA-shaped cohort instead of --data (runs anywhere; timing only)")
    ap.add_argument("--patients", type=int, default=970, help="--synthetic: patients")
    ap.add_argument("--genes", type=int, default=1556, help="--synthetic: genes")
    ap.add_argument("--sentences", type=int, default=50, help="--synthetic: mean sentences per report")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a device of --devices is not available")
    args = ap.parse_args()
    start = time.perf_counter()
    if args.synthetic:
        if args.patients < 10:
            sys.exit("bench/train.py: --patients must be at least 10 (5 folds, both classes)")
        cohort = synthetic_cohort(args.patients, args.genes, args.sentences)
        source = f"synthetic BRCA-shaped cohort (random; {args.sentences} sentences per report on average)"
    else:
        if not (args.data / "rna.csv.gz").exists():
            sys.exit(f"bench/train.py: {args.data} has no rna.csv.gz (point --data at the TCGA-BRCA tables, "
                     "or pass --synthetic)")
        cohort = build_cohort(args.data / "rna.csv.gz", args.data / "reports.csv.gz", None,
                              label_column="oncotree_code", classes=("IDC", "ILC"), progress=False,
                              text_encoder="tfidf")  # the experiment's default report encoder
        source = f"TCGA-BRCA tables in {args.data}"
    train_idx = patient_folds(cohort.labels, 5, 0)[0][0]
    feats = fit_fold_features(cohort, train_idx, 16, 0)
    print(f"data: {source}; cohort + fold features ready in {time.perf_counter() - start:.1f} s")
    mcfg = model_config_for(cohort, replace(ModelConfig(), hidden=args.hidden))
    tcfg = TrainConfig()
    print(f"cohort: {len(cohort)} patients ({cohort.subset_summary()}); training cases per epoch: {len(train_idx)}; "
          f"batch {tcfg.batch_size}; hidden {args.hidden}; genes {cohort.rna_dim}; threads {torch.get_num_threads()}")
    for name in args.devices.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            print("cuda: not available on this machine")
            if args.strict:
                sys.exit(1)
            continue
        device = torch.device(name)
        torch.manual_seed(0)
        model = MoSARe(mcfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the trainer
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
        flops = flops_per_sample(model, cohort, feats, train_idx[: tcfg.batch_size], device)
        achieved = flops * len(train_idx) / np.mean(times) / 1e9
        rate = matmul_gflops(device)
        print(f"{name}: forward + backward {flops / 1e6:.0f} MFLOP per sample (torch.utils.flop_counter, batch "
              f"{tcfg.batch_size}); achieved {achieved:.1f} GFLOP/s = {100 * achieved / rate:.0f} % of this device's "
              f"fp32 matmul rate measured now ({rate:.0f} GFLOP/s, n = 1024)")
        print(f"{name}: {np.mean(times):.2f} s/epoch (± {np.std(times):.2f}, {args.epochs} epochs, "
              f"{int(np.ceil(len(train_idx) / tcfg.batch_size))} batches), "
              f"{len(train_idx) / np.mean(times):.0f} training samples/s, {n_params / 1e6:.2f} M parameters, "
              f"peak {peak}")


if __name__ == "__main__":
    main()
