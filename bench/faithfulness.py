"""Faithfulness of attributions vs attention: ERASER comprehensiveness (DeYoung et al., 2020) on held-out cases.

usage: python bench/faithfulness.py [--checkpoint PATH] [--data ../shared/data/tcga-brca] [--fold 0]
                                    [--max-cases N] [--draws 10] [--seed 0] [--demo-cache DIR] [--skip-demo]
                                    [--out assets/results/faithfulness]

Comprehensiveness of a set r of items: L(c | x) − L(c | x without r), L the log-odds of c, the predicted class
(the unit of the attributions; a probability saturates on confident cases and hides the ranking's effect). Per held-out case
and modality, r is the top k items by attribution (:mod:`mosare.explain.attribution`), the top k by attention, or k
random items (mean over ``--draws`` draws). Deleting means: report sentences removed (the report re-encoded),
genes set to their training mean (0 in the standardised space), tiles removed from the slide's bag. A faithful
ranking must beat random: we report, per modality and ranking, the fraction of cases where its drop exceeds the
mean random drop and the mean drop.

* Real: the BRCA experiment's fold-``--fold`` MoSARe checkpoint (complete data, seed 0), its test-fold patients
  with both RNA and a report, each fed through the Predictor as the app does (a one-row RNA table on disk and
  the raw report text). Sentences k = 3, genes k = 20.
* Synthetic: the demo model on its held-out demo cases (slide, RNA, report; the sentence model embeds the
  reports). Tiles k = 8 (attributions cover the 24 highest-attention tiles), sentences k = 3, genes k = 20; plus
  how often the top sentence is the planted class-signal sentence and the top tiles lie in the planted region.

Writes ``faithfulness.json`` and ``faithfulness.md`` to ``--out`` and prints timings (the attribution of each real
case, the first one included; the machine may be shared with other jobs: the wall times say so).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mosare.explain import attribution as A  # noqa: E402
from mosare.inference import Predictor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = REPO / ".cache/brca-results/tcga-brca/checkpoints/mosare/complete-0/fold{fold}.safetensors"
K = {"rpt": 3, "rna": 20, "wsi": 8}
NAMES = {"rpt": "report sentences", "rna": "genes", "wsi": "slide tiles"}
VARIANTS = {"rpt": A.report_variant_log_odds, "rna": A.rna_variant_log_odds, "wsi": A.tile_variant_log_odds}


def checkpoint_complete(path: Path) -> bool:
    """The experiment writes ``<stem>.result.json`` after the checkpoint: present and not older = complete."""
    record = path.with_name(path.stem + ".result.json")
    return path.is_file() and record.is_file() and record.stat().st_mtime_ns >= path.stat().st_mtime_ns


def deletions(predictor: Predictor, case, result: A.CaseAttribution, m: str, k: int, draws: int,
              rng: np.random.Generator, embedder=None) -> dict | None:
    """Drops of the log-odds of c for the top-k by attribution, by attention and for ``draws`` random k-sets (one batch)."""
    ma = result.modalities.get(m)
    if ma is None:
        return None
    n = {"rpt": len(case.sentences), "rna": len(predictor.genes), "wsi": 0 if case.patches is None else len(case.patches)}[m]
    if n <= k:
        return None
    by_attr = ma.index[A.top_k(ma.attribution, k)]  # tiles: ma.index are the highest-attention tiles, in order
    by_att = None if ma.attention is None else ma.index[A.top_k(ma.attention, k)]
    sets = [[], by_attr] + ([by_att] if by_att is not None else []) + [rng.choice(n, k, replace=False) for _ in range(draws)]
    kwargs = {"embedder": embedder} if m == "rpt" else {}
    lo = VARIANTS[m](predictor, case, [list(map(int, s)) for s in sets], result.target, result.used, **kwargs)
    drop = lo[0] - lo[1:]
    rand = drop[-draws:]
    return {"attribution": float(drop[0]), "attention": float(drop[1]) if by_att is not None else None,
            "random": float(rand.mean()), "reference": float(lo[0]), "top_attr": by_attr, "top_att": by_att}


def summarise(rows: list[dict]) -> dict:
    out = {"cases": len(rows), "random_mean_drop": float(np.mean([r["random"] for r in rows])) if rows else None}
    for method in ("attribution", "attention"):
        got = [r for r in rows if r[method] is not None]
        if got:
            out[method] = {"cases": len(got),
                           "beats_random": float(np.mean([r[method] > r["random"] for r in got])),
                           "mean_drop": float(np.mean([r[method] for r in got])),
                           "median_drop": float(np.median([r[method] for r in got]))}
    both = [r for r in rows if r["attention"] is not None]
    if both:
        out["attribution_beats_attention"] = float(np.mean([r["attribution"] > r["attention"] for r in both]))
    return out


# ----------------------------------------------------------------------------------------------- real BRCA


def brca(args, rng: np.random.Generator) -> dict:
    from mosare.data.cohort import build_cohort
    from mosare.train.splits import patient_folds

    ckpt = Path(args.checkpoint) if args.checkpoint else Path(str(DEFAULT_CKPT).format(fold=args.fold))
    complete = checkpoint_complete(ckpt)
    if not ckpt.is_file():
        sys.exit(f"bench/faithfulness.py: no checkpoint at {ckpt} (run bench/brca_results.sh, or --checkpoint)")
    print(f"checkpoint {ckpt} ({'complete' if complete else 'NOT marked complete: no newer .result.json'})")
    t = time.perf_counter()
    cohort = build_cohort(args.data / "rna.csv.gz", args.data / "reports.csv.gz", None, label_column="oncotree_code",
                          classes=("IDC", "ILC"), text_encoder="tfidf", progress=False)
    test = patient_folds(cohort.labels, 5, seed=0)[args.fold][1]
    test = [int(i) for i in test if cohort.present[i, 1] and cohort.present[i, 2]]
    if args.max_cases:
        test = test[: args.max_cases]
    rna = pd.read_csv(args.data / "rna.csv.gz", low_memory=False).drop_duplicates("patient_id").set_index("patient_id")
    rna = rna.copy()  # one block: row look-ups without pandas' fragmentation warning
    reports = pd.read_csv(args.data / "reports.csv.gz").drop_duplicates("patient_id").set_index("patient_id")
    gene_cols = [c for c in rna.columns if c != "oncotree_code"]
    predictor = Predictor(ckpt)
    print(f"cohort and model ready in {time.perf_counter() - t:.1f} s; fold {args.fold}: {len(test)} held-out "
          "patients with RNA and a report")
    rows: dict[str, list[dict]] = {"rpt": [], "rna": [], "wsi": []}
    seconds, gaps, spans, n_sent, skipped = [], [], [], [], 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n, i in enumerate(test):
            pid = cohort.patient_ids[i]
            table = Path(tmp) / "case.csv"
            rna.loc[[pid], gene_cols].reset_index().to_csv(table, index=False)  # the one-row table a user uploads
            try:
                case = predictor.make_case(rna=table, report_text=str(reports.loc[pid, "text"]))
            except Exception as err:  # noqa: BLE001 - e.g. a report empty after scrubbing: skip, and say so
                skipped += 1
                print(f"  skipped a case: {type(err).__name__}: {str(err)[:80]}")
                continue
            predictor.predict(case)  # the app's Run comes first; the attribution is asked for afterwards
            t0 = time.perf_counter()
            result = A.attribute(predictor, case)
            seconds.append(time.perf_counter() - t0)
            n_sent.append(len(case.sentences))
            g = result.modalities["rna"]
            gaps.append(abs(g.gap))
            spans.append(abs(g.reference - g.baseline))
            for m in ("rpt", "rna"):
                got = deletions(predictor, case, result, m, K[m], args.draws, rng)
                if got is not None:
                    rows[m].append(got)
            if n == 0 or (n + 1) % 25 == 0:
                print(f"  {n + 1}/{len(test)} cases · attribution {seconds[-1]:.2f} s ({len(case.sentences)} sentences, "
                      f"{len(predictor.genes)} genes) · {time.perf_counter() - start:.0f} s so far", flush=True)
    wall = time.perf_counter() - start
    s = np.asarray(seconds)
    rel = np.asarray(gaps) / np.maximum(np.asarray(spans), 1e-12)
    timing = {"first_case_s": float(s[0]), "median_s": float(np.median(s)), "p95_s": float(np.percentile(s, 95)),
              "max_s": float(s.max()), "median_sentences": float(np.median(n_sent)), "genes": len(predictor.genes),
              "cases_30_sentences_or_fewer_median_s": float(np.median(s[np.asarray(n_sent) <= 30]))
              if (np.asarray(n_sent) <= 30).any() else None, "wall_s": wall,
              "per_case": [[round(float(x), 3), int(k)] for x, k in zip(seconds, n_sent)]}  # [seconds, sentences]
    print(f"attribution per case: first {s[0]:.2f} s, median {np.median(s):.2f} s, p95 {np.percentile(s, 95):.2f} s, "
          f"max {s.max():.2f} s (median {np.median(n_sent):.0f} sentences; the slowest had {n_sent[int(s.argmax())]}); "
          f"{len(seconds)} cases in {wall:.0f} s")
    return {"checkpoint": str(ckpt.relative_to(REPO) if ckpt.is_relative_to(REPO) else ckpt),
            "checkpoint_complete": complete, "fold": args.fold, "cases": len(seconds), "skipped": skipped,
            "timing": timing,
            "ig_completeness": {"median_abs_gap": float(np.median(gaps)), "median_relative_gap": float(np.median(rel)),
                                "cases_relative_gap_under_5pct": float(np.mean((rel < 0.05) | (np.asarray(gaps) < 1e-4)))},
            "modalities": {m: summarise(r) for m, r in rows.items() if r}}


# ----------------------------------------------------------------------------------------------- synthetic demo


def demo(args, rng: np.random.Generator) -> dict:
    from mosare.app.demo import MODEL_PATH, ensure_demo_cases
    from mosare.explain.heatmap import tiles_in_bbox
    from mosare.text.embed import ReportEmbedder
    from mosare.app.workbench import load_case

    t = time.perf_counter()
    cases = ensure_demo_cases(args.demo_cache)
    predictor, embedder = Predictor(MODEL_PATH), ReportEmbedder()
    print(f"demo: {len(cases)} held-out synthetic cases ready in {time.perf_counter() - t:.1f} s")
    rows: dict[str, list[dict]] = {"rpt": [], "rna": [], "wsi": []}
    planted_top = {"attribution": [], "attention": []}
    in_region = {"attribution": [], "attention": [], "all tiles": []}
    seconds = []
    for c in cases:
        lc = load_case(predictor, slide_path=c.slide_path, features_path=c.features_path, rna_path=c.rna_path,
                       report_text=c.report_text, embedder=embedder, cache_dir=args.demo_cache)
        case = lc.case
        t0 = time.perf_counter()
        result = A.attribute(predictor, case, embedder=embedder)
        seconds.append(time.perf_counter() - t0)
        for m in ("rpt", "rna", "wsi"):
            got = deletions(predictor, case, result, m, K[m], args.draws, rng, embedder)
            if got is None:
                continue
            rows[m].append(got)
            if m == "rpt" and c.planted_sentence:
                for method, key in (("attribution", "top_attr"), ("attention", "top_att")):
                    if got[key] is not None:
                        planted_top[method].append(c.planted_sentence in case.sentences[int(got[key][0])])
            if m == "wsi" and c.slide_region_bbox and lc.view is not None:
                inside = tiles_in_bbox(case.coords, lc.view.tile_size, c.slide_region_bbox)
                in_region["all tiles"].append(float(inside.mean()))
                for method, key in (("attribution", "top_attr"), ("attention", "top_att")):
                    in_region[method].append(float(inside[np.asarray(got[key], int)].mean()))
    s = np.asarray(seconds)
    print(f"demo attribution per case (slide + RNA + report): median {np.median(s):.2f} s, max {s.max():.2f} s")
    return {"cases": len(cases), "timing": {"median_s": float(np.median(s)), "max_s": float(s.max())},
            "modalities": {m: summarise(r) for m, r in rows.items() if r},
            "planted_sentence_ranked_first": {k: float(np.mean(v)) for k, v in planted_top.items() if v},
            "top_tiles_in_planted_region": {k: float(np.mean(v)) for k, v in in_region.items() if v}}


# ----------------------------------------------------------------------------------------------- report


def table(section: dict, title: str) -> list[str]:
    lines = [f"### {title}", "", "| items | k | cases | ranking | beats random (fraction of cases) | mean Δ L(c) | median Δ L(c) |",
             "|---|---|---|---|---|---|---|"]
    for m, s in section["modalities"].items():
        for method in ("attribution", "attention"):
            if method in s:
                r = s[method]
                how = f"attribution ({A.METHODS[m]})" if method == "attribution" else "attention"
                lines.append(f"| {NAMES[m]} | {K[m]} | {r['cases']} | {how} | {r['beats_random']:.2f} | "
                             f"{r['mean_drop']:+.4f} | {r['median_drop']:+.4f} |")
        lines.append(f"| {NAMES[m]} | {K[m]} | {s['cases']} | random (mean of draws) | – | {s['random_mean_drop']:+.4f} | – |")
    return lines + [""]


def markdown(doc: dict) -> str:
    out = ["# Faithfulness: attribution vs attention (ERASER comprehensiveness)", "",
           "Δ L(c) = L(predicted class | case) − L(predicted class | case without the top-k items), L the log-odds "
           "(log P − log(1 − P)); higher = the "
           "ranking found items the prediction depends on. 'Beats random': the ranking's drop exceeds the mean drop "
           f"of {doc['draws']} random k-sets of the same case. Generated by `bench/faithfulness.py`.", ""]
    if "brca" in doc:
        b = doc["brca"]
        out += table(b, f"TCGA-BRCA, fold {b['fold']} held-out patients with RNA and a report ({b['checkpoint']})")
        t, ig = b["timing"], b["ig_completeness"]
        out += [f"Attribution time per case (report occlusion + gene integrated gradients, CPU, {doc['torch_threads']} "
                f"torch thread(s), load average {doc['load_average_at_start']:.1f} at start): first "
                f"{t['first_case_s']:.2f} s, median {t['median_s']:.2f} s, p95 {t['p95_s']:.2f} s, max {t['max_s']:.2f} s "
                f"(median {t['median_sentences']:.0f} sentences, {t['genes']} genes). Integrated-gradients completeness: "
                f"median |gap| {ig['median_abs_gap']:.2e}, median relative gap {ig['median_relative_gap']:.3f}.", ""]
    if "demo" in doc:
        d = doc["demo"]
        out += table(d, f"Synthetic demo model, {d['cases']} held-out demo cases")
        if d.get("planted_sentence_ranked_first"):
            out.append("Planted class-signal sentence ranked first: " + ", ".join(
                f"{k} {v:.2f}" for k, v in d["planted_sentence_ranked_first"].items()) + ".")
        if d.get("top_tiles_in_planted_region"):
            out.append(f"Share of the top-{K['wsi']} tiles inside the planted region: " + ", ".join(
                f"{k} {v:.2f}" for k, v in d["top_tiles_in_planted_region"].items()) + ".")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="default: the BRCA experiment's mosare complete-0 checkpoint of --fold")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/tcga-brca")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--max-cases", type=int, default=0, help="0: every held-out case with both modalities")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo-cache", type=Path, default=REPO / ".cache/faithfulness")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-brca", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "assets/results/faithfulness")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch threads {torch.get_num_threads()} · {os.cpu_count()} CPUs · load average {load:.1f} at start")
    start = time.perf_counter()
    doc: dict = {"draws": args.draws, "k": K, "seed": args.seed, "torch_threads": torch.get_num_threads(),
                 "cpus": os.cpu_count(), "load_average_at_start": load}
    if not args.skip_brca:
        if not (args.data / "rna.csv.gz").is_file():
            sys.exit(f"bench/faithfulness.py: {args.data} has no rna.csv.gz (point --data at the TCGA-BRCA tables)")
        doc["brca"] = brca(args, np.random.default_rng(args.seed))
    if not args.skip_demo:
        doc["demo"] = demo(args, np.random.default_rng(args.seed))
    doc["wall_s"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faithfulness.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    text = markdown(doc)
    (args.out / "faithfulness.md").write_text(text + f"\nWall time {doc['wall_s']:.0f} s.\n", encoding="utf-8")
    print("\n" + text + f"\nwall time {doc['wall_s']:.0f} s; wrote {args.out}/faithfulness.{{json,md}}")


if __name__ == "__main__":
    main()
