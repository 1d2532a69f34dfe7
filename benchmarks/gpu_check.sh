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
SITE=${DITSIM_SITE:-/tmp/site}

missing() {  # true when a package the check needs cannot be found (found, not imported: fast)
  "$PYTHON" -c 'import importlib.util as u, sys
sys.exit(0 if any(u.find_spec(m) is None for m in ("diffusers", "simpy")) else 1)'
}

if missing; then
  if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing the carried wheels: $(cd .whl && echo *.whl)"
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" .whl/*.whl; then
      echo "error: the wheels in .whl/ did not install into $SITE" >&2
      exit 1
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    if missing; then
      echo "error: diffusers or simpy still missing after installing .whl/" >&2
      exit 1
    fi
  else
    echo "warning: diffusers or simpy is missing and no .whl/ was carried" \
         "(bash benchmarks/gpu_wheels.sh fills it); the stages that need them will fail" >&2
  fi
fi
"$PYTHON" -u benchmarks/gpu_check.py --out "$OUT_DIR" "$@"
