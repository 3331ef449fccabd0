#!/usr/bin/env bash
# Prepare, on this machine, the folder that bench/gpu.sh needs on a lent GPU machine: .cache/gpu/ (ignored by
# git through .cache/; the device tool's `carry` takes it along, 64 MiB at most with the working tree).
#
#   bash bench/gpu-wheels.sh            # needs the project's .venv and pip access to PyPI; ~1 min
#
# What goes in, and why only that:
#   wheels/              openslide-python + openslide-bin for the device's Python (3.12, x86-64 manylinux). The
#                        device image already has torch (its own CUDA build: never carried, it is GBs), timm,
#                        numpy, pandas, scipy, scikit-learn, h5py, safetensors, pyyaml, tqdm, matplotlib,
#                        pillow, tifffile, transformers and sentence-transformers (see the device's KINDS.md);
#                        streamlit, plotly, playwright and datasets are not needed by the benchmarks there.
#   synthetic-4x4.tiff   the extraction benchmark's slide: a 4 x 4 mosaic (8192 px, ~520 tissue tiles) rendered
#                        by mosare.synthetic.slide. Written here because writing its JPEG tiles
#                        needs imagecodecs (a 20+ MB wheel); reading it there needs only OpenSlide.
#   mosare/              a MOSARE_CACHE with the dashboard's demo cases and their report embeddings, so the
#                        dashboard benchmark runs there without the 90 MB sentence model
#                        (bench/dashboard.py --prepare-offline / --report-cache-only).
#
# Environment: PYTHON (default .venv/bin/python), DEVICE_PYTHON_VERSION (default 3.12), GPU_PREP_DIR (default
# .cache/gpu). Every run rebuilds the folder from scratch: run it again right before a device run, on the code
# being measured (the demo cases and report embeddings depend on the demo model and the report scrubbing).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
DEST=${GPU_PREP_DIR:-.cache/gpu}
DEVICE_PY=${DEVICE_PYTHON_VERSION:-3.12}
LIMIT_MIB=56  # the tool's 64 MiB for tree + carried paths, minus the tracked tree (~3 MiB) and headroom

if [ ! -x "$PY" ]; then
    echo "bench/gpu-wheels.sh: $PY not found; run 'make venv' first (or set PYTHON)" >&2
    exit 2
fi

rm -rf "$DEST/wheels" "$DEST/mosare" "$DEST/synthetic-4x4.tiff"
mkdir -p "$DEST/wheels"

# 1. wheels: the versions installed in the project's venv, built for the device's Python
pins=$("$PY" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("openslide-python", "openslide-bin")))
EOF
)
echo "wheels for Python $DEVICE_PY (x86-64): $pins"
# shellcheck disable=SC2086 # $pins is a list of requirement specifiers
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST/wheels" $pins
ls -la "$DEST/wheels"

# 2. the extraction benchmark's synthetic slide
"$PY" bench/extract.py --synthetic-slide "$DEST/synthetic-4x4.tiff" --synthetic-grid 4 --only-write-slide

# 3. the dashboard benchmark's demo cases and report embeddings
"$PY" bench/dashboard.py --cache "$DEST/mosare" --prepare-offline

size_mib=$(du -sm "$DEST" | cut -f1)
echo "$DEST: ${size_mib} MiB (limit for carrying: ${LIMIT_MIB} MiB)"
if [ "$size_mib" -gt "$LIMIT_MIB" ]; then
    echo "bench/gpu-wheels.sh: $DEST is too big to carry; remove what is not listed above" >&2
    exit 1
fi
echo "ready: on the device run 'bash bench/gpu.sh' with carry [\"$DEST\"]"
