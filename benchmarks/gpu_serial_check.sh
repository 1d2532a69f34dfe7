#!/usr/bin/env bash
# Second GPU check: executor.run's serial loop on one GPU at the shapes the first check
# (gpu_check.sh) profiled but did not run end to end, for comparison with sim.predict here.
#
#   bash benchmarks/gpu_serial_check.sh            # CUDA, bf16, full-size models, 20 steps
#   bash benchmarks/gpu_serial_check.sh --dry-run  # CPU, fp32, tiny stand-ins, 4 steps
#   bash benchmarks/gpu_serial_check.sh --hires [--dry-run]  # 4096 px, 2 steps: time, memory
#
# Writes $OUT/<model>_<px>.json (executor.run --json: every run's loop, peak memory, trace
# summary) and $OUT/log.txt. flux-dev is left out: its random fp32 weights (48 GB) are built
# on the CPU before the copy to the GPU, which takes longer than the device time allows.
# Carried wheels (.whl/) are installed first where diffusers or simpy is missing, as in
# gpu_check.sh. Exit status: 1 when any run failed, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT:-./gpu_serial_out}
HIRES=0; DRY=0
for arg in "$@"; do
  case "$arg" in
    --hires) HIRES=1 ;;
    --dry-run) DRY=1 ;;
    *) echo "error: unknown argument '$arg' (use --hires and/or --dry-run)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR"
# shellcheck source=benchmarks/gpu_site.sh
. benchmarks/gpu_site.sh
install_carried_wheels || exit 1
if [ $DRY = 1 ]; then
  DEV=(--device cpu --dtype fp32); LIMIT=120
  if [ $HIRES = 1 ]; then RUNS=("pixart-tiny 512" "sd3-tiny 512"); STEPS=2
  else RUNS=("pixart-tiny 256" "sd3-tiny 256" "sd3-tiny 384"); STEPS=4; fi
else
  DEV=(--device cuda --dtype bf16); LIMIT=200
  if [ $HIRES = 1 ]; then RUNS=("pixart-alpha 4096" "sd3-medium 4096"); STEPS=2
  else RUNS=("pixart-alpha 2048" "sd3-medium 1024" "sd3-medium 2048"); STEPS=20; fi
fi
status=0
for r in "${RUNS[@]}"; do
  set -- $r
  start=$(date +%s)
  timeout "$LIMIT" "$PYTHON" -m torch.distributed.run --nproc_per_node 1 -m executor.run \
      --model "$1" --resolution "$2" "${DEV[@]}" --steps "$STEPS" --warmup-runs 1 --runs 3 --json \
      >"$OUT_DIR/${1}_$2.json" 2>>"$OUT_DIR/log.txt"
  rc=$?
  [ $rc -ne 0 ] && status=1
  echo "$1 $2 px: exit $rc, $(( $(date +%s) - start )) s" | tee -a "$OUT_DIR/log.txt"
done
exit $status
