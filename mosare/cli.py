"""Command line: ``mosare experiment | predict | demo-cohort``. Thin: parses arguments, calls the package.

Errors the user can fix print one line (``mosare: error: ...``) and exit with code 2, without a traceback.
Each command imports the part of the package it runs inside its handler, so ``mosare --help`` and a bad argument
answer at once instead of after loading torch, OpenSlide and the text models.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mosare.errors import MosareError
from mosare.config import TEXT_ENCODERS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        print(f"mosare: error: {message} (see `mosare {self.prog.split()[-1]} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    return parse


def _bounded(kind: type, ok, what: str):
    """An argparse type: ``kind(text)`` that must satisfy ``ok``, else "expected <what>"."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive = _bounded(int, lambda v: v >= 1, "a positive integer")
_non_negative = _bounded(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mosare", description="MoSARe: multimodal cancer subtyping with missing modalities")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("experiment", help="cross-validated training of MoSARe and baselines under missing-modality scenarios")
    e.add_argument("--rna", type=Path, help="RNA table: patient_id, label column, one column per gene")
    e.add_argument("--reports", type=Path, help="reports table: patient_id, label column, text")
    e.add_argument("--slides", type=Path, help="slides table: patient_id, features_path (HDF5 features) or slide_path")
    e.add_argument("--features-dir", type=Path, help="features of slide_path rows: the --out folder of `mosare extract`")
    e.add_argument("--label-column", default="oncotree_code")
    e.add_argument("--classes", type=_csv(str), required=True, help="e.g. IDC,ILC")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--folds", type=_positive, default=5)
    e.add_argument("--epochs", type=_positive, default=None, help="default 20 (TrainConfig)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--models", type=_csv(str), default=None, help="default: mosare,snn,abmil,gscnn,bp,mcat,porpoise,text")
    e.add_argument("--scenarios", type=_csv(str), default=None)
    e.add_argument("--mask-rates", type=_csv(float), default=None)
    e.add_argument("--complete-only", action="store_true", help="keep only patients with every given modality")
    e.add_argument("--scrub-terms", type=_csv(str), default=(), help="extra words removed from reports")
    e.add_argument("--config", type=Path, help="YAML/JSON ExperimentConfig; command-line flags override it")
    e.add_argument("--batch-size", type=_positive, default=None)
    e.add_argument("--selection", choices=("last", "best"), default=None,
                   help="last (default): the whole warm-up + cosine schedule; best: the epoch of lowest validation loss")
    e.add_argument("--patience", type=_positive, default=None,
                   help="with --selection best: epochs without a lower validation loss before stopping")
    e.add_argument("--lr", type=float, default=None)
    e.add_argument("--hidden", type=_positive, default=None, help="hidden size D of every model (default 256)")
    e.add_argument("--workers", type=_positive, default=1,
                   help="folds run in parallel processes (CPU: threads are shared; CUDA: one GPU per worker, round-robin)")
    e.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: this machine (--workers processes); ray: every run a Ray task (see --ray-address)")
    e.add_argument("--ray-address", default=None, help="with --backend ray: the cluster (host:port, auto, "
                   "ray://host:10001); default $RAY_ADDRESS, else a local Ray started on this machine")
    e.add_argument("--gpus-per-run", type=_non_negative, default=0.0,
                   help="with --backend ray: GPUs per run, fractions share one (0.25: four runs per GPU; 0: CPU)")
    e.add_argument("--cpus-per-run", type=_non_negative, default=1.0, help="with --backend ray: CPUs per run")
    e.add_argument("--text-encoder", choices=TEXT_ENCODERS, default=None,
                   help="report vectors: character n-gram TF-IDF → SVD fitted on each training fold (tfidf, default), "
                   "the same on words (tfidf-word), or a sentence model (minilm)")
    e.add_argument("--text-model", default=None, help="with --text-encoder minilm: local sentence-transformers folder "
                   "(default: all-MiniLM-L6-v2); a model fine-tuned by `mosare finetune-text` is refused")
    e.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default ~/.cache/mosare)")

    pr = sub.add_parser("predict", help="class probabilities for one case with any subset of modalities")
    pr.add_argument("--checkpoint", type=Path, required=True, help="a .safetensors checkpoint (its .json beside it)")
    pr.add_argument("--rna", type=Path, help="one-case expression table")
    pr.add_argument("--report", type=Path, help="report text file")
    pr.add_argument("--features", type=Path, help="patch features .h5 (TRIDENT/CLAM layout)")
    pr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    x = sub.add_parser("extract", help="patch features of whole-slide images (tissue tiles -> encoder -> .h5)")
    x.add_argument("--slides", type=Path, help="folder of slides, or a CSV with a slide_path column")
    x.add_argument("--out", type=Path, help="output folder: <slide>.h5 per slide, QC thumbnails in <out>/qc")
    x.add_argument("--encoder", default="handcrafted", help="see --list-encoders (default: handcrafted)")
    x.add_argument("--encoder-weights", type=Path, default=None,
                   help="local weights file (.safetensors/.bin/.pth) for encoders that need one, e.g. uni")
    x.add_argument("--batch-size", type=_positive, default=64)
    x.add_argument("--workers", type=int, default=2, help="tile-decoding processes (0: decode in the main process)")
    x.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    x.add_argument("--mpp", type=float, default=None, help="microns per level-0 pixel, overriding the slide metadata")
    x.add_argument("--skip-errors", action="store_true", help="report failing slides and go on (exit code 1)")
    x.add_argument("--list-encoders", action="store_true", help="list the encoders and exit")

    ft = sub.add_parser("finetune-text", help="fine-tune the report sentence encoder on one fold's training patients")
    ft.add_argument("--reports", type=Path, required=True, help="reports table: patient_id, label column, text")
    ft.add_argument("--rna", type=Path, help="the experiment's RNA table, so that the folds equal the experiment's")
    ft.add_argument("--label-column", default="oncotree_code")
    ft.add_argument("--classes", type=_csv(str), required=True, help="e.g. IDC,ILC")
    ft.add_argument("--out", type=Path, required=True, help="models go to <out>/fold<K>/")
    ft.add_argument("--base-model", default=None, help="local sentence-transformers folder (default: all-MiniLM-L6-v2)")
    ft.add_argument("--folds", type=_positive, default=5)
    ftk = ft.add_mutually_exclusive_group()
    ftk.add_argument("--fold", type=int, default=0, help="fold index K in 0..folds-1 (default 0)")
    ftk.add_argument("--all-folds", action="store_true", help="one model per fold")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--epochs", type=_positive, default=1)
    ft.add_argument("--batch-size", type=_positive, default=32, help="even, >= 4")
    ft.add_argument("--max-sentences-per-report", type=_positive, default=64)
    ft.add_argument("--scrub-terms", type=_csv(str), default=(), help="extra words removed from reports")

    d = sub.add_parser("demo-cohort", help="write the synthetic demo cohort")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--cases", type=_positive, default=120)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-slides", action="store_true", help="skip the synthetic TIFF slides (features only; faster)")

    da = sub.add_parser("demo-assets", help="rebuild the dashboard's demo model and experiment under assets/demo")
    da.add_argument("--work", type=Path, required=True, help="scratch folder (cohort, features, all checkpoints)")
    da.add_argument("--out", type=Path, default=None, help="default: the repository's assets/demo")
    da.add_argument("--epochs", type=_positive, default=40)
    da.add_argument("--workers", type=_positive, default=2)

    db = sub.add_parser("demo-assets-brca", help="ship the real TCGA-BRCA demo (a fold's model + its held-out "
                        "patients) from a finished BRCA experiment into assets/demo-brca")
    db.add_argument("--data", type=Path, required=True, help="folder with rna.csv.gz and reports.csv.gz")
    db.add_argument("--experiment", type=Path, required=True, help="the `mosare experiment` output folder")
    db.add_argument("--fold", type=int, default=0)
    db.add_argument("--out", type=Path, default=None, help="default: the repository's assets/demo-brca")
    return p


def _offline_defaults() -> None:
    # No model hub at run time: fail fast instead of retrying the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cmd_experiment(args: argparse.Namespace) -> int:
    from mosare.config import ExperimentConfig, load_config
    from mosare.train.finetune_text import METADATA_FILE
    from mosare.train.splits import SCENARIOS

    cfg = load_config(args.config, ExperimentConfig) if args.config else ExperimentConfig()
    over = {k: v for k, v in {"label_column": args.label_column, "classes": args.classes, "folds": args.folds,
                               "seed": args.seed, "models": args.models, "scenarios": args.scenarios,
                               "mask_rates": args.mask_rates, "scrub_terms": args.scrub_terms or None,
                               "text_encoder": args.text_encoder}.items() if v is not None}
    cfg = replace(cfg, complete_only=args.complete_only or cfg.complete_only, **over)
    tover = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "patience": args.patience,
                                "selection": args.selection, "device": args.device, "seed": args.seed,
                                "lr": args.lr}.items() if v is not None}
    cfg = replace(cfg, train=replace(cfg.train, **tover))
    if args.hidden:
        cfg = replace(cfg, model=replace(cfg.model, hidden=args.hidden))
    if args.lr is not None and not 0 < args.lr < 1:
        raise MosareError("--lr must lie in (0, 1)")
    if len(cfg.classes) < 2:
        raise MosareError("--classes needs at least two class names")
    bad = [s for s in cfg.scenarios if s not in SCENARIOS]
    if bad:
        raise MosareError(f"unknown scenario(s) {', '.join(bad)}; choose from {', '.join(SCENARIOS)}")
    if any(not 0 <= r < 1 for r in cfg.mask_rates):
        raise MosareError("--mask-rates must lie in [0, 1)")
    from mosare.model.registry import MODELS

    unknown = [m for m in cfg.models if m not in MODELS]
    if unknown:
        raise MosareError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.text_model and cfg.text_encoder != "minilm":
        raise MosareError("--text-model needs --text-encoder minilm (the default TF-IDF encoder is fitted per fold)")
    if args.text_model and (Path(args.text_model) / METADATA_FILE).is_file():
        raise MosareError(f"{args.text_model} was fine-tuned on reports of every fold's patients, test folds included; "
                          "an experiment cannot use it without leaking (use --text-encoder tfidf, or the base model)")
    if args.backend != "ray" and (args.ray_address or args.gpus_per_run or args.cpus_per_run != 1.0):
        raise MosareError("--ray-address, --gpus-per-run and --cpus-per-run need --backend ray")
    if args.backend == "ray" and args.cpus_per_run <= 0:
        raise MosareError("--cpus-per-run must be > 0")
    connected = False
    if args.backend == "ray":  # before reading the data: a missing package or an unreachable cluster fails fast
        from mosare.train.experiment import ray_backend

        rb = ray_backend()
        rb.run_device(cfg.train.device, args.gpus_per_run)
        connected = rb.connect(args.ray_address)
    try:
        if args.backend == "ray":
            rb.check_resources(args.cpus_per_run, args.gpus_per_run)
        return _experiment(args, cfg)
    finally:
        if connected:
            import ray

            ray.shutdown()


def _experiment(args: argparse.Namespace, cfg) -> int:
    from mosare.data.cohort import build_cohort
    from mosare.text.embed import ReportEmbedder
    from mosare.train.experiment import run_experiment

    embedder = (ReportEmbedder(model_path=args.text_model, cache_dir=args.cache_dir)
                if args.reports and cfg.text_encoder == "minilm" else None)
    cohort = build_cohort(args.rna, args.reports, args.slides, label_column=cfg.label_column, classes=cfg.classes,
                          scrub_terms=cfg.scrub_terms, complete_only=cfg.complete_only, embedder=embedder,
                          features_dir=args.features_dir, text_encoder=cfg.text_encoder)
    print(f"cohort: {len(cohort)} patients — {cohort.subset_summary()}", file=sys.stderr)
    start = time.perf_counter()
    run_experiment(cohort, cfg, args.out, text_model=embedder.model_id if embedder else "", workers=args.workers,
                   backend=args.backend, ray_address=args.ray_address, gpus_per_run=args.gpus_per_run,
                   cpus_per_run=args.cpus_per_run)
    print(f"experiment finished in {time.perf_counter() - start:.0f} s; results in {args.out}", file=sys.stderr)
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mosare.inference import load_predictor

    if not (args.rna or args.report or args.features):
        raise MosareError("give at least one of --rna, --report, --features")
    predictor = load_predictor(args.checkpoint, args.device)
    text = None
    if args.report:
        from mosare.io.tables import MAX_REPORT_CHARS, decode_text

        try:
            if args.report.stat().st_size > 4 * MAX_REPORT_CHARS:  # never read a huge file just to refuse it
                raise MosareError(f"{args.report}: the report is too long ({args.report.stat().st_size:,} bytes; "
                                  f"limit {MAX_REPORT_CHARS:,} characters)")
            text = decode_text(args.report.read_bytes(), f"{args.report}: the report")
        except OSError as err:
            raise MosareError(f"{args.report}: cannot read ({err.strerror})") from None
    case = predictor.make_case(rna=args.rna, report_text=text, features=args.features)
    for note in case.notes:
        print(f"note: {note}", file=sys.stderr)
    if not case.present.any():
        raise MosareError(f"the checkpoint's model uses {', '.join(predictor.cfg.modalities)}; none of those was given")
    pred = predictor.predict(case)
    given = [m for m, p in zip(("wsi", "rna", "rpt"), pred.present) if p]
    print(f"modalities: {', '.join(given)}" + (f" (reconstructed: {', '.join(pred.reconstructed)})" if pred.reconstructed else ""))
    for i, (c, p) in enumerate(zip(pred.classes, pred.probs)):
        print(f"{c}\t{p:.4f}" + (f"\tcalibrated {pred.calibrated[i]:.4f}" if pred.calibrated is not None else ""))
    print(f"prediction\t{pred.label}")
    if pred.prediction_set is not None:
        print(f"prediction set ({pred.coverage:.0%} coverage)\t{pred.prediction_set}"
              + ("\t(unsure)" if " or " in pred.prediction_set else ""))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from mosare.slides.encoders import list_encoders

    if args.list_encoders:
        rows = [(e.name, str(e.dim), "yes" if e.pathology_pretrained else "no",
                 e.description + ("" if e.pathology_pretrained else f"; {e.provenance}"))
                for e in list_encoders()]
        rows.insert(0, ("name", "dim", "pathology-pretrained", "description"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
        return 0
    if args.slides is None or args.out is None:
        raise MosareError("extract needs --slides and --out (or --list-encoders)")
    if args.workers < 0:
        raise MosareError("--workers must be >= 0")
    from mosare.slides.encoders import get_encoder
    from mosare.slides.extract import run_extract

    spec = get_encoder(args.encoder)
    if not spec.pathology_pretrained:
        print(f"encoder {spec.name}: {spec.provenance}", file=sys.stderr)
    report = run_extract(args.slides, args.out, args.encoder, batch_size=args.batch_size, workers=args.workers,
                         device=args.device, mpp=args.mpp, skip_errors=args.skip_errors,
                         encoder_weights=args.encoder_weights)
    print(f"extract: {report.summary()}; features in {args.out}", file=sys.stderr)
    return report.exit_code


def cmd_finetune_text(args: argparse.Namespace) -> int:
    from mosare.train.finetune_text import run_finetune

    results = run_finetune(args.reports, args.out, classes=args.classes, label_column=args.label_column,
                           folds=None if args.all_folds else [args.fold], n_folds=args.folds, rna=args.rna,
                           seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
                           max_sentences_per_report=args.max_sentences_per_report, scrub_terms=args.scrub_terms,
                           base_model=args.base_model)
    for r in results:
        print(r.summary())
    return 0


def cmd_demo_cohort(args: argparse.Namespace) -> int:
    from mosare.synthetic.cohort import write_demo_cohort

    write_demo_cohort(args.out, n_cases=args.cases, seed=args.seed, slides=not args.no_slides)
    print(f"demo cohort written to {args.out} ({args.cases} cases)")
    return 0


def cmd_demo_assets(args: argparse.Namespace) -> int:
    from mosare.app.demo import ASSETS, build_demo_assets

    summary = build_demo_assets(args.work, args.out or ASSETS, epochs=args.epochs, workers=args.workers)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_demo_assets_brca(args: argparse.Namespace) -> int:
    from mosare.app.demo_brca import ASSETS, build_brca_demo

    print(json.dumps(build_brca_demo(args.data, args.experiment, args.out or ASSETS, fold=args.fold), indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    _offline_defaults()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handler = {"experiment": cmd_experiment, "predict": cmd_predict, "demo-cohort": cmd_demo_cohort, "demo-assets": cmd_demo_assets,
               "demo-assets-brca": cmd_demo_assets_brca,
               "extract": cmd_extract, "finetune-text": cmd_finetune_text}[args.command]
    try:
        return handler(args)
    except MosareError as err:
        print(f"mosare: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mosare: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
