#!/usr/bin/env bash
# Every BRCA figure the README's results tables show, at the DEFAULT training settings, on this machine.
# usage: bash bench/brca_results.sh [DATA_DIR] [WORK_DIR]      (≈ 70 min on 2 CPU cores; resumable)
# Writes assets/results/tcga-brca{,-table2,-ablations,-seeds}/ (metrics, per-subset AUC, runs, per-epoch
# history, config, leak audit, wall time; no checkpoints) and regenerates the README tables from them.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/tcga-brca}
WORK=${2:-.cache/brca-results}
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-2}
common=(--rna "$DATA/rna.csv.gz" --reports "$DATA/reports.csv.gz" --classes IDC,ILC --folds 5 --workers "$WORKERS")

run() {  # run NAME [experiment flags...]: train into $WORK/NAME, then copy the light outputs into assets/results/NAME
    local name=$1; shift
    echo "== $name: mosare experiment $*" >&2
    "$PY" -m mosare experiment "${common[@]}" --out "$WORK/$name" "$@" > /dev/null
    mkdir -p "assets/results/$name"
    rm -rf "assets/results/$name/leak_audit"
    cp "$WORK/$name"/{config.json,metrics.csv,subsets.csv,runs.csv,history.csv,summary.md,timing.json} "assets/results/$name/"
    cp -r "$WORK/$name/leak_audit" "assets/results/$name/"
    if [ "$name" = tcga-brca ]; then  # every held-out case's prediction: the cohort page reads it (~0.5 MB)
        cp "$WORK/$name/predictions.csv" "assets/results/$name/"
    fi
}

# Must-show 1: the union cohort (natural missingness), complete-data scenario, seed 0
run tcga-brca --seed 0 --models mosare,mosare-paper,snn,text --scenarios complete
# Table 2 on the complete-only cohort (as the paper): masked vs removed training at 10/30/50 %
run tcga-brca-table2 --complete-only --models mosare,mosare-paper,snn,text \
    --scenarios complete,masked-masked,masked-unmasked,removed-unmasked --mask-rates 0.1,0.3,0.5
# Ablations on the complete-only cohort: complete data and 50 % masking (full mosare: from tcga-brca-table2)
run tcga-brca-ablations --complete-only --models mosare-no-moe,mosare-no-cma,mosare-no-align,mosare-no-recon \
    --scenarios complete,masked-masked,masked-unmasked --mask-rates 0.5
# Seeds 1 and 2 of mosare and text on the union cohort (seed 0 is tcga-brca above)
for seed in 1 2; do
    run "tcga-brca-seed$seed" --seed "$seed" --models mosare,text --scenarios complete
done
# Linear references on the experiment's own inputs (same folds, scrubbed reports, per-fold scoring)
"$PY" bench/references.py --data "$DATA" --out assets/results/tcga-brca/references.csv
"$PY" bench/readme_results.py
