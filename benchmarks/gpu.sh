#!/usr/bin/env bash
# Measures histoclass on a machine with an NVIDIA GPU, as a user runs it: Keras on JAX, no
# TensorFlow, no internet. Writes OUT/gpu_table.md (docs/speed.md keeps it) and gpu_results.json.
#
#   benchmarks/gpu.sh --wheels         # here, with internet: the wheels the GPU machine lacks, into .whl/
#   benchmarks/gpu.sh [--out DIR]      # there: install from .whl/ (no index), then measure at Kaggle scale
#   benchmarks/gpu.sh --quick          # any machine, CPU too: 12 small patients, a few minutes
#
# The GPU machines this was prepared for hold Python 3.12, PyTorch, JAX (CUDA 13), NumPy, OpenCV,
# Pillow, scikit-learn, matplotlib, typer, tqdm, tifffile, onnx and onnxruntime, but not Keras,
# its small needs (namex, optree), OpenSlide, shapely or imagecodecs (libspng, the patches' PNG
# decoder; without it OpenCV decodes them, slower): those travel as wheels (about 35 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-results}
PYTHON=${PYTHON:-python3}
QUICK=()
WHEELS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=1 ;;
    --quick) QUICK=(--quick) ;;
    --out) OUT=$2; shift ;;
    *) echo "unknown option $1 (use --wheels, --quick, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

# What the GPU image lacks of the project's needs (pyproject.toml), for CPython 3.12 on x86-64 Linux.
MISSING=(keras namex optree openslide-python openslide-bin shapely imagecodecs)
if [ "$WHEELS" = 1 ]; then
  mkdir -p .whl
  for name in "${MISSING[@]}"; do
    $PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name"
  done
  ls -l .whl; du -sh .whl
  exit 0
fi

SITE=${SITE:-/tmp/histoclass-site}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  if $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "the wheels in .whl/ are for another Python (3.12); using the packages installed here" >&2
  fi
fi
# The project itself, without its TensorFlow requirement (the GPU path uses JAX).
$PYTHON -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target "$SITE/project" "$ROOT" \
  || { echo "pip could not build the project here; using its sources" >&2; mkdir -p "$SITE/project"; }
export PYTHONPATH=$SITE/project:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PYTHON - <<'PY'
import keras, histoclass
print("histoclass", histoclass.__version__, "from", histoclass.__file__, "| keras", keras.__version__, keras.backend.backend())
PY
NO_TF=()
# Where TensorFlow is installed (a CPU dev machine), block it: the measured path must not need it.
$PYTHON -c "import tensorflow" 2>/dev/null && NO_TF=(--no-tensorflow)
$PYTHON benchmarks/gpu_bench.py --out "$OUT" "${QUICK[@]}" "${NO_TF[@]}" ${PATIENTS:+--patients "$PATIENTS"}
echo "table: $OUT/gpu_table.md"
