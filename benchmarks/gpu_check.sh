#!/usr/bin/env bash
# GPU check (issue 16): run on the lent GPU machine as
#
#   bash benchmarks/gpu_check.sh            # results in $OUT (else ./gpu_check_out)
#   bash benchmarks/gpu_check.sh --dry-run  # every stage on CPU with the tiny configuration
#
# The GPU machine has no package index: where diffusers or simpy cannot be found, the wheels
# carried in .whl/ (benchmarks/gpu_wheels.sh fills it here; the device call names ".whl" in its
# carry) are installed into $DITSIM_SITE (default /tmp/site) and put on PYTHONPATH. Then
# benchmarks/gpu_check.py runs the stages; its --help lists the flags, which pass through.
# Exit status: that of gpu_check.py (0: every stage ran or was skipped for a stated reason,
# 1: a stage failed, 2: bad input), or 1 when the carried wheels do not install.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT:-./gpu_check_out}
# shellcheck source=benchmarks/gpu_site.sh
. benchmarks/gpu_site.sh
install_carried_wheels || exit 1
"$PYTHON" -u benchmarks/gpu_check.py --out "$OUT_DIR" "$@"
