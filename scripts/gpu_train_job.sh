#!/usr/bin/env bash
# A fixed-time training job for a lent GPU machine (docs/training.md, "Packing data for a GPU machine").
# Run from the repository root there, with the pack carried along; fbrs need not be installed.
#
#   bash scripts/gpu_train_job.sh [MINUTES] [WORKERS] [BATCH] [VALIDATE_EVERY] [TIMEOUT_S]
#
# Env: DEVICE (default cuda; cpu for a smoke run), PACK (default work/train_pack.zip), INIT (default src/fbrs/weights/default.safetensors), OUT (where the
# results go; default /tmp/fbrs_gpu_out), PY (default python3), EXTRA (more --set options, space-separated),
# RECIPE (default configs/default_mnv2.toml, which trains on the whole pack as one source, as in session 5;
# any other recipe, e.g. configs/mnv2_v2.toml, keeps its sources, weights and options and reads them from the
# pack with data.pack).
# Writes best.safetensors, last.safetensors, train_log.csv, validation_log.csv to $OUT.
set -u
MINUTES=${1:-7}; WORKERS=${2:-14}; BATCH=${3:-28}; VALIDATE_EVERY=${4:-500}; TIMEOUT_S=${5:-540}
PACK=${PACK:-work/train_pack.zip}; INIT=${INIT:-src/fbrs/weights/default.safetensors}
OUT=${OUT:-/tmp/fbrs_gpu_out}; PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; RUN=/tmp/fbrs_gpu_run
mkdir -p "$OUT"; rm -rf "$RUN"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
RECIPE=${RECIPE:-configs/default_mnv2.toml}
if [ "$RECIPE" = configs/default_mnv2.toml ]; then
  data=(--set "data.sources=[{path=\"$PACK\", kind=\"pack\"}]")
else
  data=(--set "data.pack=$PACK")
fi
args=("$RECIPE" --device "$DEVICE" --no-progress --output-dir "$RUN" "${data[@]}" --set "model.init_from=$INIT"
  --set "optimizer.batch_size=$BATCH" --set 'augment.crop_size=[320, 480]'
  --set "data.num_workers=$WORKERS" --set "data.samples_per_epoch=$((BATCH * 300))"
  --set run.threads=0 --set schedule.warmup_steps=0 --set "validation.every_steps=$VALIDATE_EVERY"
  --set run.log_every_steps=50)
start=$(date +%s)
# shellcheck disable=SC2086  # EXTRA is a list of options
timeout -s INT "$TIMEOUT_S" $PY -m fbrs.cli train "${args[@]}" --set "schedule.time_budget_minutes=$MINUTES" ${EXTRA:-}
status=$?
echo "train exit $status after $(( $(date +%s) - start )) s"
if [ $status -ne 0 ] && [ $(( $(date +%s) - start )) -lt 90 ]; then
  # A failure within seconds is most likely the mixed precision of an unfamiliar GPU: try once without it.
  echo "retrying without AMP"; rm -rf "$RUN"
  # shellcheck disable=SC2086
  timeout -s INT $((TIMEOUT_S - 90)) $PY -m fbrs.cli train "${args[@]}" --set run.amp=false \
    --set "schedule.time_budget_minutes=$($PY -c "print(max(0.2, $MINUTES - 1.5))")" ${EXTRA:-}
fi
for name in best.safetensors last.safetensors train_log.csv validation_log.csv; do
  [ -f "$RUN/$name" ] && cp "$RUN/$name" "$OUT/$name"
done
cat "$RUN/validation_log.csv" 2>/dev/null
