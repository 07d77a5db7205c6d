#!/usr/bin/env bash
# One prepared check for a lent GPU machine (at most 8 minutes): the environment, one epoch with AMP per main
# architecture on synthetic crops (samples/s), and `predict` seconds per study. Writes gpu_check.md (the
# tables for benchmarks/results.md) and the logs into $OUT (the device tool's folder) or runs/gpu_check/.
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine (device cuda, AMP on)
#   bash benchmarks/gpu_check.sh --cpu    # smoke test on a CPU machine (same steps, tiny sizes; DEVICE=cpu too)
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
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/lumbar-site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/lumbar-site"
fi
START=$(date +%s)
if [[ $DEVICE == cpu ]]; then  # smoke sizes: every step runs, in a few minutes on 2 cores
  EPOCH_ARGS=(--studies 8 --batch-size 8 --workers 0 --threads 1)
  PREDICT_ARGS=(--studies 2 3 --chunk 2 --train-studies 4 --image-size 96 --real-copies 0 --threads 1)
else  # 1,920 crops (960 a training epoch), loader workers on the 16 cores, AMP (TrainConfig.amp is on by default)
  EPOCH_ARGS=(--studies 384 --batch-size 32 --workers 8 --threads 0)
  PREDICT_ARGS=(--studies 5 20 --chunk 8 --train-studies 12 --threads 0 --real-copies 0)
fi

{
  echo "## GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE)"
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
for name in ("timm", "monai", "pydicom", "pylibjpeg", "cv2", "pandas", "pyarrow", "sklearn", "scipy", "yaml"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
print("missing packages:", ", ".join(missing) or "none")
EOF
  echo '```'
} 2>&1 | tee "$REPORT"
if ! grep -q "^missing packages: none$" "$REPORT"; then
  echo "gpu_check: carry the missing packages as wheels in .whl/ and run again" | tee -a "$REPORT"
  exit 2
fi

status=0
{
  echo
  echo "### One epoch per main architecture, synthetic 5x128x128 crops, AMP on CUDA (lumbar.train engine)"
  echo
  echo "\`$PY benchmarks/bench_train.py --epoch ${EPOCH_ARGS[*]} --device $DEVICE\`"
  echo
} | tee -a "$REPORT"
timeout 200 "$PY" benchmarks/bench_train.py --epoch "${EPOCH_ARGS[@]}" --device "$DEVICE" --no-plain \
  --arch cnn3d --arch resnet3d_18 --arch timm25d:resnet18 --arch timmseq:resnet18 \
  2>>"$LOG" | tee -a "$REPORT" || status=1

{
  echo
  echo "### predict seconds per study (demo ensemble trained here)"
  echo
  echo "\`$PY benchmarks/bench_predict.py ${PREDICT_ARGS[*]} --device $DEVICE\`"
  echo
} | tee -a "$REPORT"
timeout 240 "$PY" benchmarks/bench_predict.py "${PREDICT_ARGS[@]}" --device "$DEVICE" 2>>"$LOG" \
  | grep -v "^summary: " | tee -a "$REPORT" || status=1
echo -e "\n(gpu_check: $(($(date +%s) - START)) s, exit $status; log $LOG)" | tee -a "$REPORT"
exit $status
