#!/usr/bin/env bash
# One prepared check for a lent GPU machine (under 8 minutes on one H100): a slice of configs/full.yaml on a
# synthetic subset this script writes itself (`python -m lumbar synth`; or DATA=DIR, a folder with train and test
# splits):
#   1. the environment: GPU, versions, packages missing from the image;
#   2. training steps per architecture of configs/full.yaml at its batch sizes, AMP and channels-last, loader workers
#      on the cores: the step time beside the loader's wait (benchmarks/bench_train.py --config configs/full.yaml);
#   3. the localizer and the whole ensemble: full.yaml's localizer and four classifiers built for every fold (a batch
#      each: speed, not accuracy), then `predict` seconds per study by stage on synthetic test studies at real image
#      sizes, the models' time apart, peak GPU memory (benchmarks/bench_kaggle.py --device cuda --folds 5).
# It writes gpu_check.md (the tables) and gpu_check.log into $OUT (the device tool's folder) or runs/gpu_check/;
# on a GPU also benchmarks/gpu_check.md, which `make bench` (benchmarks/run_all.py) puts into benchmarks/results.md.
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine (device cuda)
#   bash benchmarks/gpu_check.sh --cpu    # dry run on a CPU machine: every step at tiny sizes (DEVICE=cpu too)
#   DATA=input/my-set bash benchmarks/gpu_check.sh   # an existing data folder instead of the synthetic subset
#   PYTHON=path/to/python bash benchmarks/gpu_check.sh ...   # another interpreter
#
# The GPU image lacks some of lumbar's packages (pydicom, pylibjpeg, monai, ...): carry them as wheels in .whl/
# (git-ignored; name it in the device run's carry; see docs/benchmarks.md); they are installed into a scratch
# folder before anything runs, and the script stops early, naming what is missing, when something still is.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
[[ "${1:-}" == "--cpu" ]] && DEVICE=cpu
PY=${PYTHON:-python3}  # the GPU image's python3 holds torch; here the project's .venv when there is one
[[ -z ${PYTHON:-} && -x .venv/bin/python ]] && PY=.venv/bin/python
DEST=${OUT:-runs/gpu_check}
mkdir -p "$DEST"
REPORT=$DEST/gpu_check.md
LOG=$DEST/gpu_check.log
: >"$LOG"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/lumbar-site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/lumbar-site"
fi
START=$(date +%s)
CORES=$(nproc)
WORK=$(mktemp -d /tmp/lumbar-gpu-check.XXXX)
trap 'rm -rf "$WORK"' EXIT
if [[ $DEVICE == cpu ]]; then  # dry-run sizes: every step runs, in minutes on 2 cores
  SYNTH=(--studies 6 --test-studies 2 --image-size 96)
  TRAIN_ARGS=(--config configs/full.yaml --batches 1 --size 32 --studies 8 --workers 0 --threads 1)
  SLICE_ARGS=(--tiny --folds 1 --threads 1)
else  # competition image sizes; 5 folds of every model; loader workers on the cores
  SYNTH=(--studies 24 --test-studies 8 --image-size 384)
  TRAIN_ARGS=(--config configs/full.yaml --epoch --studies 400 --workers $((CORES < 8 ? CORES : 8)) --threads 0)
  SLICE_ARGS=(--folds 5 --threads 0 --no-flops)
fi

{
  echo "## GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE, commit $(git describe --always --dirty 2>/dev/null || echo unknown))"
  echo
  echo '```'
  (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: not available")
  "$PY" - <<'EOF'
import importlib, os, platform
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"cudnn {torch.backends.cudnn.version()}, cuda available {torch.cuda.is_available()}, cpus {os.cpu_count()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}")
missing = []
for name in ("timm", "monai", "pydicom", "pylibjpeg", "cv2", "pandas", "pyarrow", "sklearn", "scipy", "yaml", "albumentations"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
print("missing packages:", ", ".join(missing) or "none")
if not missing:  # what the Kaggle kernel's first check prints: capability, the build's architectures, the precision
    from lumbar.kaggle.preflight import gpu_report
    print(gpu_report("auto"))
EOF
  echo '```'
} 2>&1 | tee "$REPORT"
if ! grep -q "^missing packages: none$" "$REPORT"; then
  echo "gpu_check: carry the missing packages as wheels in .whl/ and run again" | tee -a "$REPORT"
  exit 2
fi
if [[ $DEVICE != cpu ]] && ! grep -q "cuda available True" "$REPORT"; then
  echo "gpu_check: no CUDA device; for a dry run on this machine: bash benchmarks/gpu_check.sh --cpu" | tee -a "$REPORT"
  exit 2
fi

status=0
DATA=${DATA:-}
if [[ -z $DATA ]]; then
  DATA=$WORK/synth
  t=$(date +%s)
  "$PY" -m lumbar synth --out "$DATA" "${SYNTH[@]}" --seed 0 --workers "$CORES" >>"$LOG" 2>&1 || status=1
  echo -e "\nSynthetic subset: \`python -m lumbar synth ${SYNTH[*]} --seed 0 --workers $CORES\` ($(($(date +%s) - t)) s)" \
    | tee -a "$REPORT"
fi

{
  echo
  echo "### Training steps per architecture of configs/full.yaml (synthetic crops, AMP and channels-last on CUDA)"
  echo
  echo "\`$PY benchmarks/bench_train.py ${TRAIN_ARGS[*]} --device $DEVICE --no-plain\`"
  echo
} | tee -a "$REPORT"
timeout 150 "$PY" benchmarks/bench_train.py "${TRAIN_ARGS[@]}" --device "$DEVICE" --no-plain 2>>"$LOG" \
  | tee -a "$REPORT" || status=1

{
  echo
  echo "### The localizer and the whole ensemble: predict seconds per study (configs/full.yaml slice)"
  echo
  echo "\`$PY benchmarks/bench_kaggle.py --data <subset> --real-copies 0 ${SLICE_ARGS[*]} --device $DEVICE\`"
  echo
} | tee -a "$REPORT"
timeout 270 "$PY" benchmarks/bench_kaggle.py --data "$DATA" --real-copies 0 "${SLICE_ARGS[@]}" --device "$DEVICE" \
  2>>"$LOG" | grep -v "^summary: " | tee -a "$REPORT" || status=1
echo -e "\n(gpu_check: $(($(date +%s) - START)) s, exit $status; log $LOG)" | tee -a "$REPORT"
if [[ $DEVICE != cpu && $status == 0 ]]; then
  cp "$REPORT" benchmarks/gpu_check.md  # what `make bench` merges into benchmarks/results.md
fi
exit $status
