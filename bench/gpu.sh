#!/usr/bin/env bash
# Every GPU figure the README claims, in one go, on a lent NVIDIA H100/H200: about 3 minutes expected, at most
# 7.5 (the sum of the step limits), installs included. Each step has its own time limit, and a failing step does
# not stop the next.
#
#   bash bench/gpu-wheels.sh       # first, here (network + .venv): prepares .cache/gpu/ to carry
#   bash bench/gpu.sh              # on the GPU machine: device tool `run`, carry [".cache/gpu"], timeout_s 540
#   bash bench/gpu.sh --dry-run    # here, no GPU: every step on the CPU with tiny sizes (checks the script)
#   bash bench/gpu.sh --only extract,oom   # some steps only (setup always runs)
#
# Steps:
#   setup      install the carried wheels (offline, into /tmp/mosare-site; the device's own torch is used),
#              check the imports, print the card
#   extract    UNI ViT-L/16, random weights, bf16 autocast: slide -> tiles -> features through the project's
#              extraction path (DataLoader + encoder; and one extract_slide pass) vs the bare forward pass on
#              the same number of tiles (bench/extract.py on the carried synthetic slide)
#   train      MoSARe, hidden 256, training samples/s on CUDA (bench/train.py --synthetic: BRCA-shaped cohort)
#   dashboard  the dashboard's modality switch (inference + heatmap) with the model on CUDA (bench/dashboard.py)
#   oom        a real CUDA out-of-memory through the job queue, memory freed, next job fine (bench/gpu_oom.py)
#
# Figures go to stdout and to $OUT/gpu-figures.txt when $OUT is set (the device tool returns $OUT), else to
# .cache/gpu-run/gpu-figures[-dry-run].txt. Exit code: 0 when every step passed, 1 otherwise.
#
# Environment: PYTHON (default: python3 on the device, .venv/bin/python with --dry-run); GPU_PREP_DIR (default
# .cache/gpu); GPU_BENCH_TILES (12288), GPU_BENCH_BATCH (256), GPU_BENCH_WORKERS (8), GPU_BENCH_COMPILE=1
# (also time the extraction with torch.compile: about a minute more); T_SETUP, T_EXTRACT, T_TRAIN,
# T_DASHBOARD, T_OOM (each step's limit, seconds).
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)

DRY=0
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --only) ONLY=${2:-}; shift ;;
        --only=*) ONLY=${1#--only=} ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "bench/gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PREP=${GPU_PREP_DIR:-.cache/gpu}
SITE=/tmp/mosare-site
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
if [ "$DRY" = 1 ]; then
    PY=${PYTHON:-.venv/bin/python}
    DEVICE=cpu
    FIG_NAME=gpu-figures-dry-run.txt
else
    PY=${PYTHON:-python3}
    DEVICE=cuda
    FIG_NAME=gpu-figures.txt
fi
if [ -n "${OUT:-}" ]; then
    FIG_DIR=$OUT
else
    FIG_DIR=$REPO/.cache/gpu-run
fi
mkdir -p "$FIG_DIR"
FIG=$FIG_DIR/$FIG_NAME
LOGS=$(mktemp -d /tmp/mosare-gpu-bench.XXXXXX)
trap 'rm -rf "$LOGS"' EXIT
: >"$FIG"

STATUS=()   # "name: ok (12 s)" lines for the summary
FAILED=0
CARD="unknown"

wanted() {  # wanted STEP: whether --only selects it
    [ -z "$ONLY" ] && return 0
    case ",$ONLY," in *",$1,"*) return 0 ;; esac
    return 1
}

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, output to stdout and the step's log
    local name=$1 limit=$2 rc start
    shift 2
    echo
    echo "=== $name (limit ${limit} s): $*"
    start=$SECONDS
    timeout -k 5 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    if [ "$rc" = 0 ]; then
        STATUS+=("$name: ok (${took} s)")
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        STATUS+=("$name: FAILED, timed out after ${took} s (limit ${limit} s)")
        FAILED=$((FAILED + 1))
    else
        STATUS+=("$name: FAILED, exit code $rc after ${took} s")
        FAILED=$((FAILED + 1))
    fi
    echo "=== $name: ${STATUS[-1]#"$name: "}"
}

# ------------------------------------------------------------------------------------------------ setup

setup() {
    if [ "$DRY" = 1 ]; then
        echo "dry run: the venv's Python ($PY); the carried wheels are for the device's Python, not installed here"
        ls -la "$PREP/wheels" || echo "no $PREP/wheels: run bash bench/gpu-wheels.sh"
    else
        if ! ls "$PREP"/wheels/*.whl >/dev/null 2>&1; then
            echo "no wheels in $PREP/wheels: run 'bash bench/gpu-wheels.sh' on the dev machine and carry $PREP"
            return 1
        fi
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$PREP"/wheels/*.whl || return 1
        echo "installed offline into $SITE: $(cd "$PREP/wheels" && ls ./*.whl | tr '\n' ' ')"
    fi
    "$PY" - "$DEVICE" <<'EOF'
import importlib.metadata as md
import sys

import torch

mods = ["timm", "numpy", "pandas", "scipy", "scikit-learn", "h5py", "openslide-python", "openslide-bin",
        "matplotlib", "pillow", "safetensors", "pyyaml"]
vers = []
for m in mods:
    try:
        vers.append(f"{m} {md.version(m)}")
    except md.PackageNotFoundError:
        vers.append(f"{m} MISSING")
print(f"python {sys.version.split()[0]} ({sys.executable}); torch {torch.__version__} (CUDA {torch.version.cuda})")
print("; ".join(vers))
import openslide, timm, h5py, sklearn, mosare.slides.extract, mosare.train.experiment, mosare.app.workbench  # noqa
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device")
    p = torch.cuda.get_device_properties(0)
    print(f"card: {torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs)")
else:
    print("card: none (dry run on the CPU)")
EOF
}

export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export -f setup  # run by `timeout ... bash -c setup`
export DRY PREP PY SITE DEVICE
{
    echo "MoSARe GPU figures (bench/gpu.sh$([ "$DRY" = 1 ] && echo ' --dry-run')), $(date -u '+%Y-%m-%d %H:%M UTC')"
    if commit=$(git rev-parse --short HEAD 2>/dev/null); then
        git diff --quiet HEAD -- 2>/dev/null || commit="$commit + uncommitted changes"
        echo "commit: $commit"
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null |
            sed 's/^/nvidia-smi: /'
    fi
    echo "host: $(nproc) CPU cores; $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB memory"}');" \
        "/dev/shm $(df -h /dev/shm 2>/dev/null | awk 'NR == 2 {print $2}') (DataLoader workers share tiles there)"
} | tee -a "$FIG"

step setup "${T_SETUP:-45}" bash -c setup
CARD=$(sed -n 's/^card: //p' "$LOGS/setup.log" | head -1)
[ -n "$CARD" ] || CARD="unknown (setup failed)"

# ------------------------------------------------------------------------------------------------ steps

if [ "$DRY" = 1 ]; then
    # tiny sizes: a 768-px synthetic slide written here (imagecodecs is in the venv), 2 tiles through ViT-L
    DRY_SLIDE=$LOGS/synthetic-tiny.tiff
    EXTRACT=(bench/extract.py --synthetic-slide "$DRY_SLIDE" --synthetic-grid 1 --synthetic-size 768 --encoder uni
             --random-weights --device cpu --tiles 2 --batch-size 1 --workers 1)
    TRAIN=(bench/train.py --synthetic --patients 60 --genes 100 --sentences 10 --hidden 256 --epochs 1 --devices cpu)
    DASH=(bench/dashboard.py --cache "$PREP/mosare" --report-cache-only --device cpu --repeat 2)
    OOM=(bench/gpu_oom.py --dry-run)
else
    EXTRACT=(bench/extract.py --synthetic-slide "$PREP/synthetic-4x4.tiff" --encoder uni --random-weights
             --device cuda --tiles "${GPU_BENCH_TILES:-12288}" --batch-size "${GPU_BENCH_BATCH:-256}"
             --workers "${GPU_BENCH_WORKERS:-8}")
    TRAIN=(bench/train.py --synthetic --hidden 256 --epochs 3 --devices cuda --strict)
    DASH=(bench/dashboard.py --cache "$PREP/mosare" --report-cache-only --device cuda --repeat 20)
    OOM=(bench/gpu_oom.py)
fi

wanted extract && step extract "${T_EXTRACT:-140}" "$PY" "${EXTRACT[@]}"
if wanted extract && [ "${GPU_BENCH_COMPILE:-0}" = 1 ]; then
    step extract-compiled "${T_EXTRACT:-140}" "$PY" "${EXTRACT[@]}" --compile
fi
wanted train && step train "${T_TRAIN:-100}" "$PY" "${TRAIN[@]}"
wanted dashboard && step dashboard "${T_DASHBOARD:-75}" "$PY" "${DASH[@]}"
wanted oom && step oom "${T_OOM:-50}" "$PY" "${OOM[@]}"

# ------------------------------------------------------------------------------------------------ summary

{
    echo
    echo "================ summary: $CARD ================"
    printf '%s\n' "${STATUS[@]}"
    echo
    for name in extract extract-compiled train dashboard oom; do
        [ -f "$LOGS/$name.log" ] || continue
        echo "-- $name"
        case $name in
            extract*) grep -E '^(slide|encoder|raw|\([abcdf]\))' "$LOGS/$name.log" ;;
            train) grep -E '^(data|cohort|cuda|cpu):' "$LOGS/$name.log" ;;
            dashboard) grep -E '^(machine|set-up|  (all on|Slide off|RNA-seq off|Report off) )' "$LOGS/$name.log" ;;
            oom) grep -E '^(card|RESULT|  (oversized|filling|normal|the filling))|FAILED' "$LOGS/$name.log" ;;
        esac
    done
    echo
    echo "================ full output of each step ================"
    for name in setup extract extract-compiled train dashboard oom; do
        [ -f "$LOGS/$name.log" ] || continue
        echo "-- $name"
        cat "$LOGS/$name.log"
    done
} >>"$FIG"
echo
sed -n '/^================ summary/,/^================ full output/p' "$FIG" | sed '$d'
echo "figures written to $FIG"
[ "$FAILED" = 0 ] || { echo "bench/gpu.sh: $FAILED step(s) failed"; exit 1; }
